"""Accesses and page faults (mm/memory.c).

A process runs in steps. Accesses to pages that are mapped and allowed
(resident read-write, or a read of a read-only compressed page) are handled
vectorised: their PTE young bit is set, writes bump the page version (its
content changes), and each is charged the node's resident latency from its
described profile, without a round trip. The first access that needs the
kernel takes the fault path, one at a time:

* untouched page: do_anonymous_page (charge the memcg, allocate a frame);
* PROT_NONE page: do_numa_page (a NUMA hint fault, maybe a promotion);
* write to a read-only compressed page: the cram write fault promotes the
  page to the faulting host's DRAM and frees the compressed copy;
* swapped page: do_swap_page (zswap or the swap device), a major fault;
* poisoned or lost page: SIGBUS, counted; the page is then refaulted empty
  so that the run can go on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._pages import (
    F_PROTNONE,
    F_SWAPCACHE,
    F_YOUNG,
    PS_CRAM_RO,
    PS_LOST,
    PS_MAPPED,
    PS_POISONED,
    PS_SWAP,
    PS_UNTOUCHED,
    PS_ZSWAP,
    PS_ZSWAP_DIRECT,
)
from .cram import do_cram_wp_fault
from .memcontrol import handle_over_high, try_charge, uncharge
from .migrate import node_call, promote_page
from .numa_balancing import (
    migrate_balanced,
    should_promote,
    task_numa_fault,
    tiering_mode,
)
from .page_alloc import alloc_page, free_frame, take_frame
from .swap import (
    free_slots,
    free_swap_on_write,
    put_swap_slot,
    swap_in,
    swapcache_release,
    swapped_in,
)
from .swap_state import swap_cache_hit, swap_vma_ra_win, swap_vma_readahead
from .vmscan import wakeup_kswapd

if TYPE_CHECKING:
    from ._mm import Host, Mm, Process

# Resident pages whose next access still faults: hint-fault PTEs, and pages
# read ahead into the swap cache but not yet mapped.
F_UNMAPPED = F_PROTNONE | F_SWAPCACHE

PAGE_SIZE = 4096
CHUNK = 4096
# A process runs at most this much simulated time before yielding to other
# events (kswapd, scanners, other processes).
QUANTUM_NS = 200_000
# Below this look-ahead window, accesses are handled one at a time.
SCALAR_WINDOW = 16


async def run_step(mm: Mm, proc: Process) -> None:
    """Run one quantum of a process's accesses, then reschedule it.

    Two modes share the work. While accesses mostly hit mapped pages, they
    are handled vectorised over a window that doubles as long as every
    access in it is resident. When faults are frequent the window shrinks,
    and below SCALAR_WINDOW accesses are handled one by one in plain
    Python, which is cheaper than numpy calls on a handful of elements.
    """
    pages = mm.pages
    state_np = pages.state_np
    flags_np = pages.flags_np
    node_np = pages.node_np
    lat = mm.latency_table
    deadline = max(mm.sched.now_ns, proc.clock_ns) + QUANTUM_NS
    hist = proc.latency
    limit = proc.config.accesses
    _pay_kernel_cpu(mm, proc)
    while proc.clock_ns < deadline and not proc.done and not mm.stopped:
        if proc.chunk_pos >= proc.chunk_len:
            n = CHUNK if limit is None else min(CHUNK, limit - proc.accesses)
            if n <= 0:
                proc.done = True
                break
            chunk = proc.workload.next_chunk(n)
            proc.chunk_pages = chunk.pages.astype(np.int64) + proc.base
            proc.chunk_writes = chunk.writes.astype(bool)
            proc.chunk_gaps = chunk.gap_ns.astype(np.int64)
            proc.chunk_lists = None
            proc.chunk_pos = 0
            proc.chunk_len = len(chunk.pages)
        if proc.window <= SCALAR_WINDOW:
            if await _run_scalar(mm, proc, deadline):
                break
            continue
        pos = proc.chunk_pos
        win = proc.window
        g = proc.chunk_pages[pos : pos + win]
        w = proc.chunk_writes[pos : pos + win]
        st = state_np[g]
        ok = ((st == PS_MAPPED) | ((st == PS_CRAM_RO) & ~w)) & ((flags_np[g] & F_UNMAPPED) == 0)
        k = len(ok) if ok.all() else int(np.argmin(ok))
        proc.window = min(win * 2, CHUNK) if k == len(ok) else max(win // 4, 1)
        if k:
            gk = g[:k]
            wk = w[:k]
            acc_lat = lat[node_np[gk], wk.astype(np.intp)]
            cum = np.cumsum(proc.chunk_gaps[pos : pos + k] + acc_lat)
            m = int(np.searchsorted(cum, deadline - proc.clock_ns, side="right")) + 1
            m = min(m, k)
            gm = gk[:m]
            wm = wk[:m]
            flags_np[gm] |= F_YOUNG
            if mm.track_accesses:
                # Saturate well below 2**16 so that one chunk cannot wrap.
                np.add.at(pages.hits_np, gm[pages.hits_np[gm] < 0xEFFF], 1)
            proc.node_hits += np.bincount(node_np[gm], minlength=len(proc.node_hits))
            written = gm[wm]
            if written.size:
                np.add.at(pages.version_np, written, 1)
            hist.add_many(acc_lat[:m])
            proc.clock_ns += int(cum[m - 1])
            nw = int(written.size)
            proc.writes += nw
            proc.reads += m - nw
            proc.accesses += m
            proc.chunk_pos += m
            continue
        if await _fault_at_pos(mm, proc):
            break
    if not proc.done and not mm.stopped and proc.killed is None:
        mm.sched.at(proc.clock_ns, lambda: run_step(mm, proc), f"proc{proc.index}")


def _pay_kernel_cpu(mm: Mm, proc: Process) -> None:
    """Delay the process by its share of the CPU time kernel threads took.

    On a host whose processes keep every CPU busy, kswapd's work displaces
    theirs: each is set back by that work over the number of CPUs. With a
    CPU to spare the kernel threads run there and cost the processes nothing.
    """
    host = mm.hosts[proc.host]
    if not proc.started:
        # Kernel work before the process started took nothing from it.
        proc.started = True
        proc.kernel_cpu_seen_ns = host.kernel_cpu_ns
        return
    delta = host.kernel_cpu_ns - proc.kernel_cpu_seen_ns
    if not delta:
        return
    proc.kernel_cpu_seen_ns = host.kernel_cpu_ns
    if running_processes(mm, proc.host) >= host.cpus:
        lost = delta // host.cpus
        proc.clock_ns += lost
        # The task's CPU clock stood still meanwhile: its NUMA scanner, which
        # runs on the task's runtime (task_tick_numa()), waits as long.
        if proc.numa_next_scan_ns:
            proc.numa_next_scan_ns += lost


def running_processes(mm: Mm, host: int) -> int:
    """Processes of `host` that have started and not finished."""
    return sum(1 for p in mm.procs if p.host == host and p.started and not p.done)


async def _fault_at_pos(mm: Mm, proc: Process) -> bool:
    """Take the fault path for the access at the chunk position; True if killed."""
    pos = proc.chunk_pos
    page = int(proc.chunk_pages[pos])
    write = bool(proc.chunk_writes[pos])
    proc.clock_ns += int(proc.chunk_gaps[pos])
    mm.sched.now_ns = max(mm.sched.now_ns, proc.clock_ns)
    cost = await handle_mm_fault(mm, proc, page, write)
    proc.chunk_pos += 1
    if cost < 0:
        return True
    proc.clock_ns += cost
    proc.latency.add(cost)
    nid = mm.pages.node[page]
    if nid >= 0:
        proc.node_hits[nid] += 1
    proc.accesses += 1
    if write:
        proc.writes += 1
    else:
        proc.reads += 1
    return False


async def _run_scalar(mm: Mm, proc: Process, deadline: int) -> bool:
    """Handle accesses one at a time until a run of hits earns the vector path back.

    Returns True when the process was killed.
    """
    if proc.chunk_lists is None:
        proc.chunk_lists = (
            proc.chunk_pages.tolist(),
            proc.chunk_writes.tolist(),
            proc.chunk_gaps.tolist(),
        )
    plist, wlist, glist = proc.chunk_lists
    pages = mm.pages
    state = pages.state
    flags = pages.flags
    node = pages.node
    version = pages.version
    lat = mm.latency_rows
    hist = proc.latency
    hits_by_node = proc.node_hits
    track = mm.track_accesses
    hits = 0
    while proc.chunk_pos < proc.chunk_len and proc.clock_ns < deadline:
        pos = proc.chunk_pos
        page = plist[pos]
        write = wlist[pos]
        st = state[page]
        f = flags[page]
        if (st == PS_MAPPED or (st == PS_CRAM_RO and not write)) and not f & F_UNMAPPED:
            flags[page] = f | F_YOUNG
            if track and pages.hits[page] < 0xEFFF:
                pages.hits[page] += 1
            if write:
                version[page] += 1
                proc.writes += 1
            else:
                proc.reads += 1
            nid = node[page]
            cost = lat[nid][write]
            hits_by_node[nid] += 1
            proc.clock_ns += glist[pos] + cost
            hist.add(cost)
            proc.accesses += 1
            proc.chunk_pos += 1
            hits += 1
            if hits >= 2 * SCALAR_WINDOW:
                proc.window = 2 * SCALAR_WINDOW
                return False
            continue
        hits = 0
        if await _fault_at_pos(mm, proc):
            return True
    return False


def _access(mm: Mm, page: int, write: bool) -> int:
    """Complete an access on a now-mapped page: young bit, version, latency."""
    pages = mm.pages
    pages.flags[page] |= F_YOUNG
    if mm.track_accesses and pages.hits[page] < 0xEFFF:
        pages.hits[page] += 1
    if write:
        pages.version[page] += 1
    return mm.latency_rows[pages.node[page]][write]


async def handle_mm_fault(mm: Mm, proc: Process, page: int, write: bool) -> int:
    """Handle one faulting access: total ns charged to the process, or -1 if killed."""
    pages = mm.pages
    host = mm.hosts[proc.host]
    state = pages.state[page]
    host.vmstat.inc("pgfault")
    memcg = mm.memcgs[proc.memcg]
    memcg.stat["pgfault"] += 1
    cost = 0
    if state in (PS_POISONED, PS_LOST):
        # The data is gone: the task gets SIGBUS. Refault the page empty.
        host.vmstat.inc("sigbus")
        await forget_page(mm, page)
        state = PS_UNTOUCHED
    if state == PS_UNTOUCHED:
        c = await do_anonymous_page(mm, proc, host, page)
        if c < 0:
            return -1
        return c + _access(mm, page, write)
    if state in (PS_ZSWAP, PS_ZSWAP_DIRECT, PS_SWAP):
        c = await do_swap_page(mm, proc, host, page)
        if c < 0:
            return -1
        if write:
            await free_swap_on_write(mm, page)
        return c + _access(mm, page, write)
    if pages.flags[page] & F_SWAPCACHE:
        cost += swap_cache_hit(mm, proc, host, page)
        if write:
            await free_swap_on_write(mm, page)
    if pages.flags[page] & F_PROTNONE:
        cost += await do_numa_page(mm, proc, host, page)
        state = pages.state[page]
    if state == PS_CRAM_RO and write:
        c = await do_cram_wp_fault(mm, proc, host, page)
        if c < 0:
            return -1
        cost += c
    return cost + _access(mm, page, write)


async def _charge_and_alloc(mm: Mm, proc: Process, host: Host, page: int) -> tuple[int, int]:
    """Charge the memcg a page and take a frame: (node id, ns); node -1 after an OOM kill."""
    memcg = mm.memcgs[proc.memcg]
    ok, cost = await try_charge(mm, memcg, PAGE_SIZE)
    if not ok:
        await oom_kill(mm, proc, "memcg oom")
        return -1, cost
    nid, c = await alloc_page(mm, host, page)
    cost += c
    if nid < 0:
        uncharge(memcg, PAGE_SIZE)
        await oom_kill(mm, proc, "oom")
    return nid, cost


async def do_anonymous_page(mm: Mm, proc: Process, host: Host, page: int) -> int:
    memcg = mm.memcgs[proc.memcg]
    nid, cost = await _charge_and_alloc(mm, proc, host, page)
    if nid < 0:
        return -1
    pages = mm.pages
    pages.state[page] = PS_MAPPED
    pages.node[page] = nid
    pages.memcg[page] = proc.memcg
    pages.flags[page] = 0
    mm.lru.add_head(mm.lru_lists(nid, proc.memcg)[0], page)
    host.vmstat.inc("pgalloc")
    cost += mm.costs.minor_fault_ns
    cost += await handle_over_high(mm, memcg)
    return cost


async def do_swap_page(mm: Mm, proc: Process, host: Host, page: int) -> int:
    """Major fault: bring the page back from zswap or swap into local memory."""
    memcg = mm.memcgs[proc.memcg]
    vpn = page - proc.base
    ra_lo, ra_hi = swap_vma_ra_win(mm, proc, vpn)
    nid, cost = await _charge_and_alloc(mm, proc, host, page)
    if nid < 0:
        return -1
    got, c = await swap_in(mm, page, host)
    cost += c + mm.costs.major_fault_ns
    host.vmstat.inc("pgmajfault")
    memcg.stat["pgmajfault"] += 1
    swapped_in(mm, host, page, nid, got, flags=0)
    if ra_hi - ra_lo > 1:
        # The faulting page joins the LRU only afterwards: reclaim run by the
        # readahead allocations cannot take it (the kernel holds it locked).
        cost += await swap_vma_readahead(mm, proc, host, ra_lo, ra_hi, vpn)
    mm.lru.add_head(mm.lru_lists(nid, proc.memcg)[0], page)
    cost += await handle_over_high(mm, memcg)
    return cost


async def do_numa_page(mm: Mm, proc: Process, host: Host, page: int) -> int:
    """A NUMA hint fault; promote the page if it is hot enough."""
    pages = mm.pages
    pages.flags[page] &= ~F_PROTNONE & 0xFF
    host.vmstat.inc("numa_hint_faults")
    cost = mm.costs.hint_fault_ns
    src = pages.node[page]
    if not tiering_mode(mm) or host.tiers.is_toptier(src) or src < 0:
        return cost
    dst = host.cpu_nodes[0]
    now = proc.clock_ns
    promote = should_promote(mm, host, page, dst, now)
    if mm.tunables.numa.promote_batch > 1:
        queue_promotion(mm, host, page, dst, promote, now)
        return cost
    promote = await mm.policy.promotion(mm, host, page, dst, promote)
    if not promote:
        return cost
    if not migrate_balanced(mm, dst):
        # Target short of memory: wake kswapd there and try again later.
        wakeup_kswapd(mm, dst)
        host.vmstat.inc("pgpromote_fail")
        return cost
    _ok, c = await migrate_misplaced(mm, page, dst, host)
    return cost + c


async def migrate_misplaced(mm: Mm, page: int, dst: int, host: Host) -> tuple[bool, int]:
    """migrate_misplaced_folio(): promote a hint-faulted page to `dst`, counted: (ok, ns)."""
    zone = take_frame(mm, dst, page)
    ok, cost = await promote_page(mm, page, dst, host, zone)
    if ok:
        host.vmstat.inc("pgpromote_success")
        host.vmstat.inc("numa_pages_migrated")
        # The page came from a slow node: a remote fault (no TNF_FAULT_LOCAL).
        task_numa_fault(mm, mm.proc_of(page), local=False)
    else:
        free_frame(mm, dst, page, zone)
        host.vmstat.inc("pgpromote_fail")
    return ok, cost


def queue_promotion(mm: Mm, host: Host, page: int, dst: int, default: bool, now: int) -> None:
    """Batched promotion: record a hint-faulted candidate, to be decided with others.

    With `promote_batch` > 1 the fault path keeps the candidate and its
    default verdict (taken now, by should_numa_migrate_memory(), so the rate
    limit and threshold see every fault) and returns; a background step
    decides a batch once `promote_batch` candidates are recorded or the
    oldest has waited `promote_batch_delay_ms`, as the batched hot-page
    promotion proposals have a kernel thread promote what hint faults
    recorded. The policy is asked once per batch instead of once per fault.
    """
    promo = host.promo
    promo.queue.pop(page, None)  # a page faulting again counts once, with its latest verdict
    promo.queue[page] = (dst, default)
    t = mm.tunables.numa
    full = len(promo.queue) >= t.promote_batch
    if promo.flush is not None and (not full or promo.flush.time_ns <= now):
        return
    _schedule_flush(mm, host, now if full else now + t.promote_batch_delay_ms * 1_000_000)


def _schedule_flush(mm: Mm, host: Host, when: int) -> None:
    promo = host.promo
    if promo.flush is not None:
        promo.flush.cancelled = True

    async def flush() -> None:
        await flush_promotions(mm, host)

    promo.flush = mm.sched.at(when, flush, f"promote_batch{host.index}")


async def flush_promotions(mm: Mm, host: Host) -> None:
    """Decide and promote the oldest batch of recorded candidates (see queue_promotion)."""
    promo = host.promo
    promo.flush = None
    t = mm.tunables.numa
    items = list(promo.queue.items())
    promo.queue = dict(items[t.promote_batch :])
    if promo.queue:  # faults kept coming while this batch waited: the next one
        full = len(promo.queue) >= t.promote_batch
        delay = 0 if full else t.promote_batch_delay_ms * 1_000_000
        _schedule_flush(mm, host, mm.sched.now_ns + delay)
    pages = mm.pages
    groups: dict[int, list[int]] = {}
    defaults: dict[int, bool] = {}
    for page, (dst, default) in items[: t.promote_batch]:
        nid = pages.node[page]
        if pages.state[page] not in (PS_MAPPED, PS_CRAM_RO) or nid < 0:
            continue  # reclaimed, swapped or lost since its fault
        if host.tiers.is_toptier(nid):
            continue
        groups.setdefault(dst, []).append(page)
        defaults[page] = default
    for dst, group in groups.items():
        verdicts = await mm.policy.promotion_batch(
            mm, host, group, dst, [defaults[page] for page in group]
        )
        for page, promote in zip(group, verdicts, strict=True):
            if not promote:
                continue
            if not migrate_balanced(mm, dst):
                wakeup_kswapd(mm, dst)
                host.vmstat.inc("pgpromote_fail")
                continue
            # A background migration: its cost is the device's, not the faulting task's.
            await migrate_misplaced(mm, page, dst, host)


async def forget_page(mm: Mm, page: int) -> None:
    """Drop whatever a poisoned or lost page still holds, leaving it untouched."""
    pages = mm.pages
    released = swapcache_release(mm, page)
    if released is not None:
        await free_slots(mm, {released[0]: [released[1]]})
    nid = pages.node[page]
    state = pages.state[page]
    memcg = mm.memcgs[pages.memcg[page]]
    if nid >= 0 and state in (PS_POISONED, PS_MAPPED, PS_CRAM_RO):
        node = mm.nodes[nid]
        if pages.handle[page] and not node.lost:
            await node_call(mm, nid, node.client.free([pages.handle[page]]))
        mm.lru.del_page(page)
        free_frame(mm, nid, page)
        uncharge(memcg, PAGE_SIZE)
    elif state == PS_LOST and nid >= 0 and mm.pages.lru_id[page] >= 0:
        mm.lru.del_page(page)
    pages.state[page] = PS_UNTOUCHED
    pages.node[page] = -1
    pages.handle[page] = 0
    pages.flags[page] = 0
    pages.version[page] += 1


async def oom_kill(mm: Mm, proc: Process, reason: str) -> None:
    """The OOM killer ends the process; its memory is released (exit_mmap)."""
    host = mm.hosts[proc.host]
    memcg = mm.memcgs[proc.memcg]
    host.vmstat.inc("oom_kill")
    memcg.events["oom_kill"] += 1
    proc.killed = reason
    proc.done = True
    await exit_mmap(mm, proc)


async def exit_mmap(mm: Mm, proc: Process) -> None:
    """Free every page of a process: frames, zswap entries, swap slots, device copies."""
    from .zswap import zswap_invalidate

    pages = mm.pages
    memcg = mm.memcgs[proc.memcg]
    by_node: dict[int, list[int]] = {}
    for page in range(proc.base, proc.base + proc.npages):
        state = pages.state[page]
        if state == PS_UNTOUCHED:
            continue
        nid = pages.node[page]
        released = swapcache_release(mm, page)
        if released is not None:
            by_node.setdefault(released[0], []).append(released[1])
        if state in (PS_MAPPED, PS_CRAM_RO, PS_POISONED):
            mm.lru.del_page(page)
            free_frame(mm, nid, page)
            uncharge(memcg, PAGE_SIZE)
            if pages.handle[page]:
                by_node.setdefault(nid, []).append(pages.handle[page])
        elif state in (PS_ZSWAP, PS_ZSWAP_DIRECT):
            zswap = mm.zswap_of_page(page)
            await zswap_invalidate(mm, zswap, page)
        elif state == PS_SWAP:
            if nid >= 0:
                memcg.swap_current -= PAGE_SIZE
                mm.nodes[nid].nr_pages -= 1
                by_node.setdefault(nid, []).append(pages.handle[page])
            else:
                put_swap_slot(mm.hosts[memcg.host], memcg)
        elif state == PS_LOST and pages.lru_id[page] >= 0:
            mm.lru.del_page(page)
        pages.state[page] = PS_UNTOUCHED
        pages.node[page] = -1
    # Device copies and swap slots go back at the exit's time, as every other
    # release does (the client splits batches at the node's limit).
    await free_slots(mm, by_node)
