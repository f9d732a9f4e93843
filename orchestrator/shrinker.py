"""do_shrink_slab() (mm/shrinker.c): how much of a shrinker's count one
reclaim pass asks it to scan.

Each pass at reclaim priority p asks for (freeable >> p) * 4 / seeks objects
plus what earlier passes deferred (>> p), at most twice the freeable count,
in batches; a batch is asked for only while a whole batch (or everything
freeable) is due, so at high priorities a shrinker mostly defers. A scan
that reports SHRINK_STOP ends the pass uncounted. What was due and not
scanned is deferred to the next pass, capped at twice the freeable count.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

SHRINK_BATCH = 128
DEFAULT_SEEKS = 2

# scan(nr_to_scan) -> (stopped, ns): stopped is SHRINK_STOP.
ScanObjects = Callable[[int], Awaitable[tuple[bool, int]]]


async def do_shrink_slab(
    freeable: int,
    deferred: int,
    priority: int,
    scan: ScanObjects,
    *,
    seeks: int = DEFAULT_SEEKS,
    batch_size: int = SHRINK_BATCH,
) -> tuple[int, int]:
    """One shrinker's share of a reclaim pass: (next deferred count, ns)."""
    if not freeable:
        return deferred, 0
    delta = (freeable >> priority) * 4 // seeks
    total_scan = min((deferred >> priority) + delta, 2 * freeable)
    scanned = cost = 0
    while total_scan >= batch_size or total_scan >= freeable:
        nr_to_scan = min(batch_size, total_scan)
        stopped, c = await scan(nr_to_scan)
        cost += c
        if stopped:
            break
        total_scan -= nr_to_scan
        scanned += nr_to_scan
    return min(max(deferred + delta - scanned, 0), 2 * freeable), cost


__all__ = ["DEFAULT_SEEKS", "SHRINK_BATCH", "do_shrink_slab"]
