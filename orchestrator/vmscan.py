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
reached the target. kswapd and direct reclaim take SWAP_CLUSTER_MAX
batches off each cgroup's lists until the target is met.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tiersim.nodes._types import NodeKind

from ._mm import SWAP_CLUSTER_MAX
from ._pages import F_ACTIVE, F_REFERENCED, F_YOUNG, PS_CRAM_RO, PS_MAPPED

if TYPE_CHECKING:
    from ._mm import Host, Memcg, Mm

DEF_PRIORITY = 12  # reclaim starts scanning lru_size >> 12
MAX_SWAPPINESS = 200
KSWAPD_MAX_FAILURES = 16  # MAX_RECLAIM_RETRIES: kswapd gives up after this many idle runs


def reclaim_priority(scanned: int, lru_pages: int, reclaimed: int) -> int:
    """The priority do_try_to_free_pages() would have reached to scan `scanned`
    pages of an LRU of `lru_pages` (lru >> priority at each step); 0 when the
    LRU gave nothing back."""
    if reclaimed == 0 or lru_pages <= 0:
        return 0
    total = 0
    for priority in range(DEF_PRIORITY, -1, -1):
        total += lru_pages >> priority
        if total >= scanned:
            return priority
    return 0


def inactive_is_low(mm: Mm, inactive: int, active: int) -> bool:
    """inactive_is_low(): inactive * ratio < active, ratio = sqrt(10 * GiB) or 1."""
    n_inactive = mm.lru.count[inactive]
    n_active = mm.lru.count[active]
    gb = (n_inactive + n_active) >> (30 - 12)
    ratio = int((10 * gb) ** 0.5) if gb else 1
    return n_inactive * ratio < n_active


def shrink_active_list(mm: Mm, host: Host, inactive: int, active: int, nr: int) -> None:
    """Move pages from the active tail to the inactive head.

    Anonymous pages are deactivated whether referenced or not (only
    executable file pages are rotated), their young bit cleared.
    """
    pages = mm.pages
    moved = mm.lru.isolate_tail(active, nr)
    host.vmstat.inc("pgrefill", len(moved))
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


async def shrink_lruvec(
    mm: Mm,
    nid: int,
    memcg: Memcg,
    nr_to_reclaim: int,
    *,
    kswapd: bool,
    memcg_reclaim: bool = False,
) -> tuple[int, int]:
    """Reclaim up to nr_to_reclaim pages of one memcg from one node: (reclaimed, ns)."""
    inactive, active = mm.lru_lists(nid, memcg.index)
    host = mm.hosts[memcg.host]
    reclaimed = 0
    cost = 0
    scanned_total = 0
    # Bound the work of one call: scan at most twice the lists' size.
    budget = 2 * (mm.lru.count[inactive] + mm.lru.count[active]) + SWAP_CLUSTER_MAX
    while reclaimed < nr_to_reclaim and scanned_total < budget:
        if inactive_is_low(mm, inactive, active) or mm.lru.count[inactive] == 0:
            shrink_active_list(mm, host, inactive, active, SWAP_CLUSTER_MAX)
        scanned, got, c, _ = await shrink_inactive_list(
            mm,
            nid,
            host,
            inactive,
            active,
            SWAP_CLUSTER_MAX,
            kswapd=kswapd,
            memcg_reclaim=memcg_reclaim,
        )
        if not scanned:
            break
        scanned_total += scanned
        reclaimed += got
        cost += c
    return reclaimed, cost


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
) -> tuple[int, int, int, int]:
    """Isolate up to nr_to_scan pages off the inactive tail and reclaim them:
    (scanned, reclaimed, ns, pages written out)."""
    batch = mm.lru.isolate_tail(inactive, nr_to_scan)
    if not batch:
        return 0, 0, 0, 0
    host.vmstat.inc("pgscan_kswapd" if kswapd else "pgscan_direct", len(batch))
    cost = len(batch) * mm.costs.reclaim_scan_ns
    got, c, nr_pageout = await shrink_folio_list(
        mm, batch, nid, host, inactive, active, kswapd=kswapd, memcg_reclaim=memcg_reclaim
    )
    return len(batch), got, cost + c, nr_pageout


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


