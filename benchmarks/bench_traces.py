"""Trace conversion throughput, against a plain line count of the same file in the same run.

    python benchmarks/bench_traces.py [--lines N] [--trace FILE] [--record]

The input is a lackey trace: a synthetic one of ``--lines`` lines in
lackey's exact format and proportions (about three instruction fetches per
data access, as measured on /bin/true and ls), a file given with
``--trace``, or, with ``--record``, the output of ``ls -lR /usr/share/doc``
under valgrind. Measured, best of three:

1. baseline: counting the file's lines in Python (``for line in f``), the
   least any line-oriented Python converter must do;
2. baseline: counting newlines in 8 MiB blocks (``bytes.count``), the I/O floor;
3. ``traces.convert`` to the binary format, instruction fetches dropped
   (the default) and kept.

Conversion at or above the Python line count means the parser costs less
than looking at each line once. Also printed: ``trace info`` and replay
speed (accesses per second out of the trace workload). Figures to read, not
assertions: the machine may be busy.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tiersim.orchestrator import traces
from tiersim.orchestrator.workloads import make_workload


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def synthetic_lackey(path: Path, lines: int, seed: int = 0) -> None:
    """Lines in lackey's format: code around 0x0400_0000, stack near 0x1fff_0000_00, heap."""
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        f.write("==1== Lackey, an example Valgrind tool\n")
        written = 0
        while written < lines:
            n = min(200_000, lines - written)
            kind = rng.choice(4, size=n, p=[0.76, 0.16, 0.07, 0.01])
            code = 0x0400_0000 + rng.integers(0, 1 << 20, n)
            stack = 0x1FFE_FFF0_00 + rng.integers(0, 1 << 14, n)
            heap = 0x0422_0000 + rng.integers(0, 1 << 22, n)
            data = np.where(rng.random(n) < 0.5, stack, heap)
            size = rng.choice([1, 2, 4, 8, 8, 8, 16], size=n)
            out = []
            for k, c, d, s in zip(
                kind.tolist(), code.tolist(), data.tolist(), size.tolist(), strict=True
            ):
                if k == 0:
                    out.append(f"I  {c:08x},{1 + s % 7}")
                else:
                    out.append(f" {'LSM'[k - 1]} {d:010x},{s}")
            f.write("\n".join(out) + "\n")
            written += n
        f.write("==1== Exit code:       0\n")


def record_ls(path: Path) -> None:
    """A real trace: ``ls -lR /usr/share/doc`` under lackey (a few million lines)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--record needs valgrind")
    subprocess.run(
        [
            "valgrind",
            "--tool=lackey",
            "--trace-mem=yes",
            f"--log-file={path}",
            "ls",
            "-lR",
            "/usr/share/doc",
        ],
        stdout=subprocess.DEVNULL,
        check=False,
    )


def count_lines_python(path: Path) -> int:
    n = 0
    with path.open("rb") as f:
        for _ in f:
            n += 1
    return n


def count_lines_blocks(path: Path) -> int:
    n = 0
    with path.open("rb") as f:
        while block := f.read(8 << 20):
            n += block.count(b"\n")
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lines", type=int, default=3_000_000)
    ap.add_argument("--trace", type=Path, help="a lackey trace to use instead of a synthetic one")
    ap.add_argument("--record", action="store_true", help="record ls -lR under valgrind")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        if args.trace:
            src = args.trace
        elif args.record:
            src = d / "ls.lackey"
            record_ls(src)
        else:
            src = d / "synthetic.lackey"
            synthetic_lackey(src, args.lines)
        lines = count_lines_blocks(src)
        size = src.stat().st_size
        print(f"input: {lines:,} lines, {size / 2**20:.1f} MiB ({src.name})")
        rows: list[tuple[str, float]] = []
        rows.append(
            (
                "baseline: Python line count (for line in f)",
                lines / best_of(lambda: count_lines_python(src)),
            )
        )
        rows.append(
            (
                "baseline: newline count in 8 MiB blocks",
                lines / best_of(lambda: count_lines_blocks(src)),
            )
        )
        out = d / "out.tstrace"
        rows.append(
            (
                "convert to binary (fetches dropped)",
                lines / best_of(lambda: traces.convert(src, out)),
            )
        )
        out_i = d / "out_i.tstrace"
        kept = best_of(lambda: traces.convert(src, out_i, instructions=True))
        rows.append(("convert to binary (fetches kept)", lines / kept))
        header = traces.read_header(out)
        print(
            f"trace: {header.records:,} records, {header.pages_touched:,} distinct pages, "
            f"{out.stat().st_size / 2**20:.1f} MiB binary"
        )
        width = max(len(r[0]) for r in rows)
        base = rows[0][1]
        for label, rate in rows:
            print(
                f"  {label:<{width}}  {rate / 1e6:7.2f} M lines/s  ({rate / base:4.2f}x line count)"
            )
        info_s = best_of(lambda: traces.trace_info(out), repeat=1)
        print(f"  trace info on the binary trace: {header.records / info_s / 1e6:.2f} M records/s")
        footprint = header.pages_touched
        w = make_workload({"kind": "trace", "path": str(out)}, footprint)
        n = min(header.records, 2_000_000)

        def replay() -> None:
            w.reset()
            done = 0
            while done < n:
                done += len(w.next_chunk(4096))

        print(f"  replay (trace workload next_chunk): {n / best_of(replay) / 1e6:.2f} M accesses/s")


if __name__ == "__main__":
    main()
