"""Frame allocation and zone watermarks (mm/page_alloc.c).

Byte-addressable nodes hand out page frames from free counts the engine
keeps per zone (mmzone.py), as the buddy allocator does; devices are only
asked when data moves (or, for a compressed node, whether a page is safe to
place). A user page is a movable allocation: it takes a movable free page,
or falls back to another migratetype's pageblock, which boosts the zone's
watermarks and wakes kswapd.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .mmzone import (
    CLAIM_MIN_PAGES,
    FALLBACK_TYPES,
    PAGEBLOCK_NR_PAGES,
    PCP_BATCH_SCALE_MAX,
    ZONE_MOVABLE,
    PageBlock,
    Pcp,
    Watermarks,
    Zone,
    boost_watermark,
    min_free_kbytes,
)

if TYPE_CHECKING:
    from ._mm import Host, Mm, Numa

__all__ = [
    "MAX_RECLAIM_RETRIES",
    "Watermarks",
    "alloc_migration_frames",
    "alloc_page",
    "drain_all_pages",
    "frames_ok",
    "free_frame",
    "give_frames",
    "min_free_kbytes",
    "take_frame",
    "take_frames",
]

MAX_RECLAIM_RETRIES = 16  # mm/page_alloc.c
MAX_DIRECT_RECLAIM_ROUNDS = 64 * MAX_RECLAIM_RETRIES


# fallbacks[MIGRATE_MOVABLE]: the order in which a movable allocation tries them.
_FALLBACK_ORDER = {mt: i for i, mt in enumerate(FALLBACK_TYPES)}


# -- one zone ---------------------------------------------------------------


def _claim(zone: Zone, block: PageBlock) -> None:
    """The pageblock becomes movable: its free pages join the movable free lists."""
    block.claimed = True
    zone.free_movable += block.free
    block.free = 0
    zone.blocks.remove(block)


def _rmqueue_fallback(zone: Zone, page: int) -> None:
    """No movable free page: __rmqueue_claim(), then __rmqueue_steal().

    The claim looks at the largest free block of a fallback migratetype: a
    whole free pageblock is taken over as it is; a block of at least
    CLAIM_MIN_PAGES boosts the zone's watermarks (the allocation then wakes
    kswapd) and is claimed if half the pageblock is free or movable. Failing
    that, one page is stolen from the smallest free block and goes back to
    its pageblock when freed.
    """
    blocks = zone.blocks
    if not blocks:
        raise RuntimeError(f"zone {zone.name} of node {zone.node} has no free page")
    order = _FALLBACK_ORDER
    largest = max(blocks, key=lambda b: (b.free, -order[b.migratetype]))
    if largest.free >= PAGEBLOCK_NR_PAGES:
        _claim(zone, largest)
    elif largest.free >= CLAIM_MIN_PAGES:
        if boost_watermark(zone):
            zone.boosted = True
        if largest.free + largest.movable >= PAGEBLOCK_NR_PAGES // 2:
            _claim(zone, largest)
    if zone.free_movable:
        zone.free_movable -= 1
        return
    smallest = min(blocks, key=lambda b: (b.free, order[b.migratetype]))
    smallest.free -= 1
    smallest.movable += 1
    if not smallest.free:
        blocks.remove(smallest)
    if page >= 0:
        zone.stolen[page] = smallest


def _clamp(v: int, lo: int, hi: int) -> int:
    """The kernel's clamp(): `hi` wins when the bounds cross."""
    return min(max(v, lo), hi)


def _nr_pcp_alloc(zone: Zone, pcp: Pcp) -> int:
    """nr_pcp_alloc(): how many pages an empty list takes from the buddy lists.

    The batch doubles with each refill that follows another without a free
    in between (alloc_factor), bounded by room under `high`; above its high
    watermark the zone lets `high` grow by the batch."""
    base = pcp.batch
    high = pcp.high = _clamp(pcp.high, pcp.high_min, pcp.high_max)
    if high < base:
        return 1
    batch = base << pcp.alloc_factor
    if pcp.high_min != pcp.high_max and not zone.below_high:
        high = pcp.high = min(high + batch, pcp.high_max)
    max_nr_alloc = max(high - pcp.count - base, base)
    if batch <= max_nr_alloc and pcp.alloc_factor < PCP_BATCH_SCALE_MAX:
        pcp.alloc_factor += 1
    batch = min(batch, max_nr_alloc)
    return max(batch, 2) if batch > 1 else batch


