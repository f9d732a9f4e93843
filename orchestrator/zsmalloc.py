"""zsmalloc: the allocator under zswap's pool (mm/zsmalloc.c).

What zswap's limits see is not the bytes it stores but the pages zsmalloc
holds (zs_get_total_pages()), and the two drift apart as entries come and go:

- an object is allocated ZS_HANDLE_SIZE bytes more than asked (the handle
  kept in its chunk) and rounded up to its size class, 16-byte steps from 32
  to 4096 bytes; neighbouring classes whose zspages have the same shape
  (pages per zspage, objects per zspage) are merged into the larger one;
- a zspage is a chain of up to CONFIG_ZSMALLOC_CHAIN_SIZE pages (8 by
  default), its length the one that wastes least for its class;
- an allocation goes to the fullest zspage of its class that has room
  (find_get_zspage(): fullness groups of 10 % from 99 % down, the most
  recently inserted first) and a new zspage is allocated only when none has;
- a zspage is given back only when its last object is freed. Freeing
  entries in LRU order leaves partly used zspages behind, so after writeback
  the pool holds more pages per entry than it did when it filled. Only
  compaction (zs_compact(), run by the pool's shrinker, which is not
  memcg-aware and so runs in global reclaim only) moves objects together.

Objects are named by a key the caller chooses (zswap uses the page number).
"""

from __future__ import annotations

