"""The swap path: pageout through zswap or to the swap device, and swap-in.

mm/vmscan.c pageout() -> swap_writepage(): zswap_store() first; a page it
refuses goes to the swap device, unless the cgroup disabled zswap writeback
(memory.zswap.writeback = 0), in which case it stays in memory. Swap-in
(do_swap_page, mm/memory.c) tries zswap_load() and otherwise reads the slot.

A page read from a swap device stays in the swap cache with its slot, as
do_swap_page() leaves it unless swap is more than half full
(should_try_to_free_swap(), vm_swap_full()): reclaimed again before it is
written, it is dropped without I/O, since the slot still holds its bytes. A
page written meanwhile is dirty: its stale slot is freed and it is swapped
out as any other.

Every swapped-out page holds a slot: the kernel allocates it (and charges
memory.swap.current) before zswap_store() sees the page, so a zswap entry
holds one on the swap device too (Host.swap_slots_held), and a page loaded
back from zswap keeps it in the swap cache, dirty (zswap loads are
exclusive), under the same rule as a page read from the device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tiersim.nodes._types import OK

from ._pages import PS_CRAM_RO, PS_MAPPED, PS_SWAP, PS_ZSWAP, PS_ZSWAP_DIRECT
from .memcontrol import uncharge
from .migrate import node_call
from .page_alloc import free_frame

if TYPE_CHECKING:
    from ._mm import Host, Memcg, Mm

PAGE_SIZE = 4096
ZERO_PAGE = bytes(PAGE_SIZE)


async def read_resident(mm: Mm, pages_in: list[int], nid: int) -> tuple[list[bytes], int]:
    """The bytes of pages about to leave `nid`, and the cost of reading them.

    Pages on DRAM/CXL are read by the CPU (their bytes come from the content
    model); pages on a compressed node are read back from the device.
    """
    if pages_in and mm.pages.state[pages_in[0]] == PS_CRAM_RO:
        node = mm.nodes[nid]
        handles = [mm.pages.handle[p] for p in pages_in]
        result = await node_call(mm, nid, node.client.load(handles, now_ns=mm.sched.now_ns))
        if result is None:
            return [], 0
        mm.note_state(nid, result.state)
        for page, data in zip(pages_in, result.data, strict=True):
            if data:
                mm.verify(page, data)
        return [d if d else b"" for d in result.data], result.cost_ns
    return [mm.page_bytes(p) for p in pages_in], 0


async def pageout(
    mm: Mm, pages_in: list[int], nid: int, host: Host
) -> tuple[list[int], list[int], int]:
    """Swap out isolated pages from `nid`: (swapped, kept, ns)."""
    from .zswap import zswap_store

    datas, cost = await read_resident(mm, pages_in, nid)
    if not datas:
        return [], [], cost
    pages = mm.pages
    done: list[int] = []
    kept: list[int] = []
    to_device: list[tuple[int, bytes]] = []
    zswap = host.zswap
    on_cram = pages.state[pages_in[0]] == PS_CRAM_RO
    # Device copies on the source node, freed once their pages are safe elsewhere.
    orig_handle = {p: pages.handle[p] for p in pages_in if pages.handle[p]}
    src_handles: list[int] = []
    stale: dict[int, list[int]] = {}  # swap node -> slots of pages written since read
    swapcache = mm.swapcache
    for page, data in zip(pages_in, datas, strict=True):
        if not data:  # the device could not give it back (poisoned)
            kept.append(page)
            continue
        memcg = mm.memcgs[pages.memcg[page]]
        cached = swapcache.get(page)
        if cached is not None:
            snid, handle, version = cached
            if version == pages.version[page] and (snid < 0 or not mm.nodes[snid].lost):
                # Clean, and its slot still holds it: dropped without I/O.
                del swapcache[page]
                if page in orig_handle:
                    src_handles.append(orig_handle[page])
                _leave_node(mm, page, nid)
                pages.state[page] = PS_SWAP
                pages.node[page] = snid
                pages.handle[page] = handle
                done.append(page)
                continue
            released = swapcache_release(mm, page)
            if released is not None:
                stale.setdefault(released[0], []).append(released[1])
        if not get_swap_slot(mm, host):
            # No slot: the page stays (shrink_folio_list() activates it).
            kept.append(page)
            continue
        if data == ZERO_PAGE:
            # The swap layer keeps zero-filled pages in its zero bitmap: no
            # zswap entry, no device write (mm/swapfile.c, since 6.12).
            if page in orig_handle:
                src_handles.append(orig_handle[page])
            _leave_node(mm, page, nid)
            pages.state[page] = PS_SWAP
            pages.node[page] = -1
            pages.handle[page] = 0
            hold_swap_slot(host, memcg)
            host.vmstat.inc("swpout_zero")
            done.append(page)
            continue
        if zswap is not None and zswap.enabled:
            stored, c = await zswap_store(mm, zswap, page, data, memcg)
            cost += c
            if stored:
                if page in orig_handle:
                    src_handles.append(orig_handle[page])
                _leave_node(mm, page, nid)
                done.append(page)
                continue
            if not memcg.config.zswap_writeback:
                # swap_writeout() leaves the page in the swap cache, dirty,
                # with the slot add_to_swap() gave it.
                if page not in swapcache:
                    swapcache[page] = SLOT_ONLY
                    hold_swap_slot(host, memcg)
                kept.append(page)
                continue
        to_device.append((page, data))
    if to_device:
        swapped, refused = await swap_write(mm, host, to_device)
        for page in swapped:
            if page in orig_handle:
                src_handles.append(orig_handle[page])
            _leave_node(mm, page, nid)
        done.extend(swapped)
        kept.extend(refused)
    if src_handles:
        node = mm.nodes[nid]
        r = await node_call(mm, nid, node.client.free(src_handles, now_ns=mm.sched.now_ns))
        if r is not None:
            mm.note_state(nid, r.state)
            cost += r.cost_ns
    cost += await free_slots(mm, stale)
    if on_cram:
        host.vmstat.inc("cram_reclaim", len(done))
    return done, kept, cost


def swapped_in(mm: Mm, host: Host, page: int, nid: int, got: bool, *, flags: int) -> None:
    """Make a page brought back by swap_in() resident on `nid` (not yet on an LRU).

    A page whose bytes the swap device lost comes back empty: SIGBUS.
    """
    pages = mm.pages
    if not got:
        host.vmstat.inc("sigbus")
        pages.version[page] += 1
    pages.state[page] = PS_MAPPED
    pages.node[page] = nid
    pages.handle[page] = 0
    pages.flags[page] = flags


# The swap-cache entry of a page loaded back from zswap: a slot with nothing
# written to the device, and the page dirty (its version never matches).
SLOT_ONLY = (-1, 0, -1)


def hold_swap_slot(host: Host, memcg: Memcg) -> None:
    """A slot taken with no page written to the swap device (a zswap entry,
    a zero-filled page, a page kept in the swap cache without data there),
    charged to memory.swap.current."""
    memcg.swap_current += PAGE_SIZE
    host.swap_slots_held += 1


def put_swap_slot(host: Host, memcg: Memcg) -> None:
    """Give back a slot hold_swap_slot() took."""
    memcg.swap_current -= PAGE_SIZE
    host.swap_slots_held -= 1


def _swap_space(mm: Mm, host: Host) -> tuple[int, int]:
    """(total, free) swap slots of the host: its live swap devices' pages,
    less those written there and those zswap entries, zero-filled pages
    and zswap-loaded pages hold (Host.swap_slots_held)."""
    total = used = 0
    for snid in host.swap_nodes:
        snode = mm.nodes[snid]
        if not snode.lost:
            total += snode.present_pages
            used += snode.nr_pages
    return total, total - used - host.swap_slots_held


def vm_swap_full(mm: Mm, host: Host) -> bool:
    """vm_swap_full(): less than half of the host's swap space is free."""
    total, free = _swap_space(mm, host)
    return free * 2 < total


