"""Watermarks and the zswap shrinker's count."""

from tiersim.orchestrator.mmzone import (
    ZONE_MOVABLE,
    min_free_kbytes,
    new_zone,
    setup_per_zone_wmarks,
)


def test_min_free_kbytes_and_watermarks_follow_page_alloc() -> None:
    # 1 GiB of lowmem: sqrt(1048576 * 16) = 4096 KiB.
    assert min_free_kbytes(262144) == 4096
    assert min_free_kbytes(10) == 128  # clamped
    zone = new_zone(ZONE_MOVABLE, 0, 262144)
    setup_per_zone_wmarks([zone], watermark_scale_factor=10)
    wm = zone.wmark
    assert wm.min == 1024
    # max(min/4 = 256, 262144 * 10 / 10000 = 262) = 262
    assert (wm.low, wm.high, wm.promo) == (1024 + 262, 1024 + 524, 1024 + 786)


def test_shrinker_count_scales_the_live_lru_by_flushed_statistics() -> None:
    from types import SimpleNamespace

    from tiersim.orchestrator.zswap import zswap_shrinker_count

    memcg = SimpleNamespace(zswap_stat_stored=0, zswap_stat_bytes=0, zswap_disk_swapins=5)
    # Before a flush has seen the pool: nothing, and the protection is kept.
    assert zswap_shrinker_count(memcg, 1000) == 0  # type: ignore[arg-type]
    assert memcg.zswap_disk_swapins == 5
    # 800 entries in 400 pages of pool as last flushed; 1,000 on the LRU now,
    # 5 protected by disk swap-ins: (1000 - 5) * 400 / 800.
    memcg.zswap_stat_stored, memcg.zswap_stat_bytes = 800, 400 * 4096
    assert zswap_shrinker_count(memcg, 1000) == 497  # type: ignore[arg-type]
    assert memcg.zswap_disk_swapins == 0
    assert zswap_shrinker_count(memcg, 0) == 0  # type: ignore[arg-type]
