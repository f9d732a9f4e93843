"""The fidelity table: every reference workload, every checked counter, kernel against tiersim.

`KNOWN_GAPS` records where tiersim is known not to match the kernel yet and
why. The fidelity test turns those rows into expected failures (so the
ordinary suite stays green while the engine catches up, and an unexpected
pass shows when a gap closes); everything else must agree. The same reasons
fill the "why" column of the table in ``docs/fidelity.md``, which
``tiersim reference table`` regenerates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .compare import Row, compare, run_tiersim, tiersim_counters
from .spec import data_dir, library, load_workload

_POOL_LIMIT = (
    "After the global limit is hit the kernel writes back 10.2-13.6k entries and ends with "
    "0-1,677 in the pool (six runs). A function trace of one guest run (an earlier session) "
    "shows its "
    "shrink_worker() running 48 times, each calling shrink_memcg() ~30 times (84 in the last "
    "runs) with 16 entries "
    "walked a call, as tiersim's worker now does. With the pool capped as the kernel caps it "
    "(a share of MemTotal, `total_ram`) zswpout and zswpin agree (0.96x, 1.06x), but tiersim "
    "writes back 7.7k (0.65x) and ends with 3.3k entries. Its worker is charged the swap "
    "device's write time for each entry, while the kernel's only starts the write; charging "
    "no device time instead writes back everything (17k, an empty pool), and a swap-cache "
    "folio charged to the cgroup for each entry written back, as the kernel allocates one, "
    "moved the counters further away (tried, not kept). Another trace (`--ftrace shrink_worker "
    "--ftrace shrink_memcg_cb --ftrace zswap_store`) shows why pacing alone cannot match: "
    "46 runs, 16 short ones (480 entries walked in 1-2 ms, rotations of referenced entries) "
    "and then runs walking 1,100-1,600 entries over 0.5-0.8 s of guest time each, the same "
    "again from 8 s on; on the guest's one vCPU the workload shares the CPU with the worker "
    "meanwhile, and the worker reclaims for the folios it writes back through (4,695 of the "
    "run's 30,580 zswap_store calls are the worker's, `tiersim reference trace`). tiersim's "
    "worker starts 61 times in the first 0.5 s and writes back in three "
    "runs (1.1k, 4.1k, 2.3k entries) while the workload goes on at full speed; slowing the "
    "worker 10-30x without slowing the workload writes back almost nothing (0.05-0.12x). "
    "kswapd now shares the host's CPUs with the workload (memory.run_step()); giving the "
    "worker the same share (tried, not kept) wrote back less (6.7k) and left more in the "
    "pool (4.8k), and adding the guest's pace as well left the pool empty but stored 24.2k "
    "(1.19x above the kernel's highest): the worker's cost is mostly the swap device's "
    "write time, which the kernel's worker does not wait for, so its CPU share needs its "
    "own CPU cost, calibrated to the guest, first."
)
_DMA_ZONE = (
    "With the guest's zones (a 3.8k-page DMA zone beside DMA32 on node 0), watermark "
    "boosting and kswapd paced as in the guest, kswapd's demotions (38.0k against "
    "41.5-55.3k), the pool (27.3k entries against 27.4-29.3k) and kswapd's runs (212 against "
    "234-455) agree, but fewer pages take the zswap path (zswpout 74.9k, zswpin 47.6k: "
    "0.81x, 0.73x) and direct reclaim never demotes (node 1 is below its min each time; the "
    "kernel demotes 1.0-2.4k pages from it). tiersim still serves more allocations from the "
    "DMA zone (54k against 25-41k; DMA32 127k against 174-185k) and skips more DMA32 pages "
    "for it (629k against 0.2-0.46M). The kernel's tracepoints (`--trace "
    "vmscan:mm_vmscan_wakeup_kswapd --trace vmscan:mm_vmscan_lru_isolate`, one run) show "
    "263 of node 0's 487 kswapd wake-ups coming from the allocator's slow path and node 0's "
    "kswapd taking 124.6k pages off the LRU for the whole node (classzone 3), 22.9k for "
    "DMA32 and 36.4k for the DMA zone alone (196k DMA32 pages skipped). Keeping the slow "
    "path's request pending for the next run, as kswapd_highest_zoneidx does, moved tiersim "
    "most of the way there (DMA allocations 76k -> 54k, the pool into range)."
)
# (workload, counter) -> why tiersim does not match; "*" as workload means every workload.
KNOWN_GAPS: dict[tuple[str, str], str] = {
    **{
        ("zswap-pool-limit", c): _POOL_LIMIT
        for c in (
            "vmstat.zswpwb",
            "zswap.stored_pages",
            "zswap.pool_total_size",
        )
    },
    **{
        ("zswap-demotion", c): _DMA_ZONE
        for c in (
            "vmstat.zswpout",
            "vmstat.zswpin",
            "vmstat.pgdemote_direct",
        )
    },
}


def known_gap(workload: str, counter: str) -> str | None:
    return KNOWN_GAPS.get((workload, counter)) or KNOWN_GAPS.get(("*", counter))


def gap_labels() -> dict[str, str]:
    """A short label (G1, G2 ...) per distinct reason, in the order of `KNOWN_GAPS`."""
    labels: dict[str, str] = {}
    for reason in KNOWN_GAPS.values():
        labels.setdefault(reason, f"G{len(labels) + 1}")
    return labels


def load_recording(name: str, directory: Path | None = None) -> dict[str, Any] | None:
    path = (directory or data_dir()) / f"{name}.json"
    if not path.exists():
        return None
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def fidelity_rows(
    names: Iterable[str] | None = None, directory: Path | None = None
) -> list[tuple[str, dict[str, Any], list[Row]]]:
    """Run tiersim on each recorded library workload; (name, recording, rows)."""
    out = []
    for name in names or sorted(library()):
        data = load_recording(name, directory)
        if data is None:
            continue
        w = load_workload(name)
        results = run_tiersim(w, data)
        rows = compare(data, tiersim_counters(results), workload=w)
        out.append((name, data, rows))
    return out


def _num(n: float | None) -> str:
    if n is None:
        return "–"
    return f"{n:,.0f}"


def _ratio(r: Row) -> str:
    if r.ratio is None:
        return "–"
    if math.isinf(r.ratio):
        return "∞"
    return f"{r.ratio:.2f}"


def markdown(
    table: Sequence[tuple[str, Mapping[str, Any], Sequence[Row]]], *, checked_only: bool = True
) -> str:
    """The fidelity table as Markdown, one block of rows per workload."""
    lines = [
        "| workload | counter | kernel range | tiersim | ratio | where | agrees | why not |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for name, data, rows in table:
        runs = data.get("runs", "?")
        first = True
        for r in rows:
            if checked_only and not r.checked:
                continue
            if r.kernel_min == r.kernel_max:
                rng = _num(r.kernel_min)
            else:
                rng = f"{_num(r.kernel_min)} – {_num(r.kernel_max)}"
            verdict = "yes" if r.ok else ("no" if r.ok is False else "–")
            reason = known_gap(name, r.counter)
            why = gap_labels()[reason] if reason else ""
            if r.ok and why:
                why += " (closed?)"
            label = f"`{name}` ({runs} runs)" if first else ""
            first = False
            lines.append(
                f"| {label} | `{r.counter}` | {rng} | {_num(r.tiersim)} | {_ratio(r)} | "
                f"{r.position} | {verdict} | {why} |"
            )
    return "\n".join(lines) + "\n"


def markdown_gaps() -> str:
    """One paragraph per reason of `KNOWN_GAPS`, naming the rows it covers."""
    by_reason: dict[str, list[tuple[str, str]]] = {}
    for (workload, counter), reason in KNOWN_GAPS.items():
        by_reason.setdefault(reason, []).append((workload, counter))
    labels = gap_labels()
    out = []
    for reason, rows in by_reason.items():
        workloads = ", ".join(f"`{w}`" for w in sorted({w for w, _ in rows}))
        counters = ", ".join(f"`{c.split('.', 1)[1]}`" for _, c in rows)
        out.append(f"- **{labels[reason]}** — {workloads} ({counters}): {reason}")
    return "\n".join(out) + "\n"


def replace_between(text: str, name: str, body: str) -> str:
    """Replace what lies between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"markers {start} ... {end} not found")
    return text[: i + len(start)] + "\n" + body + text[j:]


def summary(table: Sequence[tuple[str, Mapping[str, Any], Sequence[Row]]]) -> str:
    checked = [r for _, _, rows in table for r in rows if r.checked and r.ok is not None]
    ok = sum(1 for r in checked if r.ok)
    return f"{ok} of {len(checked)} checked counters agree across {len(table)} workloads"