def _nr_pcp_high(zone: Zone, pcp: Pcp) -> int:
    """nr_pcp_high(): the count at which a free flushes the list.

    While kswapd reclaims the zone the list keeps at most four batches; below
    the zone's high watermark `high` decays towards `high_min` and the list
    flushes at `high_min`; above it, a list that fills up raises `high` to
    hold the frees in progress."""
    batch = pcp.batch
    high = pcp.high = _clamp(pcp.high, pcp.high_min, pcp.high_max)
    if not high:
        return 0
    if zone.reclaim_active:
        pcp.high = max(high - max(pcp.free_count, batch), pcp.high_min)
        return min(batch << 2, pcp.high)
    if pcp.high_min == pcp.high_max:
        return high
    if zone.below_high:
        pcp.high = max(high - max(pcp.free_count, batch), pcp.high_min)
        high = max(pcp.count, pcp.high_min)
    elif pcp.count >= high:
        need_high = pcp.free_count + batch
        if pcp.high < need_high:
            pcp.high = _clamp(need_high, pcp.high_min, pcp.high_max)
    return high


def _nr_pcp_free(pcp: Pcp, high: int) -> int:
    """nr_pcp_free(): how many pages a flush gives back: the recent frees,
    leaving at least a batch on the list."""
    batch = pcp.batch
    if high < batch:
        return 1
    return _clamp(pcp.free_count, batch, high - batch)


def _pcp_to_buddy(zone: Zone, pcp: Pcp, n: int) -> None:
    """free_pcppages_bulk(): `n` pages of the list back to the movable free lists."""
    n = min(n, pcp.count)
    pcp.count -= n
    zone.free += n
    zone.free_movable += n


def _free_to_pcp(zone: Zone, pcp: Pcp) -> None:
    """free_frozen_page_commit(): the page joins the list; past `high` the
    list gives a batch back, and a zone back above its high watermark
    loses ZONE_BELOW_HIGH."""
    pcp.alloc_factor >>= 1
    pcp.count += 1
    if pcp.free_count < pcp.batch << PCP_BATCH_SCALE_MAX:
        pcp.free_count += 1
    high = _nr_pcp_high(zone, pcp)
    if pcp.count >= high:
        _pcp_to_buddy(zone, pcp, _nr_pcp_free(pcp, high))
        if zone.below_high and _headroom(zone, "high") >= 1:
            zone.below_high = False


def drain_all_pages(mm: Mm) -> None:
    """drain_all_pages(): every zone's per-CPU list back to the buddy lists."""
    for node in mm.nodes:
        for zone in node.zones:
            if zone.pcp is not None:
                _pcp_to_buddy(zone, zone.pcp, zone.pcp.count)


def _note_below_high(zone: Zone) -> None:
    """get_page_from_freelist() checks a zone against its high watermark first
    and marks it ZONE_BELOW_HIGH when it fails (cleared by a free)."""
    if not zone.below_high and _headroom(zone, "high") < 1:
        zone.below_high = True


def rmqueue(mm: Mm, node: Numa, zone: Zone, page: int) -> None:
    """Take one movable frame of `zone` for `page` (-1: a frame without a page).

    From the zone's per-CPU list, refilled from the movable free lists in a
    batch when empty (rmqueue_pcplist()); with no movable free page the
    allocation falls back to another migratetype's pageblock, page by page.
    """
    pcp = zone.pcp
    if pcp is not None:
        pcp.free_count >>= 1
        if not pcp.count:
            n = min(_nr_pcp_alloc(zone, pcp), zone.free_movable)
            zone.free -= n
            zone.free_movable -= n
            pcp.count += n
    if pcp is not None and pcp.count:
        pcp.count -= 1
    elif zone.free_movable:
        zone.free_movable -= 1
        zone.free -= 1
    else:
        _rmqueue_fallback(zone, page)
        zone.free -= 1
    node.free_pages -= 1
    node.nr_pages += 1
    mm.hosts[node.hosts[0]].vmstat[zone.pgalloc] += 1
    if zone.boosted:
        # rmqueue(): ZONE_BOOSTED_WATERMARK wakes kswapd for this zone.
        zone.boosted = False
        from .vmscan import wakeup_kswapd

        wakeup_kswapd(mm, node.id, zone.idx)


def free_one(node: Numa, zone: Zone, page: int) -> None:
    """Give a frame back to its zone: to its foreign pageblock if it was stolen from one.

    While kswapd reclaims a batch on the node, the frame is held until the
    batch's time has passed (Numa.reclaim_held).
    """
    block = zone.stolen.pop(page, None) if zone.stolen else None
    if node.reclaim_held is not None:
        node.reclaim_held.append((zone, block))
        return
    release_frame(node, zone, block)


