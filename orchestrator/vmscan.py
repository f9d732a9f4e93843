"""Page reclaim (mm/vmscan.c): LRU aging, kswapd, direct and memcg reclaim.

Each (node, memcg) pair has an inactive and an active anon list. Reclaim
takes batches of SWAP_CLUSTER_MAX pages off the inactive tail and decides
per page as folio_check_references() does:

* accessed since the last scan (PTE young) and already PG_referenced, or
  young twice: activate (pgactivate);
* young for the first time: set PG_referenced and keep it (second chance);
* otherwise reclaim it.

Reclaimable pages are demoted first when demotion is enabled and the node
has targets (demote_folio_list); pages that fail to demote take the swap
path (zswap, then the swap device) unless the reclaim is proactive.
Demoted pages count as reclaimed for node reclaim; they stay charged to
their memcg, so memcg-limit reclaim gains nothing from them. Pages on a
compressed node are never demoted further: they are reclaimed to swap
(mm/cram.c). When the inactive list is small against the active one,
shrink_active_list() deactivates pages from the active tail.

A cgroup's limit reclaim walks the priorities as do_try_to_free_pages()
does: each scans lru >> priority pages of every node's lruvec, scaled by
get_scan_count()'s anon share (cgroup reclaim balances anon against file
by their recent reclaim cost, lru_note_cost()), then runs the cgroup's
zswap shrinker at that priority; the walk ends after the priority that
reached the target. Direct reclaim walks them the same way over every node
of the zonelist (do_try_to_free_pages(), shrink_node()), and kswapd over
its node (balance_pgdat()); both scan anon pages only, unscaled, as the
kernel does when there are no file pages to balance against.

kswapd is a thread of simulated time (_sched.Thread): each batch it
reclaims takes its share of the host's CPU before the next begins, and the
batch's frames come free as it ends, so allocations, direct reclaim and the
other nodes' kswapd meet its passes in progress, as they do in the kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tiersim.nodes._types import NodeKind

from ._mm import PAGE_SIZE, SWAP_CLUSTER_MAX
from ._pages import F_ACTIVE, F_REFERENCED, F_YOUNG, PS_CRAM_RO, PS_MAPPED
from ._sched import Thread
from .mmzone import PGSKIP
from .page_alloc import release_frame

if TYPE_CHECKING:
    from ._mm import Host, Memcg, Mm
    from .mmzone import PageBlock, Zone

DEF_PRIORITY = 12  # reclaim starts scanning lru_size >> 12
MAX_SWAPPINESS = 200
KSWAPD_MAX_FAILURES = 16  # MAX_RECLAIM_RETRIES: kswapd gives up after this many idle runs
SWAP_CLUSTER_MAX_SKIPPED = SWAP_CLUSTER_MAX << 10  # higher-zone pages passed over per isolation
KSWAPD_NAP_NS = 100_000_000  # kswapd_try_to_sleep(): HZ/10 before sleeping for good


def inactive_is_low(mm: Mm, inactive: int, active: int) -> bool:
    """inactive_is_low(): inactive * ratio < active, ratio = sqrt(10 * GiB) or 1."""
    n_inactive = mm.lru.count[inactive]
    n_active = mm.lru.count[active]
    gb = (n_inactive + n_active) >> (30 - 12)
    ratio = int((10 * gb) ** 0.5) if gb else 1
    return n_inactive * ratio < n_active


def isolate_lru(
    mm: Mm, host: Host, lst: int, nr: int, reclaim_idx: int | None
) -> tuple[list[int], int]:
    """isolate_lru_folios(): up to nr pages off the tail; with a reclaim_idx,
    pages of higher zones are skipped (pgskip_<zone>) and stay on the list.
    Returns (isolated, pages looked at): the skipped count as scanned
    (total_scan), in pgscan_* and pgrefill as in the kernel."""
    if reclaim_idx is None:
        batch = mm.lru.isolate_tail(lst, nr)
        return batch, len(batch)
    batch, skipped = mm.lru.isolate_tail_zones(lst, nr, reclaim_idx, SWAP_CLUSTER_MAX_SKIPPED)
    if skipped:
        zone = mm.pages.zone
        vm = host.vmstat
        for page in skipped:
            vm[PGSKIP[zone[page]]] += 1
    return batch, len(batch) + len(skipped)


def shrink_active_list(
    mm: Mm, host: Host, inactive: int, active: int, nr: int, reclaim_idx: int | None = None
) -> None:
    """Move pages from the active tail to the inactive head.

    Anonymous pages are deactivated whether referenced or not (only
    executable file pages are rotated), their young bit cleared.
    """
    pages = mm.pages
    moved, looked = isolate_lru(mm, host, active, nr, reclaim_idx)
    host.vmstat.inc("pgrefill", looked)
    for page in moved:
        pages.flags[page] &= ~(F_ACTIVE | F_YOUNG) & 0xFF
        mm.lru.add_head(inactive, page)
    host.vmstat.inc("pgdeactivate", len(moved))


def can_demote(mm: Mm, nid: int, host: Host) -> bool:
    """can_demote(): demotion enabled and the node has a target in this host's tiers."""
    if not mm.tunables.demotion_enabled:
        return False
    targets = host.tiers.targets.get(nid)
    return bool(targets and targets.allowed)


