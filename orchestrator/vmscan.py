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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tiersim.nodes._types import NodeKind

from ._mm import SWAP_CLUSTER_MAX
from ._pages import F_ACTIVE, F_REFERENCED, F_YOUNG, PS_CRAM_RO, PS_MAPPED

if TYPE_CHECKING:
    from ._mm import Host, Memcg, Mm

KSWAPD_MAX_FAILURES = 16  # MAX_RECLAIM_RETRIES: kswapd gives up after this many idle runs


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
        batch = mm.lru.isolate_tail(inactive, SWAP_CLUSTER_MAX)
        if not batch:
            break
        scanned_total += len(batch)
        host.vmstat.inc("pgscan_kswapd" if kswapd else "pgscan_direct", len(batch))
        cost += len(batch) * mm.costs.reclaim_scan_ns
        got, c = await shrink_folio_list(
            mm, batch, nid, host, inactive, active, kswapd=kswapd, memcg_reclaim=memcg_reclaim
        )
        reclaimed += got
        cost += c
    return reclaimed, cost


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
) -> tuple[int, int]:
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
        return 0, 0

    cost = 0
    reclaimed = 0
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
        for page in kept:
            # Could not be swapped (no space, zswap refused without
            # writeback): activate, as shrink_folio_list does on failure.
            if pages.state[page] in (PS_MAPPED, PS_CRAM_RO) and pages.node[page] == nid:
                flags[page] |= F_ACTIVE
                mm.lru.add_head(active, page)
    host.vmstat.inc("pgsteal_kswapd" if kswapd else "pgsteal_direct", reclaimed)
    return reclaimed, cost


async def shrink_node(mm: Mm, nid: int, nr_to_reclaim: int, *, kswapd: bool) -> tuple[int, int]:
    """Reclaim from every memcg with pages on the node, in turn.

    As shrink_node_memcgs() does, each cgroup's LRU pass is followed by its
    share of the memcg-aware shrinkers (shrink_slab()): zswap's, at the
    priority the pass reached, with the cgroup's deferred work.
    """
    from .zswap import zswap_shrinker_memcg

    reclaimed = 0
    cost = 0
    node = mm.nodes[nid]
    memcgs = sorted(node.lru)
    if not memcgs:
        return 0, 0
    key = "pgscan_kswapd" if kswapd else "pgscan_direct"
    share = max(SWAP_CLUSTER_MAX, nr_to_reclaim // len(memcgs))
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
        if scanned:
            cost += await zswap_shrinker_memcg(mm, memcg, scanned, lru_pages, got)
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
    """memcg limit reclaim: the cgroup's own pages, on every node it uses, then
    the cgroup's share of the shrinkers (zswap's)."""
    from .zswap import zswap_shrinker_memcg

    host = mm.hosts[memcg.host]
    scanned_before = host.vmstat["pgscan_direct"]
    lru_pages = sum(
        mm.lru.count[i] + mm.lru.count[a]
        for node in mm.nodes
        for i, a in [node.lru.get(memcg.index, (-1, -1))]
        if i >= 0
    )
    reclaimed = 0
    cost = 0
    for nid in sorted(
        mm.nodes[n].id for n in range(len(mm.nodes)) if memcg.index in mm.nodes[n].lru
    ):
        if reclaimed >= nr:
            break
        got, c = await shrink_lruvec(
            mm, nid, memcg, nr - reclaimed, kswapd=False, memcg_reclaim=True
        )
        reclaimed += got
        cost += c
    scanned = host.vmstat["pgscan_direct"] - scanned_before
    cost += await zswap_shrinker_memcg(mm, memcg, scanned, lru_pages, reclaimed)
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
