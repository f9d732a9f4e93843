"""Events of a run: node pressure streams and engine events, merged and fanned out.

A run's events come from two kinds of sources:

* every memory node's WatchPressure stream (the device's watermark
  interrupts), read through the NodeClient seam, so embedded and remote
  nodes look alike;
* the engine: node losses (`mm.failures`), memory-cgroup limit hits
  (`memory.events`), periodic counters and progress, taken by a tick that
  runs in simulated time on the run's own scheduler.

`RunTap` merges them with aiostream into one stream and publishes it to an
`EventHub`, which fans it out to subscribers (the service's WatchRun, a
policy agent's Subscribe). Every queue on the way is bounded and drops its
oldest entries when a reader falls behind, counting what it dropped: a slow
or stalled subscriber costs a fixed amount of memory and never slows the
run. Events do not feed back into the simulation, so watching a run never
changes its results.

The tick also yields the event loop now and then. An embedded run never
has to wait for anything, so without it a run would hold the loop for its
whole length and the server sharing that loop could not answer a progress
watcher, a cancellation or a health check until it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

import grpc
from aiostream import stream

from tiersim._errors import NodeError
from tiersim.v1 import policy_pb2 as ppb

if TYPE_CHECKING:
    from ._mm import Mm, Numa

T = TypeVar("T")

# Events a subscriber may have queued before the oldest are dropped.
SUBSCRIBER_QUEUE = 1024
# Engine events waiting for the merge, and subscribers per run.
FEED_QUEUE = 4096
MAX_SUBSCRIBERS = 64
# Ticks per run (in simulated time) at most, and the longest the run may hold
# the event loop between two yields, in wall-clock seconds.
TICKS_PER_RUN = 1000
YIELD_EVERY_S = 0.02
# Turns of the event loop per yield: a merged event takes a few to travel.
YIELD_TURNS = 3
CGROUP_EVENTS = ("high", "max", "oom", "oom_kill")


class BoundedFeed(Generic[T]):
    """An async iterator over a bounded queue that drops its oldest items when full.

    `push` never blocks and never grows memory past `maxlen` items; `dropped`
    counts what was lost, so a reader can say so.
    """

    def __init__(self, maxlen: int) -> None:
        self._items: deque[T] = deque()
        self._maxlen = maxlen
        self._wakeup = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def push(self, item: T) -> None:
        if self._closed:
            return
        if len(self._items) >= self._maxlen:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    def __aiter__(self) -> BoundedFeed[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._items.popleft()


class Subscription:
    """One subscriber's view of a run's events: filtered, bounded, with drops reported."""

    def __init__(self, hub: EventHub, kinds: Iterable[int], maxlen: int) -> None:
        self._hub = hub
        self._kinds = frozenset(k for k in kinds if k)
        self._feed: BoundedFeed[ppb.Event] = BoundedFeed(maxlen)
        self._reported = 0

    def wants(self, kind: int) -> bool:
        return not self._kinds or kind in self._kinds

    def push(self, event: ppb.Event) -> None:
        self._feed.push(event)

    def close(self) -> None:
        self._feed.close()

    def __aiter__(self) -> AsyncIterator[ppb.Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[ppb.Event]:
        try:
            async for event in self._feed:
                if self._feed.dropped > self._reported:
                    lost = self._feed.dropped - self._reported
                    self._reported = self._feed.dropped
                    yield ppb.Event(
                        sequence=event.sequence,
                        time_ns=event.time_ns,
                        run_id=event.run_id,
                        variant=event.variant,
                        dropped=ppb.EventsDropped(count=lost),
                    )
                yield event
        finally:
            self._hub.unsubscribe(self)


_KIND_OF_BODY = {
    "pressure": ppb.EVENT_KIND_PRESSURE,
    "node_failure": ppb.EVENT_KIND_NODE_FAILURE,
    "cgroup_limit": ppb.EVENT_KIND_CGROUP_LIMIT,
    "counters": ppb.EVENT_KIND_COUNTERS,
    "progress": ppb.EVENT_KIND_PROGRESS,
    "run_state": ppb.EVENT_KIND_RUN_STATE,
}


def event_kind(event: ppb.Event) -> int:
    body = event.WhichOneof("body")
    return _KIND_OF_BODY.get(body or "", ppb.EVENT_KIND_UNSPECIFIED)


class EventHub:
    """Fans a run's events out to its subscribers; numbers them in publish order."""

    def __init__(
        self, run_id: str, *, max_subscribers: int = MAX_SUBSCRIBERS, queue: int = SUBSCRIBER_QUEUE
    ) -> None:
        self.run_id = run_id
        self.variant = ""
        self._subs: set[Subscription] = set()
        self._max = max_subscribers
        self._queue = queue
        self._sequence = 0
        self._closed = False
        # The latest run-state event and each node's latest pressure, replayed to a new
        # subscriber first, so it starts from the current picture (one event per node).
        self.last_state: ppb.Event | None = None
        self._last_pressure: dict[int, ppb.Event] = {}

    @property
    def closed(self) -> bool:
        return self._closed

    def new_variant(self, name: str) -> None:
        """The next variant of the run starts: node ids may mean other nodes now."""
        self.variant = name
        self._last_pressure.clear()

    def subscribe(self, kinds: Iterable[int] = ()) -> Subscription:
        """A new subscription; raises OverflowError when the run has too many."""
        if len(self._subs) >= self._max:
            raise OverflowError(f"run {self.run_id} already has {self._max} subscribers")
        sub = Subscription(self, kinds, self._queue)
        if self.last_state is not None and sub.wants(ppb.EVENT_KIND_RUN_STATE):
            sub.push(self.last_state)
        if sub.wants(ppb.EVENT_KIND_PRESSURE):
            for event in self._last_pressure.values():
                sub.push(event)
        if self._closed:
            sub.close()
        else:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def publish(self, event: ppb.Event) -> ppb.Event:
        """Number the event, stamp it with the run and variant, and queue it for subscribers."""
        self._sequence += 1
        event.sequence = self._sequence
        event.run_id = self.run_id
        if not event.variant:
            event.variant = self.variant
        kind = event_kind(event)
        if kind == ppb.EVENT_KIND_RUN_STATE:
            self.last_state = event
        elif kind == ppb.EVENT_KIND_PRESSURE:
            self._last_pressure[event.pressure.node] = event
        for sub in self._subs:
            if sub.wants(kind):
                sub.push(event)
        return event

    def close(self) -> None:
        """The run is over: subscriptions end once drained."""
        self._closed = True
        for sub in list(self._subs):
            sub.close()
        self._subs.clear()


