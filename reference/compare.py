"""tiersim against the kernel, counter by counter.

A counter agrees when tiersim's value lies in the kernel's observed range
widened by `REL_TOLERANCE` (10 %) on each side, or within `SLACK_PAGES` pages
of it (counts of a few pages are noise: one page more or less reclaimed
before the counters were read). Byte-valued counters get the same slack in
bytes.

tiersim's results document (`tiersim.orchestrator.engine.run`) keeps
counters per host: ``hosts[h]["vmstat"]`` (``zswpout``, ``pgdemote_kswapd``
...) and ``hosts[h]["zswap"]`` (``stored_pages``, ``pool_total_size`` ...),
and per cgroup ``cgroups["<host>/<cgroup>"]``. `tiersim_counters` flattens
them under the names a recording uses.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .image import CGROUP_NAME, HOST_NAME, WORKLOAD_NAME
from .kthread_costs import KthreadCosts
from .spec import PAGE_SIZE, ReferenceWorkload
from .translate import to_run_config

REL_TOLERANCE = 0.10
SLACK_PAGES = 8

# The counters the acceptance criterion names, compared by default.
CHECKED = (
    "vmstat.zswpout",
    "vmstat.zswpin",
    "vmstat.zswpwb",
    "zswap.stored_pages",
    "zswap.pool_total_size",
    "vmstat.pgdemote_kswapd",
    "vmstat.pgdemote_direct",
    "vmstat.pgpromote_success",
    "workload.completed",
)
# Shown for context, not judged.
INFORMATIVE = (
    "vmstat.pswpout",
    "vmstat.pswpin",
    "vmstat.swpout_zero",
    "zswap.written_back_pages",
    "zswap.pool_limit_hit",
    "zswap.stored_incompressible_pages",
    "zswap.reject_compress_poor",
    "zswap.reject_compress_fail",
    "zswap.reject_reclaim_fail",
    "vmstat.numa_hint_faults",
    "vmstat.pgpromote_candidate",
    "vmstat.pgmajfault",
    "vmstat.swap_ra",
    "vmstat.swap_ra_hit",
    "vmstat.numa_miss",
    "vmstat.oom_kill",
    "memory.events.oom_kill",
    "cgroup.memory.zswap.current",
    "cgroup.memory.current",
    # Slots of swapped-out pages: zswap entries and swap-cached pages hold one too.
    "cgroup.memory.swap.current",
    "vmstat.pgscan_kswapd",
    "vmstat.pgsteal_kswapd",
    "vmstat.pgscan_direct",
    "vmstat.pgsteal_direct",
    # CPU time of each node's kswapd (recordings since they were measured).
    "kthreads.kswapd0",
    "kthreads.kswapd1",
)
BYTE_COUNTERS = frozenset(
    {
        "zswap.pool_total_size",
        "cgroup.memory.zswap.current",
        "cgroup.memory.current",
        "cgroup.memory.swap.current",
    }
)
# Outcomes, not counts: no tolerance (a workload the kernel killed must be killed).
EXACT = frozenset({"workload.completed"})
# Whole sets of counters that only matter when the workload uses the mechanism.
_ZSWAP = ("vmstat.zswp", "zswap.")
_TIERS = ("vmstat.pgdemote", "vmstat.pgpromote", "vmstat.numa_hint")


def tiersim_counters(results: Mapping[str, Any], host: str = HOST_NAME) -> dict[str, int]:
    """Flatten a tiersim results document into recording counter names."""
    h = results["hosts"][host]
    out: dict[str, int] = {}
    for k, v in (h.get("vmstat") or {}).items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[f"vmstat.{k}"] = int(v)
    for k, v in (h.get("zswap") or {}).items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[f"zswap.{k}"] = int(v)
    cg = (results.get("cgroups") or {}).get(f"{host}/{CGROUP_NAME}") or {}
    for k in ("memory.current", "memory.peak", "memory.zswap.current", "memory.swap.current"):
        if isinstance(cg.get(k), int):
            out[f"cgroup.{k}"] = int(cg[k])
    for k, v in (cg.get("memory.stat") or {}).items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[f"memory.stat.{k}"] = int(v)
    for k, v in (cg.get("memory.events") or {}).items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[f"memory.events.{k}"] = int(v)
    for k, v in (h.get("kthreads") or {}).items():
        if isinstance(v, int):
            out[f"kthreads.{k}"] = v
    procs = results.get("workloads") or {}
    proc = procs.get(WORKLOAD_NAME)
    if isinstance(proc, Mapping):
        out["workload.completed"] = 0 if proc.get("killed") else 1
        if isinstance(proc.get("accesses"), int):
            out["workload.accesses"] = int(proc["accesses"])
    return out


@dataclass(frozen=True)
class Row:
    counter: str
    kernel_min: int
    kernel_max: int
    tiersim: int | None
    checked: bool

    @property
    def slack(self) -> int:
        if self.counter in EXACT:
            return 0
        return SLACK_PAGES * (PAGE_SIZE if self.counter in BYTE_COUNTERS else 1)

    @property
    def tolerance(self) -> float:
        return 0.0 if self.counter in EXACT else REL_TOLERANCE

    @property
    def low(self) -> float:
        return self.kernel_min * (1 - self.tolerance) - self.slack

    @property
    def high(self) -> float:
        return self.kernel_max * (1 + self.tolerance) + self.slack

    @property
    def ok(self) -> bool | None:
        if self.tiersim is None:
            return None
        return self.low <= self.tiersim <= self.high

    @property
    def ratio(self) -> float | None:
        """tiersim over the middle of the kernel's range (nan when both are 0)."""
        if self.tiersim is None:
            return None
        mid = (self.kernel_min + self.kernel_max) / 2
        if mid == 0:
            return 1.0 if self.tiersim == 0 else math.inf
        return self.tiersim / mid

    @property
    def position(self) -> str:
        """Where tiersim falls: below, in, or above the kernel's (unwidened) range."""
        if self.tiersim is None:
            return "n/a"
        if self.tiersim < self.kernel_min:
            return "below"
        if self.tiersim > self.kernel_max:
            return "above"
        return "in"