def release_frame(node: Numa, zone: Zone, block: PageBlock | None) -> None:
    """The frame is free: on its zone's lists (or per-CPU list), or on its
    foreign pageblock's if it had been stolen from one."""
    node.free_pages += 1
    node.nr_pages -= 1
    if block is not None and not block.claimed:
        # (The kernel puts it on the list of its pageblock's migratetype,
        # out of a movable allocation's reach; tiersim returns it at once.)
        if not block.free:
            zone.blocks.append(block)
        block.free += 1
        block.movable -= 1
    elif zone.pcp is not None:
        _free_to_pcp(zone, zone.pcp)
        return
    else:
        zone.free_movable += 1
    zone.free += 1


# -- one node ---------------------------------------------------------------


def _headroom(zone: Zone, which: str) -> int:
    """Pages a user-page allocation (highest zone ZONE_MOVABLE) may take from
    the zone before it falls below the (boosted) watermark `which` plus the
    lowmem reserve kept against it."""
    return zone.free - zone.mark(which) - zone.lowmem_reserve[ZONE_MOVABLE]


def frames_ok(mm: Mm, nid: int, which: str, n: int = 1) -> bool:
    """Can `n` frames be taken on node `nid` without going below watermark
    `which`? "none" ignores the watermarks and reserves (ALLOC_NO_WATERMARKS)."""
    node = mm.nodes[nid]
    if node.lost:
        return False
    if which == "none":
        return node.free_pages >= n
    if node.simple:
        return node.free_pages - n >= int(getattr(node.wmark, which))
    return sum(max(0, _headroom(z, which)) for z in node.zones) >= n


def _zone_for(node: Numa) -> Zone:
    """The zone an allocation the caller checked (frames_ok()) takes from: the
    highest above its min watermark, else the one with the most room left."""
    zones = node.zones
    for z in reversed(zones):
        _note_below_high(z)
        if _headroom(z, "min") >= 1:
            return z
    free = [z for z in zones if z.free + (z.pcp.count if z.pcp else 0) > 0]
    if not free:
        raise RuntimeError(f"node {node.name} has no free frame left")
    return max(free, key=lambda z: _headroom(z, "min"))


def take_frame(mm: Mm, nid: int, page: int = -1) -> int:
    """Take a frame of node `nid` for `page`; returns its zone index.

    The caller has checked the node's watermarks. The page's zone is not
    written: a migrating page still holds its old frame until the migration
    frees it and records the new zone (migrate.promote_page()).
    """
    node = mm.nodes[nid]
    zone = _zone_for(node)
    rmqueue(mm, node, zone, page)
    return zone.idx


def alloc_migration_frames(mm: Mm, nid: int, pages: list[int]) -> list[int]:
    """Frames on node `nid` for migrating `pages` there: the zones of the
    first of them that got one.

    alloc_demote_folio() and alloc_misplaced_dst_folio() allocate on the
    target only (__GFP_THISNODE), without direct reclaim, down to the min
    watermark, and wake the target's kswapd once an allocation finds it
    below its low watermark. On a node of one movable zone this is done in
    bulk, with the same outcome as page by page.
    """
    node = mm.nodes[nid]
    if node.lost or not pages:
        return []
    from .vmscan import wakeup_kswapd

    if node.simple:
        n = len(pages)
        free0 = node.free_pages
        taken = min(n, max(0, free0 - node.wmark.min))
        first_low = max(0, free0 - node.wmark.low)  # the first page to see free - 1 < low
        if first_low < n and first_low <= taken:
            take_frames(mm, nid, first_low)
            wakeup_kswapd(mm, nid)
            take_frames(mm, nid, taken - first_low)
        else:
            take_frames(mm, nid, taken)
            if taken < n and free0 - taken - 1 < node.wmark.low:
                wakeup_kswapd(mm, nid)
        return [node.zones[0].idx] * taken
    out: list[int] = []
    woke = False
    for page in pages:
        if not woke and not any(_headroom(z, "low") >= 1 for z in node.zones):
            wakeup_kswapd(mm, nid)
            woke = True
        zone = None
        for z in reversed(node.zones):
            _note_below_high(z)
            if _headroom(z, "min") >= 1:
                zone = z
                break
        if zone is None:
            break
        rmqueue(mm, node, zone, page)
        out.append(zone.idx)
    return out