async def shrink_inactive_list(
    mm: Mm,
    nid: int,
    host: Host,
    inactive: int,
    active: int,
    nr_to_scan: int,
    *,
    kswapd: bool,
    memcg_reclaim: bool,
    reclaim_idx: int | None = None,
) -> tuple[int, int, int, int]:
    """Isolate up to nr_to_scan pages off the inactive tail and reclaim them:
    (scanned, reclaimed, ns, pages written out)."""
    batch, looked = isolate_lru(mm, host, inactive, nr_to_scan, reclaim_idx)
    host.vmstat.inc("pgscan_kswapd" if kswapd else "pgscan_direct", looked)
    if not batch:
        return 0, 0, 0, 0
    # The pages skipped for their zone cost a list move each.
    costs = mm.costs
    cost = len(batch) * costs.reclaim_scan_ns + (looked - len(batch)) * costs.reclaim_skip_ns
    node = mm.nodes[nid]
    if kswapd and node.kswapd_thread is not None:
        node.reclaim_held = []
    try:
        got, c, nr_pageout = await shrink_folio_list(
            mm, batch, nid, host, inactive, active, kswapd=kswapd, memcg_reclaim=memcg_reclaim
        )
    finally:
        held, node.reclaim_held = node.reclaim_held, None
    if got:
        # Reclaim made progress on the node: kswapd may try again (shrink_node()).
        node.kswapd_failures = 0
    cost += c
    if held is not None:
        await kswapd_ran(mm, nid, cost, held)
        cost = 0
    return len(batch), got, cost, nr_pageout


