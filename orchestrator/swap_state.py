"""Swap readahead (mm/swap_state.c): swap_vma_readahead() and the swap cache hit.

A major fault on a swapped-out page reads a window of the pages around it
that are swapped out too, up to 2**vm.page-cluster of them, clipped to the
VMA and to the PMD the fault lies in. The window adapts per VMA
(__swapin_nr_pages()): it starts at one page, opens when faults are
adjacent, grows with the readahead pages that were then used (hits), and
shrinks by at most half a step at a time.

Pages read ahead are charged, placed on the LRU and held in the swap cache:
resident, but not mapped. The first access to one is a minor fault (a swap
cache hit, `swap_ra_hit`), which also counts as a hit for the next window.
Pages loaded from zswap are decompressed by the faulting task, as
swap_read_folio() does; reads from a swap device are asynchronous and cost
the task nothing beyond queueing on the device. A page read from a swap
device keeps its slot while it stays clean (swap.py), read ahead or not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tiersim.nodes import PAGE_SIZE

from ._pages import F_SWAPCACHE, PS_SWAP, PS_ZSWAP, PS_ZSWAP_DIRECT
from .memcontrol import try_charge, uncharge
from .page_alloc import alloc_page
from .swap import swap_in, swapped_in

if TYPE_CHECKING:
    from ._mm import Host, Mm, Process

# SWAP_RA_HITS_MAX: hits are kept in PAGE_SHIFT / 2 bits of swap_readahead_info.
SWAP_RA_HITS_MAX = 63
# SWAP_RA_ORDER_CEILING on 64-bit.
SWAP_RA_ORDER_CEILING = 5
# Pages per PMD: a window never crosses a 2 MiB boundary.
PMD_PAGES = 512


def swapin_nr_pages(prev: int, pfn: int, hits: int, max_pages: int, prev_win: int) -> int:
    """__swapin_nr_pages(): the next readahead window, in pages."""
    pages = hits + 2
    if pages == 2:
        # No hits to judge by: read ahead only when this fault is next to the last one.
        if pfn != prev + 1 and pfn != prev - 1:
            pages = 1
    else:
        roundup = 4
        while roundup < pages:
            roundup <<= 1
        pages = roundup
    pages = min(pages, max_pages)
    # Don't shrink readahead too fast.
    return max(pages, prev_win // 2)


def swap_vma_ra_win(mm: Mm, proc: Process, vpn: int) -> tuple[int, int]:
    """swap_vma_ra_win(): [start, end) of the window around virtual page `vpn`."""
    max_win = 1 << min(mm.tunables.page_cluster, SWAP_RA_ORDER_CEILING)
    if max_win == 1:
        return vpn, vpn + 1
    prev, prev_win, hits = proc.swap_ra_pfn, proc.swap_ra_win, proc.swap_ra_hits
    win = swapin_nr_pages(prev, vpn, hits, max_win, prev_win)
    proc.swap_ra_pfn, proc.swap_ra_win, proc.swap_ra_hits = vpn, win, 0
    if win == 1:
        return vpn, vpn + 1
    if vpn == prev + 1:
        lo, hi = vpn, vpn + win
    elif prev == vpn + 1:
        lo, hi = vpn - win + 1, vpn + 1
    else:
        left = (win - 1) // 2
        lo, hi = vpn - left, vpn + win - left
    pmd = vpn - vpn % PMD_PAGES
    return max(lo, 0, pmd), min(hi, proc.npages, pmd + PMD_PAGES)


async def swap_vma_readahead(mm: Mm, proc: Process, host: Host, lo: int, hi: int, vpn: int) -> int:
    """Read the swapped-out pages of [lo, hi) other than `vpn` into the swap cache: ns."""
    pages = mm.pages
    memcg = mm.memcgs[proc.memcg]
    cost = 0
    for v in range(lo, hi):
        page = proc.base + v
        if v == vpn or pages.state[page] not in (PS_ZSWAP, PS_ZSWAP_DIRECT, PS_SWAP):
            continue
        # The readahead allocation may reclaim but never OOM-kills: it just stops.
        ok, c = await try_charge(mm, memcg)
        cost += c
        if not ok:
            break
        nid, c = await alloc_page(mm, host, page)
        cost += c
        if nid < 0:
            uncharge(memcg, PAGE_SIZE)
            break
        # Reclaim may have written the entry back from zswap meanwhile.
        from_zswap = pages.state[page] != PS_SWAP
        got, c = await swap_in(mm, page, host)
        if from_zswap:
            cost += c
        swapped_in(mm, host, page, nid, got, flags=F_SWAPCACHE)
        mm.lru.add_head(mm.lru_lists(nid, proc.memcg)[0], page)
        host.vmstat.inc("swap_ra")
    return cost


def swap_cache_hit(mm: Mm, proc: Process, host: Host, page: int) -> int:
    """A fault on a page read ahead: map it from the swap cache (a minor fault): ns."""
    mm.pages.flags[page] &= ~F_SWAPCACHE & 0xFF
    host.vmstat.inc("swap_ra_hit")
    # swap_cache_get_folio(): the hit counts towards the next window, from here.
    proc.swap_ra_pfn = page - proc.base
    proc.swap_ra_hits = min(proc.swap_ra_hits + 1, SWAP_RA_HITS_MAX)
    return mm.costs.minor_fault_ns
