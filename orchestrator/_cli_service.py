"""`tiersim orchestrator serve`: the orchestrator as a gRPC service."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

_EPILOG = """\
Without a token or TLS the service listens on loopback only. To serve a
network, give a token (clients send it as `authorization: Bearer <token>`)
and/or a certificate:

  tiersim orchestrator serve --port 50060
  tiersim orchestrator serve --host 0.0.0.0 --token-file /run/secrets/tiersim-token
  tiersim orchestrator serve --host 0.0.0.0 --tls-cert server.pem --tls-key server.key \\
      --tls-client-ca clients-ca.pem

Policy agents connect to the same address (tiersim.v1.PolicyAgent/Connect).
"""


def register(subparsers: Any) -> None:
    """Add `orchestrator serve` to the tiersim CLI."""
    from tiersim._security import add_server_flags

    from .service import DEFAULT_PORT

    p: argparse.ArgumentParser = subparsers.add_parser(
        "orchestrator",
        help="run the orchestrator as a gRPC service (queued runs, events, policy agents)",
        description="The orchestrator as a service: tiersim.v1.Orchestrator and PolicyAgent.",
    )
    sub = p.add_subparsers(dest="orchestrator_command", metavar="COMMAND")
    p.set_defaults(func=lambda args: _usage(p))
    s: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="serve tiersim.v1.Orchestrator and tiersim.v1.PolicyAgent",
        description="Accept scenarios, run them one at a time, stream their events, and let "
        "policy agents take decisions.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    net = s.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    net.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port; 0 picks a free one ({DEFAULT_PORT})"
    )
    net.add_argument(
        "--address-file", metavar="FILE", help="write the bound host:port here once serving"
    )
    sec = s.add_argument_group("security")
    add_server_flags(sec)
    runs = s.add_argument_group("runs")
    runs.add_argument(
        "--scenario-root",
        metavar="DIR",
        help="scenario paths are resolved under DIR and may not leave it "
        "(default: any path; catalog names always work)",
    )
    runs.add_argument(
        "--max-queued", type=int, default=64, metavar="N", help="runs waiting at most (64)"
    )
    runs.add_argument(
        "--keep-finished",
        type=int,
        default=32,
        metavar="N",
        help="finished runs whose results are kept (32)",
    )
    runs.add_argument(
        "--max-parallel",
        type=int,
        default=4,
        metavar="N",
        help="non-exclusive runs in progress at once (4)",
    )
    runs.add_argument(
        "--counters-interval",
        default="100ms",
        metavar="DURATION",
        help="simulated time between counter events (100ms; 0s: none)",
    )
    s.set_defaults(func=cmd_serve)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def cmd_serve(args: argparse.Namespace) -> int:
    from tiersim._errors import ConfigError
    from tiersim._security import server_security_from_args
    from tiersim._units import parse_duration_ns

    from .service import OrchestratorServer, serve

    for flag in ("max_queued", "keep_finished", "max_parallel"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {args.port}")
    try:
        counters_interval_ns = parse_duration_ns(args.counters_interval)
    except ValueError as exc:
        raise ConfigError(f"--counters-interval: {exc}") from None
    security = server_security_from_args(args)
    security.check_bind(args.host)
    server = OrchestratorServer(
        args.host,
        args.port,
        security,
        max_queued=args.max_queued,
        keep_finished=args.keep_finished,
        max_parallel=args.max_parallel,
        scenario_root=args.scenario_root,
        counters_interval_ns=counters_interval_ns,
    )
    return asyncio.run(serve(server, address_file=args.address_file))
