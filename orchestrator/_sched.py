"""The event scheduler: the one owner of simulated time.

Events are ordered by (time, sequence): two events at the same nanosecond run
in the order they were scheduled, so a run is a pure function of its inputs.
"""

from __future__ import annotations

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

    def at(self, time_ns: int, handler: Handler, name: str = "") -> _Event:
        """Run `handler` at simulated `time_ns` (never earlier than now)."""
        ev = _Event(max(time_ns, self.now_ns), self._seq, handler, name)
        self._seq += 1
        heapq.heappush(self._heap, ev)
        return ev

    def after(self, delay_ns: int, handler: Handler, name: str = "") -> _Event:
        return self.at(self.now_ns + delay_ns, handler, name)

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