class RunTap:
    """Feeds one simulation's events into an EventHub, for the life of the run.

    `start(mm)` once the cluster is built; `stop()` when the run ends.
    """

    def __init__(self, hub: EventHub, *, counters_interval_ns: int = 100_000_000) -> None:
        self.hub = hub
        self.counters_interval_ns = counters_interval_ns
        self._mm: Mm | None = None
        self._feed: BoundedFeed[ppb.Event] = BoundedFeed(FEED_QUEUE)
        self._pump: asyncio.Task[None] | None = None
        self._failures_seen = 0
        self._cgroup_seen: dict[tuple[int, str], int] = {}
        self._next_counters = 0
        self._last_yield = time.perf_counter()
        self._stopped = False

    @property
    def feed_dropped(self) -> int:
        return self._feed.dropped

    def start(self, mm: Mm) -> None:
        self._mm = mm
        duration = mm.config.duration_ns
        step = max(duration // TICKS_PER_RUN, 1)
        if self.counters_interval_ns:
            step = min(step, self.counters_interval_ns)

        async def tick() -> None:
            if self._stopped:
                return
            now = time.perf_counter()
            if now - self._last_yield >= YIELD_EVERY_S:
                for _ in range(YIELD_TURNS):
                    await asyncio.sleep(0)
                self._last_yield = time.perf_counter()
            self._poll()
            if not mm.finished:
                mm.sched.after(step, tick, "events")

        mm.sched.at(0, tick, "events")
        self._pump = asyncio.get_running_loop().create_task(self._run_pump(mm.nodes))

    async def stop(self) -> None:
        """Take the last engine events, then stop reading the nodes."""
        if self._stopped:
            return
        self._poll()
        self._stopped = True
        self._feed.close()
        if self._pump is not None:
            # Let the merge deliver what the nodes have queued, but never wait for them.
            for _ in range(4 * YIELD_TURNS):
                await asyncio.sleep(0)
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
            while len(self._feed):
                self.hub.publish(await anext(self._feed))

    # -- engine events -----------------------------------------------------

    def _emit(self, event: ppb.Event) -> None:
        self._feed.push(event)

    def _poll(self) -> None:
        mm = self._mm
        if mm is None or self._stopped:
            return
        now = mm.sched.now_ns
        while self._failures_seen < len(mm.failures):
            f = mm.failures[self._failures_seen]
            self._failures_seen += 1
            nid = mm.node_by_name.get(f["node"], -1)
            self._emit(
                ppb.Event(
                    time_ns=f["time_ns"],
                    node_failure=ppb.NodeFailure(
                        node=nid,
                        node_name=f["node"],
                        reason=str(f["reason"]),
                        pages_lost=int(f["pages_lost"]),
                        source="engine",
                    ),
                )
            )
        for memcg in mm.memcgs:
            for name in CGROUP_EVENTS:
                total = memcg.events.get(name, 0)
                key = (memcg.index, name)
                seen = self._cgroup_seen.get(key, 0)
                if total > seen:
                    self._cgroup_seen[key] = total
                    self._emit(
                        ppb.Event(
                            time_ns=now,
                            cgroup_limit=ppb.CgroupLimit(
                                host=mm.hosts[memcg.host].name,
                                cgroup=memcg.name,
                                event=name,
                                count=total - seen,
                                total=total,
                            ),
                        )
                    )
        if self.counters_interval_ns and now >= self._next_counters:
            self._next_counters = now + self.counters_interval_ns
            self._emit(counters_event(mm))

    # -- the merge -----------------------------------------------------------

    async def _run_pump(self, nodes: list[Numa]) -> None:
        sources = [_node_events(node) for node in nodes]
        merged = stream.merge(self._feed, *sources)
        async with merged.stream() as events:
            async for event in events:
                self.hub.publish(event)


def counters_event(mm: Mm) -> ppb.Event:
    counters = ppb.Counters()
    for host in mm.hosts:
        hc = counters.hosts.add(host=host.name)
        for name, value in host.vmstat.items():
            if value:
                hc.vmstat[name] = value
    for node in mm.nodes:
        counters.nodes.add(
            node=node.id,
            name=node.name,
            used_pages=node.nr_pages,
            pressure=node.pressure,
            physical_used_bytes=node.physical_used_bytes,
        )
    return ppb.Event(time_ns=mm.sched.now_ns, counters=counters)


async def _node_events(node: Numa) -> AsyncIterator[ppb.Event]:
    """A node's pressure stream as events; a failing stream ends with a NodeFailure."""
    try:
        async for pe in node.client.watch_pressure():
            yield ppb.Event(
                time_ns=pe.time_ns,
                pressure=ppb.PressureChange(
                    node=node.id,
                    node_name=node.name,
                    pressure=pe.pressure,
                    free_bytes=pe.free_bytes,
                    physical_used_bytes=pe.physical_used_bytes,
                ),
            )
    except NodeError as exc:
        if exc.code == grpc.StatusCode.CANCELLED:
            return  # the run closed its client: the end of the run, not a failure
        yield ppb.Event(
            node_failure=ppb.NodeFailure(
                node=node.id, node_name=node.name, reason=f"pressure stream: {exc}", source="node"
            )
        )
