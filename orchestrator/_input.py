"""The error raised for a bad input file: a trace, a page corpus, a results document.

It is both a `ConfigError` and a `ValueError`, on purpose. As a ConfigError
it carries the file, the line (or record) and the field, and the CLI prints
it as one line and exits 2. As a ValueError it is what workload and content
builders raise for a bad spec, so a scenario whose trace or corpus is broken
is reported at the workload's key in the scenario file, with the trace's own
file and line in the message.
"""

from __future__ import annotations

from tiersim._errors import ConfigError


class InputError(ConfigError, ValueError):
    """A file tiersim was asked to read is missing, truncated, garbled or of the wrong kind."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        ConfigError.__init__(self, message, file=file, line=line, key=key)
