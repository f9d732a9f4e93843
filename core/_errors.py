"""Errors shared by the node models, their clients and the orchestrator."""

from __future__ import annotations

import grpc


class NodeError(Exception):
    """A node refused a request. `code` is the gRPC status it answers with.

    Device models raise it in-process; the gRPC server turns it into a status,
    and the gRPC client turns the status back into the same exception, so
    engine code handles one error type whichever side of the seam it runs on.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class ConfigError(Exception):
    """A configuration (TOML file or CLI flags) is wrong.

    Carries where: the file, the line when known, and the dotted key.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file if self.line is None else f"{self.file}:{self.line}")
        if self.key:
            where.append(f"[{self.key}]" if not where else f"key {self.key!r}")
        prefix = ": ".join([", ".join(where)]) if where else ""
        return f"{prefix}: {self.message}" if prefix else self.message
