"""The event scheduler and the threads whose work spans simulated time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from tiersim.orchestrator._sched import Scheduler, Thread


def _run(sched: Scheduler, end_ns: int = 10**9) -> None:
    async def main() -> None:
        try:
            await sched.run_until(end_ns)
        finally:
            await sched.close()

    asyncio.run(main())


def test_a_thread_sleeps_through_simulated_time_while_other_events_run() -> None:
    sched = Scheduler()
    log: list[tuple[int, str]] = []
    thread = Thread(sched, "worker")

    async def work() -> None:
        for step in range(3):
            log.append((sched.now_ns, f"batch {step}"))
            await thread.sleep(100)
        log.append((sched.now_ns, "done"))

    def event(name: str) -> Callable[[], Awaitable[None]]:
        async def handler() -> None:
            log.append((sched.now_ns, name))

        return handler

    thread.start(work, delay_ns=10)
    sched.at(50, event("task at 50"))
    sched.at(110, event("task at 110"))
    sched.at(250, event("task at 250"))
    _run(sched)
    assert log == [
        (10, "batch 0"),
        (50, "task at 50"),
        # Scheduled first, the task's event runs before the thread wakes.
        (110, "task at 110"),
        (110, "batch 1"),
        (210, "batch 2"),
        (250, "task at 250"),
        (310, "done"),
    ]
    assert not sched.threads


def test_the_same_threads_interleave_the_same_way_every_time() -> None:
    def trace() -> list[tuple[int, str]]:
        sched = Scheduler()
        log: list[tuple[int, str]] = []
        for name, step in (("a", 30), ("b", 20)):
            thread = Thread(sched, name)

            async def work(thread: Thread = thread, step: int = step) -> None:
                for _ in range(4):
                    log.append((sched.now_ns, thread.name))
                    await asyncio.sleep(0)  # real I/O in the middle changes nothing
                    await thread.sleep(step)

            thread.start(work)
        _run(sched)
        return log

    first = trace()
    assert first == trace()
    assert [name for _, name in first[:4]] == ["a", "b", "b", "a"]


def test_an_error_in_a_thread_ends_the_run_with_it() -> None:
    sched = Scheduler()
    thread = Thread(sched, "broken")

    async def work() -> None:
        await thread.sleep(5)
        raise RuntimeError("broken batch")

    thread.start(work)
    with pytest.raises(RuntimeError, match="broken batch"):
        _run(sched)


def test_a_thread_asleep_when_the_run_ends_is_cancelled() -> None:
    sched = Scheduler()
    thread = Thread(sched, "long")
    reached: list[int] = []

    unwound: list[bool] = []

    async def work() -> None:
        try:
            await thread.sleep(1_000)
            reached.append(sched.now_ns)
        finally:
            unwound.append(True)  # what it holds, it gives back

    thread.start(work)

    async def main() -> None:
        await sched.run_until(500)
        assert unwound == []
        await sched.close()
        # Unwound by close() itself, before the run's results are read.
        assert unwound == [True] and not sched.threads

    asyncio.run(main())
    assert reached == []
