"""Event fan-out: bounded queues, drop reporting, filters, limits and replay."""

from __future__ import annotations

import asyncio

import pytest

from tiersim.orchestrator.events import BoundedFeed, EventHub
from tiersim.v1 import policy_pb2 as ppb

pytestmark = pytest.mark.asyncio


def progress(t: int) -> ppb.Event:
    return ppb.Event(time_ns=t, progress=ppb.Progress(sim_time_ns=t, duration_ns=100))


async def test_a_bounded_feed_keeps_the_newest_and_counts_what_it_dropped() -> None:
    feed: BoundedFeed[int] = BoundedFeed(3)
    for i in range(10):
        feed.push(i)
    assert len(feed) == 3 and feed.dropped == 7
    feed.close()
    assert [i async for i in feed] == [7, 8, 9]
    feed.push(99)  # after close: ignored
    assert len(feed) == 0


async def test_a_slow_subscriber_loses_old_events_and_is_told_how_many() -> None:
    hub = EventHub("r1", queue=4)
    sub = hub.subscribe()
    for t in range(10):
        hub.publish(progress(t))
    hub.close()
    got = [ev async for ev in sub]
    assert got[0].WhichOneof("body") == "dropped" and got[0].dropped.count == 6
    assert [ev.progress.sim_time_ns for ev in got[1:]] == [6, 7, 8, 9]
    assert [ev.sequence for ev in got[1:]] == [7, 8, 9, 10]
    assert all(ev.run_id == "r1" for ev in got)


async def test_filters_limits_and_replay() -> None:
    hub = EventHub("r2", max_subscribers=2)
    hub.new_variant("v1")
    hub.publish(ppb.Event(run_state=ppb.RunStateChange(state=ppb.RUN_STATE_RUNNING)))
    hub.publish(ppb.Event(pressure=ppb.PressureChange(node=3, pressure=500)))
    hub.publish(ppb.Event(pressure=ppb.PressureChange(node=3, pressure=1000)))
    only_pressure = hub.subscribe([ppb.EVENT_KIND_PRESSURE])
    everything = hub.subscribe()
    with pytest.raises(OverflowError, match="2 subscribers"):
        hub.subscribe()
    hub.publish(progress(1))
    hub.close()
    # A new subscriber starts from the current picture: the run's state, each node's pressure.
    assert [(e.WhichOneof("body"), e.pressure.pressure) async for e in only_pressure] == [
        ("pressure", 1000)
    ]
    bodies = [e.WhichOneof("body") async for e in everything]
    assert bodies == ["run_state", "pressure", "progress"]
    # Subscriptions that ended are removed; a subscription to a closed hub ends at once.
    assert hub.subscribers == 0
    late = hub.subscribe([ppb.EVENT_KIND_RUN_STATE])
    assert [e.run_state.state async for e in late] == [ppb.RUN_STATE_RUNNING]
    # A new variant forgets the previous topology's pressures.
    hub2 = EventHub("r3")
    hub2.publish(ppb.Event(pressure=ppb.PressureChange(node=1, pressure=10)))
    hub2.new_variant("v2")
    sub = hub2.subscribe([ppb.EVENT_KIND_PRESSURE])
    hub2.close()
    assert [e async for e in sub] == []


async def test_a_waiting_subscriber_wakes_for_new_events() -> None:
    hub = EventHub("r4")
    sub = hub.subscribe()
    got: list[ppb.Event] = []

    async def read() -> None:
        async for ev in sub:
            got.append(ev)

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.01)
    hub.publish(progress(5))
    await asyncio.sleep(0.01)
    assert [e.progress.sim_time_ns for e in got] == [5]
    hub.close()
    await asyncio.wait_for(reader, 1)
