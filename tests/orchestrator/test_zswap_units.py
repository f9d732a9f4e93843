"""zsmalloc size classes and pool accounting used by zswap's pool_total_size."""

from tiersim.orchestrator.page_alloc import min_free_kbytes, setup_watermarks
from tiersim.orchestrator.zswap import (
    CLASS_OBJS,
    CLASS_PAGES,
    CLASS_SIZE,
    N_CLASSES,
    size_class,
)


def test_size_classes_cover_32_to_4096_in_16_byte_steps() -> None:
    assert CLASS_SIZE[0] == 32
    assert CLASS_SIZE[1] == 48
    assert CLASS_SIZE[-1] == 4096
    assert N_CLASSES == 255


def test_objects_map_to_smallest_class_that_fits() -> None:
    for n in (1, 32, 33, 48, 49, 1000, 2990, 4095, 4096):
        c = size_class(n)
        assert CLASS_SIZE[c] >= n
        assert c == 0 or CLASS_SIZE[c - 1] < n


def test_zspage_length_minimises_waste() -> None:
    # A 4096-byte object: one page, one object.
    assert CLASS_PAGES[-1] == 1 and CLASS_OBJS[-1] == 1
    # 3072-byte objects waste 25 % in one page but nothing in three.
    c = size_class(3072)
    assert CLASS_PAGES[c] == 3 and CLASS_OBJS[c] == 4


def test_min_free_kbytes_and_watermarks_follow_page_alloc() -> None:
    # 1 GiB of lowmem: sqrt(1048576 * 16) = 4096 KiB.
    assert min_free_kbytes(262144) == 4096
    assert min_free_kbytes(10) == 128  # clamped
    wm = setup_watermarks({0: 262144}, watermark_scale_factor=10)[0]
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
