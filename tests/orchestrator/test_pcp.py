"""Per-CPU page lists (struct per_cpu_pages): batch and bounds, frees kept
out of the watermarks' count, refills in batches, drains (mmzone.py,
page_alloc.py)."""

from __future__ import annotations

from types import SimpleNamespace

from sim_helpers import ZONED, run_text
from tiersim.orchestrator.mmzone import (
    ZONE_DMA,
    ZONE_DMA32,
    Watermarks,
    new_zone,
    setup_zone_pageset,
)
from tiersim.orchestrator.page_alloc import drain_all_pages, free_one, release_frame, rmqueue


def _dma32(free: int, cpus: int = 1):  # type: ignore[no-untyped-def]
    """The reference guest's node-0 DMA32 zone (its /proc/zoneinfo marks), `free` pages free."""
    zone = new_zone(ZONE_DMA32, 0, 24464, managed=32728)
    zone.wmark = Watermarks(min=248, low=310, high=372, promo=434)
    zone.free = zone.free_movable = free
    setup_zone_pageset(zone, cpus)
    node = SimpleNamespace(
        id=0,
        hosts=[0],
        zones=[zone],
        free_pages=free,
        nr_pages=24464 - free,
        reclaim_held=None,
    )
    mm = SimpleNamespace(hosts=[SimpleNamespace(vmstat={zone.pgalloc: 0})], nodes=[node])
    return zone, node, mm


def test_batch_and_bounds_follow_the_kernels_formulas() -> None:
    zone, _, _ = _dma32(1000)
    pcp = zone.pcp
    assert pcp is not None
    # zone_batchsize(): 32728 >> 10 = 31, / 4 = 7, rounddown_pow_of_two(7 + 3) - 1.
    # zone_highsize(): the low watermark over one CPU; an eighth of the zone.
    assert (pcp.batch, pcp.high_min, pcp.high_max) == (7, 310, 4091)
    two, _, _ = _dma32(1000, cpus=2)
    assert two.pcp is not None and (two.pcp.high_min, two.pcp.high_max) == (155, 2045)
    dma = new_zone(ZONE_DMA, 0, 3808, managed=3840)
    dma.wmark = Watermarks(min=29, low=36, high=43, promo=50)
    setup_zone_pageset(dma, 1)
    assert dma.pcp is not None and (dma.pcp.batch, dma.pcp.high_min) == (1, 36)


def test_frees_below_the_high_watermark_stay_on_the_list_out_of_the_count() -> None:
    zone, node, _ = _dma32(100)
    pcp = zone.pcp
    assert pcp is not None
    zone.below_high = True
    for page in range(309):
        free_one(node, zone, page)  # type: ignore[arg-type]
    # Free, but NR_FREE_PAGES (what every watermark check reads) has not moved.
    assert (pcp.count, zone.free, node.free_pages) == (309, 100, 409)
    free_one(node, zone, 309)  # type: ignore[arg-type]
    # At high_min the list gives back the recent frees, capped at 32 batches,
    # and keeps the rest: 310 - 224.
    assert (pcp.count, zone.free) == (86, 324)
    assert zone.below_high  # 324 is still below the high watermark
    # While kswapd reclaims the zone the list holds at most four batches.
    zone.reclaim_active = True
    for page in range(310, 330):
        free_one(node, zone, page)  # type: ignore[arg-type]
    assert pcp.count <= 4 * pcp.batch
    assert node.free_pages == zone.free + pcp.count


def test_an_empty_list_refills_in_a_batch_and_a_drain_empties_it() -> None:
    zone, node, mm = _dma32(1000)
    pcp = zone.pcp
    assert pcp is not None
    rmqueue(mm, node, zone, 0)  # type: ignore[arg-type]
    # The refill took a batch off the buddy lists; one page of it was allocated.
    assert zone.free == 1000 - pcp.batch and pcp.count == pcp.batch - 1
    assert node.free_pages == 999 and mm.hosts[0].vmstat["pgalloc_dma32"] == 1
    # Refills that follow each other without a free double the batch.
    taken = 1000 - zone.free
    for page in range(1, 40):
        rmqueue(mm, node, zone, page)  # type: ignore[arg-type]
    assert 1000 - zone.free - taken > 2 * pcp.batch
    drain_all_pages(mm)  # type: ignore[arg-type]
    assert pcp.count == 0 and zone.free == node.free_pages == 960


def test_a_zoned_run_with_the_lists_keeps_its_frames() -> None:
    off = run_text(ZONED)[0]
    on = run_text(ZONED, {"tunables.pcp_lists": True})[0]
    assert all(n["pcp_pages"] == 0 for n in off["nodes"].values())
    node0 = on["nodes"]["node0"]
    assert 0 < node0["pcp_pages"] <= node0["free_pages"]
    for doc in (off, on):
        for n in doc["nodes"].values():
            assert n["used_pages"] + n["free_pages"] == n["present_pages"]


def test_frames_a_kswapd_batch_frees_come_free_when_the_batch_ends() -> None:
    zone, node, _ = _dma32(1000)
    zone.pcp = None
    node.reclaim_held = []
    for page in range(32):
        free_one(node, zone, page)  # type: ignore[arg-type]
    # Still the batch's: no watermark check sees them yet.
    assert (zone.free, node.free_pages, node.nr_pages) == (1000, 1000, 24464 - 1000)
    held, node.reclaim_held = node.reclaim_held, None
    assert len(held) == 32
    for z, block in held:
        release_frame(node, z, block)  # type: ignore[arg-type]
    assert (zone.free, node.free_pages, node.nr_pages) == (1032, 1032, 24464 - 1032)
