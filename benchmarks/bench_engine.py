"""Engine throughput and footprint, each against a baseline measured in the same run.

    python benchmarks/bench_engine.py [--quick]

1. Accesses per second when nearly every access hits resident DRAM, against
   the bare cost of generating the same accesses (the workload generator and
   one numpy gather of page state per chunk). Target: >= 1,000,000/s. The
   run is long enough (20 M accesses over 65,536 pages) that the first-touch
   faults of the footprint are a few per thousand accesses, not a few per
   hundred: they cost ~20 us each and would otherwise be what is measured.
2. Demotions into a compressed node per second through the engine's
   migration path (demote_folio_list: frame accounting, content bytes, the
   NodeClient seam, the device's lz4), in-process and with the node in
   another process over gRPC, against a raw lz4 loop over the same pages.
   Target: >= 100,000/s in-process.
3. Memory of a run holding 1,000,000 pages: page-table bytes per page
   (target <= 64) and the growth of peak RSS.

These are figures to read, not assertions: the machine may be busy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lz4.block
import numpy as np

from tiersim.orchestrator._pages import PS_MAPPED
from tiersim.orchestrator.engine import Simulation
from tiersim.orchestrator.migrate import demote_folio_list
from tiersim.orchestrator.page_alloc import take_frame
from tiersim.orchestrator.scenario import loads_scenario
from tiersim.orchestrator.workloads import make_workload

RESIDENT = """
[scenario]
name = "bench-resident"
description = "bench"
question = "bench"
seed = 1
duration = "1000s"
[[hosts]]
name = "h0"
[[nodes]]
name = "dram0"
kind = "dram"
host = "h0"
capacity = "{dram}"
[[cgroups]]
name = "app"
[[workloads]]
name = "w"
host = "h0"
cgroup = "app"
footprint = "{footprint}"
accesses = {accesses}
[workloads.pattern]
kind = "zipf"
alpha = 0.8
write_ratio = 0.2
"""

DEMOTE = """
[scenario]
name = "bench-demote"
description = "bench"
question = "bench"
seed = 1
duration = "1000s"
[[hosts]]
name = "h0"
[[nodes]]
name = "dram0"
kind = "dram"
host = "h0"
capacity = "1GiB"
[[nodes]]
name = "cram0"
kind = "cram"
host = "h0"
advertised = "2GiB"
physical = "1GiB"
{address}
[tunables]
demotion_enabled = true
[[cgroups]]
name = "app"
[[workloads]]
name = "w"
host = "h0"
cgroup = "app"
footprint = "{footprint}"
accesses = 1
[workloads.pattern]
kind = "uniform"
"""


def run_config(text: str):  # type: ignore[no-untyped-def]
    return loads_scenario(text).variants[0]


def bench_resident(pages: int, accesses: int) -> None:
    mib = pages * 4096 // (1 << 20)
    cfg = run_config(
        RESIDENT.format(dram=f"{mib * 2 + 64}MiB", footprint=f"{mib}MiB", accesses=accesses)
    )
    sim = Simulation(cfg)
    asyncio.run(sim.run())
    # The event loop's time: building the cluster (content templates, device
    # models) is set-up, not access handling.
    wall = sim.loop_wall_s
    proc = sim.mm.procs[0]
    faults = sum(h.vmstat["pgfault"] for h in sim.mm.hosts)
    # Baseline: generate the same accesses and gather page state for each.
    wl = make_workload(dict(cfg.workloads[0].pattern), pages, 1)
    state = np.zeros(pages, dtype=np.uint8)
    t1 = time.perf_counter()
    done = 0
    while done < accesses:
        chunk = wl.next_chunk(min(4096, accesses - done))
        state[chunk.pages] |= 1
        done += len(chunk.pages)
    base = time.perf_counter() - t1
    print(
        f"[resident] {proc.accesses:,} accesses ({faults:,} faults, "
        f"{faults / proc.accesses:.2%} of accesses) in {wall:.2f}s: "
        f"{proc.accesses / wall:,.0f} accesses/s (target >= 1,000,000)"
    )
    print(
        f"[resident] baseline generate+gather: {accesses / base:,.0f}/s; "
        f"engine/baseline = {base / wall:.2f}"
    )


async def _demote(sim: Simulation, n: int) -> tuple[float, int]:
    await sim.build()
    mm = sim.mm
    host = mm.hosts[0]
    dram = host.cpu_nodes[0]
    for page in range(n):
        take_frame(mm, dram)
        mm.pages.state[page] = PS_MAPPED
        mm.pages.node[page] = dram
        mm.lru.add_head(mm.lru_lists(dram, 0)[0], page)
    pages = list(range(n))
    t0 = time.perf_counter()
    demoted = 0
    for i in range(0, n, 32):
        moved, _failed, _ = await demote_folio_list(mm, pages[i : i + 32], dram, host)
        demoted += len(moved)
    wall = time.perf_counter() - t0
    for c in sim._clients:
        await c.close()
    return wall, demoted


async def _device_store(n: int, datas: list[bytes]) -> float:
    """Seconds to store `datas` on a fresh cram node as demotions do (batches of 32)."""
    mib = n * 4096 // (1 << 20) + 1
    sim = Simulation(run_config(DEMOTE.format(address="", footprint=f"{mib}MiB")))
    await sim.build()
    mm = sim.mm
    client = mm.nodes[mm.node_by_name["cram0"]].client
    check = mm.tunables.cram.safety_check
    t0 = time.perf_counter()
    for i in range(0, n, 32):
        await client.store([(0, d) for d in datas[i : i + 32]], check=check, now_ns=0)
    took = time.perf_counter() - t0
    for c in sim._clients:
        await c.close()
    return took


def bench_demote(n: int) -> None:
    mib = n * 4096 // (1 << 20) + 1
    sim = Simulation(run_config(DEMOTE.format(address="", footprint=f"{mib}MiB")))
    wall, demoted = asyncio.run(_demote(sim, n))
    datas = [sim.mm.page_bytes(p) for p in range(n)]
    t0 = time.perf_counter()
    for d in datas:
        lz4.block.compress(d, store_size=False)
    raw = time.perf_counter() - t0
    print(f"[demote] in-process: {demoted:,} pages in {wall:.2f}s: {demoted / wall:,.0f} pages/s")
    print(f"[demote] raw lz4 loop: {n / raw:,.0f} pages/s; engine/lz4 = {raw / wall:.2f}")
    # Where a demoted page's time goes, each part timed alone over the same pages:
    # the content model's bytes, the device's store (lz4 included) in the batches
    # demote_folio_list sends, and what is left, the engine's own migration work.
    t0 = time.perf_counter()
    for p in range(n):
        sim.mm.page_bytes(p)
    gen = time.perf_counter() - t0
    device = asyncio.run(_device_store(n, datas))
    us = 1e6 / n
    print(
        f"[demote] per page: {wall * us:.1f} us = page bytes {gen * us:.1f} + lz4 {raw * us:.1f}"
        f" + device model {(device - raw) * us:.1f} + engine {(wall - gen - device) * us:.1f}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        addr_file = Path(tmp) / "addr"
        node = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tiersim",
                "--log-level",
                "warning",
                "node",
                "--kind",
                "cram",
                "--advertised",
                "2GiB",
                "--physical",
                "1GiB",
                "--name",
                "cram0",
                "--address-file",
                str(addr_file),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.time() + 30
            while not addr_file.exists() and time.time() < deadline:
                time.sleep(0.05)
            address = addr_file.read_text().strip()
            sim = Simulation(
                run_config(DEMOTE.format(address=f'address = "{address}"', footprint=f"{mib}MiB"))
            )
            gwall, gdemoted = asyncio.run(_demote(sim, n))
        finally:
            node.terminate()
            node.wait(10)
    print(
        f"[demote] over gRPC (node in another process): {gdemoted / gwall:,.0f} pages/s; "
        f"grpc/in-process = {(gdemoted / gwall) / (demoted / wall):.2f}"
    )


def bench_footprint(pages: int) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mib = pages * 4096 // (1 << 20)
    cfg = run_config(
        RESIDENT.format(dram=f"{mib + 256}MiB", footprint=f"{mib}MiB", accesses=pages).replace(
            'kind = "zipf"\nalpha = 0.8', 'kind = "scan"'
        )
    )
    sim = Simulation(cfg)
    t0 = time.perf_counter()
    asyncio.run(sim.run())
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    per_page = sim.mm.pages.nbytes() / sim.mm.pages.n
    print(
        f"[memory] {sim.mm.pages.n:,} pages touched in {wall:.1f}s; page table "
        f"{sim.mm.pages.nbytes() / 2**20:.1f} MiB = {per_page:.0f} bytes/page (target <= 64)"
    )
    print(
        f"[memory] peak RSS grew by {(after - before) / 1024:.1f} MiB "
        f"= {(after - before) * 1024 / pages:.0f} bytes/page overall"
    )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    args = p.parse_args()
    os.environ.setdefault("PYTHONHASHSEED", "0")
    # First, while this process's peak RSS is still small.
    bench_footprint(100_000 if args.quick else 1_000_000)
    bench_resident(8192 if args.quick else 65536, 2_000_000 if args.quick else 20_000_000)
    bench_demote(5_000 if args.quick else 40_000)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