def relevant(counter: str, w: ReferenceWorkload | None) -> bool:
    if w is None:
        return True
    if counter.startswith(_ZSWAP) and not w.zswap.enabled:
        return False
    return not (counter.startswith(_TIERS) and not w.tiered)


def compare(
    kernel: Mapping[str, Any],
    tiersim: Mapping[str, int],
    *,
    workload: ReferenceWorkload | None = None,
    counters: Sequence[str] | None = None,
) -> list[Row]:
    """Rows for the checked counters (and informative ones the recording has)."""
    recorded = kernel.get("counters", {})
    rows = []
    names = list(counters) if counters is not None else [*CHECKED, *INFORMATIVE]
    for name in names:
        entry = recorded.get(name)
        if entry is None or not relevant(name, workload):
            continue
        checked = name in CHECKED if counters is None else True
        rows.append(Row(name, int(entry["min"]), int(entry["max"]), tiersim.get(name), checked))
    return rows


def failures(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.checked and r.ok is False]


def run_tiersim(
    w: ReferenceWorkload,
    data: Mapping[str, Any] | None = None,
    *,
    guest_time: bool | None = None,
    overrides: Mapping[str, object] | None = None,
    kthread_costs: KthreadCosts | None = None,
) -> dict[str, Any]:
    """Run tiersim's engine on the translated scenario (with scenario keys
    `overrides` set); return its results document."""
    from tiersim.orchestrator.engine import run

    config = to_run_config(
        w, data, guest_time=guest_time, overrides=overrides, kthread_costs=kthread_costs
    )
    results: dict[str, Any] = asyncio.run(run(config))
    return results


def _fmt(n: float | None) -> str:
    if n is None:
        return "-"
    if isinstance(n, float) and not math.isfinite(n):
        return "inf"
    return f"{n:,.0f}" if abs(n) >= 1000 or float(n).is_integer() else f"{n:.2f}"


def render(rows: Sequence[Row], title: str = "") -> str:
    """A plain-text table: counter, kernel range, tiersim, ratio, verdict."""
    header = ("counter", "kernel min", "kernel max", "tiersim", "ratio", "")
    body = []
    for r in rows:
        ratio = "-" if r.ratio is None else ("inf" if math.isinf(r.ratio) else f"{r.ratio:.2f}")
        if not r.checked:
            verdict = "(info)"
        elif r.ok is None:
            verdict = "missing"
        else:
            verdict = "ok" if r.ok else f"OUT ({r.position})"
        body.append(
            (r.counter, _fmt(r.kernel_min), _fmt(r.kernel_max), _fmt(r.tiersim), ratio, verdict)
        )
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [title] if title else []
    for i, row in enumerate([header, *body]):
        cells = [row[0].ljust(widths[0])] + [c.rjust(widths[j]) for j, c in enumerate(row) if j]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