def get_swap_slot(mm: Mm, host: Host) -> bool:
    """Can add_to_swap() give a page a slot? Not on a host whose swap
    devices are full (their written pages and the slots held count); a host
    without a swap device is not limited here (zswap alone, as tiersim
    allows)."""
    return not host.swap_nodes or _swap_space(mm, host)[1] > 0


def swapcache_release(mm: Mm, page: int) -> tuple[int, int] | None:
    """Forget the slot a resident page kept in the swap cache.

    Returns (swap node, slot handle) for the caller to free on the device
    (see free_slots), or None when the page kept none or its slot held no
    data on a device (a page loaded back from zswap).
    """
    entry = mm.swapcache.pop(page, None)
    if entry is None:
        return None
    snid, handle, _ = entry
    memcg = mm.memcgs[mm.pages.memcg[page]]
    if snid < 0:
        put_swap_slot(mm.hosts[memcg.host], memcg)
        return None
    memcg.swap_current -= PAGE_SIZE
    mm.nodes[snid].nr_pages -= 1
    return snid, handle


async def free_swap_on_write(mm: Mm, page: int) -> None:
    """should_try_to_free_swap() on a write fault: the page is the task's
    alone and about to change, so do_swap_page() frees its swap slot
    (folio_free_swap()) rather than keep it in the swap cache. Freeing a slot
    is the kernel's bookkeeping: the task is not charged for it."""
    released = swapcache_release(mm, page)
    if released is not None:
        await free_slots(mm, {released[0]: [released[1]]})


