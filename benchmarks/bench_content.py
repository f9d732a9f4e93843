"""Throughput of content generation and workload access generation.

Content: pages/s of ``page()`` for the default mix and some single classes,
next to two baselines measured in the same run on the same machine:
slicing 4 KiB ``bytes`` out of a preallocated buffer (the floor for producing
a fresh page object in Python) and lz4-compressing the generated pages (what
every page the engine moves to a compressed tier costs anyway). Generation
should be within a small factor of slicing and well below compression.

Workloads: accesses/s of ``next_chunk(4096)`` for each kind.

Run: ``python benchmarks/bench_content.py [--pages N] [--footprint PAGES]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import lz4.block
import numpy as np

from tiersim.orchestrator.content import PAGE_SIZE, make_content
from tiersim.orchestrator.workloads import Workload, make_workload


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Fastest wall time of ``repeat`` runs: the least disturbed by other load."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_content(pages: int) -> None:
    print(f"content: {pages:,} pages each, best of 3")
    rows: list[tuple[str, float]] = []

    buf = np.random.default_rng(0).bytes(PAGE_SIZE * 1024)

    def slicing() -> None:
        for i in range(pages):
            off = (i & 1023) * PAGE_SIZE
            _ = buf[off : off + PAGE_SIZE]

    rows.append(("baseline: slice bytes from a buffer", pages / best_of(slicing)))

    for spec in ("default", "text", "heap", "random", "ratio4", "same-filled", "zero"):
        model = make_content(spec, seed=1)
        page = model.page

        def generate(page: Callable[[int, int], bytes] = page) -> None:
            for i in range(pages):
                page(i, 1)

        rows.append((f"{spec}.page()", pages / best_of(generate)))

    model = make_content("default", seed=1)
    sample = [model.page(i, 1) for i in range(min(pages, 20_000))]
    compress = lz4.block.compress

    def compress_all() -> None:
        for p in sample:
            compress(p, store_size=False)

    rows.append(("baseline: lz4 compress (default mix)", len(sample) / best_of(compress_all)))

    base = rows[0][1]
    for label, rate in rows:
        print(
            f"  {label:40s} {rate:12,.0f} pages/s  {1e6 / rate:6.2f} us/page  x{base / rate:5.1f}"
        )


def bench_workloads(footprint: int, chunks: int) -> None:
    print(f"workloads: next_chunk(4096) x {chunks}, footprint {footprint:,} pages")
    specs = {
        "uniform": {"kind": "uniform", "write_ratio": 0.2, "think_ns": 1000},
        "zipf": {"kind": "zipf", "alpha": 0.9, "write_ratio": 0.2, "think_ns": 1000},
        "scan": {"kind": "scan", "write_ratio": 0.2, "think_ns": 1000},
        "shifting": {"kind": "shifting", "write_ratio": 0.2, "think_ns": 1000},
    }
    for name, spec in specs.items():
        t0 = time.perf_counter()
        w = make_workload(spec, footprint, seed=1)
        build = time.perf_counter() - t0

        def run(w: Workload = w) -> None:
            for _ in range(chunks):
                w.next_chunk(4096)

        rate = chunks * 4096 / best_of(run)
        print(f"  {name:10s} {rate:14,.0f} accesses/s   (build {build * 1e3:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=200_000, help="pages per content run")
    parser.add_argument("--footprint", type=int, default=1 << 20, help="workload footprint")
    parser.add_argument("--chunks", type=int, default=200, help="chunks per workload run")
    args = parser.parse_args()
    bench_content(args.pages)
    bench_workloads(args.footprint, args.chunks)


if __name__ == "__main__":
    main()
