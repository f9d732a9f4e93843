"""The same scenario and seed give identical results: twice in-process, and
in-process versus over gRPC with every node a separate `tiersim node` process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sim_helpers import run_text
from tiersim.orchestrator.results import strip_wall_clock

NODES = [
    # name, kind, advertised, physical, seed
    ("dram0", "dram", "8MiB", None, 11),
    ("cram0", "cram", "8MiB", "2MiB", 12),
    ("swap0", "storage", "128MiB", None, 13),
]

SCENARIO = """
[scenario]
name = "det"
description = "determinism"
question = "same inputs, same outputs?"
seed = 5
duration = "1s"

[[hosts]]
name = "h0"

{nodes}

[tunables]
demotion_enabled = true
[tunables.zswap]
enabled = true
max_pool_percent = 10

[[cgroups]]
name = "app"

[[workloads]]
name = "w"
host = "h0"
cgroup = "app"
footprint = "16MiB"
content = "default"
accesses = 20000
[workloads.pattern]
kind = "zipf"
alpha = 0.9
write_ratio = 0.3
think = "1us"
"""


def node_table(
    name: str, kind: str, adv: str, phys: str | None, seed: int, addr: str | None
) -> str:
    lines = ["[[nodes]]", f'name = "{name}"', f'kind = "{kind}"', 'host = "h0"']
    if kind == "cram":
        lines += [f'advertised = "{adv}"', f'physical = "{phys}"']
    else:
        lines.append(f'capacity = "{adv}"')
    if addr:
        lines.append(f'address = "{addr}"')
    else:
        lines += ["[nodes.options]", f"seed = {seed}"]
    return "\n".join(lines)


def scenario(addresses: dict[str, str] | None = None) -> str:
    tables = [node_table(n, k, a, p, s, (addresses or {}).get(n)) for n, k, a, p, s in NODES]
    return SCENARIO.format(nodes="\n\n".join(tables))


@pytest.fixture
def node_processes(tmp_path: Path) -> Iterator[dict[str, str]]:
    procs: list[subprocess.Popen[bytes]] = []
    addresses: dict[str, str] = {}
    try:
        for name, kind, adv, phys, seed in NODES:
            addr_file = tmp_path / f"{name}.addr"
            cmd = [
                sys.executable, "-m", "tiersim", "--log-level", "warning", "node",
                "--kind", kind, "--name", name, "--advertised", adv, "--seed", str(seed),
                "--address-file", str(addr_file),
            ]  # fmt: skip
            if phys:
                cmd += ["--physical", phys]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
            deadline = time.monotonic() + 30
            while not addr_file.exists():
                assert time.monotonic() < deadline, f"{name} did not start"
                assert procs[-1].poll() is None, f"{name} exited early"
                time.sleep(0.05)
            addresses[name] = addr_file.read_text().strip()
        yield addresses
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert p.wait(timeout=20) == 0


def test_same_seed_same_results_in_process() -> None:
    a = run_text(scenario())[0]
    b = run_text(scenario())[0]
    assert a["latency"]["count"] == 20000
    assert strip_wall_clock(a) == strip_wall_clock(b)


def test_different_seed_differs() -> None:
    a = run_text(scenario())[0]
    b = run_text(scenario(), {"scenario.seed": 6})[0]
    assert strip_wall_clock(a)["latency"] != strip_wall_clock(b)["latency"]


def test_in_process_and_over_grpc_are_identical(node_processes: dict[str, str]) -> None:
    embedded = run_text(scenario())[0]
    remote = run_text(scenario(node_processes))[0]
    # The run exercised every path through the seam.
    vm = embedded["hosts"]["h0"]["vmstat"]
    assert vm["pgdemote_kswapd"] + vm["pgdemote_direct"] > 0
    assert vm["zswpout"] > 0 and vm["pswpout"] + vm["zswpwb"] > 0
    assert strip_wall_clock(embedded) == strip_wall_clock(remote)
