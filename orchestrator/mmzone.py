"""Zones within a NUMA node, their watermarks and pageblock migratetypes (include/linux/mmzone.h).

A node's memory is split into zones by physical address: on x86-64 the
first 16 MiB is ZONE_DMA, the rest below 4 GiB ZONE_DMA32, memory above it
ZONE_NORMAL. An allocation may use any zone up to its highest_zoneidx (user
pages: all of them), highest first; a lower zone keeps a lowmem reserve
against allocations that could have used a higher one, so the small DMA
zone is the last to fill. Each zone has its own watermarks, derived from
its managed pages, and kswapd reclaims for a zone: it skips LRU pages in
zones above the one it balances.

Within a zone, free memory lies in 2 MiB pageblocks of one migratetype.
User pages are movable; a movable allocation that finds no movable free
page takes one from an unmovable or reclaimable pageblock (a fallback).
The fallback boosts the zone's watermarks and wakes kswapd, even when the
zone has plenty of free memory by its watermarks, so that reclaim makes
room before the allocator fragments more pageblocks (boost_watermark(),
mm/page_alloc.c). A fallback claims the whole pageblock for movable pages
when half of it is free or movable already; otherwise it takes the page
alone, and that page goes back to the foreign pageblock when freed.

tiersim keeps counts, not frames: per zone its free pages, the movable free
ones, and per foreign pageblock its free pages and the movable pages taken
from it. The buddy allocator's orders are not modelled: a pageblock's free
pages count as one block (the claim attempt needs a free block of at least
pageblock_order / 2, so 16 pages here). A node without zones configured has
a single zone, all movable, which behaves exactly as a node without zones.

Order-0 pages are allocated from and freed to per-CPU page lists (struct
per_cpu_pages), which take and give back pages from the buddy lists in
batches. Pages on them are free, but NR_FREE_PAGES does not count them, and
every watermark check reads NR_FREE_PAGES: a zone whose list holds a few
hundred pages looks that much fuller to the allocator and to kswapd. On a
small zone that is more than the distance between its watermarks (the
reference guest's DMA32 zone: low 310, high 372, a list of up to 310).
tiersim models a zone's list as one list standing for all the host's CPUs
(exact for one CPU), with the kernel's batch and the bounds its automatic
tuning moves `high` between, on nodes with zones configured, when the
scenario turns them on (tunables.pcp_lists). The periodic decay of `high`
and the drain of remote nodes' lists (vmstat_update()) are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

ZONE_DMA, ZONE_DMA32, ZONE_NORMAL, ZONE_MOVABLE = range(4)
MAX_NR_ZONES = 4
ZONE_NAMES = ("DMA", "DMA32", "Normal", "Movable")
PAGEBLOCK_ORDER = 9
PAGEBLOCK_NR_PAGES = 1 << PAGEBLOCK_ORDER
# should_try_claim_block(): a movable allocation tries to claim a foreign
# pageblock only from a free block of at least this order.
CLAIM_MIN_PAGES = 1 << (PAGEBLOCK_ORDER // 2)
PGALLOC = tuple(f"pgalloc_{n.lower()}" for n in ZONE_NAMES)
PGSKIP = tuple(f"pgskip_{n.lower()}" for n in ZONE_NAMES)
# sysctl_lowmem_reserve_ratio: DMA, DMA32, NORMAL, MOVABLE.
LOWMEM_RESERVE_RATIO = (256, 256, 32, 0)
WATERMARK_BOOST_FACTOR = 15000  # vm.watermark_boost_factor: 150 % of the high watermark
# Migratetypes a movable allocation falls back to, in the kernel's order
# (fallbacks[MIGRATE_MOVABLE]).
FALLBACK_TYPES = ("reclaimable", "unmovable")
PCP_BATCH_SCALE_MAX = 5  # CONFIG_PCP_BATCH_SCALE_MAX
MIN_PERCPU_PAGELIST_HIGH_FRACTION = 8


@dataclass(frozen=True)
class Watermarks:
    """WMARK_MIN / LOW / HIGH / PROMO, in pages."""

    min: int
    low: int
    high: int
    promo: int


@dataclass
class PageBlock:
    """A pageblock of another migratetype than movable, with free pages."""

    migratetype: str
    free: int
    # Movable pages taken from it and still allocated (alike_pages of a claim).
    movable: int = 0
    # Claimed for movable pages: its frees now go to the movable free lists.
    claimed: bool = False


@dataclass
class Pcp:
    """A zone's per-CPU list of free order-0 pages (struct per_cpu_pages).

    `high` is tuned between `high_min` (the zone's low watermark over the
    CPUs) and `high_max` (an eighth of the zone): up while the zone is above
    its high watermark, down while it is below or kswapd reclaims it.
    `free_count` counts recent frees (the batch a flush gives back),
    `alloc_factor` doubles the batch a refill takes while allocations
    follow each other without frees.
    """

    batch: int
    high_min: int
    high_max: int
    high: int
    count: int = 0
    free_count: int = 0
    alloc_factor: int = 0


@dataclass
class Zone:
    """One zone of one node (struct zone), as counts."""

    idx: int
    node: int
    managed: int  # the base of the watermarks and lowmem reserves
    present: int  # pages tiersim hands out from it (its free memory at start)
    free: int
    free_movable: int
    blocks: list[PageBlock] = field(default_factory=list)
    wmark: Watermarks = Watermarks(0, 0, 0, 0)
    # lowmem_reserve[highest_zoneidx]: pages kept from allocations that could
    # have used a higher zone.
    lowmem_reserve: list[int] = field(default_factory=lambda: [0] * MAX_NR_ZONES)
    watermark_boost: int = 0
    boosted: bool = False  # ZONE_BOOSTED_WATERMARK: wake kswapd after this allocation
    # page -> the foreign pageblock its frame was taken from.
    stolen: dict[int, PageBlock] = field(default_factory=dict)
    # Frames taken without a page behind them (the zswap pool's zspages).
    untracked: int = 0
    # The per-CPU list; `free` (NR_FREE_PAGES) leaves its pages out.
    pcp: Pcp | None = None
    below_high: bool = False  # ZONE_BELOW_HIGH: an allocation found it below high
    reclaim_active: bool = False  # ZONE_RECLAIM_ACTIVE: kswapd is balancing it

    @property
    def name(self) -> str:
        return ZONE_NAMES[self.idx]

    @property
    def pgalloc(self) -> str:
        """The vmstat counter of allocations in this zone (pgalloc_dma32 ...)."""
        return PGALLOC[self.idx]

    def mark(self, which: str) -> int:
        """wmark_pages(): the watermark with the boost on top."""
        return int(getattr(self.wmark, which)) + self.watermark_boost


def new_zone(
    idx: int,
    node: int,
    present: int,
    managed: int | None = None,
    blocks: list[PageBlock] | None = None,
) -> Zone:
    blocks = [b for b in blocks or [] if b.free > 0]
    foreign = sum(b.free for b in blocks)
    if foreign > present:
        raise ValueError(
            f"zone {ZONE_NAMES[idx]}: {foreign} free pages in foreign pageblocks, "
            f"more than its {present} pages"
        )
    return Zone(
        idx=idx,
        node=node,
        managed=managed if managed is not None else present,
        present=present,
        free=present,
        free_movable=present - foreign,
        blocks=blocks,
    )


def min_free_kbytes(lowmem_pages: int) -> int:
    """calculate_min_free_kbytes(): int_sqrt(lowmem_kbytes * 16), clamped to [128, 262144]."""
    lowmem_kbytes = lowmem_pages * 4
    return max(128, min(262144, math.isqrt(lowmem_kbytes * 16)))


def setup_per_zone_wmarks(
    zones: list[Zone], watermark_scale_factor: int = 10, lowmem: int | None = None
) -> None:
    """__setup_per_zone_wmarks() for `zones` of a host whose zones manage
    `lowmem` pages in all (default: these zones').

    min is min_free_kbytes shared out in proportion to managed pages; low and
    high add max(min/4, managed * watermark_scale_factor / 10000) once and
    twice; WMARK_PROMO adds it a third time. The boost is reset.
    """
    if lowmem is None:
        lowmem = sum(z.managed for z in zones)
    pages_min = min_free_kbytes(lowmem) // 4
    for z in zones:
        wmin = pages_min * z.managed // lowmem if lowmem else 0
        tmp = max(wmin // 4, z.managed * watermark_scale_factor // 10000)
        z.wmark = Watermarks(min=wmin, low=wmin + tmp, high=wmin + 2 * tmp, promo=wmin + 3 * tmp)
        z.watermark_boost = 0


def setup_per_zone_lowmem_reserve(zones: list[Zone]) -> None:
    """setup_per_zone_lowmem_reserve() for the zones of one node (ascending).

    Zone i keeps, against an allocation whose highest zone is j > i, the
    managed pages of the zones above it up to j over its ratio.
    """
    by_idx = {z.idx: z for z in zones}
    for z in zones:
        ratio = LOWMEM_RESERVE_RATIO[z.idx]
        reserve = [0] * MAX_NR_ZONES
        upper = 0
        for j in range(z.idx + 1, MAX_NR_ZONES):
            if j in by_idx:
                upper += by_idx[j].managed
            reserve[j] = upper // ratio if ratio and z.managed else 0
        z.lowmem_reserve = reserve


def node_watermarks(zones: list[Zone]) -> Watermarks:
    """A node's watermarks for node-wide checks: the sum of its zones', with
    the lowmem reserves the lower zones keep from user pages on top (those
    pages are free but out of a movable allocation's reach)."""
    reserve = sum(z.lowmem_reserve[ZONE_MOVABLE] for z in zones)
    return Watermarks(
        min=sum(z.wmark.min for z in zones) + reserve,
        low=sum(z.wmark.low for z in zones) + reserve,
        high=sum(z.wmark.high for z in zones) + reserve,
        promo=sum(z.wmark.promo for z in zones) + reserve,
    )


def zone_batchsize(managed: int) -> int:
    """zone_batchsize(): ~0.1 % of the zone (at most 1 MiB) over four,
    clamped to 2^n - 1; at least 1 (zone_set_pageset_high_and_batch())."""
    batch = max(min(managed >> 10, 256) // 4, 1)
    batch = (1 << ((batch + batch // 2).bit_length() - 1)) - 1
    return max(1, batch)


def zone_highsize(zone: Zone, batch: int, cpus: int, high_fraction: int) -> int:
    """zone_highsize(): the zone's low watermark (or `managed / high_fraction`)
    split over the CPUs, at least four batches."""
    total = zone.managed // high_fraction if high_fraction else zone.mark("low")
    return max(total // max(cpus, 1), batch << 2)


def setup_zone_pageset(zone: Zone, cpus: int) -> None:
    """zone_pcp_update(): the zone's per-CPU list, empty, with its batch and bounds."""
    batch = zone_batchsize(zone.managed)
    high_min = zone_highsize(zone, batch, cpus, 0)
    high_max = zone_highsize(zone, batch, cpus, MIN_PERCPU_PAGELIST_HIGH_FRACTION)
    zone.pcp = Pcp(batch=batch, high_min=high_min, high_max=high_max, high=high_min)


def boost_watermark(zone: Zone) -> bool:
    """boost_watermark(): raise the zone's watermarks by a pageblock, up to 150 % of high."""
    if not WATERMARK_BOOST_FACTOR or zone.managed < PAGEBLOCK_NR_PAGES * 4:
        return False
    max_boost = zone.wmark.high * WATERMARK_BOOST_FACTOR // 10000
    max_boost = max(PAGEBLOCK_NR_PAGES, max_boost)
    zone.watermark_boost = min(zone.watermark_boost + PAGEBLOCK_NR_PAGES, max_boost)
    return True