async def shrink_folio_list(
    mm: Mm,
    batch: list[int],
    nid: int,
    host: Host,
    inactive: int,
    active: int,
    *,
    kswapd: bool,
    memcg_reclaim: bool,
) -> tuple[int, int, int]:
    """shrink_folio_list(): (reclaimed, ns, pages written out)."""
    from .migrate import demote_folio_list
    from .swap import pageout

    pages = mm.pages
    flags = pages.flags
    candidates: list[int] = []
    for page in batch:
        f = flags[page]
        if f & F_YOUNG:
            flags[page] = (f & ~F_YOUNG & 0xFF) | F_REFERENCED
            if f & F_REFERENCED:
                flags[page] |= F_ACTIVE
                mm.lru.add_head(active, page)
                host.vmstat.inc("pgactivate")
            else:
                mm.lru.add_head(inactive, page)
            continue
        flags[page] = f & ~F_REFERENCED & 0xFF
        candidates.append(page)
    if not candidates:
        return 0, 0, 0

    cost = 0
    reclaimed = 0
    nr_pageout = 0
    node = mm.nodes[nid]
    to_swap = candidates
    if node.kind != NodeKind.CRAM and can_demote(mm, nid, host):
        demoted, failed, c = await demote_folio_list(mm, candidates, nid, host)
        cost += c
        host.vmstat.inc("pgdemote_kswapd" if kswapd else "pgdemote_direct", len(demoted))
        if not memcg_reclaim:
            reclaimed += len(demoted)
        to_swap = failed
    if to_swap:
        done, kept, c = await pageout(mm, to_swap, nid, host)
        cost += c
        reclaimed += len(done)
        nr_pageout = len(done)
        for page in kept:
            # Could not be swapped (no space, zswap refused without
            # writeback): activate, as shrink_folio_list does on failure.
            if pages.state[page] in (PS_MAPPED, PS_CRAM_RO) and pages.node[page] == nid:
                flags[page] |= F_ACTIVE
                mm.lru.add_head(active, page)
    host.vmstat.inc("pgsteal_kswapd" if kswapd else "pgsteal_direct", reclaimed)
    return reclaimed, cost, nr_pageout


async def try_to_free_pages(mm: Mm, host: Host) -> tuple[int, int]:
    """Direct reclaim for an allocation on `host`: do_try_to_free_pages().

    From DEF_PRIORITY down, shrink_zones() reclaims every node of the host's
    zonelist in turn at that priority (shrink_node()), and the walk ends
    after the priority that brought SWAP_CLUSTER_MAX pages back. So a lower
    tier reclaimed at one priority gives the next priority's demotions from
    the top tier room (alloc_demote_folio() takes no reserves).
    Returns (reclaimed, ns).
    """
    reclaimed = 0
    cost = 0
    for priority in range(DEF_PRIORITY, -1, -1):
        for nid in host.zonelist:
            if mm.nodes[nid].lost or not mm.nodes[nid].lru:
                continue
            got, _, c = await shrink_node(mm, nid, priority, None, SWAP_CLUSTER_MAX, kswapd=False)
            reclaimed += got
            cost += c
        if reclaimed >= SWAP_CLUSTER_MAX:
            break
    return reclaimed, cost


async def try_to_free_mem_cgroup_pages(mm: Mm, memcg: Memcg, nr: int) -> tuple[int, int]:
    """Limit reclaim of one cgroup: do_try_to_free_pages() for a target memcg.

    From DEF_PRIORITY down, each priority scans every node's lruvec of the
    cgroup (shrink_lruvec() with get_scan_count()'s targets) and then runs
    the cgroup's shrinkers (zswap's) at that priority; it stops after the
    first priority that brought the total to nr_to_reclaim (at least
    SWAP_CLUSTER_MAX). Returns (reclaimed, ns).
    """
    from .zswap import zswap_shrink_slab

    nr_to_reclaim = max(nr, SWAP_CLUSTER_MAX)
    nids = [n for n in range(len(mm.nodes)) if memcg.index in mm.nodes[n].lru]
    reclaimed = 0
    cost = 0
    for priority in range(DEF_PRIORITY, -1, -1):
        for nid in nids:
            got, _, c = await shrink_lruvec_memcg(mm, nid, memcg, priority, nr_to_reclaim)
            reclaimed += got
            cost += c
        cost += await zswap_shrink_slab(mm, memcg, priority)
        if reclaimed >= nr_to_reclaim:
            break
    return reclaimed, cost