async def shrink_node(mm: Mm, nid: int, nr_to_reclaim: int, *, kswapd: bool) -> tuple[int, int]:
    """Reclaim from every memcg with pages on the node, in turn.

    As shrink_node_memcgs() does, each cgroup's LRU pass is followed by its
    share of the memcg-aware shrinkers (shrink_slab()): zswap's, at the
    priority the pass reached, with the cgroup's deferred work. The root
    cgroup's turn runs the shrinkers that are not memcg-aware: zsmalloc's,
    which compacts the zswap pool of each host on the node.
    """
    from .zswap import zs_shrink_slab, zswap_shrinker_memcg

    reclaimed = 0
    cost = 0
    node = mm.nodes[nid]
    memcgs = sorted(node.lru)
    key = "pgscan_kswapd" if kswapd else "pgscan_direct"
    share = max(SWAP_CLUSTER_MAX, nr_to_reclaim // max(len(memcgs), 1))
    node_scanned = node_lru_pages = 0
    for idx in memcgs:
        if reclaimed >= nr_to_reclaim:
            break
        memcg = mm.memcgs[idx]
        host = mm.hosts[memcg.host]
        inactive, active = node.lru[idx]
        lru_pages = mm.lru.count[inactive] + mm.lru.count[active]
        before = host.vmstat[key]
        got, c = await shrink_lruvec(mm, nid, memcg, share, kswapd=kswapd)
        reclaimed += got
        cost += c
        scanned = host.vmstat[key] - before
        node_scanned += scanned
        node_lru_pages += lru_pages
        if scanned:
            cost += await zswap_shrinker_memcg(mm, memcg, scanned, lru_pages, got)
    # The root cgroup's turn, at every priority the pass went through (all of
    # them when the LRUs gave nothing back).
    lowest = reclaim_priority(node_scanned, node_lru_pages, reclaimed)
    for hid in node.hosts:
        zswap = mm.hosts[hid].zswap
        if zswap is not None and zswap.zspool.pages_allocated:
            for priority in range(DEF_PRIORITY, lowest - 1, -1):
                cost += await zs_shrink_slab(mm, zswap, priority)
    return reclaimed, cost


async def try_to_free_pages(mm: Mm, host: Host) -> tuple[int, int]:
    """Direct reclaim along the host's zonelist."""
    reclaimed = 0
    cost = 0
    for nid in host.zonelist:
        got, c = await shrink_node(mm, nid, SWAP_CLUSTER_MAX, kswapd=False)
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
            got, c = await shrink_lruvec_memcg(mm, nid, memcg, priority, nr_to_reclaim)
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


async def shrink_lruvec_memcg(
    mm: Mm, nid: int, memcg: Memcg, priority: int, nr_to_reclaim: int
) -> tuple[int, int]:
    """shrink_lruvec() of one cgroup on one node at one priority: (reclaimed, ns).

    Scan targets are each list's size >> priority, scaled by the anon share
    (anon_scan_fraction(); the whole list at priority 0). The inactive list
    is scanned in chunks of SWAP_CLUSTER_MAX, the active list deactivated
    alongside when the inactive one is low; the pass stops once it alone has
    reclaimed nr_to_reclaim (so a call reclaims whole chunks, often more
    than asked), and ends by rebalancing the lists.
    """
    inactive, active = mm.lru_lists(nid, memcg.index)
    host = mm.hosts[memcg.host]
    count = mm.lru.count
    may_deactivate = inactive_is_low(mm, inactive, active)
    targets = [count[inactive] >> priority, count[active] >> priority]
    if mm.tunables.swappiness == 0:
        # Cgroup reclaim with swappiness 0 scans file pages only (SCAN_FILE),
        # at every priority: a cgroup of anon pages cannot reclaim.
        targets = [0, 0]
    elif priority:
        num, den = anon_scan_fraction(mm, memcg, nid)
        targets = [t * num // den for t in targets]
    # At priority 0 both kinds are scanned whole (SCAN_EQUAL).
    reclaimed = 0
    cost = 0
    while targets[0]:
        chunk = min(targets[0], SWAP_CLUSTER_MAX)
        targets[0] -= chunk
        scanned, got, c, nr_pageout = await shrink_inactive_list(
            mm, nid, host, inactive, active, chunk, kswapd=False, memcg_reclaim=True
        )
        if scanned:
            reclaimed += got
            cost += c
            lru_note_cost(mm, memcg, nid, nr_pageout, scanned - got)
        if targets[1]:
            chunk = min(targets[1], SWAP_CLUSTER_MAX)
            targets[1] -= chunk
            if may_deactivate:
                shrink_active_list(mm, host, inactive, active, chunk)
        if reclaimed >= nr_to_reclaim:
            break
    if inactive_is_low(mm, inactive, active):
        shrink_active_list(mm, host, inactive, active, SWAP_CLUSTER_MAX)
    return reclaimed, cost


# -- kswapd ---------------------------------------------------------------


def _balance_mark(mm: Mm, nid: int) -> int:
    """pgdat_balanced(): WMARK_PROMO on top-tier nodes in memory-tiering mode.

    mm/vmscan.c checks sysctl_numa_balancing_mode & NUMA_BALANCING_MEMORY_TIERING.
    """
    node = mm.nodes[nid]
    if mm.tunables.numa.numa_balancing & 2:
        return node.wmark.promo
    return node.wmark.high


def pgdat_balanced(mm: Mm, nid: int) -> bool:
    node = mm.nodes[nid]
    if node.kind == NodeKind.CRAM:
        # The compressed node's kswapd runs while the device reports pressure.
        return node.pressure == 0 and node.free_pages >= node.wmark.high
    return node.free_pages >= _balance_mark(mm, nid)


def wakeup_kswapd(mm: Mm, nid: int) -> None:
    node = mm.nodes[nid]
    if node.kswapd_running or node.lost:
        return
    if pgdat_balanced(mm, nid):
        return
    if node.kind == NodeKind.CRAM and not mm.tunables.cram.reclaim:
        return
    node.kswapd_running = True
    for h in node.hosts:
        mm.hosts[h].vmstat.inc("kswapd_wake")
    failures = 0

    async def kswapd_step() -> None:
        nonlocal failures
        if node.lost or mm.stopped or pgdat_balanced(mm, nid):
            node.kswapd_running = False
            return
        reclaimed, cost = await shrink_node(mm, nid, SWAP_CLUSTER_MAX, kswapd=True)
        if reclaimed == 0:
            failures += 1
            if failures >= KSWAPD_MAX_FAILURES:
                node.kswapd_running = False
                return
        else:
            failures = 0
        # kswapd runs on its own CPU: its next batch follows this one's work.
        mm.sched.after(max(cost, 1_000), kswapd_step, f"kswapd{nid}")

    mm.sched.after(0, kswapd_step, f"kswapd{nid}")
