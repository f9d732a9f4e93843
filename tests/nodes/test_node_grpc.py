"""Real node servers on loopback, driven through the generated stubs and GrpcNodeClient."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from node_helpers import Pages, lz4_payload
from tiersim import ConfigError, NodeError
from tiersim.nodes import (
    PAGE_SIZE,
    GrpcNodeClient,
    LocalNodeClient,
    NodeClient,
    NodeStats,
    PressureEvent,
    ServerOptions,
    make_device,
    node_config,
)
from tiersim.nodes._types import DATA_LOSS, OK, RESOURCE_EXHAUSTED
from tiersim.nodes.testing import running_node, running_server
from tiersim.v1 import node_pb2 as pb
from tiersim.v1 import node_pb2_grpc as pb_grpc

pytestmark = pytest.mark.asyncio
NOT_FOUND_CODE = grpc.StatusCode.NOT_FOUND.value[0]
ABORTED_CODE = grpc.StatusCode.ABORTED.value[0]

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]


async def _stream(call: grpc.aio.StreamStreamCall[Any, Any], messages: list[Any]) -> list[Any]:
    for m in messages:
        await call.write(m)
    await call.done_writing()
    return [r async for r in call]


async def test_round_trips_through_the_raw_stubs(pages: Pages) -> None:
    content = [pages.zero(), pages.text(), pages.random(), pages.heap()]
    async with (
        running_server(kind="cram", advertised="16MiB", physical="4MiB") as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.MemoryNodeStub(channel)
        info = await stub.Describe(pb.DescribeRequest())
        assert info.kind == pb.NODE_KIND_CRAM and info.page_size == PAGE_SIZE
        assert info.max_batch_pages == 256 and info.physical_bytes == 4 << 20
        # Unary store and load.
        handles: list[int] = []
        for page in content:
            r = await stub.Store(pb.StoreRequest(page=pb.PageWrite(handle=0, data=page)))
            assert r.code == OK and r.stored_bytes == lz4_payload(page)
            assert r.state.allocated_pages == len(handles) + 1
            handles.append(r.handle)
        for h, page in zip(handles, content, strict=True):
            r = await stub.Load(pb.LoadRequest(handle=h))
            assert r.data == page
        # The streams, two batches each, replies matched by batch_id.
        batches = [
            pb.StoreBatch(batch_id=7, pages=[pb.PageWrite(data=p) for p in content]),
            pb.StoreBatch(batch_id=8, pages=[pb.PageWrite(handle=handles[0], data=content[1])]),
        ]
        replies = await _stream(stub.StoreStream(), batches)
        assert [r.batch_id for r in replies] == [7, 8]
        assert [x.stored_bytes for x in replies[0].results] == [lz4_payload(p) for p in content]
        assert replies[0].cost_ns == sum(x.cost_ns for x in replies[0].results)
        new = [x.handle for x in replies[0].results]
        loads = await _stream(
            stub.LoadStream(),
            [
                pb.LoadBatch(batch_id=1, handles=new),
                pb.LoadBatch(batch_id=2, handles=handles, free_after=True),
            ],
        )
        assert [x.data for x in loads[0].results] == content
        assert [x.data for x in loads[1].results] == [content[1], *content[1:]]
        stats = await stub.Stats(pb.StatsRequest())
        assert stats.allocated_pages == len(new) and stats.frees == len(handles)
        assert stats.physical_used_bytes == sum(lz4_payload(p) for p in content) + 64 * 4


@pytest.mark.parametrize("kind", ["dram", "cxl", "cram", "storage"])
async def test_client_round_trips_large_requests(kind: str, pages: Pages) -> None:
    content = pages.mixed(700)  # split into 256 + 256 + 188 page batches
    physical = "8MiB" if kind == "cram" else None
    async with running_node(node_config(kind, "8MiB", physical)) as client:
        r = await client.store([(0, p) for p in content])
        assert r.ok and len(r.handles) == len(set(r.handles)) == 700
        assert r.cost_ns == sum(r.costs_ns)
        back = await client.load(r.handles)
        assert back.ok and back.data == content
        stats = await client.stats()
        assert stats.stored_pages == 700 and stats.loads == 700
        if kind == "cram":
            assert stats.physical_used_bytes == sum(lz4_payload(p) for p in content) + 64 * 700
        freed = await client.free(r.handles[:300])
        assert freed.count == 300 and freed.state.allocated_pages == 400
        zeroed = await client.zero(r.handles[300:])
        assert zeroed.count == 400
        assert (await client.load(r.handles[300:310])).data == [pages.zero()] * 10


async def test_pressure_stream_follows_the_watermarks(pages: Pages) -> None:
    cfg = node_config("cram", "1MiB", "64KiB", low_watermark="8KiB", high_watermark="16KiB")
    async with running_server(cfg) as server, grpc.aio.insecure_channel(server.address) as ch:
        stub = pb_grpc.MemoryNodeStub(ch)
        watch = stub.WatchPressure(pb.WatchPressureRequest())
        first = await asyncio.wait_for(watch.read(), 5)
        assert (first.pressure, first.free_bytes, first.sequence) == (0, 64 << 10, 0)
        client = await GrpcNodeClient.connect(server.address)
        handles = []
        t = 0
        while True:
            t += 1_000
            r = await client.store([(0, pages.random())], now_ns=t)
            handles += r.handles
            if r.state.pressure == 1000:
                break
        seen: list[pb.PressureEvent] = []
        while not seen or seen[-1].pressure != 1000:
            seen.append(await asyncio.wait_for(watch.read(), 5))
        assert all(0 < e.pressure <= 1000 for e in seen)
        assert [e.sequence for e in seen] == list(range(1, len(seen) + 1))
        assert seen[-1].free_bytes <= 8 << 10 and seen[-1].time_ns == t
        # Freeing clears the pressure.
        await client.free(handles, now_ns=t + 1)
        cleared = await asyncio.wait_for(watch.read(), 5)
        assert cleared.pressure == 0 and cleared.time_ns == t + 1
        # The client's iterator gives the same events.
        events = client.watch_pressure()
        current = await asyncio.wait_for(events.__anext__(), 5)
        assert current.pressure == 0 and current.sequence == cleared.sequence
        await events.aclose()
        watch.cancel()
        await client.close()


async def test_checked_allocation_refuses_before_the_media_fills(pages: Pages) -> None:
    async with running_node(node_config("cram", "4MiB", "256KiB")) as client:
        stored = 0
        while True:
            r = await client.store([(0, pages.random()) for _ in range(8)], check=True)
            stored += r.codes.count(OK)
            if RESOURCE_EXHAUSTED in r.codes:
                break
        assert r.handles[r.codes.index(RESOURCE_EXHAUSTED)] == 0
        with pytest.raises(NodeError) as err:
            await client.allocate(4, check=True)
        assert err.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "low watermark" in err.value.message
        s = await client.stats()
        assert s.write_failures == 0 and s.alloc_refused >= 2 and s.stored_pages == stored
        assert s.physical_bytes - s.physical_used_bytes >= client.info.watermarks.low_free_bytes


async def test_poison_over_grpc(pages: Pages) -> None:
    cfg = node_config("cram", "1MiB", "32KiB", low_watermark=0, high_watermark=0)
    async with running_server(cfg) as server:
        client = await GrpcNodeClient.connect(server.address)
        r = await client.store([(0, pages.random()) for _ in range(12)])
        bad = [h for h, c in zip(r.handles, r.codes, strict=True) if c == DATA_LOSS]
        assert bad and "poisoned" in r.messages[r.codes.index(DATA_LOSS)]
        back = await client.load(bad)
        assert back.codes == [DATA_LOSS] * len(bad) and back.data == [b""] * len(bad)
        async with grpc.aio.insecure_channel(server.address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.MemoryNodeStub(ch).Load(pb.LoadRequest(handle=bad[0]))
            assert err.value.code() is grpc.StatusCode.DATA_LOSS
        s = await client.stats()
        assert s.poisoned_pages == len(bad) == s.write_failures
        assert s.data_loss_reads == len(bad) + 1
        await client.free(bad)
        assert (await client.stats()).poisoned_pages == 0
        await client.close()


async def _health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as ch:
        stub: Any = health_pb2_grpc.HealthStub(ch)
        r = await stub.Check(health_pb2.HealthCheckRequest(service="tiersim.v1.MemoryNode"))
        return int(r.status)


async def test_machine_check_over_grpc(pages: Pages) -> None:
    cfg = node_config(
        "cram", "1MiB", "32KiB", overflow="machine-check", low_watermark=0, high_watermark=0
    )
    async with running_server(cfg) as server:
        client = await GrpcNodeClient.connect(server.address)
        assert await _health(server.address) == health_pb2.HealthCheckResponse.SERVING
        r = await client.store([(0, pages.random()) for _ in range(12)])
        assert FAILED_PRECONDITION in r.codes
        for call in (
            lambda: client.store([(0, pages.zero())]),
            lambda: client.load([1]),
            lambda: client.free([1]),
            lambda: client.zero([1]),
            lambda: client.allocate(1),
        ):
            with pytest.raises(NodeError) as err:
                await call()
            assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert await _health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        s = await client.stats()
        assert s.machine_check and s.machine_checks == 1 and s.rejected_requests == 5
        await client.reset()
        assert await _health(server.address) == health_pb2.HealthCheckResponse.SERVING
        assert (await client.store([(0, pages.text())])).ok
        await client.close()


async def _script(client: NodeClient, pages: Pages) -> list[Any]:
    """A request sequence touching every operation and outcome; returns what it saw."""
    out: list[Any] = [await client.describe()]

    async def call(f: Callable[[], Awaitable[Any]]) -> None:
        try:
            out.append(await f())
        except NodeError as exc:
            out.append(("error", exc.code, exc.message))

    content = pages.mixed(300)
    await call(lambda: client.store([(0, p) for p in content], now_ns=1000))
    handles = out[-1].handles
    await call(lambda: client.load(handles[:50], now_ns=2000))
    await call(lambda: client.load(handles[50:60], free_after=True, now_ns=2100))
    await call(lambda: client.allocate(5, check=True, size_hint=900, now_ns=3000))
    await call(lambda: client.store([(h, pages.text()) for h in handles[100:120]], check=True))
    await call(lambda: client.zero(handles[120:130], now_ns=5000))
    await call(lambda: client.free(handles[130:400], now_ns=6000))
    await call(lambda: client.load([handles[50]]))  # freed: NOT_FOUND
    await call(lambda: client.store([(0, b"short")]))  # INVALID_ARGUMENT
    await call(lambda: client.free([handles[0], handles[0]]))
    await call(
        lambda: client.store([(0, pages.random()) for _ in range(600)], check=True, now_ns=7000)
    )
    await call(lambda: client.free(handles[:100], now_ns=7500))
    await call(lambda: client.store([(0, pages.random()) for _ in range(400)], now_ns=8000))
    await call(lambda: client.load(handles[100:130]))
    await call(lambda: client.reset(seed=3))
    await call(lambda: client.store([(0, p) for p in content[:20]], now_ns=10))
    await call(client.stats)
    return out


async def _watched(client: NodeClient, final_sequence: int | None) -> tuple[list[Any], list[Any]]:
    """Run the script while collecting the pressure events it causes."""
    events: list[PressureEvent] = []

    async def watch() -> None:
        async for event in client.watch_pressure():
            events.append(event)

    watcher = asyncio.create_task(watch())
    while not events:
        await asyncio.sleep(0.01)
    steps = await _script(client, Pages(seed=5))
    stats = steps[-1]
    assert isinstance(stats, NodeStats)
    deadline = time.monotonic() + 5
    want = final_sequence
    while time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        if events and want is None and isinstance(client, LocalNodeClient):
            want = client.device._sequence
        if want is not None and events[-1].sequence >= want:
            break
    watcher.cancel()
    return steps, events


async def test_local_and_grpc_clients_give_identical_results() -> None:
    cfg = node_config("cram", "8MiB", "1MiB", seed=17, low_watermark="5%", high_watermark="20%")
    local, local_events = await _watched(LocalNodeClient(make_device(cfg)), None)
    async with running_node(cfg) as client:
        remote, remote_events = await _watched(client, local_events[-1].sequence)
    assert len(local) == len(remote)
    for i, (a, b) in enumerate(zip(local, remote, strict=True)):
        assert a == b, f"step {i} differs"
    assert local_events == remote_events
    # The script really exercised the interesting outcomes.
    codes = {c for step in local if hasattr(step, "codes") for c in step.codes}
    assert {OK, RESOURCE_EXHAUSTED, DATA_LOSS} <= codes
    errors = {step[1] for step in local if isinstance(step, tuple)}
    assert errors == {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}
    assert local[-1].busy_ns > 0
    assert len(local_events) > 3
    assert {7000, 7500, 8000} <= {e.time_ns for e in local_events}


async def test_a_rejected_batch_is_answered_in_band_and_stops_its_request(pages: Pages) -> None:
    """Batch 2 of request 1 is rejected: request 1's batch 3 is not applied, request 2's is."""
    content = pages.mixed(3)
    async with (
        running_server(kind="cram", advertised="8MiB", physical="2MiB") as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.MemoryNodeStub(channel)

        def batch(bid: int, rid: int, handle: int = 0) -> pb.StoreBatch:
            page = pb.PageWrite(handle=handle, data=content[bid % 3])
            return pb.StoreBatch(batch_id=bid, request_id=rid, pages=[page])

        sent = [batch(1, 1), batch(2, 1, handle=10**6), batch(3, 1), batch(4, 2)]
        replies = await _stream(stub.StoreStream(), sent)
        assert [(r.batch_id, r.code) for r in replies] == [
            (1, 0),
            (2, NOT_FOUND_CODE),
            (3, ABORTED_CODE),
            (4, 0),
        ]
        assert "1000000" in replies[1].message and "request 1" in replies[2].message
        assert not replies[1].results and not replies[2].results
        stats = await stub.Stats(pb.StatsRequest())
        assert stats.allocated_pages == 2 and stats.rejected_requests == 1


async def test_a_rejected_batch_does_not_hurt_concurrent_callers(pages: Pages) -> None:
    async with running_server(kind="cram", advertised="64MiB", physical="16MiB") as server:
        client = await GrpcNodeClient.connect(server.address, max_in_flight=4)
        good = pages.mixed(64)

        async def worker(i: int) -> list[int]:
            handles = []
            for _ in range(5):
                r = await client.store([(0, p) for p in good])
                assert r.ok
                handles += r.handles
            return handles

        async def bad() -> None:
            with pytest.raises(NodeError) as err:
                # The middle batch names an unknown handle: the first is applied, the
                # rest of this request is not.
                await client.store([(0, good[0])] * 256 + [(10**9, good[0])] + [(0, good[0])] * 300)
            assert err.value.code is grpc.StatusCode.NOT_FOUND

        results = await asyncio.gather(worker(0), bad(), worker(1), bad(), worker(2))
        kept = [h for r in results if r for h in r]
        s = await client.stats()
        assert s.allocated_pages == len(kept) + 2 * 256
        assert s.rejected_requests == 2
        back = await client.load(kept)
        assert back.data == good * 15
        await client.close()


async def test_connect_to_nothing_fails_clearly() -> None:
    t0 = time.monotonic()
    with pytest.raises(NodeError) as err:
        await GrpcNodeClient.connect("127.0.0.1:1", timeout=0.5)
    assert err.value.code is grpc.StatusCode.UNAVAILABLE
    assert "127.0.0.1:1" in err.value.message and "0.5 s" in err.value.message
    assert time.monotonic() - t0 < 5


async def test_closed_client_refuses_work() -> None:
    async with running_node() as client:
        await client.close()
        with pytest.raises(NodeError) as err:
            await client.stats()
        assert err.value.code is grpc.StatusCode.CANCELLED


async def test_metrics_page_serves_the_stats(pages: Pages) -> None:
    cfg = node_config("cram", "4MiB", "1MiB", name="m0")
    async with running_server(cfg, options=ServerOptions(metrics_port=0)) as server:
        client = await GrpcNodeClient.connect(server.address)
        await client.store([(0, pages.text()) for _ in range(3)])
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        text = body.decode()
        s = await client.stats()
        assert 'tiersim_node_stores_total{node="m0"} 3.0' in text
        assert (
            f'tiersim_node_physical_used_bytes{{node="m0"}} {float(s.physical_used_bytes)}' in text
        )
        assert 'tiersim_node_info{kind="cram"' in text
        assert re.search(r"^# TYPE tiersim_node_write_failures(_total)? counter$", text, re.M)
        await client.close()


async def _elapsed(f: Callable[[], Awaitable[Any]]) -> float:
    t0 = time.perf_counter()
    await f()
    return time.perf_counter() - t0


@pytest.mark.parametrize(
    ("kind", "dilation", "batch", "rounds"),
    [("storage", 20.0, 64, 4), ("dram", 1000.0, 1, 100)],
)
async def test_realtime_mode_sleeps_the_modelled_cost(
    kind: str, dilation: float, batch: int, rounds: int, pages: Pages
) -> None:
    cfg = node_config(kind, "4MiB", latency={"jitter_sigma": 0})
    opts = ServerOptions(realtime_dilation=dilation)
    page = pages.text()
    async with running_node(cfg, options=opts) as client:
        t0 = time.perf_counter()
        for _ in range(rounds):
            r = await client.store([(0, page)] * batch)
            await client.free(r.handles)
        elapsed = time.perf_counter() - t0
        busy = (await client.stats()).busy_ns
    if kind == "dram":
        # Each request alone owes well under the 1 ms quantum (a dram page is ~250 ns):
        # only the debt counter makes them add up to a sleep.
        assert r.cost_ns * dilation < 500_000
    owed = busy * dilation / 1e9
    assert owed > 0.02
    assert elapsed >= owed - 0.0011, (elapsed, owed)


async def test_a_taken_port_is_refused_not_shared() -> None:
    async with running_server(kind="dram", advertised="1MiB") as first:
        with pytest.raises(ConfigError) as err:
            async with running_server(
                kind="dram", advertised="1MiB", options=ServerOptions(port=first.port)
            ):
                pass
        assert err.value.key == "port" and "cannot listen" in err.value.message


async def test_a_node_that_goes_away_fails_requests_promptly(pages: Pages) -> None:
    async with running_server(kind="cram", advertised="4MiB", physical="1MiB") as server:
        client = await GrpcNodeClient.connect(server.address)
        assert (await client.store([(0, pages.text())])).ok  # streams are open
        await server.stop(0.1)
        for call in (
            lambda: client.store([(0, pages.text())]),
            lambda: client.load([1]),
            client.stats,
        ):
            with pytest.raises(NodeError) as err:
                await asyncio.wait_for(call(), 10)
            assert err.value.code is grpc.StatusCode.UNAVAILABLE
        await client.close()
