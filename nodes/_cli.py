"""`tiersim node`: run one memory node as a gRPC server."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from ._config import load_settings

_EPILOG = """\
Sizes accept units (4096, 512MiB, 8GiB); watermarks also a percentage of the
physical media (2%). Flags override the same keys of --config.

examples:
  tiersim node --kind cram --advertised 8GiB --physical 1GiB --port 50051
  tiersim node --config node.toml --metrics-port 9101 --address-file node.addr
"""

# CLI flag -> setting key (the TOML spelling).
_FLAGS: dict[str, str] = {
    "kind": "kind",
    "name": "name",
    "advertised": "advertised",
    "physical": "physical",
    "overflow": "overflow",
    "low_watermark": "low_watermark",
    "high_watermark": "high_watermark",
    "per_page_overhead": "per_page_overhead",
    "max_batch_pages": "max_batch_pages",
    "seed": "seed",
    "host": "host",
    "port": "port",
    "metrics_port": "metrics_port",
    "address_file": "address_file",
    "realtime_dilation": "realtime_dilation",
    "compress_in": "compress_in",
}


def register(subparsers: Any) -> None:
    """Add the `node` subcommand to the tiersim CLI."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "node",
        help="run a memory node (dram, cxl, cram or storage) as a gRPC server",
        description="Run one memory node: a device model serving tiersim.v1.MemoryNode.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dev = p.add_argument_group("device")
    dev.add_argument("--kind", help="dram, cxl, cram or storage")
    dev.add_argument("--name", help="node name, unique in the cluster (default: the kind)")
    dev.add_argument("--advertised", metavar="SIZE", help="capacity offered, e.g. 8GiB")
    dev.add_argument(
        "--physical", metavar="SIZE", help="media present (cram only; default: advertised)"
    )
    dev.add_argument(
        "--overflow",
        metavar="MODE",
        help="what a write with no physical room does: poison (default) or machine-check",
    )
    dev.add_argument(
        "--low-watermark", metavar="SIZE|PCT", help="free media for pressure 1000 (2%%)"
    )
    dev.add_argument("--high-watermark", metavar="SIZE|PCT", help="free media for pressure 0 (5%%)")
    dev.add_argument(
        "--per-page-overhead", metavar="BYTES", help="media per stored page besides its payload"
    )
    dev.add_argument("--max-batch-pages", type=int, metavar="N", help="pages per batch (256)")
    dev.add_argument("--seed", type=int, help="seed of the latency jitter (0)")
    srv = p.add_argument_group("server")
    srv.add_argument("--config", metavar="FILE", help="TOML file with the same keys")
    srv.add_argument("--host", help="address to bind (127.0.0.1)")
    srv.add_argument("--port", type=int, help="gRPC port; 0 picks a free one (default)")
    srv.add_argument("--metrics-port", type=int, metavar="PORT", help="Prometheus metrics port")
    srv.add_argument(
        "--address-file", metavar="FILE", help="write the bound host:port here once serving"
    )
    srv.add_argument(
        "--realtime-dilation",
        type=float,
        metavar="X",
        help="also sleep modelled cost x X (default 0: never sleep)",
    )
    srv.add_argument(
        "--compress-in",
        metavar="WHERE",
        help="cram: run lz4 in a worker 'process' or a 'thread' of the server "
        "(default 'auto': the process when there is a second core)",
    )
    from tiersim._security import add_server_flags

    add_server_flags(p.add_argument_group("security (required beyond loopback)"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ._server import serve

    cli = {key: getattr(args, attr, None) for attr, key in _FLAGS.items()}
    config, options = load_settings(args.config, cli)
    from tiersim._security import server_security_from_args

    security = server_security_from_args(args)
    security.check_bind(options.host)
    return asyncio.run(serve(config, options, security=security))