async def free_slots(mm: Mm, by_node: dict[int, list[int]]) -> int:
    """Free device handles (swap slots, copies on byte-addressable nodes),
    grouped by node, at the current time: ns."""
    cost = 0
    for snid, handles in sorted(by_node.items()):
        snode = mm.nodes[snid]
        if snode.lost or not handles:
            continue
        r = await node_call(mm, snid, snode.client.free(handles, now_ns=mm.sched.now_ns))
        if r is not None:
            mm.note_state(snid, r.state)
            cost += r.cost_ns
    return cost


def _leave_node(mm: Mm, page: int, nid: int) -> None:
    """The page no longer occupies a frame on `nid` nor counts as resident."""
    free_frame(mm, nid, page)
    uncharge(mm.memcgs[mm.pages.memcg[page]], PAGE_SIZE)


async def swap_write(
    mm: Mm, host: Host, items: list[tuple[int, bytes]]
) -> tuple[list[int], list[int]]:
    """Write pages to the host's swap device(s): (swapped, refused).

    Swapped pages point at their slot; the caller releases what they left.
    The writes cost the caller no time: the kernel submits a swap write
    (__swap_writepage(), a bio to the device) and goes on, whether reclaim
    or zswap's writeback started it. The device's own time is its model's
    to account (a busy device serves later reads more slowly).
    """
    pages = mm.pages
    remaining = items
    swapped: list[int] = []
    for snid in host.swap_nodes:
        if not remaining:
            break
        snode = mm.nodes[snid]
        if snode.lost:
            continue
        result = await node_call(
            mm,
            snid,
            snode.client.store([(0, d) for _, d in remaining], now_ns=mm.sched.now_ns),
        )
        if result is None:
            continue
        mm.note_state(snid, result.state)
        left = []
        for i, (page, data) in enumerate(remaining):
            if result.codes[i] == OK:
                memcg = mm.memcgs[pages.memcg[page]]
                pages.state[page] = PS_SWAP
                pages.node[page] = snid
                pages.handle[page] = result.handles[i]
                memcg.swap_current += PAGE_SIZE
                memcg.stat["pswpout"] += 1
                host.vmstat.inc("pswpout")
                snode.nr_pages += 1
                swapped.append(page)
            else:
                left.append((page, data))
        remaining = left
    return swapped, [p for p, _ in remaining]


async def swap_in(mm: Mm, page: int, host: Host) -> tuple[bool, int]:
    """Bring a swapped-out page's bytes back (the caller maps it): (ok, ns)."""
    from .zswap import zswap_load

    pages = mm.pages
    state = pages.state[page]
    memcg = mm.memcgs[pages.memcg[page]]
    if state in (PS_ZSWAP, PS_ZSWAP_DIRECT):
        zswap = mm.zswap_of_page(page)
        return await zswap_load(mm, zswap, page, memcg)
    if state != PS_SWAP:
        raise AssertionError(f"swap_in of a page in state {state}")
    snid = pages.node[page]
    if snid < 0:
        # A zero-filled page from the swap layer's zero bitmap: no I/O. Like
        # a page read from the device it keeps its slot in the swap cache,
        # clean, unless swap is more than half full.
        if vm_swap_full(mm, host):
            put_swap_slot(host, memcg)
        else:
            mm.swapcache[page] = (-1, 0, pages.version[page])
        host.vmstat.inc("swpin_zero")
        return True, 0
    snode = mm.nodes[snid]
    # Swap more than half full: the slot is freed on read.
    keep = not vm_swap_full(mm, host)
    handle = pages.handle[page]
    result = await node_call(
        mm, snid, snode.client.load([handle], free_after=not keep, now_ns=mm.sched.now_ns)
    )
    if result is None:
        return False, 0
    mm.note_state(snid, result.state)
    if result.codes[0] != OK:
        if keep:
            await node_call(mm, snid, snode.client.free([handle], now_ns=mm.sched.now_ns))
        snode.nr_pages -= 1
        memcg.swap_current -= PAGE_SIZE
        return False, result.cost_ns
    if keep:
        mm.swapcache[page] = (snid, handle, pages.version[page])
    else:
        snode.nr_pages -= 1
        memcg.swap_current -= PAGE_SIZE
    mm.verify(page, result.data[0])
    memcg.zswap_disk_swapins += 1
    host.vmstat.inc("pswpin")
    memcg.stat["pswpin"] += 1
    return True, result.cost_ns
