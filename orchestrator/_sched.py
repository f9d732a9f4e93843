"""The event scheduler: the one owner of simulated time.

Events are ordered by (time, sequence): two events at the same nanosecond run
in the order they were scheduled, so a run is a pure function of its inputs.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Handler = Callable[[], Awaitable[None]]


@dataclass(order=True)
class _Event:
    time_ns: int
    seq: int
    handler: Handler = field(compare=False)
    name: str = field(compare=False, default="")
    cancelled: bool = field(compare=False, default=False)


class Scheduler:
    def __init__(self) -> None:
        self._heap: list[_Event] = []
        self._seq = 0
        self.now_ns = 0
        self.events_run = 0
        # The tasks of Threads, to cancel those still asleep when the run ends.
        self.threads: set[asyncio.Task[None]] = set()

    def at(self, time_ns: int, handler: Handler, name: str = "") -> _Event:
        """Run `handler` at simulated `time_ns` (never earlier than now)."""
        ev = _Event(max(time_ns, self.now_ns), self._seq, handler, name)
        self._seq += 1
        heapq.heappush(self._heap, ev)
        return ev

    def after(self, delay_ns: int, handler: Handler, name: str = "") -> _Event:
        return self.at(self.now_ns + delay_ns, handler, name)

    async def close(self) -> None:
        """The run is over: cancel the threads still asleep in their work, and
        let them unwind (a kswapd batch in progress gives back its frames)."""
        tasks = list(self.threads)
        self.threads.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._heap)

    def peek_time(self) -> int | None:
        return self._heap[0].time_ns if self._heap else None

    async def run_until(self, end_ns: int, stop: Callable[[], bool] = lambda: False) -> None:
        """Run events in order until simulated `end_ns`, the heap empties or `stop()`.

        Time ends at `end_ns`, unless `stop()` ended the run first: then it
        ends at the last event's time (a run whose processes are all done
        lasted until the last of them finished)."""
        while self._heap and not stop():
            ev = self._heap[0]
            if ev.time_ns > end_ns:
                break
            heapq.heappop(self._heap)
            if ev.cancelled:
                continue
            self.now_ns = ev.time_ns
            self.events_run += 1
            await ev.handler()
        if not stop():
            self.now_ns = max(self.now_ns, min(end_ns, self.now_ns if self._heap else end_ns))


class Thread:
    """Work that spans simulated time: a coroutine that may `await
    thread.sleep(ns)` in the middle of what it does, as a kernel thread
    sleeps or is preempted in the middle of a loop.

    Events run one at a time, each to its end. A thread's coroutine runs as
    an asyncio task of its own, but only while one of its events (its start,
    or the wake-up that ends a sleep) waits for it to sleep again or finish:
    nothing else moves meanwhile, so a run stays a pure function of its
    inputs. An exception in the thread is raised in the event that waits.
    """

    def __init__(self, sched: Scheduler, name: str) -> None:
        self.sched = sched
        self.name = name
        # Resolved when the thread stops running: asleep or done.
        self._parked: asyncio.Future[None] | None = None

    def start(self, work: Callable[[], Awaitable[None]], delay_ns: int = 0) -> None:
        """Run `work()` as this thread from `delay_ns` on."""

        async def begin() -> None:
            loop = asyncio.get_running_loop()
            parked = self._parked = loop.create_future()
            task = loop.create_task(self._body(work))
            self.sched.threads.add(task)
            task.add_done_callback(self.sched.threads.discard)
            await parked

        self.sched.after(delay_ns, begin, self.name)

    async def _body(self, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except BaseException as exc:
            self._park(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._park()

    def _park(self, exc: BaseException | None = None) -> None:
        parked, self._parked = self._parked, None
        if parked is None or parked.done():
            return
        if exc is None or isinstance(exc, asyncio.CancelledError):
            parked.set_result(None)
        else:
            parked.set_exception(exc)

    async def sleep(self, delay_ns: int) -> None:
        """Let `delay_ns` of simulated time pass; call only from the thread's work."""
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()

        async def resume() -> None:
            parked = self._parked = loop.create_future()
            wake.set_result(None)
            await parked

        self.sched.after(delay_ns, resume, self.name)
        self._park()
        await wake
