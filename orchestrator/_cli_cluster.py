"""`tiersim cluster ...` (the local launcher) and `tiersim health ADDRESS`.

The launcher's code is in `launcher.py`; this module only parses arguments
and prints. Imports of gRPC and the launcher are deferred to the command
that needs them, so `tiersim --help` stays fast and `tiersim health`, run
by container health checks every few seconds, loads little.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

_CLUSTER_EPILOG = """\
examples:
  tiersim cluster start deploy/clusters/local3.toml
  tiersim cluster start --scenario default          # nodes as the scenario embeds them
  tiersim cluster status
  tiersim cluster scenario default -o /tmp/bound.toml && tiersim run /tmp/bound.toml
  tiersim run default $(tiersim cluster addresses --format sets)
  tiersim cluster fault cram0 pause
  tiersim cluster logs cram0 -n 20
  tiersim cluster stop

State (pids, logs, addresses.json) lives in --run-dir, default
$TIERSIM_RUN_DIR or ./.tiersim/cluster.
"""


def _run_dir(args: argparse.Namespace) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    return Path(os.environ.get("TIERSIM_RUN_DIR") or ".tiersim/cluster")


def _fail(message: str) -> int:
    print(f"tiersim cluster: error: {message}", file=sys.stderr)
    return 1


def _launcher(args: argparse.Namespace) -> Any:
    from .launcher import Launcher

    return Launcher(_run_dir(args))


def cmd_start(args: argparse.Namespace) -> int:
    from .launcher import ClusterError, cluster_from_scenario, load_cluster

    if bool(args.cluster_file) == bool(args.scenario):
        return _fail("give a cluster file or --scenario (one of them)")
    if args.scenario:
        spec = cluster_from_scenario(args.scenario, variant=args.variant, address=args.address)
    else:
        if args.variant:
            return _fail("--variant applies to --scenario")
        spec = load_cluster(args.cluster_file)
    launcher = _launcher(args)
    t0 = time.monotonic()
    try:
        addresses = launcher.start(spec, timeout=args.timeout)
    except ClusterError as exc:
        return _fail(str(exc))
    took = time.monotonic() - t0
    if not args.quiet:
        print(f"cluster {spec.name!r}: {len(addresses)} nodes healthy in {took:.1f} s")
        for name, address in addresses.items():
            print(f"  {name:<16} {address}")
        print(f"addresses: {launcher.addresses_path}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from .launcher import ClusterError

    try:
        stopped = _launcher(args).stop(grace=args.grace)
    except ClusterError as exc:
        return _fail(str(exc))
    if not args.quiet:
        print(f"stopped {len(stopped)} nodes: {', '.join(stopped)}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .launcher import ClusterError

    launcher = _launcher(args)
    try:
        rows = launcher.status(health_timeout=args.timeout)
        name = launcher.spec().name
    except ClusterError as exc:
        return _fail(str(exc))
    healthy = all(r.state == "running" and r.health == "SERVING" for r in rows)
    if args.json:
        print(
            json.dumps(
                {"cluster": name, "healthy": healthy, "nodes": [r.as_dict() for r in rows]},
                indent=2,
            )
        )
    else:
        print(f"cluster {name!r} in {launcher.run_dir}: {'healthy' if healthy else 'DEGRADED'}")
        print(
            f"  {'node':<12} {'kind':<8} {'host':<10} {'address':<22} {'pid':>7}  "
            f"{'state':<8} {'link':<5} health"
        )
        for r in rows:
            print(
                f"  {r.name:<12} {r.kind:<8} {r.host:<10} {r.address:<22} {r.pid:>7}  "
                f"{r.state:<8} {r.link or '-':<5} {r.health or '-'}"
            )
    return 0 if healthy else 1


def cmd_logs(args: argparse.Namespace) -> int:
    from .launcher import ClusterError

    try:
        paths = _launcher(args).log_paths(args.node)
    except ClusterError as exc:
        return _fail(str(exc))
    prefix = len(paths) > 1
    for name, path in paths.items():
        lines = path.read_text(errors="replace").splitlines()
        for line in lines[-args.lines :] if args.lines else lines:
            print(f"{name}| {line}" if prefix else line)
    if not args.follow:
        return 0
    offsets = {n: p.stat().st_size for n, p in paths.items()}
    try:
        while True:
            for name, path in paths.items():
                size = path.stat().st_size if path.exists() else 0
                if size < offsets[name]:
                    offsets[name] = 0  # truncated by a new start
                if size > offsets[name]:
                    with open(path, errors="replace") as f:
                        f.seek(offsets[name])
                        chunk = f.read()
                    offsets[name] = size
                    for line in chunk.splitlines():
                        print(f"{name}| {line}" if prefix else line, flush=True)
            time.sleep(0.25)
    except KeyboardInterrupt:
        return 0


def cmd_fault(args: argparse.Namespace) -> int:
    from .launcher import ClusterError

    try:
        what = _launcher(args).fault(args.node, args.action)
    except ClusterError as exc:
        return _fail(str(exc))
    print(what)
    return 0


def cmd_addresses(args: argparse.Namespace) -> int:
    from .launcher import ClusterError, toml_dumps

    launcher = _launcher(args)
    try:
        addresses = launcher.addresses()
        token_file = launcher.token_file()
    except ClusterError as exc:
        return _fail(str(exc))
    if args.format == "json":
        print(json.dumps(addresses, indent=2))
    elif args.format == "toml":
        print(toml_dumps({"nodes": addresses}), end="")
    else:
        # Word-split by the shell: tiersim run SCENARIO $(tiersim cluster addresses --format sets)
        sets = [f"nodes.{n}.address={a}" for n, a in addresses.items()]
        if token_file:
            sets += [f"nodes.{n}.token_file={token_file}" for n in addresses]
        print(" ".join(f"--set {shlex.quote(s)}" for s in sets))
    return 0


def cmd_scenario(args: argparse.Namespace) -> int:
    from .launcher import ClusterError, bind_scenario

    launcher = _launcher(args)
    try:
        addresses = launcher.addresses()
        devices = None if args.no_check else launcher.devices()
        token_file = launcher.token_file()
    except ClusterError as exc:
        return _fail(str(exc))
    if args.only:
        addresses = {n: a for n, a in addresses.items() if n in args.only}
    text = bind_scenario(
        args.scenario, addresses, devices=devices, overrides=args.set or (), token_file=token_file
    )
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}: nodes {', '.join(sorted(addresses))} bound", file=sys.stderr)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from .launcher import cluster_from_scenario, dump_cluster

    spec = cluster_from_scenario(args.scenario, variant=args.variant, address=args.address)
    text = (
        f"# Nodes of scenario {args.scenario!r}, with the device settings an embedded run uses.\n"
    )
    text += dump_cluster(spec)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from .launcher import check_health

    # --wait: keep asking until every address serves (a job waiting for its nodes).
    deadline = time.monotonic() + (args.wait or 0)
    pending = list(dict.fromkeys(args.address))
    statuses: dict[str, str] = {}
    while True:
        for address in list(pending):
            statuses[address] = check_health(address, timeout=args.timeout, service=args.service)
            if statuses[address] == "SERVING":
                pending.remove(address)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    for address, status in statuses.items():
        if not args.quiet or status != "SERVING":
            print(status if len(statuses) == 1 else f"{address} {status}")
    return 0 if not pending else 1


def register(subparsers: Any) -> None:
    """Add `cluster` and `health` to the tiersim CLI."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--run-dir",
        metavar="DIR",
        help="state directory (default $TIERSIM_RUN_DIR or ./.tiersim/cluster)",
    )
    p = subparsers.add_parser(
        "cluster",
        help="start, inspect, fault and stop memory nodes as local processes",
        description=(
            "The local launcher: memory nodes as processes on loopback or in network namespaces."
        ),
        epilog=_CLUSTER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)

    s = sub.add_parser("start", parents=[common], help="start every node and wait until healthy")
    s.add_argument("cluster_file", nargs="?", help="cluster file (TOML; see deploy/README.md)")
    s.add_argument(
        "--scenario", help="launch the nodes of this scenario file or catalog entry instead"
    )
    s.add_argument("--variant", help="with --scenario: the variant whose node settings to use")
    s.add_argument(
        "--address", default="127.0.0.1", help="with --scenario: address to bind (127.0.0.1)"
    )
    s.add_argument(
        "--timeout", type=float, metavar="S", help="seconds to wait for health (cluster file's)"
    )
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_start)

    s = sub.add_parser("stop", parents=[common], help="stop every node; none is left behind")
    s.add_argument("--grace", type=float, default=5.0, metavar="S", help="SIGTERM to SIGKILL (5 s)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_stop)

    s = sub.add_parser(
        "status", parents=[common], help="processes, links and gRPC health; exit 1 unless all serve"
    )
    s.add_argument("--json", action="store_true")
    s.add_argument(
        "--timeout", type=float, default=2.0, metavar="S", help="health-check deadline (2 s)"
    )
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("logs", parents=[common], help="print node logs")
    s.add_argument("node", nargs="?", help="one node (default: all, prefixed)")
    s.add_argument("-n", "--lines", type=int, default=50, help="last N lines (0: all)")
    s.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    s.set_defaults(func=cmd_logs)

    s = sub.add_parser(
        "fault",
        parents=[common],
        help="kill, pause, resume, cut, heal or restart a node",
        description=(
            "kill: SIGKILL. pause/resume: SIGSTOP/SIGCONT. cut/heal: take the node's host link "
            "down/up (network-namespace hosts). restart: kill, then start it again empty on the "
            "same address."
        ),
    )
    s.add_argument("node")
    s.add_argument("action", choices=["kill", "pause", "resume", "cut", "heal", "restart"])
    s.set_defaults(func=cmd_fault)

    s = sub.add_parser(
        "addresses", parents=[common], help="print node addresses (json, toml or --set flags)"
    )
    s.add_argument("--format", choices=["json", "toml", "sets"], default="json")
    s.set_defaults(func=cmd_addresses)

    s = sub.add_parser(
        "scenario",
        parents=[common],
        help="write a scenario with its nodes pointed at the running cluster",
        description=(
            "Write SCENARIO with `address` set for every node of the running cluster (and its "
            "[nodes.options] removed: the running node carries them). Each variant is first "
            "checked to model the same devices as the running nodes."
        ),
    )
    s.add_argument("scenario", help="scenario file or catalog name")
    s.add_argument("-o", "--output", metavar="FILE", help="where to write (default stdout)")
    s.add_argument("--only", action="append", metavar="NODE", help="bind only these nodes")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="overrides the run will use")
    s.add_argument("--no-check", action="store_true", help="skip the device-settings check")
    s.set_defaults(func=cmd_scenario)

    s = sub.add_parser("init", help="write a cluster file with the nodes of a scenario")
    s.add_argument("--scenario", required=True)
    s.add_argument("--variant")
    s.add_argument("--address", default="127.0.0.1")
    s.add_argument("-o", "--output", metavar="FILE")
    s.set_defaults(func=cmd_init)

    h = subparsers.add_parser(
        "health",
        help="gRPC health check of a node: exit 0 when SERVING",
        description=(
            "Ask each ADDRESS (host:port) the standard gRPC health service (grpc.health.v1); "
            "exit 0 when all answer SERVING. Used by container health checks and by jobs that "
            "wait for their nodes."
        ),
    )
    h.add_argument("address", nargs="+", help="host:port of a node (several: all must serve)")
    h.add_argument(
        "--timeout", type=float, default=2.0, metavar="S", help="deadline of one check (2 s)"
    )
    h.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="S",
        help="retry for up to S seconds until serving",
    )
    h.add_argument("--service", default="", help="service name ('' = the whole server)")
    h.add_argument("--quiet", action="store_true", help="print only when not SERVING")
    h.set_defaults(func=cmd_health)
