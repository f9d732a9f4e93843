"""What the reference guest's kernel threads pay per page, fitted from its recordings.

Under TCG every kind of kernel work is slowed by its own factor: a page
fault, full of exceptions and TLB refills, ~70-100 times; lz4, a tight loop,
far less; a page migration, with its unmap, TLB flush and copy, more. One
scale for all of it (``kernel_cpu_scale``, taken from the guest's first
touches) makes kswapd slow where it compresses and fast where it demotes.

Recordings that carry the kernel threads' CPU time (``kthreads.*``, from
their ``schedstat``) let the costs be measured instead. Over every such run
of the library, kswapd's CPU time is fitted (least squares) as

    cpu = scan * pgscan_kswapd + demote * pgdemote_kswapd
          + swapout * (pgsteal_kswapd - pgdemote_kswapd)

-- pages looked at on the LRU (those skipped for their zone included), pages
demoted, pages swapped out (to zswap in these workloads) -- and the three
costs become the guest host's ``kthread_costs`` in the translated scenario:
tiersim charges them, in the guest's nanoseconds, for the work its own
kswapd does (CpuCosts.reclaim_scan_ns and reclaim_skip_ns, migrate_page_ns,
lz4 per byte): what a page isolated and reclaimed costs beyond a page passed
over is part of the demotion and swap-out costs.

The workload itself is paced by its own CPU time (translate.py), so nothing
of the guest's kernel threads is counted twice.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .spec import PAGE_SIZE, data_dir, library

# Counters of one run that the fit reads.
_SCAN = "vmstat.pgscan_kswapd"
_DEMOTE = "vmstat.pgdemote_kswapd"
_STEAL = "vmstat.pgsteal_kswapd"


@dataclass(frozen=True)
class KthreadCosts:
    """kswapd's CPU cost per page in the guest, ns, and how well it fits."""

    scan_ns: float  # per page looked at on an LRU list
    demote_ns: float  # per page demoted to a lower tier
    swapout_ns: float  # per page swapped out (zswap_store() and its unmap)
    runs: int  # runs the fit used
    workloads: tuple[str, ...]
    # Root-mean-square error of the fitted CPU time over the runs, relative
    # to their mean CPU time.
    rel_rms: float

    def scenario_costs(self) -> dict[str, float | int]:
        """The host's ``kthread_costs`` table (CpuCosts field names)."""
        return {
            "reclaim_scan_ns": round(self.scan_ns),
            "reclaim_skip_ns": round(self.scan_ns),
            "migrate_page_ns": round(self.demote_ns),
            "lz4_compress_ns_per_byte": round(self.swapout_ns / PAGE_SIZE, 3),
        }


def _runs(doc: Mapping[str, Any]) -> list[tuple[float, float, float, float]]:
    """(scanned, demoted, swapped out, kswapd CPU ns) per run that measured
    its kswapd threads' CPU time."""
    counters = doc.get("counters", {})
    threads = [k for k in counters if k.startswith("kthreads.kswapd")]
    if not threads:
        return []
    cpu_runs = {len(counters[k]["values"]) for k in threads}
    n = int(doc.get("runs", 0))
    if len(cpu_runs) != 1 or not 0 < min(cpu_runs) <= n:
        return []
    measured = cpu_runs.pop()
    # CPU times belong to the last `measured` runs (record.merge() appends
    # newer recordings, which measure them, after older ones).

    def last(key: str) -> list[float]:
        entry = counters.get(key)
        values = [0.0] * n if entry is None else [float(v) for v in entry["values"]]
        return values[len(values) - measured :]

    scan, demote, steal = last(_SCAN), last(_DEMOTE), last(_STEAL)
    cpu = [sum(float(counters[k]["values"][i]) for k in threads) for i in range(measured)]
    return [(scan[i], demote[i], max(0.0, steal[i] - demote[i]), cpu[i]) for i in range(measured)]


def fit_kthread_costs(recordings: Iterable[tuple[str, Mapping[str, Any]]]) -> KthreadCosts | None:
    """Fit kswapd's per-page costs over the runs of `recordings` ((name,
    document) pairs) that measured its CPU time. None when they do not
    determine all three costs (too few runs, or no run that both demotes and
    swaps out), or when a fitted cost comes out negative."""
    rows: list[tuple[float, float, float, float]] = []
    names: list[str] = []
    for name, doc in recordings:
        runs = _runs(doc)
        if runs:
            rows.extend(runs)
            names.append(name)
    if len(rows) < 3:
        return None
    a = np.array([r[:3] for r in rows], dtype=float)
    y = np.array([r[3] for r in rows], dtype=float)
    if np.linalg.matrix_rank(a) < 3:
        return None
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    if (coef < 0).any():
        return None
    rms = float(np.sqrt(np.mean((a @ coef - y) ** 2)))
    return KthreadCosts(
        scan_ns=float(coef[0]),
        demote_ns=float(coef[1]),
        swapout_ns=float(coef[2]),
        runs=len(rows),
        workloads=tuple(names),
        rel_rms=rms / float(np.mean(y)),
    )


@functools.lru_cache(maxsize=8)
def _library_fit(directory: Path) -> KthreadCosts | None:
    docs = []
    for name in sorted(library()):
        path = directory / f"{name}.json"
        if path.exists():
            docs.append((name, json.loads(path.read_text())))
    return fit_kthread_costs(docs)


def library_kthread_costs(directory: Path | None = None) -> KthreadCosts | None:
    """The fit over the library workloads' recordings in `directory` (default:
    the library's own data)."""
    return _library_fit((directory or data_dir()).resolve())
