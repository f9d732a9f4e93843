"""Per-page state in compact arrays, and the LRU lists threaded through them.

One entry per virtual page of every simulated process (DESIGN principle 5).
What the kernel keeps in the PTE, `struct folio` and the swap entry is kept
here in parallel arrays, 39 bytes a page in all:

    node     int16   NUMA node holding the page (-1: none)
    state    uint8   where the page lives: see the PS_* constants
    flags    uint8   PTE young, PG_referenced, PG_active, PROT_NONE (NUMA hint) ...
    handle   uint32  handle on `node` (a page frame, a cram handle, a swap slot)
    version  uint32  bumped by every write: the content model's input
    memcg    uint16  owning memory cgroup (index into the engine's table)
    zone     uint8   zone of the frame on `node` (mmzone.ZONE_*), as page_zonenum()
    zsize    uint16  last compressed size in bytes (0: never compressed)
    scan_ns  int64   when the NUMA scanner last made the page PROT_NONE
    hits     uint16  accesses (saturating), counted only for policies that ask
    lru_prev int32 \
    lru_next int32  } doubly linked LRU membership (mm/vmscan.c lruvec lists)
    lru_id   int32 /

The arrays are `array.array`s (fast scalar indexing from Python) with numpy
views over the same memory (fast vectorised access in the hot path).
"""

from __future__ import annotations

from array import array

import numpy as np

# Page states.
PS_UNTOUCHED = 0  # never faulted in: no memory behind it yet
PS_MAPPED = 1  # mapped read-write on a byte-addressable node (DRAM, CXL)
PS_CRAM_RO = 2  # on a compressed node, mapped read-only (mm/cram.c)
PS_ZSWAP = 3  # swapped out into the zswap pool (compressed in DRAM)
PS_ZSWAP_DIRECT = 4  # swapped out into zswap, stored whole on a compressed node
PS_SWAP = 5  # swapped out to a swap device
PS_POISONED = 6  # a device dropped its contents (memory failure)
PS_LOST = 7  # held by a node that disappeared

STATE_NAMES = {
    PS_UNTOUCHED: "untouched",
    PS_MAPPED: "mapped",
    PS_CRAM_RO: "cram_ro",
    PS_ZSWAP: "zswap",
    PS_ZSWAP_DIRECT: "zswap_direct",
    PS_SWAP: "swap",
    PS_POISONED: "poisoned",
    PS_LOST: "lost",
}

# Flags.
F_YOUNG = 0x01  # PTE accessed bit, set by every access, cleared by reclaim
F_REFERENCED = 0x02  # PG_referenced
F_ACTIVE = 0x04  # PG_active: on the active list
F_PROTNONE = 0x08  # PTE made PROT_NONE by the NUMA scanner: next access hint-faults
F_ZSWAP_REF = 0x10  # zswap entry referenced (second chance in writeback)
F_SWAPCACHE = 0x20  # read ahead into the swap cache, not mapped yet: next access faults

NO_LIST = -1
BYTES_PER_PAGE = 2 + 1 + 1 + 4 + 4 + 2 + 1 + 2 + 8 + 2 + 4 + 4 + 4


def _arr(typecode: str, n: int, fill: int = 0) -> array:
    a = array(typecode, [fill]) * n if n else array(typecode)
    return a


class PageTable:
    """Parallel arrays of per-page state for `n` pages."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.node = _arr("h", n, -1)
        self.state = _arr("B", n)
        self.flags = _arr("B", n)
        self.handle = _arr("I", n)
        self.version = _arr("I", n)
        self.memcg = _arr("H", n)
        self.zone = _arr("B", n)
        self.zsize = _arr("H", n)
        self.scan_ns = _arr("q", n)
        self.hits = _arr("H", n)
        self.lru_prev = _arr("i", n, -1)
        self.lru_next = _arr("i", n, -1)
        self.lru_id = _arr("i", n, NO_LIST)
        # numpy views over the same buffers, for vectorised work.
        self.node_np = np.frombuffer(self.node, dtype=np.int16)
        self.state_np = np.frombuffer(self.state, dtype=np.uint8)
        self.flags_np = np.frombuffer(self.flags, dtype=np.uint8)
        self.version_np = np.frombuffer(self.version, dtype=np.uint32)
        self.memcg_np = np.frombuffer(self.memcg, dtype=np.uint16)
        self.zsize_np = np.frombuffer(self.zsize, dtype=np.uint16)
        self.scan_ns_np = np.frombuffer(self.scan_ns, dtype=np.int64)
        self.hits_np = np.frombuffer(self.hits, dtype=np.uint16)

    def nbytes(self) -> int:
        return sum(
            a.itemsize * len(a)
            for a in (
                self.node,
                self.state,
                self.flags,
                self.handle,
                self.version,
                self.memcg,
                self.zone,
                self.zsize,
                self.scan_ns,
                self.hits,
                self.lru_prev,
                self.lru_next,
                self.lru_id,
            )
        )


class LruLists:
    """Doubly linked lists of pages, threaded through a PageTable.

    A list is an integer id; `add_head` / `del_page` / `tail` are O(1). The
    kernel adds new and rotated pages at the head and reclaims from the tail.
    """

    def __init__(self, pages: PageTable) -> None:
        self.pages = pages
        self.head: list[int] = []
        self.tail_: list[int] = []
        self.count: list[int] = []

    def new_list(self) -> int:
        self.head.append(-1)
        self.tail_.append(-1)
        self.count.append(0)
        return len(self.head) - 1

    def add_head(self, lst: int, page: int) -> None:
        p = self.pages
        old = self.head[lst]
        p.lru_prev[page] = -1
        p.lru_next[page] = old
        if old >= 0:
            p.lru_prev[old] = page
        else:
            self.tail_[lst] = page
        self.head[lst] = page
        p.lru_id[page] = lst
        self.count[lst] += 1

    def del_page(self, page: int) -> None:
        p = self.pages
        lst = p.lru_id[page]
        if lst == NO_LIST:
            return
        prev, nxt = p.lru_prev[page], p.lru_next[page]
        if prev >= 0:
            p.lru_next[prev] = nxt
        else:
            self.head[lst] = nxt
        if nxt >= 0:
            p.lru_prev[nxt] = prev
        else:
            self.tail_[lst] = prev
        p.lru_prev[page] = -1
        p.lru_next[page] = -1
        p.lru_id[page] = NO_LIST
        self.count[lst] -= 1

    def move_head(self, lst: int, page: int) -> None:
        self.del_page(page)
        self.add_head(lst, page)

    def tail(self, lst: int) -> int:
        return self.tail_[lst]

    def isolate_tail(self, lst: int, n: int) -> list[int]:
        """Take up to n pages off the tail (isolate_lru_folios)."""
        out: list[int] = []
        while len(out) < n:
            page = self.tail_[lst]
            if page < 0:
                break
            self.del_page(page)
            out.append(page)
        return out

    def isolate_tail_zones(
        self, lst: int, n: int, max_zone: int, skip_limit: int
    ) -> tuple[list[int], list[int]]:
        """isolate_lru_folios() for reclaim of zones up to `max_zone`:
        (isolated, skipped). Pages of higher zones are passed over, up to
        `skip_limit` of them, and put back at the head in their order."""
        zone = self.pages.zone
        out: list[int] = []
        skipped: list[int] = []
        while len(out) < n:
            page = self.tail_[lst]
            if page < 0:
                break
            self.del_page(page)
            if zone[page] > max_zone and len(skipped) < skip_limit:
                skipped.append(page)
            else:
                out.append(page)
        for page in skipped:
            self.add_head(lst, page)
        return out, skipped