def anon_scan_fraction(mm: Mm, memcg: Memcg, nid: int) -> tuple[int, int]:
    """get_scan_count()'s SCAN_FRACT share of anon pages in cgroup reclaim:
    (numerator, denominator).

    The pressure on each LRU is inversely proportional to the recent cost of
    reclaiming it (lru_note_cost()), weighted by swappiness; tiersim has no
    file pages, so their cost is 0 and anon gets 90/510 of its scan target
    once it has any cost (60/200 before). Cgroup reclaim never takes the
    file_is_tiny shortcut that root reclaim does.
    """
    swappiness = mm.tunables.swappiness
    anon, file = memcg.lru_cost.get(nid, (0, 0))
    total = anon + file
    anon_cost = total + anon
    file_cost = total + file
    total_cost = anon_cost + file_cost
    ap = swappiness * (total_cost + 1) // (anon_cost + 1)
    fp = (MAX_SWAPPINESS - swappiness) * (total_cost + 1) // (file_cost + 1)
    return ap, ap + fp


def lru_note_cost(mm: Mm, memcg: Memcg, nid: int, nr_io: int, nr_rotated: int) -> None:
    """lru_note_cost() for anon pages: I/O weighs SWAP_CLUSTER_MAX times a
    rotation; both costs halve once they exceed a quarter of the lruvec."""
    cost = nr_io * SWAP_CLUSTER_MAX + nr_rotated
    if not cost:
        return
    anon, file = memcg.lru_cost.get(nid, (0, 0))
    anon += cost
    inactive, active = mm.lru_lists(nid, memcg.index)
    if anon + file > (mm.lru.count[inactive] + mm.lru.count[active]) // 4:
        anon //= 2
        file //= 2
    memcg.lru_cost[nid] = (anon, file)


def lru_size(mm: Mm, lst: int, reclaim_idx: int | None) -> int:
    """lruvec_lru_size(): the list's pages in zones up to reclaim_idx (None: all)."""
    if reclaim_idx is None:
        return mm.lru.count[lst]
    pages = mm.pages
    lru_id = np.frombuffer(pages.lru_id, dtype=np.int32)
    zone = np.frombuffer(pages.zone, dtype=np.uint8)
    return int(np.count_nonzero((lru_id == lst) & (zone <= reclaim_idx)))


def reclaim_writeback_folios(mm: Mm, memcg: Memcg, nid: int, nr: int, kswapd: bool) -> int:
    """Drop up to `nr` of the swap-cache folios zswap's shrink worker wrote
    back through for the cgroup on node `nid`. Their writeback ended with
    them rotated to the inactive tail (folio_rotate_reclaimable()), so the
    next scan of the list meets them first; clean, their data on the swap
    device, they are freed without I/O. Returns how many."""
    folios = memcg.writeback_folios
    if nr <= 0 or not folios:
        return 0
    from .memcontrol import uncharge
    from .page_alloc import give_frames

    keep: list[tuple[int, int]] = []
    n = 0
    for f in folios:
        if n < nr and f[0] == nid:
            give_frames(mm, nid, f[1], 1)
            n += 1
        else:
            keep.append(f)
    if n:
        folios[:] = keep
        uncharge(memcg, n * PAGE_SIZE)
        vm = mm.hosts[memcg.host].vmstat
        vm.inc("pgscan_kswapd" if kswapd else "pgscan_direct", n)
        vm.inc("pgsteal_kswapd" if kswapd else "pgsteal_direct", n)
    return n


