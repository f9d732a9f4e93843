"""NUMA balancing in memory-tiering mode (kernel/sched/fair.c, mm/memory.c).

The scanner (task_numa_work) periodically makes a window of each process's
address space PROT_NONE, recording the scan time in the page; only pages on
slow-tier nodes are scanned in tiering mode. The next access takes a hint
fault whose latency is now minus that scan time. should_numa_migrate_memory()
then promotes a page from a slow tier when the target has plenty of free
memory, or when the latency is below the hot threshold and the per-node
promotion rate limit allows it. Every 60 s the threshold moves by 125 ms
toward keeping candidates near the rate-limited budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ._pages import F_PROTNONE, F_SWAPCACHE, PS_CRAM_RO, PS_MAPPED

if TYPE_CHECKING:
    from ._mm import Host, Mm, Process

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
NUMA_MIGRATION_ADJUST_STEPS = 16
# kernel/sched/fair.c: scan-period adaptation and the scan-rate cap (MB/s).
NUMA_PERIOD_SLOTS = 10
NUMA_PERIOD_THRESHOLD = 7
MAX_SCAN_WINDOW = 2560
PAGE_SHIFT = 12


@dataclass
class PromoNodeState:
    """The pgdat fields of a promotion target (nbp_*)."""

    threshold_ms: int = 0  # nbp_threshold (0: use the default)
    th_start_ns: int = 0  # nbp_th_start
    th_nr_cand: int = 0  # nbp_th_nr_cand
    rl_start_ns: int = 0  # nbp_rl_start
    rl_nr_cand: int = 0  # nbp_rl_nr_cand
    candidates: int = 0  # PGPROMOTE_CANDIDATE on this node


@dataclass
class PromoState:
    nodes: dict[int, PromoNodeState] = field(default_factory=dict)
    threshold_history: list[tuple[int, int]] = field(default_factory=list)
    # Batched promotion (promote_batch > 1): candidates recorded by hint faults,
    # page -> (target node, default verdict), in fault order; and the pending
    # background step that will decide them.
    queue: dict[int, tuple[int, bool]] = field(default_factory=dict)
    flush: Any = None

    def of(self, nid: int) -> PromoNodeState:
        st = self.nodes.get(nid)
        if st is None:
            st = self.nodes[nid] = PromoNodeState()
        return st


def tiering_mode(mm: Mm) -> bool:
    return bool(mm.tunables.numa.numa_balancing & 2)


def rate_limit_pages(mm: Mm) -> int:
    return mm.tunables.numa.promote_rate_limit_MBps << (20 - PAGE_SHIFT)


def task_scan_min(mm: Mm, proc: Process) -> int:
    """task_scan_min(): the shortest scan period (ms) for the task's size."""
    t = mm.tunables.numa
    windows = max(1, MAX_SCAN_WINDOW // t.scan_size_mb) if t.scan_size_mb < MAX_SCAN_WINDOW else 1
    floor = 1000 // windows
    return max(floor, t.scan_period_min_ms // task_nr_scan_windows(mm, proc))


def task_scan_max(mm: Mm, proc: Process) -> int:
    """task_scan_max() of a task without a NUMA group."""
    smax = mm.tunables.numa.scan_period_max_ms // task_nr_scan_windows(mm, proc)
    return max(task_scan_min(mm, proc), smax)


def task_nr_scan_windows(mm: Mm, proc: Process) -> int:
    """Scan windows in the task's resident set (rss / scan_size, rounded up)."""
    nr_scan_pages = max(1, (mm.tunables.numa.scan_size_mb << 20) >> PAGE_SHIFT)
    return max(1, -(-proc.npages // nr_scan_pages))


def task_numa_fault(mm: Mm, proc: Process, *, local: bool) -> None:
    """task_numa_fault() for a hint fault whose page ended on a top-tier node.

    Tiering mode keeps no statistics for faults that leave the page on slow
    memory (they return early), so only promoted pages count. A fault is
    local only if the page was already on the faulting CPU's node
    (TNF_FAULT_LOCAL): a promoted page came from a CPU-less slow node, so its
    fault is remote. Once per scan pass the task places itself
    (task_numa_placement()), which adapts the scan period to the faults
    counted since (update_task_scan_period()): with no local (or shared)
    fault the period doubles and the next scan is pushed out.
    """
    if proc.numa_placement_seq != proc.numa_scan_seq:
        proc.numa_placement_seq = proc.numa_scan_seq
        update_task_scan_period(mm, proc)
    if local:
        proc.numa_local_faults += 1


def update_task_scan_period(mm: Mm, proc: Process) -> None:
    """update_task_scan_period() for a task whose faults are all private:
    none local doubles the period, any local ones slow it by 3 slots (30 %)."""
    period = proc.numa_scan_period_ms or task_scan_min(mm, proc)
    if proc.numa_local_faults == 0:
        proc.numa_scan_period_ms = min(task_scan_max(mm, proc), period << 1)
        now = max(proc.clock_ns, mm.sched.now_ns)
        proc.numa_next_scan_ns = now + proc.numa_scan_period_ms * NS_PER_MS
        return
    # ps_ratio = 10 (all private) >= NUMA_PERIOD_THRESHOLD: slot = 10 - 7.
    period_slot = -(-period // NUMA_PERIOD_SLOTS)
    diff = (NUMA_PERIOD_SLOTS - NUMA_PERIOD_THRESHOLD) * period_slot
    proc.numa_scan_period_ms = min(
        max(period + diff, task_scan_min(mm, proc)), task_scan_max(mm, proc)
    )
    proc.numa_local_faults = 0


def start_scanner(mm: Mm, proc: Process) -> None:
    """task_numa_work() every scan period, first run after the scan delay.

    The period starts at task_scan_min() and adapts at each pass to the
    task's faults (task_numa_fault()); a pass that finds the
    next scan pushed out (mm->numa_next_scan) waits for it.
    """
    t = mm.tunables.numa
    window = max(1, (t.scan_size_mb << 20) >> PAGE_SHIFT)
    pages = mm.pages

    async def scan() -> None:
        if proc.done or mm.stopped:
            return
        now = mm.sched.now_ns
        if now < proc.numa_next_scan_ns:
            mm.sched.at(proc.numa_next_scan_ns, scan, f"numa_scan{proc.index}")
            return
        if proc.numa_scan_period_ms == 0:
            proc.numa_scan_period_ms = task_scan_min(mm, proc)
        period = proc.numa_scan_period_ms * NS_PER_MS
        proc.numa_next_scan_ns = now + period
        host = mm.hosts[proc.host]
        start = proc.numa_scan_offset
        end = min(start + window, proc.npages)
        lo, hi = proc.base + start, proc.base + end
        state = pages.state_np[lo:hi]
        node = pages.node_np[lo:hi]
        # In tiering mode only pages on slow-tier nodes are made PROT_NONE.
        slow = np.zeros(hi - lo, dtype=bool)
        for nid in host.nodes:
            if not host.tiers.is_toptier(nid):
                slow |= node == nid
        # Only mapped PTEs are scanned: not pages sitting in the swap cache,
        # and not PTEs already PROT_NONE, whose scan time is kept from the
        # pass that marked them (prot_numa_skip() in mm/mprotect.c).
        mapped = (pages.flags_np[lo:hi] & (F_SWAPCACHE | F_PROTNONE)) == 0
        mask = ((state == PS_MAPPED) | (state == PS_CRAM_RO)) & slow & mapped
        idx = np.nonzero(mask)[0] + lo
        if idx.size:
            pages.flags_np[idx] |= F_PROTNONE
            pages.scan_ns_np[idx] = mm.sched.now_ns
            host.vmstat.inc("numa_pte_updates", int(idx.size))
        if end >= proc.npages:
            proc.numa_scan_offset = 0
            proc.numa_scan_seq += 1  # reset_ptenuma_scan()
        else:
            proc.numa_scan_offset = end
        mm.sched.after(period, scan, f"numa_scan{proc.index}")

    mm.sched.after(t.scan_delay_ms * NS_PER_MS, scan, f"numa_scan{proc.index}")


def pgdat_free_space_enough(mm: Mm, nid: int) -> bool:
    """Free above WMARK_PROMO + max(1 GiB, present / 16)."""
    node = mm.nodes[nid]
    enough = max((1 << 30) >> PAGE_SHIFT, node.present_pages >> 4)
    return node.nr_free_pages > node.wmark.promo + enough


def adjust_threshold(mm: Mm, host: Host, nid: int, now_ns: int) -> None:
    """numa_promotion_adjust_threshold()."""
    t = mm.tunables.numa
    st: PromoState = host.promo
    ps = st.of(nid)
    ref_th = t.hot_threshold_ms
    if now_ns - ps.th_start_ns < t.threshold_adjust_period_ms * NS_PER_MS:
        return
    ref_cand = rate_limit_pages(mm) * t.threshold_adjust_period_ms // 1000
    unit_th = ref_th * 2 // NUMA_MIGRATION_ADJUST_STEPS
    diff = ps.candidates - ps.th_nr_cand
    th = ps.threshold_ms or ref_th
    if diff > ref_cand * 11 // 10:
        th = max(th - unit_th, unit_th)
    elif diff < ref_cand * 9 // 10:
        th = min(th + unit_th, ref_th * 2)
    ps.th_nr_cand = ps.candidates
    ps.th_start_ns = now_ns
    ps.threshold_ms = th
    st.threshold_history.append((now_ns, th))


def promotion_rate_limited(mm: Mm, host: Host, nid: int, now_ns: int, nr: int = 1) -> bool:
    """numa_promotion_rate_limit(): counts the candidate, True when over budget."""
    ps = host.promo.of(nid)
    ps.candidates += nr
    host.vmstat.inc("pgpromote_candidate", nr)
    if now_ns - ps.rl_start_ns > NS_PER_S:
        ps.rl_start_ns = now_ns
        ps.rl_nr_cand = ps.candidates
    return ps.candidates - ps.rl_nr_cand >= rate_limit_pages(mm)


def should_promote(mm: Mm, host: Host, page: int, dst: int, now_ns: int) -> bool:
    """should_numa_migrate_memory() for a page on a slow tier, tiering mode."""
    ps = host.promo.of(dst)
    if pgdat_free_space_enough(mm, dst):
        ps.threshold_ms = 0  # the workload changed: reset the threshold
        return True
    adjust_threshold(mm, host, dst, now_ns)
    th_ms = ps.threshold_ms or mm.tunables.numa.hot_threshold_ms
    latency = now_ns - mm.pages.scan_ns[page]
    if latency >= th_ms * NS_PER_MS:
        return False
    return not promotion_rate_limited(mm, host, dst, now_ns)


def migrate_balanced(mm: Mm, nid: int, nr: int = 1) -> bool:
    """migrate_balanced_pgdat(): the target stays above its high watermark."""
    node = mm.nodes[nid]
    return node.nr_free_pages - nr >= node.wmark.high
