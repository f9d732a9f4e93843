"""Page migrations per second across network-namespace hosts, against loopback, in one run.

    sudo python benchmarks/bench_netns.py [--accesses N] [--repeat R] [--rate 1gbit]

One migration-heavy scenario (a host whose DRAM holds a third of its
process; writes to pages demoted to a compressed node promote them back, so
pages cross between DRAM and the compressed node all run long) is run:

1. embedded: every node in the orchestrator's process (no wire at all);
2. loopback: nodes as local processes started by the launcher, 127.0.0.1;
3. netns: each node on its own namespace host (deploy/netns/netns-hosts.sh),
   the orchestrator in another, every page over veth pairs and a bridge;
4. netns + tbf (with --rate): the same with each host link limited.

Migrations are the results' pgmigrate_success (demotions and promotions);
the time is the run's own wall_time_s (start-up of the interpreter aside).
All runs must give identical simulated results; the benchmark checks that.
Best of --repeat runs per setting. Figures to read, not assertions: the
machine may be busy. Needs root (namespaces).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tiersim.orchestrator.launcher import (
    ClusterSpec,
    HostSpec,
    Launcher,
    bind_scenario,
    cluster_from_scenario,
)
from tiersim.orchestrator.results import strip_wall_clock

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "netns" / "netns-hosts.sh"

SCENARIO = """
[scenario]
name = "bench-netns"
description = "Pages cross between DRAM and a compressed node all run long."
question = "How fast do pages migrate over a network compared with loopback?"
seed = 9
duration = "1000s"

[[hosts]]
name = "host0"

[[nodes]]
name = "dram0"
kind = "dram"
host = "host0"
capacity = "16MiB"

[[nodes]]
name = "cram0"
kind = "cram"
host = "host0"
advertised = "128MiB"
physical = "64MiB"

[[nodes]]
name = "swap0"
kind = "storage"
host = "host0"
capacity = "256MiB"

[tunables]
demotion_enabled = true

[tunables.cram]
tier_enabled = true

[[cgroups]]
name = "app"

[[workloads]]
name = "app"
host = "host0"
cgroup = "app"
footprint = "48MiB"
content = "default"
accesses = {accesses}

[workloads.pattern]
kind = "uniform"
write_ratio = 0.5
think = "1us"
"""


def tiersim(*args: str, netns: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "tiersim", "--log-level", "warning", *args]
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def run(scenario: Path, out: Path, netns: str | None = None) -> dict[str, Any]:
    done = subprocess.run(
        tiersim("run", str(scenario), "--quiet", "--no-progress", "--json", str(out), netns=netns),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise SystemExit(f"run failed:\n{done.stderr[-3000:]}")
    doc: dict[str, Any] = json.loads(out.read_text())["runs"][0]
    return doc


def best(scenario: Path, out: Path, repeat: int, netns: str | None = None) -> dict[str, Any]:
    docs = [run(scenario, out, netns) for _ in range(repeat)]
    return min(docs, key=lambda d: d["wall_time_s"])


def migrations(doc: dict[str, Any]) -> int:
    return sum(h["vmstat"].get("pgmigrate_success", 0) for h in doc["hosts"].values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accesses", type=int, default=150_000, help="accesses of the workload")
    ap.add_argument("--repeat", type=int, default=2, help="runs per setting; the best counts")
    ap.add_argument("--rate", help="also run with host links limited by tbf, e.g. 1gbit")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_netns: needs root to build network namespaces", file=sys.stderr)
        return 1

    prefix = "b" + secrets.token_hex(3)
    subnet = "198.18.102"
    rows: list[tuple[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-netns-") as tmp:
        work = Path(tmp)
        scenario = work / "bench.toml"
        scenario.write_text(SCENARIO.replace("{accesses}", str(args.accesses)))
        out = work / "out.json"
        rows.append(("embedded (in-process)", best(scenario, out, args.repeat)))

        local = Launcher(work / "loopback")
        spec = cluster_from_scenario(scenario)
        try:
            bound = work / "loopback.toml"
            bound.write_text(bind_scenario(scenario, local.start(spec), devices=local.devices()))
            rows.append(("loopback 127.0.0.1", best(bound, out, args.repeat)))
        finally:
            local.stop()

        subprocess.run(
            ["bash", str(SCRIPT), "up", "--hosts", "3", "--prefix", prefix, "--subnet", subnet],
            check=True,
            capture_output=True,
        )
        try:
            hosts = tuple(
                HostSpec(f"h{i}", f"{subnet}.{10 + i}", f"{prefix}-h{i}", "eth0") for i in (1, 2, 3)
            )
            nodes = tuple(
                dataclasses.replace(n, host=f"h{i + 1}") for i, n in enumerate(spec.nodes)
            )
            netspec = ClusterSpec(name="bench", hosts=hosts, nodes=nodes)
            remote = Launcher(work / "netns")
            try:
                bound = work / "netns.toml"
                bound.write_text(
                    bind_scenario(
                        scenario,
                        remote.start(netspec),
                        devices=remote.devices(),
                        token_file=remote.token_file(),
                    )
                )
                orch = f"{prefix}-orch"
                rows.append(("netns hosts (veth + bridge)", best(bound, out, args.repeat, orch)))
                if args.rate:
                    for h in ("h1", "h2", "h3", "orch"):
                        subprocess.run(
                            ["bash", str(SCRIPT), "rate", h, args.rate, "--prefix", prefix],
                            check=True,
                            capture_output=True,
                        )
                    label = f"netns hosts, tbf {args.rate}"
                    rows.append((label, best(bound, out, args.repeat, orch)))
            finally:
                remote.stop()
        finally:
            subprocess.run(
                ["bash", str(SCRIPT), "down", "--prefix", prefix], capture_output=True, check=False
            )

    reference = strip_wall_clock(rows[0][1])
    same = all(strip_wall_clock(doc) == reference for _, doc in rows)
    loop = next(doc for label, doc in rows if label.startswith("loopback"))
    loop_rate = migrations(loop) / loop["wall_time_s"]
    print(
        f"bench_netns: {args.accesses:,} accesses, best of {args.repeat}; "
        f"simulated results identical in every setting: {same}"
    )
    print(
        f"{'setting':<30} {'wall s':>8} {'migrations':>11} {'migrations/s':>13} {'vs loopback':>12}"
    )
    for label, doc in rows:
        rate = migrations(doc) / doc["wall_time_s"]
        print(
            f"{label:<30} {doc['wall_time_s']:>8.2f} {migrations(doc):>11,} {rate:>13,.0f} "
            f"{rate / loop_rate:>11.2f}x"
        )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