PAGE_SIZE = 4096
ZS_HANDLE_SIZE = 8
ZS_MIN_ALLOC_SIZE = 32
ZS_MAX_ALLOC_SIZE = PAGE_SIZE
ZS_SIZE_CLASS_DELTA = PAGE_SIZE >> 8
# CONFIG_ZSMALLOC_CHAIN_SIZE: its default, which Debian's kernels keep.
ZS_MAX_PAGES_PER_ZSPAGE = 8
ZS_SIZE_CLASSES = -(-(ZS_MAX_ALLOC_SIZE - ZS_MIN_ALLOC_SIZE) // ZS_SIZE_CLASS_DELTA) + 1

# Fullness groups: 0 (empty), 1..10 (ratio/10 + 1, "99 %" is 10), 11 (full).
ZS_INUSE_RATIO_0 = 0
ZS_INUSE_RATIO_10 = 1
ZS_INUSE_RATIO_99 = 10
ZS_INUSE_RATIO_100 = 11
NR_FULLNESS_GROUPS = 12


def calculate_zspage_chain_size(class_size: int) -> int:
    """calculate_zspage_chain_size(): the chain length that wastes least."""
    if class_size & (class_size - 1) == 0:
        return 1
    best, min_waste = 1, PAGE_SIZE * ZS_MAX_PAGES_PER_ZSPAGE
    for i in range(1, ZS_MAX_PAGES_PER_ZSPAGE + 1):
        waste = (i * PAGE_SIZE) % class_size
        if waste < min_waste:
            best, min_waste = i, waste
    return best


def get_size_class_index(size: int) -> int:
    """get_size_class_index(): the nominal class of an allocation of `size` bytes."""
    idx = 0
    if size > ZS_MIN_ALLOC_SIZE:
        idx = -(-(size - ZS_MIN_ALLOC_SIZE) // ZS_SIZE_CLASS_DELTA)
    return min(ZS_SIZE_CLASSES - 1, idx)


def _build_classes() -> tuple[list[int], list[int], list[int], list[int]]:
    """zs_create_pool()'s class table: for each nominal index, the class that
    serves it (merged downwards into the next larger class of the same shape),
    and each serving class's size, pages and objects per zspage."""
    serve = [0] * ZS_SIZE_CLASSES
    size = [0] * ZS_SIZE_CLASSES
    pages = [0] * ZS_SIZE_CLASSES
    objs = [0] * ZS_SIZE_CLASSES
    prev = -1
    for i in range(ZS_SIZE_CLASSES - 1, -1, -1):
        s = min(ZS_MIN_ALLOC_SIZE + i * ZS_SIZE_CLASS_DELTA, ZS_MAX_ALLOC_SIZE)
        p = calculate_zspage_chain_size(s)
        o = p * PAGE_SIZE // s
        if prev >= 0 and pages[prev] == p and objs[prev] == o:
            serve[i] = prev
            continue
        serve[i], size[i], pages[i], objs[i] = i, s, p, o
        prev = i
    return serve, size, pages, objs


CLASS_OF, CLASS_SIZE, CLASS_PAGES, CLASS_OBJS = _build_classes()


def size_class(nbytes: int) -> int:
    """The class zs_malloc() puts an object of `nbytes` in (handle included)."""
    return CLASS_OF[get_size_class_index(nbytes + ZS_HANDLE_SIZE)]


class Zspage:
    """One zspage: its class, the keys of the objects in it, its fullness group."""

    __slots__ = ("cls", "fullness", "nid", "objs", "zones")

    def __init__(self, cls: int, nid: int = 0) -> None:
        self.cls = cls
        self.nid = nid  # the NUMA node its pages were allocated on
        self.zones: list[int] = []  # and the zone of each (set by the pool's owner)
        self.objs: dict[int, None] = {}
        self.fullness = ZS_INUSE_RATIO_0


class SizeClass:
    __slots__ = (
        "fullness_list",
        "index",
        "objs_allocated",
        "objs_inuse",
        "objs_per_zspage",
        "pages",
        "size",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.size = CLASS_SIZE[index]
        self.pages = CLASS_PAGES[index]
        self.objs_per_zspage = CLASS_OBJS[index]
        self.objs_allocated = 0  # ZS_OBJS_ALLOCATED: slots in this class's zspages
        self.objs_inuse = 0  # ZS_OBJS_INUSE
        # One ordered set per fullness group; the last inserted is the list head.
        self.fullness_list: list[dict[Zspage, None]] = [{} for _ in range(NR_FULLNESS_GROUPS)]

    def get_fullness_group(self, zspage: Zspage) -> int:
        inuse = len(zspage.objs)
        if inuse == 0:
            return ZS_INUSE_RATIO_0
        if inuse == self.objs_per_zspage:
            return ZS_INUSE_RATIO_100
        return 100 * inuse // self.objs_per_zspage // 10 + 1

    def insert(self, zspage: Zspage, fullness: int) -> None:
        self.fullness_list[fullness][zspage] = None
        zspage.fullness = fullness

    def remove(self, zspage: Zspage) -> None:
        del self.fullness_list[zspage.fullness][zspage]

    def fix_fullness_group(self, zspage: Zspage) -> int:
        newfg = self.get_fullness_group(zspage)
        if newfg != zspage.fullness:
            self.remove(zspage)
            self.insert(zspage, newfg)
        return newfg

    def first(self, groups: range) -> Zspage | None:
        for fg in groups:
            lst = self.fullness_list[fg]
            if lst:
                return next(reversed(lst))
        return None

    def find_get_zspage(self) -> Zspage | None:
        return self.first(range(ZS_INUSE_RATIO_99, ZS_INUSE_RATIO_0 - 1, -1))

    def can_compact(self) -> int:
        """zs_can_compact(): pages compaction could give back in this class."""
        wasted = (self.objs_allocated - self.objs_inuse) // self.objs_per_zspage
        return wasted * self.pages if wasted > 0 else 0


class ZsPool:
    """One zs_pool: size classes, zspages and the pages they hold."""

    def __init__(self) -> None:
        self.classes: dict[int, SizeClass] = {}
        self.where: dict[int, Zspage] = {}  # object key -> its zspage
        # Pages of freed zspages per (node, zone), until the owner gives them back.
        self.released: dict[tuple[int, int], int] = {}
        self.pages_allocated = 0  # zs_get_total_pages()
        self.pages_compacted = 0
        self.bytes_moved = 0  # by compaction, for its cost
        self.compactable = 0  # the sum of every class's zs_can_compact(), kept current
        self.inuse_bytes = 0  # class bytes of the objects in use

    def _class(self, index: int) -> SizeClass:
        cls = self.classes.get(index)
        if cls is None:
            cls = self.classes[index] = SizeClass(index)
        return cls

    def pages_needed(self, nbytes: int) -> int:
        """Pages zs_malloc() would allocate for an object of `nbytes`: 0 when a
        zspage of its class has room, else a whole new zspage."""
        index = size_class(nbytes)
        cls = self.classes.get(index)
        if cls is not None and cls.find_get_zspage() is not None:
            return 0
        return CLASS_PAGES[index]

    def malloc(self, key: int, nbytes: int, nid: int = 0) -> int:
        """zs_malloc(): place object `key`; returns the pages newly allocated
        (a new zspage's pages come from node `nid`)."""
        if not 0 < nbytes <= ZS_MAX_ALLOC_SIZE:
            raise ValueError(f"zs_malloc of {nbytes} bytes")
        if key in self.where:
            raise KeyError(f"object {key} is already allocated")
        cls = self._class(size_class(nbytes))
        before = cls.can_compact()
        zspage = cls.find_get_zspage()
        grown = 0
        if zspage is None:
            zspage = Zspage(cls.index, nid)
            zspage.objs[key] = None
            cls.insert(zspage, cls.get_fullness_group(zspage))
            cls.objs_allocated += cls.objs_per_zspage
            grown = cls.pages
            self.pages_allocated += grown
        else:
            zspage.objs[key] = None
            cls.fix_fullness_group(zspage)
        self.where[key] = zspage
        cls.objs_inuse += 1
        self.inuse_bytes += cls.size
        self.compactable += cls.can_compact() - before
        return grown

    def free(self, key: int) -> int:
        """zs_free(): release object `key`; returns the pages given back."""
        zspage = self.where.pop(key)
        cls = self.classes[zspage.cls]
        before = cls.can_compact()
        del zspage.objs[key]
        cls.objs_inuse -= 1
        self.inuse_bytes -= cls.size
        freed = 0
        if cls.fix_fullness_group(zspage) == ZS_INUSE_RATIO_0:
            freed = self._free_zspage(cls, zspage)
        self.compactable += cls.can_compact() - before
        return freed

    def _free_zspage(self, cls: SizeClass, zspage: Zspage) -> int:
        cls.remove(zspage)
        cls.objs_allocated -= cls.objs_per_zspage
        self.pages_allocated -= cls.pages
        for zone in zspage.zones or [-1] * cls.pages:
            key = (zspage.nid, zone)
            self.released[key] = self.released.get(key, 0) + 1
        return cls.pages

    def can_compact(self) -> int:
        """zs_shrinker_count(): pages compaction could free, over all classes."""
        return self.compactable

    def compact(self) -> int:
        """zs_compact(): move objects from the emptiest zspages of each class into
        the fullest, freeing the zspages emptied; returns the pages freed."""
        freed = 0
        for index in sorted(self.classes, reverse=True):
            cls = self.classes[index]
            before = cls.can_compact()
            freed += self._compact_class(cls)
            self.compactable += cls.can_compact() - before
        self.pages_compacted += freed
        return freed

    def _compact_class(self, cls: SizeClass) -> int:
        """__zs_compact(): one class."""
        freed = 0
        dst: Zspage | None = None
        while cls.can_compact():
            if dst is None:
                dst = cls.first(range(ZS_INUSE_RATIO_99, ZS_INUSE_RATIO_10 - 1, -1))
                if dst is None:
                    break
                cls.remove(dst)
            src = cls.first(range(ZS_INUSE_RATIO_10, ZS_INUSE_RATIO_99 + 1))
            if src is None:
                break
            cls.remove(src)
            # migrate_zspage(): until the destination is full or the source empty.
            while src.objs and len(dst.objs) < cls.objs_per_zspage:
                key = next(iter(src.objs))
                del src.objs[key]
                dst.objs[key] = None
                self.where[key] = dst
                self.bytes_moved += cls.size
            fg = cls.get_fullness_group(src)
            cls.insert(src, fg)
            if fg == ZS_INUSE_RATIO_0:
                freed += self._free_zspage(cls, src)
            if cls.get_fullness_group(dst) == ZS_INUSE_RATIO_100:
                cls.insert(dst, ZS_INUSE_RATIO_100)
                dst = None
        if dst is not None:
            cls.insert(dst, cls.get_fullness_group(dst))
        return freed


__all__ = [
    "CLASS_OBJS",
    "CLASS_PAGES",
    "CLASS_SIZE",
    "ZS_HANDLE_SIZE",
    "ZS_MAX_PAGES_PER_ZSPAGE",
    "ZsPool",
    "size_class",
]