def take_frames(mm: Mm, nid: int, n: int) -> list[int]:
    """Take `n` frames of node `nid` that no page owns (the zswap pool's):
    the zone of each. On a node of one zone, n < 0 gives frames back."""
    node = mm.nodes[nid]
    if node.simple:
        zone = node.zones[0]
        zone.free -= n
        zone.free_movable -= n
        node.free_pages -= n
        node.nr_pages += n
        mm.hosts[node.hosts[0]].vmstat[zone.pgalloc] += max(n, 0)
        return [zone.idx] * max(n, 0)
    if n < 0:
        raise ValueError(f"node {node.name} has zones: give frames back with give_frames()")
    out = []
    for _ in range(n):
        zone = _zone_for(node)
        rmqueue(mm, node, zone, -1)
        zone.untracked += 1
        out.append(zone.idx)
    return out


def give_frames(mm: Mm, nid: int, zone_idx: int, n: int) -> None:
    """Give back `n` frames take_frames() took in zone `zone_idx` (-1: the node's only zone)."""
    node = mm.nodes[nid]
    if node.simple:
        take_frames(mm, nid, -n)
        return
    zone = node.zone_at(zone_idx)
    if zone.untracked < n:
        raise ValueError(
            f"zone {zone.name} of node {node.name} holds {zone.untracked} pool frames, not {n}"
        )
    zone.untracked -= n
    for _ in range(n):
        free_one(node, zone, -1)


def free_frame(mm: Mm, nid: int, page: int, zone_idx: int = -1) -> None:
    """Free the frame `page` holds on node `nid` (in zone `zone_idx`, by default
    the page's own)."""
    node = mm.nodes[nid]
    if node.simple:
        # One zone, no foreign pageblocks, no per-CPU list: a plain count.
        zone = node.zones[0]
    else:
        zone = node.zone_at(mm.pages.zone[page] if zone_idx < 0 else zone_idx)
    free_one(node, zone, page)


# -- the allocator ------------------------------------------------------------


def _take(mm: Mm, host: Host, nid: int, zone: Zone, page: int) -> int:
    node = mm.nodes[nid]
    rmqueue(mm, node, zone, page)
    if page >= 0:
        mm.pages.zone[page] = zone.idx
    host.vmstat.inc("numa_hit" if nid == host.zonelist[0] else "numa_miss")
    return nid


def _first_ok(mm: Mm, host: Host, which: str) -> tuple[int, Zone | None]:
    """get_page_from_freelist(): the first zone of the zonelist above its mark
    (nodes in distance order, each node's zones highest first)."""
    for nid in host.zonelist:
        node = mm.nodes[nid]
        if node.lost:
            continue
        for zone in reversed(node.zones):
            _note_below_high(zone)
            if _headroom(zone, which) >= 1:  # __zone_watermark_ok() for one page
                return nid, zone
    return -1, None


async def alloc_page(
    mm: Mm, host: Host, page: int = -1, direct_reclaim: bool = True
) -> tuple[int, int]:
    """Allocate one frame for a fault of `page` on `host`: (node id or -1, time spent in ns).

    The fast path takes from the first zone of the host's zonelist above its
    low watermark; the slow path wakes kswapd on every node of the zonelist,
    retries down to the min watermark, then reclaims directly
    (__alloc_pages_slowpath), giving up after a round without progress
    (rounds that reclaim something go on). The page's zone is recorded; it
    must not hold a frame on a node with zones meanwhile (migrations use
    take_frame()).
    """
    nid, zone = _first_ok(mm, host, "low")
    if zone is not None:
        return _take(mm, host, nid, zone, page), 0
    from .vmscan import try_to_free_pages, wakeup_kswapd

    for nid in host.zonelist:
        wakeup_kswapd(mm, nid)
    nid, zone = _first_ok(mm, host, "min")
    if zone is not None:
        return _take(mm, host, nid, zone, page), 0
    if not direct_reclaim:
        return -1, 0
    spent = 0
    # should_reclaim_retry(): rounds that reclaim something do not count
    # against the retries (a boosted watermark can take many of them); a
    # round without progress ends the attempt. MAX_DIRECT_RECLAIM_ROUNDS
    # bounds an allocation that reclaims a little each time forever.
    for _ in range(MAX_DIRECT_RECLAIM_ROUNDS):
        host.vmstat.inc("allocstall")
        progress, cost = await try_to_free_pages(mm, host)
        spent += cost
        nid, zone = _first_ok(mm, host, "min")
        if zone is None and progress:
            # __alloc_pages_direct_reclaim(): reclaim made progress but the
            # pages may sit on per-CPU lists: drain them and try again.
            drain_all_pages(mm)
            nid, zone = _first_ok(mm, host, "min")
        if zone is not None:
            return _take(mm, host, nid, zone, page), spent
        if progress == 0:
            break
    # Out of memory: the kernel would now kill a task; the caller decides.
    return -1, spent
