"""do_shrink_slab() (mm/shrinker.c): what a reclaim pass asks a shrinker to scan."""

from __future__ import annotations

import asyncio

from tiersim.orchestrator.shrinker import SHRINK_BATCH, do_shrink_slab


def run(freeable: int, deferred: int, priority: int, stop_after: int | None = None):  # type: ignore[no-untyped-def]
    asked: list[int] = []

    async def scan(n: int) -> tuple[bool, int]:
        asked.append(n)
        return stop_after is not None and len(asked) > stop_after, 10

    nxt, cost = asyncio.run(do_shrink_slab(freeable, deferred, priority, scan))
    return asked, nxt, cost


def test_high_priority_passes_defer() -> None:
    # (1000 >> 12) * 4 / 2 = 0: nothing due, nothing scanned.
    assert run(1000, 0, 12) == ([], 0, 0)
    # At priority 6: 15 * 4 / 2 = 30 due, less than a batch: deferred.
    assert run(1000, 0, 6) == ([], 30, 0)


def test_deep_passes_scan_in_batches_and_defer_the_rest() -> None:
    asked, nxt, cost = run(1000, 0, 0)
    # 2,000 due (capped at twice the freeable count): 15 whole batches, 80 left over.
    assert asked == [SHRINK_BATCH] * 15
    assert nxt == 2000 - 15 * SHRINK_BATCH and cost == 150


def test_a_small_cache_is_scanned_whole() -> None:
    # Fewer objects than a batch: scanned once everything freeable is due.
    asked, nxt, _ = run(50, 0, 0)
    assert asked == [100]  # 100 due, less than a batch but all that is freeable: one call
    assert nxt == 0


def test_shrink_stop_ends_the_pass_uncounted() -> None:
    asked, nxt, _ = run(1000, 0, 0, stop_after=2)
    assert len(asked) == 3
    # Two batches counted; the stopped one is not, and the rest is deferred.
    assert nxt == 2000 - 2 * SHRINK_BATCH


def test_deferred_work_is_added_back_by_priority() -> None:
    # 8,000 deferred >> 6 = 125, plus 30 due now: a whole batch at priority 6.
    asked, nxt, _ = run(1000, 8000, 6)
    assert asked == [SHRINK_BATCH]
    # What was due (deferred + delta) less what was scanned, capped at 2 x freeable.
    assert nxt == min(8000 + 30 - SHRINK_BATCH, 2000)
    # Deferred work too small to reach a batch at this priority stays deferred, grown.
    asked, nxt, _ = run(1000, 500, 6)
    assert asked == [] and nxt == 530
