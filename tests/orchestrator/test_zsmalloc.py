"""zsmalloc (mm/zsmalloc.c): size classes, zspage chains, fullness and compaction."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tiersim.orchestrator.zsmalloc import (
    CLASS_OBJS,
    CLASS_OF,
    CLASS_PAGES,
    CLASS_SIZE,
    PAGE_SIZE,
    ZS_SIZE_CLASSES,
    ZsPool,
    calculate_zspage_chain_size,
    size_class,
)


def test_classes_run_from_32_to_4096_in_16_byte_steps_and_merge_alike_shapes() -> None:
    assert ZS_SIZE_CLASSES == 255
    assert CLASS_SIZE[0] == 32 and CLASS_SIZE[254] == PAGE_SIZE
    for i in range(ZS_SIZE_CLASSES):
        serving = CLASS_OF[i]
        # A nominal class is served by itself or by a larger class of the same shape.
        assert serving >= i
        nominal = min(32 + 16 * i, PAGE_SIZE)
        pages = calculate_zspage_chain_size(nominal)
        assert (CLASS_PAGES[serving], CLASS_OBJS[serving]) == (pages, pages * PAGE_SIZE // nominal)
    # Merging is what the kernel does with a chain of 8: far fewer real classes.
    assert len(set(CLASS_OF)) < ZS_SIZE_CLASSES // 2


def test_an_object_takes_its_handle_and_rounds_up_to_its_class() -> None:
    # zs_malloc() adds ZS_HANDLE_SIZE (8) before the class lookup.
    assert CLASS_SIZE[size_class(24)] == 32
    assert CLASS_SIZE[size_class(25)] >= 48
    assert CLASS_SIZE[size_class(4088)] == PAGE_SIZE
    for n in (1, 100, 1000, 1700, 2990, 4000, PAGE_SIZE):
        # A huge object keeps its handle outside the chunk (page->index).
        assert CLASS_SIZE[size_class(n)] >= min(n + 8, PAGE_SIZE)


def test_huge_objects_take_a_page_each_from_3625_bytes() -> None:
    # huge_class_size is 3632 with a chain of 8; less the handle's 7 bytes of slack.
    assert (CLASS_SIZE[size_class(3624)], CLASS_PAGES[size_class(3624)]) == (3632, 8)
    assert CLASS_OBJS[size_class(3624)] == 9
    assert CLASS_SIZE[size_class(3625)] == PAGE_SIZE
    assert (CLASS_PAGES[size_class(3625)], CLASS_OBJS[size_class(3625)]) == (1, 1)


def test_chain_length_wastes_least() -> None:
    assert calculate_zspage_chain_size(4096) == 1  # powers of two: one page
    assert calculate_zspage_chain_size(2048) == 1
    # 3072-byte objects waste a quarter of one page, nothing in three.
    assert calculate_zspage_chain_size(3072) == 3
    # 1712 bytes: 19 objects in 8 pages waste 240 bytes, the least of 1..8 pages.
    assert calculate_zspage_chain_size(1712) == 8
    assert CLASS_OBJS[size_class(1700)] == 19


def test_freeing_in_lru_order_leaves_partly_used_zspages() -> None:
    """The pool gives a zspage back only when its last object goes."""
    pool = ZsPool()
    per = CLASS_OBJS[size_class(1700)]
    pages = CLASS_PAGES[size_class(1700)]
    for key in range(per * 10):
        pool.malloc(key, 1700)
    assert pool.pages_allocated == 10 * pages
    # Free every other object: half the entries, no page back.
    for key in range(0, per * 10, 2):
        assert pool.free(key) == 0
    assert pool.pages_allocated == 10 * pages
    assert pool.can_compact() == 5 * pages
    # New objects fill the holes before any new zspage.
    for key in range(per * 10, per * 10 + per * 5 - 5):
        assert pool.malloc(key, 1700) == 0
    assert pool.pages_allocated == 10 * pages


def test_allocation_prefers_the_fullest_zspage() -> None:
    pool = ZsPool()
    per = CLASS_OBJS[size_class(1000)]  # 4 objects in one page
    for key in range(3 * per):
        pool.malloc(key, 1000)
    # Zspage A keeps 1 object, zspage B keeps 3.
    for key in (0, 1, 2, 4):
        pool.free(key)
    before = {id(pool.where[k]) for k in (3, 5, 6, 7)}
    pool.malloc(100, 1000)
    # The new object went to the 3-of-4 zspage (75 %), not the 1-of-4 one.
    assert pool.where[100] is pool.where[5]
    assert len(before) == 2


def test_among_equally_full_zspages_the_last_inserted_is_used_first() -> None:
    """list_add() puts a zspage at its group's head; find_get_zspage() takes the head."""
    pool = ZsPool()
    per = CLASS_OBJS[size_class(1000)]  # 4 objects a page
    for key in range(3 * per):
        pool.malloc(key, 1000)
    first, second, third = (pool.where[k * per] for k in range(3))
    # Bring all three to 2 of 4 (50 %): the one that moved into the group last is third.
    for key in (0, 1, per, per + 1, 2 * per, 2 * per + 1):
        pool.free(key)
    pool.malloc(1000, 1000)
    assert pool.where[1000] is third
    assert first is not third and second is not third