async def shrink_lruvec_memcg(
    mm: Mm,
    nid: int,
    memcg: Memcg,
    priority: int,
    nr_to_reclaim: int,
    *,
    kswapd: bool = False,
    cgroup_reclaim: bool | None = None,
    reclaim_idx: int | None = None,
) -> tuple[int, int, int]:
    """shrink_lruvec() of one cgroup on one node at one priority: (reclaimed,
    isolated, ns). The pages isolated off the inactive list are what the
    kernel adds to sc->nr_scanned (in shrink_folio_list()); pgscan_* also
    counts the pages of higher zones passed over.

    Scan targets are each list's size >> priority (pages of zones up to
    reclaim_idx only). In cgroup reclaim (by default, unless `kswapd`) they
    are scaled by the anon share (anon_scan_fraction(); the whole list at
    priority 0); node reclaim, kswapd's or direct, with no file pages to
    scan, takes anon pages only (SCAN_ANON: file_is_tiny).
    The inactive list is scanned in chunks of SWAP_CLUSTER_MAX, the active
    list deactivated alongside when the inactive one is low; the pass stops
    once it alone has reclaimed nr_to_reclaim (so a call reclaims whole
    chunks, often more than asked), and ends by rebalancing the lists.
    """
    inactive, active = mm.lru_lists(nid, memcg.index)
    host = mm.hosts[memcg.host]
    may_deactivate = inactive_is_low(mm, inactive, active)
    targets = [
        lru_size(mm, inactive, reclaim_idx) >> priority,
        lru_size(mm, active, reclaim_idx) >> priority,
    ]
    # Node reclaim keeps the whole targets (SCAN_ANON); cgroup reclaim scales them.
    if cgroup_reclaim is None:
        cgroup_reclaim = not kswapd
    if cgroup_reclaim and mm.tunables.swappiness == 0:
        # Cgroup reclaim with swappiness 0 scans file pages only (SCAN_FILE),
        # at every priority: a cgroup of anon pages cannot reclaim.
        targets = [0, 0]
    elif cgroup_reclaim and priority:
        num, den = anon_scan_fraction(mm, memcg, nid)
        targets = [t * num // den for t in targets]
    # At priority 0 both kinds are scanned whole (SCAN_EQUAL).
    # The written-back swap-cache folios wait at the inactive tail: first scanned.
    reclaimed = reclaim_writeback_folios(mm, memcg, nid, min(targets[0], nr_to_reclaim), kswapd)
    targets[0] -= reclaimed
    cost = reclaimed * mm.costs.reclaim_scan_ns
    isolated = reclaimed
    while targets[0] and (not reclaimed or reclaimed < nr_to_reclaim):
        chunk = min(targets[0], SWAP_CLUSTER_MAX)
        targets[0] -= chunk
        scanned, got, c, nr_pageout = await shrink_inactive_list(
            mm,
            nid,
            host,
            inactive,
            active,
            chunk,
            kswapd=kswapd,
            memcg_reclaim=cgroup_reclaim,
            reclaim_idx=reclaim_idx,
        )
        if scanned:
            isolated += scanned
            reclaimed += got
            cost += c
            lru_note_cost(mm, memcg, nid, nr_pageout, scanned - got)
        if targets[1]:
            chunk = min(targets[1], SWAP_CLUSTER_MAX)
            targets[1] -= chunk
            if may_deactivate:
                shrink_active_list(mm, host, inactive, active, chunk, reclaim_idx)
        if reclaimed >= nr_to_reclaim:
            break
    if inactive_is_low(mm, inactive, active):
        shrink_active_list(mm, host, inactive, active, SWAP_CLUSTER_MAX, reclaim_idx)
    return reclaimed, isolated, cost


# -- kswapd ---------------------------------------------------------------


def _balance_mark(mm: Mm, nid: int) -> int:
    """pgdat_balanced(): WMARK_PROMO on top-tier nodes in memory-tiering mode.

    mm/vmscan.c checks sysctl_numa_balancing_mode & NUMA_BALANCING_MEMORY_TIERING.
    """
    node = mm.nodes[nid]
    if mm.tunables.numa.numa_balancing & 2:
        return node.wmark.promo
    return node.wmark.high


def pgdat_balanced(mm: Mm, nid: int, highest_zoneidx: int = -1) -> bool:
    """pgdat_balanced(): some zone up to highest_zoneidx (default: all) is at
    its (boosted) high watermark, above the lowmem reserve it keeps."""
    node = mm.nodes[nid]
    if node.kind == NodeKind.CRAM:
        # The compressed node's kswapd runs while the device reports pressure.
        return node.pressure == 0 and node.free_pages >= node.wmark.high
    if node.simple:
        return node.free_pages >= _balance_mark(mm, nid)
    which = "promo" if mm.tunables.numa.numa_balancing & 2 else "high"
    hz = node.zones[-1].idx if highest_zoneidx < 0 else highest_zoneidx
    return any(z.free >= z.mark(which) + z.lowmem_reserve[hz] for z in node.zones if z.idx <= hz)


def kernel_thread_ran(mm: Mm, hosts: list[int], cost: int, thread: str = "") -> int:
    """Kernel thread `thread` did `cost` ns of CPU work on `hosts`: the wall time it took.

    The work is scaled by the host's kernel_cpu_scale (a host whose CPU
    runs kernel code more slowly than tiersim's costs assume). Swap writes
    the thread starts are not part of it (swap.swap_write()).

    Where the processes keep every CPU busy the thread shares a CPU with
    them and with the host's other kernel threads at work (kswapd of its
    other nodes, zswap's shrink worker), as CFS shares it: its CPU work
    takes (processes + threads) / cpus times as long, and the processes
    lose that CPU time (Host.kernel_cpu_ns, charged to them in
    memory.run_step()). With a CPU to spare it runs there at full speed.
    The CPU time is counted per thread (Host.kthread_cpu_ns).
    """
    cpu = int(cost * max(mm.hosts[h].kernel_cpu_scale for h in hosts))
    from .memory import running_processes

    wall = cpu
    for h in hosts:
        host = mm.hosts[h]
        if thread:
            host.kthread_cpu_ns[thread] = host.kthread_cpu_ns.get(thread, 0) + cpu
        running = running_processes(mm, h)
        if running >= host.cpus:
            host.kernel_cpu_ns += cpu
            # The host's other kernel threads at work take their share too.
            others = sum(
                1 for n in host.nodes if mm.nodes[n].kswapd_running and f"kswapd{n}" != thread
            )
            if host.zswap is not None and host.zswap.shrink_running and thread != "zswap_shrink":
                others += 1
            wall = max(wall, cpu * (running + others + 1) // host.cpus)
    return wall


async def kswapd_ran(
    mm: Mm, nid: int, cost: int, held: list[tuple[Zone, PageBlock | None]]
) -> None:
    """kswapd of node `nid` did `cost` ns of work on a batch: let its time pass.

    kswapd shares the host's CPU with the tasks and the other kernel threads
    while it works, so a batch it reclaims takes simulated time, and what
    runs meanwhile (the tasks' allocations, direct reclaim, the other nodes'
    kswapd) meets the batch in progress: the frames it frees (`held`) come
    free as it ends, when shrink_folio_list() frees its folio list.
    """
    node = mm.nodes[nid]
    thread = node.kswapd_thread
    assert thread is not None
    wall = kernel_thread_ran(mm, node.hosts, cost, thread.name)
    # Others run while it sleeps: they pay their own costs.
    kthread, mm.kthread = mm.kthread, None
    try:
        await thread.sleep(max(wall, 1))
    finally:
        mm.kthread = kthread
        for zone, block in held:
            release_frame(node, zone, block)


def _boosted(mm: Mm, nid: int, highest_zoneidx: int) -> int:
    """The watermark boost of the zones kswapd would balance (nr_boost_reclaim)."""
    return sum(z.watermark_boost for z in mm.nodes[nid].zones if z.idx <= highest_zoneidx)


def wakeup_kswapd(mm: Mm, nid: int, highest_zoneidx: int = -1) -> None:
    """wakeup_kswapd(): have the node's kswapd balance zones up to highest_zoneidx.

    Every call raises the node's pending kswapd_highest_zoneidx, whether it
    wakes kswapd or not: a run balances up to the highest zone asked for
    since the last run started. So one wake-up from the allocator's slow
    path makes the next run, whatever wakes it, cover the whole node.
    kswapd is not woken when the node is balanced for the waker's zone,
    unless a zone's watermarks are boosted (a fallback allocation asked for
    reclaim ahead of need), nor while it runs (its next run sees the
    request).
    """
    node = mm.nodes[nid]
    if node.lost or not node.zones:
        return
    top = node.zones[-1].idx
    hz = top if highest_zoneidx < 0 else min(highest_zoneidx, top)
    node.kswapd_highest_zoneidx = max(node.kswapd_highest_zoneidx, hz)
    if node.kswapd_running:
        return
    if node.kswapd_failures >= KSWAPD_MAX_FAILURES:
        return
    if pgdat_balanced(mm, nid, hz) and not _boosted(mm, nid, hz):
        return
    if node.kind == NodeKind.CRAM and not mm.tunables.cram.reclaim:
        return
    balance_pgdat(mm, nid, node.kswapd_highest_zoneidx)


def kswapd_target(mm: Mm, nid: int, reclaim_idx: int | None) -> int:
    """kswapd_shrink_node()'s nr_to_reclaim: the (boosted) high watermarks of
    the zones it balances, at least SWAP_CLUSTER_MAX each."""
    return sum(
        max(z.mark("high"), SWAP_CLUSTER_MAX)
        for z in mm.nodes[nid].zones
        if reclaim_idx is None or z.idx <= reclaim_idx
    )


async def shrink_node(
    mm: Mm,
    nid: int,
    priority: int,
    reclaim_idx: int | None,
    nr_to_reclaim: int,
    *,
    kswapd: bool,
) -> tuple[int, int, int]:
    """shrink_node(): one pass over every cgroup's lruvec on the node at
    `priority`, aiming at nr_to_reclaim pages: (reclaimed, scanned, ns).

    Each cgroup's pass is followed by its zswap shrinker at that priority,
    and the root cgroup's turn by zsmalloc's (shrink_slab())."""
    from .zswap import zs_shrink_slab, zswap_shrink_slab

    node = mm.nodes[nid]
    reclaimed = scanned = cost = 0
    for idx in sorted(node.lru):
        memcg = mm.memcgs[idx]
        got, isolated, c = await shrink_lruvec_memcg(
            mm,
            nid,
            memcg,
            priority,
            nr_to_reclaim,
            kswapd=kswapd,
            cgroup_reclaim=False,
            reclaim_idx=reclaim_idx,
        )
        reclaimed += got
        scanned += isolated
        cost += c
        cost += await zswap_shrink_slab(mm, memcg, priority)
    for hid in node.hosts:
        zswap = mm.hosts[hid].zswap
        if zswap is not None and zswap.zspool.pages_allocated:
            cost += await zs_shrink_slab(mm, zswap, priority)
    return reclaimed, scanned, cost


def balance_pgdat(mm: Mm, nid: int, highest_zoneidx: int) -> None:
    """One kswapd run: from DEF_PRIORITY down, pass over the node's LRUs until
    the node is balanced.

    Each pass scans every list's size >> priority and stops once it has
    reclaimed the zones' high watermarks' worth; the priority rises after a
    pass that scanned less than that or reclaimed nothing, so a run
    reclaims in growing steps and overshoots the watermark, as the kernel's
    does. With boosted watermarks and the node balanced without them, the
    kernel reclaims file pages only (no swap, no writeback): tiersim has no
    file LRU, so such a run reclaims nothing and ends. Not balanced with the
    boost, it reclaims as usual, for the zones up to highest_zoneidx only:
    pages of higher zones are skipped on the LRU. The boosts it started
    with are cleared at the end. A run that reaches priority 0 without the
    node balanced starts again, unless it reclaimed nothing
    MAX_RECLAIM_RETRIES times in a row (kswapd_failures): kswapd then stays
    asleep until reclaim on the node makes progress again.
    """
    node = mm.nodes[nid]
    node.kswapd_running = True
    node.kswapd_highest_zoneidx = -1  # requests from now on are for the next run
    now = mm.sched.now_ns
    for h in node.hosts:
        vm = mm.hosts[h].vmstat
        vm.inc("kswapd_wake")
        vm.inc("pageoutrun")
        if now - node.kswapd_slept_ns < KSWAPD_NAP_NS:
            vm.inc("kswapd_low_wmark_hit_quickly")
    hz = highest_zoneidx
    boosts = {z.idx: z.watermark_boost for z in node.zones if z.idx <= hz}
    # set_reclaim_active(): the zones' per-CPU lists keep little meanwhile.
    active = [z for z in node.zones if z.idx <= hz or hz < 0]
    for z in active:
        z.reclaim_active = True
    nr_boost_reclaim = sum(boosts.values())
    reclaim_idx = None if node.simple or hz >= node.zones[-1].idx else hz
    priority = DEF_PRIORITY
    run_reclaimed = 0

    def finish(rewake: bool) -> None:
        for z in node.zones:
            if z.idx in boosts:
                z.watermark_boost -= min(z.watermark_boost, boosts[z.idx])
        for z in active:
            z.reclaim_active = False
        node.kswapd_running = False
        node.kswapd_slept_ns = mm.sched.now_ns
        pending = node.kswapd_highest_zoneidx
        # kswapd_try_to_sleep(): asleep only if balanced for what was asked
        # meanwhile; the request stays pending for the next wake-up.
        if (
            rewake
            and pending >= 0
            and node.kswapd_failures < KSWAPD_MAX_FAILURES
            and (not pgdat_balanced(mm, nid, pending) or _boosted(mm, nid, pending))
        ):
            balance_pgdat(mm, nid, pending)

    thread = Thread(mm.sched, f"kswapd{nid}")

    async def kswapd_run() -> None:
        nonlocal nr_boost_reclaim, priority, run_reclaimed
        while True:
            if node.lost or mm.stopped:
                finish(False)
                return
            balanced = pgdat_balanced(mm, nid, hz)
            if not balanced and nr_boost_reclaim:
                nr_boost_reclaim = 0
            if balanced or nr_boost_reclaim:
                # Balanced, or boost reclaim (file pages only: none here).
                finish(True)
                return
            nr_to_reclaim = kswapd_target(mm, nid, reclaim_idx)
            # Its work pays the host's kernel-thread costs, and its batches
            # take their time as they go (kswapd_ran()).
            mm.kthread = node.hosts[0]
            node.kswapd_thread = thread
            try:
                reclaimed, scanned, cost = await shrink_node(
                    mm, nid, priority, reclaim_idx, nr_to_reclaim, kswapd=True
                )
            finally:
                mm.kthread = None
                node.kswapd_thread = None
            run_reclaimed += reclaimed
            if scanned < nr_to_reclaim or not reclaimed:
                priority -= 1
            if priority < 1:
                # The run is over without the node balanced (kswapd_try_to_sleep()
                # finds it unbalanced and runs again at once).
                node.kswapd_failures = 0 if run_reclaimed else node.kswapd_failures + 1
                again = max(hz, node.kswapd_highest_zoneidx)
                finish(False)
                if node.kswapd_failures < KSWAPD_MAX_FAILURES and not pgdat_balanced(
                    mm, nid, again
                ):
                    for h in node.hosts:
                        mm.hosts[h].vmstat.inc("kswapd_high_wmark_hit_quickly")
                    balance_pgdat(mm, nid, again)
                return
            # What the batches did not take already (the shrinkers' work) is
            # CPU time of the host too, and the next pass follows it.
            await thread.sleep(max(kernel_thread_ran(mm, node.hosts, cost, thread.name), 1_000))

    thread.start(kswapd_run)
