"""The `tiersim` command.

Each subsystem contributes its own subcommands through a `register(subparsers)`
function, so this module stays a thin dispatcher. Errors in user input
(`ConfigError`) print one line naming the file, line and key, and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ._errors import ConfigError

# Modules that add subcommands, in the order they appear in --help.
_COMMAND_MODULES = (
    "tiersim.orchestrator._cli",
    "tiersim.orchestrator._cli_service",
    "tiersim.orchestrator._cli_tools",
    "tiersim.nodes._cli",
    "tiersim.reference._cli",
    "tiersim.orchestrator._cli_cluster",
)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="tiersim",
        description="Simulate Linux memory tiering over DRAM, CXL, compressed CXL and swap nodes.",
    )
    parser.add_argument("--version", action="version", version=f"tiersim {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JSON log lines (default: JSON unless stderr is a terminal)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ._logging import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_json)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc: int = args.func(args)
    except ConfigError as exc:
        print(f"tiersim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
