"""zswap: a compressed cache for swap pages, held in DRAM (mm/zswap.c).

The store path follows mm/zswap.c in order (see KERNEL.md, "zswap"):

1. zero-filled pages never get here: the swap layer marks them in its
   zero bitmap (swap.py);
2. disabled: the page goes to the swap device;
3. memcg limit (memory.zswap.max): write back that cgroup's entries, reject
   if still over;
4. global limit with hysteresis: at the cap (max_pool_percent of total_ram)
   pool_limit_hit++ and the pool is "full"; stores are rejected until usage
   falls to accept_threshold_percent of the cap; the shrink worker writes
   back meanwhile;
5. compress with lz4 on the page's real bytes; a page that does not shrink
   is stored as-is (PAGE_SIZE) if the cgroup may write back, else rejected
   (counted as reject_compress_fail, as Linux 7.3 does);
6. allocate in the pool (zsmalloc size classes), charge the cgroup, add the
   entry to the LRU, referenced.

Loads are exclusive: the entry is freed and uncharged, the page returns to
memory. Writeback walks cgroups round-robin from the LRU tail giving
referenced entries a second chance.

"zswap direct" (Price, RFC v3 7/8) stores whole pages on compressed memory
nodes instead: each direct node is asked in turn (check-and-allocate); the
first that accepts gets a plain copy; if none does, zswap compresses as
usual. Loads copy the page back; frees notify the node. How the cgroup is
charged for a direct page is a setting (`direct_charge`), because the review
showed that charging PAGE_SIZE makes swap-out useless to memcg reclaim.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import lz4.block

from tiersim.nodes._types import OK, BatchResult

from ._pages import F_ZSWAP_REF, PS_ZSWAP, PS_ZSWAP_DIRECT
from .config import ZswapTunables
from .memcontrol import charge, uncharge
from .migrate import node_call
from .page_alloc import MAX_RECLAIM_RETRIES
from .shrinker import do_shrink_slab
from .swap import SLOT_ONLY, hold_swap_slot, put_swap_slot, swap_write, vm_swap_full
from .vmscan import kernel_thread_ran
from .zsmalloc import ZsPool

if TYPE_CHECKING:
    from ._mm import Memcg, Mm

PAGE_SIZE = 4096


@dataclass
class ZswapStats:
    """/sys/kernel/debug/zswap/* under their debugfs names."""

    pool_limit_hit: int = 0
    reject_reclaim_fail: int = 0
    reject_alloc_fail: int = 0
    reject_kmemcache_fail: int = 0
    reject_compress_fail: int = 0
    reject_compress_poor: int = 0
    decompress_fail: int = 0
    written_back_pages: int = 0
    pool_total_size: int = 0
    stored_pages: int = 0
    stored_incompressible_pages: int = 0
    # zswap direct (RFC v3 7/8)
    stored_direct_pages: int = 0
    direct_refused: int = 0


@dataclass
class Zswap:
    """The zswap pool of one host."""

    host: int
    tunables: ZswapTunables
    total_ram_pages: int
    direct_nodes: list[int]
    enabled: bool = False
    stats: ZswapStats = field(default_factory=ZswapStats)
    pool_full: bool = False  # zswap_pool_reached_full
    zspool: ZsPool = field(default_factory=ZsPool)
    zs_shrinker_deferred: int = 0
    # Per-memcg LRU of entries (oldest first), for writeback.
    lru: dict[int, OrderedDict[int, None]] = field(default_factory=dict)
    # Charged length of each entry (for uncharge), by page.
    length: dict[int, int] = field(default_factory=dict)
    # zswapped: original bytes of pages in the pool
    zswapped_pages: int = 0
    next_memcg: int = 0
    shrink_running: bool = False

    def max_pages(self) -> int:
        """zswap_max_pages(): total RAM x max_pool_percent / 100."""
        return self.total_ram_pages * self.tunables.max_pool_percent // 100

    def accept_thr_pages(self) -> int:
        return self.max_pages() * self.tunables.accept_threshold_percent // 100

    @property
    def pool_pages(self) -> int:
        """zs_get_total_pages(): the pages the pool's allocator holds."""
        return self.zspool.pages_allocated

    def total_pages(self) -> int:
        return self.zspool.pages_allocated

    def check_limits(self) -> bool:
        """zswap_check_limits(): True while the pool is full (hysteresis)."""
        cur = self.total_pages()
        if cur >= self.max_pages():
            self.stats.pool_limit_hit += 1
            self.pool_full = True
        elif self.pool_full and cur <= self.accept_thr_pages():
            self.pool_full = False
        return self.pool_full

    def pool_bytes(self) -> int:
        """Bytes of the pool's size classes that hold entries (no zspage waste)."""
        return self.zspool.inuse_bytes


def _pool_add(mm: Mm, zswap: Zswap, page: int, nbytes: int, *, force: bool = False) -> bool:
    """zs_malloc(): place the page's entry, growing the pool by a whole zspage
    when no zspage of its class has room.

    zswap_compress() asks for the zspage on the node of the page it stores
    (zs_malloc(..., page_to_nid(page))), GFP_NOWAIT: the first node of that
    node's zonelist above its low watermark, else above its min. A store
    always runs in reclaim (kswapd, direct or cgroup reclaim), whose task
    has PF_MEMALLOC, and the gfp mask lacks __GFP_NOMEMALLOC: the slow path
    then allocates with ALLOC_NO_WATERMARKS, from the first node with a free
    frame at all. Only with none anywhere does the store fail (unless
    `force`)."""
    from .page_alloc import frames_ok, take_frames

    need = zswap.zspool.pages_needed(nbytes)
    if not need:
        zswap.zspool.malloc(page, nbytes)
        return True
    host = mm.hosts[zswap.host]
    nid = mm.pages.node[page]
    order = (
        [nid, *(n for n in host.zonelist if n != nid)] if nid in host.zonelist else host.zonelist
    )
    target = next(
        (n for which in ("low", "min", "none") for n in order if frames_ok(mm, n, which, need)),
        None,
    )
    if target is None:
        if not force:
            return False
        live = [n for n in order if not mm.nodes[n].lost]
        target = max(live or order, key=lambda n: mm.nodes[n].free_pages)
    zones = take_frames(mm, target, zswap.zspool.malloc(page, nbytes, target))
    if zones:
        zswap.zspool.where[page].zones = zones
    return True


def _pool_shrunk(mm: Mm, zswap: Zswap) -> None:
    """Give the frames of the zspages the pool freed back to their nodes."""
    from .page_alloc import give_frames

    released = zswap.zspool.released
    for (nid, zone), n in released.items():
        give_frames(mm, nid, zone, n)
    released.clear()


def _pool_remove(mm: Mm, zswap: Zswap, page: int) -> None:
    """zs_free(): release the page's entry; a zspage left empty goes back to its node."""
    zswap.zspool.free(page)
    _pool_shrunk(mm, zswap)


def zs_compact(mm: Mm, zswap: Zswap) -> int:
    """zs_compact() on the pool: pages given back to their nodes."""
    freed = zswap.zspool.compact()
    _pool_shrunk(mm, zswap)
    return freed


def compress(tunables: ZswapTunables, data: bytes) -> int:
    """Compressed length of a page with the configured compressor."""
    if tunables.compressor == "lz4hc":
        return len(lz4.block.compress(data, mode="high_compression", store_size=False))
    return len(lz4.block.compress(data, store_size=False))


def _direct_charge(mm: Mm, zswap: Zswap, nid: int, stored: int) -> int:
    mode = zswap.tunables.direct_charge
    if mode == "page":
        return PAGE_SIZE
    if mode == "device":
        return max(stored, 1)
    node = mm.nodes[nid]
    logical = node.nr_pages * PAGE_SIZE
    if logical <= 0 or node.physical_used_bytes <= 0:
        return PAGE_SIZE
    # Fuzzy: a page charged at the node's current ratio (1 GiB at 4:1 -> 256 MiB).
    return max(1, PAGE_SIZE * node.physical_used_bytes // logical)


async def zswap_store(
    mm: Mm, zswap: Zswap, page: int, data: bytes, memcg: Memcg
) -> tuple[bool, int]:
    """Try to store a page being swapped out: (stored, ns)."""
    pages = mm.pages
    cost = 0
    t = zswap.tunables
    if not await mm.policy.zswap_store(mm, mm.hosts[zswap.host], page, True):
        return False, cost
    # 3. per-cgroup limit
    if memcg.config.zswap_max is not None and memcg.zswap_current >= memcg.config.zswap_max:
        # zswap_store(): at memory.zswap.max, shrink_memcg() walks up to
        # SHRINK_MEMCG_WALK_STORE entries of the cgroup; if none is written
        # back (all referenced, or writeback off) the store is rejected.
        status, _, c = await shrink_memcg_walk(mm, zswap, memcg.index, SHRINK_MEMCG_WALK_STORE)
        cost += c
        if status != SHRINK_OK:
            return False, cost
    # 4. global limit with hysteresis
    if zswap.check_limits():
        start_shrink_worker(mm, zswap)
        return False, cost

    # zswap direct: whole pages on compressed nodes, each asked in turn.
    for nid in zswap.direct_nodes:
        node = mm.nodes[nid]
        if node.lost:
            continue
        result = await node_call(
            mm, nid, node.client.store([(0, data)], check=True, now_ns=mm.sched.now_ns)
        )
        if result is None:
            continue
        mm.note_state(nid, result.state)
        cost += result.cost_ns
        if result.codes[0] != OK:
            zswap.stats.direct_refused += 1
            continue
        length = _direct_charge(mm, zswap, nid, result.stored_bytes[0])
        node.nr_pages += 1
        pages.state[page] = PS_ZSWAP_DIRECT
        pages.node[page] = nid
        pages.handle[page] = result.handles[0]
        pages.zsize[page] = min(result.stored_bytes[0], 0xFFFF)
        zswap.stats.stored_direct_pages += 1
        memcg.stat["zswap_direct_charged"] += length
        _account_store(mm, zswap, page, memcg, length)
        return True, cost

    # 5. compress
    clen = compress(t, data)
    cost += int(mm.costs.lz4_compress_ns_per_byte * PAGE_SIZE)
    if clen >= PAGE_SIZE:
        if not memcg.config.zswap_writeback:
            # Linux 7.3 counts this rejection as a compression failure
            # (reject_compress_fail); reject_compress_poor stays 0 — see the
            # zswap-incomp-nowb reference recording (docs/fidelity.md).
            zswap.stats.reject_compress_fail += 1
            return False, cost
        clen = PAGE_SIZE
        zswap.stats.stored_incompressible_pages += 1
    # 6. allocate in the pool
    if not _pool_add(mm, zswap, page, clen):
        zswap.stats.reject_alloc_fail += 1
        if clen == PAGE_SIZE:
            zswap.stats.stored_incompressible_pages -= 1
        return False, cost
    pages.state[page] = PS_ZSWAP
    pages.node[page] = -1
    pages.handle[page] = 0
    pages.zsize[page] = clen if clen < PAGE_SIZE else 0xFFFF
    _account_store(mm, zswap, page, memcg, clen)
    return True, cost


def _account_store(mm: Mm, zswap: Zswap, page: int, memcg: Memcg, length: int) -> None:
    # The page's swap slot, allocated before zswap_store() (add_to_swap()).
    hold_swap_slot(mm.hosts[zswap.host], memcg)
    charge(memcg, length)
    memcg.zswap_current += length
    zswap.length[page] = length
    zswap.stats.stored_pages += 1
    zswap.zswapped_pages += 1
    mm.pages.flags[page] |= F_ZSWAP_REF
    zswap.lru.setdefault(memcg.index, OrderedDict())[page] = None
    mm.hosts[zswap.host].vmstat.inc("zswpout")
    memcg.stat["zswpout"] += 1


async def _entry_free(mm: Mm, zswap: Zswap, page: int, memcg: Memcg) -> int:
    """zswap_entry_free(): drop the entry, uncharge, free pool or node space."""
    pages = mm.pages
    length = zswap.length.pop(page)
    zswap.lru[memcg.index].pop(page, None)
    put_swap_slot(mm.hosts[zswap.host], memcg)
    uncharge(memcg, length)
    memcg.zswap_current -= length
    zswap.stats.stored_pages -= 1
    zswap.zswapped_pages -= 1
    pages.flags[page] &= ~F_ZSWAP_REF & 0xFF
    if pages.state[page] == PS_ZSWAP_DIRECT:
        zswap.stats.stored_direct_pages -= 1
        return 0
    if pages.zsize[page] == 0xFFFF:
        zswap.stats.stored_incompressible_pages -= 1
    _pool_remove(mm, zswap, page)
    return 0


async def _load_direct(mm: Mm, page: int) -> BatchResult | None:
    """Copy a directly stored page back from its compressed node, freeing it there."""
    pages = mm.pages
    nid = pages.node[page]
    node = mm.nodes[nid]
    result = await node_call(
        mm, nid, node.client.load([pages.handle[page]], free_after=True, now_ns=mm.sched.now_ns)
    )
    if result is not None:
        node.nr_pages -= 1
        mm.note_state(nid, result.state)
    return result


async def zswap_load(mm: Mm, zswap: Zswap, page: int, memcg: Memcg) -> tuple[bool, int]:
    """Exclusive load: decompress (or copy from the direct node), free the entry."""
    pages = mm.pages
    host = mm.hosts[zswap.host]
    cost = 0
    if pages.state[page] == PS_ZSWAP_DIRECT:
        result = await _load_direct(mm, page)
        if result is None:
            return False, 0
        cost += result.cost_ns
        if result.codes[0] != OK:
            zswap.stats.decompress_fail += 1
            await _entry_free(mm, zswap, page, memcg)
            return False, cost
        mm.verify(page, result.data[0])
    else:
        zs = pages.zsize[page]
        if zs != 0xFFFF:
            cost += int(mm.costs.lz4_decompress_ns_per_byte * PAGE_SIZE)
    await _entry_free(mm, zswap, page, memcg)
    if not vm_swap_full(mm, host):
        # The page keeps its slot in the swap cache, dirty (do_swap_page()).
        mm.swapcache[page] = SLOT_ONLY
        hold_swap_slot(host, memcg)
    host.vmstat.inc("zswpin")
    memcg.stat["zswpin"] += 1
    return True, cost


async def zswap_invalidate(mm: Mm, zswap: Zswap, page: int) -> None:
    """Drop an entry whose page is gone (process exit, node loss)."""
    memcg = mm.memcgs[mm.pages.memcg[page]]
    if mm.pages.state[page] == PS_ZSWAP_DIRECT:
        nid = mm.pages.node[page]
        node = mm.nodes[nid]
        if not node.lost:
            r = await node_call(mm, nid, node.client.free([mm.pages.handle[page]]))
            if r is not None:
                mm.note_state(nid, r.state)
        node.nr_pages -= 1
    await _entry_free(mm, zswap, page, memcg)


async def _writeback_folio(mm: Mm, zswap: Zswap, memcg: Memcg) -> tuple[bool, int]:
    """__read_swap_cache_async() for the shrink worker's writeback: a
    swap-cache folio, charged to the entry's cgroup, that the entry is
    decompressed into and written from: (allocated, ns).

    The worker is a workqueue task, not in reclaim: it charges as any task
    does, reclaiming from the cgroup when it is at its limit (the kernel's
    traces show a fifth of zswap_store() calls coming from the worker in
    zswap-pool-limit), and allocates GFP_KERNEL down to the min watermark.
    The folio stays charged after its write: folio_end_writeback() rotates
    it to the inactive tail, where the next reclaim of the cgroup drops it
    (clean, no I/O: vmscan.reclaim_writeback_folios()).
    """
    from .memcontrol import try_charge
    from .page_alloc import frames_ok, take_frames

    ok, cost = await try_charge(mm, memcg)
    if not ok:
        return False, cost
    host = mm.hosts[zswap.host]
    nid = next((n for w in ("low", "min") for n in host.zonelist if frames_ok(mm, n, w)), None)
    if nid is None:
        uncharge(memcg, PAGE_SIZE)
        return False, cost
    memcg.writeback_folios.append((nid, take_frames(mm, nid, 1)[0]))
    return True, cost


async def writeback_entry(
    mm: Mm, zswap: Zswap, page: int, memcg: Memcg, *, worker: bool = False
) -> tuple[bool, int]:
    """zswap_writeback_entry(): decompress the entry into a swap-cache folio
    and start its write to the swap device.

    Only the shrink worker's writebacks hold a folio here. In reclaim (the
    zswap shrinker, a store at memory.zswap.max) the kernel forces the
    folio's charge past memory.max (PF_MEMALLOC) and the same reclaim drops
    it again once written; tiersim leaves that folio out.
    """
    host = mm.hosts[zswap.host]
    pages = mm.pages
    cost = 0
    if worker:
        got, cost = await _writeback_folio(mm, zswap, memcg)
        if not got:
            # -ENOMEM: the entry stays in the pool.
            zswap.stats.reject_reclaim_fail += 1
            return False, cost
        if pages.state[page] not in (PS_ZSWAP, PS_ZSWAP_DIRECT):
            # Loaded, invalidated or written back by the reclaim the folio's
            # charge ran: the entry is gone, and so is the folio.
            from .page_alloc import give_frames

            nid, zone = memcg.writeback_folios.pop()
            give_frames(mm, nid, zone, 1)
            uncharge(memcg, PAGE_SIZE)
            return False, cost
        host.vmstat.inc("pgrotated")
    data = mm.page_bytes(page)
    cost += int(mm.costs.lz4_decompress_ns_per_byte * PAGE_SIZE)
    state = pages.state[page]
    if state == PS_ZSWAP_DIRECT:
        result = await _load_direct(mm, page)
        if result is None:
            return False, cost
        cost += result.cost_ns
    # Free the entry first (it holds the page's charge), then write.
    await _entry_free(mm, zswap, page, memcg)
    _swapped, refused = await swap_write(mm, host, [(page, data)])
    if refused:
        # The device refused the write. The kernel cannot get here (the
        # entry's slot is reserved, as tiersim reserves it in
        # Host.swap_slots_held), but a tiersim swap node can be gone: the
        # page goes back into the pool, whatever the watermark, so nothing is
        # lost and the pool's accounting holds.
        pages.state[page] = PS_ZSWAP
        clen = compress(zswap.tunables, data)
        clen = min(clen, PAGE_SIZE)
        _pool_add(mm, zswap, page, clen, force=True)
        pages.zsize[page] = clen if clen < PAGE_SIZE else 0xFFFF
        if clen == PAGE_SIZE:
            zswap.stats.stored_incompressible_pages += 1
        _account_store(mm, zswap, page, memcg, clen)
        host.vmstat["zswpout"] -= 1
        memcg.stat["zswpout"] -= 1
        zswap.stats.reject_reclaim_fail += 1
        return False, cost
    zswap.stats.written_back_pages += 1
    host.vmstat.inc("zswpwb")
    memcg.stat["zswpwb"] += 1
    return True, cost


# Entries shrink_memcg() walks a call, as function traces of the reference
# kernel (7.3) count them (`tiersim reference run --ftrace shrink_memcg
# --ftrace shrink_memcg_cb`): from zswap_store() at memory.zswap.max, 32
# (zswap-random: 504 calls, 16,128 entries); from shrink_worker(), 16
# (zswap-pool-limit: 1,602 calls, 25,632 entries).
SHRINK_MEMCG_WALK_STORE = 32
SHRINK_MEMCG_WALK_WORKER = 16

SHRINK_OK = 0
SHRINK_NOENT = 1  # -ENOENT: nothing to walk, or writeback disabled
SHRINK_AGAIN = 2  # -EAGAIN: the entry walked got a second chance instead


async def shrink_memcg_one(
    mm: Mm, zswap: Zswap, memcg_index: int, *, worker: bool = False
) -> tuple[int, int]:
    """shrink_memcg(): walk one entry of the cgroup's zswap LRU (one per node).

    A referenced entry is rotated and loses its reference (second chance);
    otherwise it is written back. Returns (status, ns).
    """
    memcg = mm.memcgs[memcg_index]
    lru = zswap.lru.get(memcg_index)
    if not memcg.config.zswap_writeback or not lru:
        return SHRINK_NOENT, 0
    flags = mm.pages.flags
    page = next(iter(lru))
    if flags[page] & F_ZSWAP_REF:
        flags[page] &= ~F_ZSWAP_REF & 0xFF
        lru.move_to_end(page)
        return SHRINK_AGAIN, 0
    if not await mm.policy.zswap_writeback(mm, mm.hosts[zswap.host], page, True):
        lru.move_to_end(page)
        return SHRINK_AGAIN, 0
    ok, cost = await writeback_entry(mm, zswap, page, memcg, worker=worker)
    if not ok and page in lru:
        lru.move_to_end(page)
    return (SHRINK_OK if ok else SHRINK_AGAIN), cost


async def shrink_memcg_walk(
    mm: Mm, zswap: Zswap, memcg_index: int, nr_to_walk: int, *, worker: bool = False
) -> tuple[int, int, int]:
    """shrink_memcg(): walk up to nr_to_walk entries of the cgroup's zswap LRU,
    rotating referenced ones and writing back the others: (status, entries
    walked, ns). SHRINK_OK if any was written back, SHRINK_AGAIN if none,
    SHRINK_NOENT if there was nothing to walk; fewer entries walked than asked
    means the LRU ran out."""
    walked = written = cost = 0
    status = SHRINK_NOENT
    while walked < nr_to_walk:
        one, c = await shrink_memcg_one(mm, zswap, memcg_index, worker=worker)
        cost += c
        if one == SHRINK_NOENT:
            break
        walked += 1
        written += one == SHRINK_OK
    if walked:
        status = SHRINK_OK if written else SHRINK_AGAIN
    return status, walked, cost


def start_shrink_worker(mm: Mm, zswap: Zswap) -> None:
    """shrink_worker(): write back, round-robin over cgroups, to the accept threshold.

    Each step is shrink_memcg() on the next cgroup: a walk of up to
    SHRINK_MEMCG_WALK_WORKER entries of its zswap LRU, rotating referenced ones
    (second chance) and writing back the others. The worker stops after
    MAX_RECLAIM_RETRIES walks that wrote nothing back.
    """
    if zswap.shrink_running:
        return
    zswap.shrink_running = True
    failures = 0

    async def step() -> None:
        nonlocal failures
        if mm.stopped or zswap.total_pages() <= zswap.accept_thr_pages():
            zswap.shrink_running = False
            return
        memcgs = sorted(i for i, lru in zswap.lru.items() if lru)
        if not memcgs:
            zswap.shrink_running = False
            return
        idx = memcgs[zswap.next_memcg % len(memcgs)]
        zswap.next_memcg += 1
        mm.kthread = zswap.host  # a kernel thread's work: its host's costs
        try:
            status, _, cost = await shrink_memcg_walk(
                mm, zswap, idx, SHRINK_MEMCG_WALK_WORKER, worker=True
            )
        finally:
            mm.kthread = None
        # Its CPU work, shared with the host's processes (the writes it
        # starts are not waited for).
        cost = kernel_thread_ran(mm, [zswap.host], cost, thread="zswap_shrink")
        if status == SHRINK_AGAIN:
            failures += 1
            if failures >= MAX_RECLAIM_RETRIES:
                zswap.shrink_running = False
                return
        mm.sched.after(max(cost, 1_000), step, "zswap_shrink")

    mm.sched.after(0, step, "zswap_shrink")


def zswap_shrinker_count(memcg: Memcg, on_lru: int) -> int:
    """zswap_shrinker_count(): the cgroup's entries on the zswap LRU, less
    those protected by recent swap-ins from disk, scaled by the pool pages per
    entry. The scale comes from the cgroup's statistics as last flushed
    (MEMCG_ZSWAP_B >> PAGE_SHIFT over MEMCG_ZSWAPPED): nothing is counted
    before the first flush that saw the pool."""
    nr_stored = memcg.zswap_stat_stored
    if not nr_stored or not on_lru:
        return 0
    protected = min(on_lru, memcg.zswap_disk_swapins)
    memcg.zswap_disk_swapins -= protected
    nr_freeable = on_lru - protected
    nr_backing = memcg.zswap_stat_bytes // PAGE_SIZE
    return nr_freeable * nr_backing // nr_stored


async def zswap_shrink_slab(mm: Mm, memcg: Memcg, priority: int) -> int:
    """do_shrink_slab() of zswap's shrinker for one cgroup at one reclaim priority: ns.

    The zswap LRU is walked in batches (a referenced entry is rotated and
    counts as walked); a batch that writes nothing back ends the pass
    (SHRINK_STOP). While reclaim succeeds at high priorities the shrinker
    mostly defers; it writes back when reclaim has to go deeper.
    """
    host = mm.hosts[memcg.host]
    zswap = host.zswap
    if zswap is None or not zswap.tunables.shrinker_enabled:
        return 0
    if not memcg.config.zswap_writeback:
        return 0
    lru = zswap.lru.get(memcg.index)
    stored = len(lru) if lru else 0
    freeable = zswap_shrinker_count(memcg, stored)
    if not freeable:
        return 0
    nr = memcg.zswap_shrinker_deferred
    memcg.zswap_shrinker_deferred = 0

    async def scan(batch: int) -> tuple[bool, int]:
        status, _, c = await shrink_memcg_walk(mm, zswap, memcg.index, batch)
        return status != SHRINK_OK, c

    memcg.zswap_shrinker_deferred, cost = await do_shrink_slab(freeable, nr, priority, scan)
    return cost


async def zs_shrink_slab(mm: Mm, zswap: Zswap, priority: int) -> int:
    """do_shrink_slab() of the pool's own shrinker (zs_shrinker_count() /
    zs_shrinker_scan()) at one reclaim priority: ns.

    It counts the pages compaction could free and, when asked to scan at
    all, compacts the whole pool (zs_compact()). It is not memcg-aware, so
    only global reclaim (kswapd, direct reclaim) runs it, never a cgroup's
    limit reclaim.
    """
    freeable = zswap.zspool.can_compact()
    if not freeable:
        return 0
    nr = zswap.zs_shrinker_deferred
    zswap.zs_shrinker_deferred = 0

    async def scan(_batch: int) -> tuple[bool, int]:
        before = zswap.zspool.bytes_moved
        freed = zs_compact(mm, zswap)
        moved = zswap.zspool.bytes_moved - before
        return freed == 0, int(moved * mm.costs.memcpy_ns_per_byte)

    zswap.zs_shrinker_deferred, cost = await do_shrink_slab(freeable, nr, priority, scan)
    return cost


__all__ = [
    "Zswap",
    "ZswapStats",
    "zs_shrink_slab",
    "zswap_invalidate",
    "zswap_load",
    "zswap_shrink_slab",
    "zswap_store",
]
