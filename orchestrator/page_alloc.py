"""Frame allocation and zone watermarks (mm/page_alloc.c).

Byte-addressable nodes hand out page frames from a free count the engine
keeps, as the buddy allocator does; devices are only asked when data moves
(or, for a compressed node, whether a page is safe to place).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._mm import Host, Mm

MAX_RECLAIM_RETRIES = 16  # mm/page_alloc.c


@dataclass(frozen=True)
class Watermarks:
    """WMARK_MIN / LOW / HIGH / PROMO of a node, in pages."""

    min: int
    low: int
    high: int
    promo: int


def min_free_kbytes(lowmem_pages: int) -> int:
    """calculate_min_free_kbytes(): int_sqrt(lowmem_kbytes * 16), clamped to [128, 262144]."""
    lowmem_kbytes = lowmem_pages * 4
    return max(128, min(262144, math.isqrt(lowmem_kbytes * 16)))


def setup_watermarks(
    node_pages: dict[int, int], watermark_scale_factor: int = 10
) -> dict[int, Watermarks]:
    """__setup_per_zone_wmarks() for the nodes of one host.

    min is min_free_kbytes shared out in proportion to node size; low and
    high add max(min/4, managed * watermark_scale_factor / 10000) once and
    twice; WMARK_PROMO adds it a third time (high + (high - low)).
    """
    total = sum(node_pages.values())
    pages_min = min_free_kbytes(total) // 4
    out = {}
    for nid, managed in node_pages.items():
        wmin = pages_min * managed // total if total else 0
        tmp = max(wmin // 4, managed * watermark_scale_factor // 10000)
        out[nid] = Watermarks(min=wmin, low=wmin + tmp, high=wmin + 2 * tmp, promo=wmin + 3 * tmp)
    return out


def take_frame(mm: Mm, nid: int) -> None:
    node = mm.nodes[nid]
    node.free_pages -= 1
    node.nr_pages += 1


def take_frames(mm: Mm, nid: int, n: int) -> None:
    """Take `n` frames of node `nid` at once (give them back when n < 0)."""
    node = mm.nodes[nid]
    node.free_pages -= n
    node.nr_pages += n


def free_frame(mm: Mm, nid: int) -> None:
    node = mm.nodes[nid]
    node.free_pages += 1
    node.nr_pages -= 1


def zone_watermark_ok(mm: Mm, nid: int, mark: int, nr: int = 1) -> bool:
    node = mm.nodes[nid]
    return not node.lost and node.free_pages - nr >= mark


def _take(mm: Mm, host: Host, nid: int) -> int:
    take_frame(mm, nid)
    host.vmstat.inc("numa_hit" if nid == host.zonelist[0] else "numa_miss")
    return nid


async def alloc_page(mm: Mm, host: Host, direct_reclaim: bool = True) -> tuple[int, int]:
    """Allocate one frame for a fault on `host`: (node id or -1, time spent in ns).

    The fast path takes from the first node of the host's zonelist above its
    low watermark; the slow path wakes kswapd on every node of the zonelist,
    retries down to the min watermark, then reclaims directly
    (__alloc_pages_slowpath), giving up after MAX_RECLAIM_RETRIES rounds
    without progress.
    """
    for nid in host.zonelist:
        if zone_watermark_ok(mm, nid, mm.nodes[nid].wmark.low):
            return _take(mm, host, nid), 0
    from .vmscan import try_to_free_pages, wakeup_kswapd

    for nid in host.zonelist:
        wakeup_kswapd(mm, nid)
    for nid in host.zonelist:
        if zone_watermark_ok(mm, nid, mm.nodes[nid].wmark.min):
            return _take(mm, host, nid), 0
    if not direct_reclaim:
        return -1, 0
    spent = 0
    for _ in range(MAX_RECLAIM_RETRIES):
        host.vmstat.inc("allocstall")
        progress, cost = await try_to_free_pages(mm, host)
        spent += cost
        for nid in host.zonelist:
            if zone_watermark_ok(mm, nid, mm.nodes[nid].wmark.min):
                return _take(mm, host, nid), spent
        if progress == 0:
            break
    # Out of memory: the kernel would now kill a task; the caller decides.
    return -1, spent


def alloc_on_node(mm: Mm, nid: int, mark: int, *, wake_kswapd: bool = False) -> bool:
    """__GFP_THISNODE allocation without direct reclaim (demotion and promotion targets).

    With `wake_kswapd` (__GFP_KSWAPD_RECLAIM) an allocation that finds the node
    below its low watermark wakes the node's kswapd, as the slow path does.
    """
    if wake_kswapd and not zone_watermark_ok(mm, nid, mm.nodes[nid].wmark.low):
        from .vmscan import wakeup_kswapd

        wakeup_kswapd(mm, nid)
    if zone_watermark_ok(mm, nid, mark):
        take_frame(mm, nid)
        return True
    return False