def test_compaction_moves_from_the_emptiest_into_the_fullest() -> None:
    pool = ZsPool()
    per = CLASS_OBJS[size_class(1000)]
    for key in range(3 * per):
        pool.malloc(key, 1000)
    a, b, c = (pool.where[k * per] for k in range(3))
    # a keeps 3 of 4, b 1 of 4, c 2 of 4.
    for key in (0, per, per + 1, per + 2, 2 * per, 2 * per + 1):
        pool.free(key)
    assert pool.can_compact() == 1
    assert pool.compact() == 1
    # b (the emptiest) was emptied into a (the fullest), which is now full; c is untouched.
    assert len(a.objs) == per and len(c.objs) == 2
    assert b not in set(pool.where.values())
    # Objects freed after a compaction are found where it moved them.
    for key in list(pool.where):
        pool.free(key)
    assert pool.pages_allocated == 0 and pool.can_compact() == 0


def test_compaction_gives_back_what_it_counts_and_keeps_every_object() -> None:
    pool = ZsPool()
    for key in range(2000):
        pool.malloc(key, 300 + (key * 37) % 3000)
    for key in range(0, 2000, 3):
        pool.free(key)
    live = set(pool.where)
    expect = pool.can_compact()
    assert expect > 0
    freed = pool.compact()
    assert freed == expect
    assert pool.can_compact() == 0
    assert set(pool.where) == live
    for key, zspage in pool.where.items():
        assert key in zspage.objs


@settings(max_examples=60, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 199), st.integers(1, PAGE_SIZE)),
        max_size=400,
    ),
    st.booleans(),
)
def test_pages_always_equal_the_zspages_held(
    ops: list[tuple[bool, int, int]], compact: bool
) -> None:
    pool = ZsPool()
    pages = 0
    for alloc, key, size in ops:
        if alloc and key not in pool.where:
            pages += pool.malloc(key, size)
        elif not alloc and key in pool.where:
            pages -= pool.free(key)
    if compact:
        pages -= pool.compact()
    assert pages == pool.pages_allocated
    held = 0
    for cls in pool.classes.values():
        zspages = [z for lst in cls.fullness_list for z in lst]
        assert all(z.objs for z in zspages), "an empty zspage was kept"
        assert all(len(z.objs) <= cls.objs_per_zspage for z in zspages)
        assert cls.objs_allocated == len(zspages) * cls.objs_per_zspage
        held += len(zspages) * cls.pages
        for z in zspages:
            assert cls.get_fullness_group(z) == z.fullness
            assert all(pool.where[k] is z for k in z.objs)
    assert held == pool.pages_allocated
    assert pool.can_compact() == sum(cls.can_compact() for cls in pool.classes.values())
    assert sum(len(z.objs) for z in set(pool.where.values())) == len(pool.where)
