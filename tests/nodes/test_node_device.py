"""Device models in-process: contents, accounting, watermarks, overflow, validation."""

from __future__ import annotations

import dataclasses

import grpc
import lz4.block
import numpy as np
import pytest

from node_helpers import Pages, lz4_payload
from tiersim import NodeError
from tiersim.nodes import (
    PAGE_SIZE,
    CramDevice,
    DramDevice,
    LocalNodeClient,
    MemoryDevice,
    NodeConfig,
    NodeStats,
    make_device,
    node_config,
)
from tiersim.nodes._device import DATA_LOSS, FAILED_PRECONDITION, OK, pressure_for
from tiersim.nodes._types import RESOURCE_EXHAUSTED

KINDS = ["dram", "cxl", "cram", "storage"]


def _config(kind: str, **kw: object) -> NodeConfig:
    physical = "1MiB" if kind == "cram" else None
    return node_config(kind, "4MiB", physical, **kw)


def snapshot(d: MemoryDevice) -> tuple[object, ...]:
    """Everything a rejected request must leave untouched."""
    stats = dataclasses.replace(d.stats(), rejected_requests=0)
    n = d._next_slot
    return (
        stats,
        d._state[:n].tobytes(),
        d._size[:n].tobytes(),
        d._hint[:n].tobytes(),
        dict(d._blobs),
        list(d._free_slots),
        d._reserved_bytes,
        d.latency.busy_until_ns,
        d.latency._pos,
        d.state(),
    )


def expected_used(d: MemoryDevice, held: dict[int, bytes]) -> int:
    """physical_used of a cram node holding `held` (handle -> page) with no other pages."""
    return sum(lz4_payload(p) for p in held.values()) + 64 * len(held)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_is_byte_exact(kind: str, pages: Pages) -> None:
    d = make_device(_config(kind))
    content = [pages.zero(), pages.text(), pages.random(), pages.heap(), bytes([0xFF]) * PAGE_SIZE]
    r = d.store([(0, p) for p in content])
    assert r.codes == [OK] * len(content)
    assert r.handles == [1, 2, 3, 4, 5]
    back = d.load(r.handles)
    assert back.codes == [OK] * len(content)
    assert back.data == content
    assert all(type(b) is bytes and len(b) == PAGE_SIZE for b in back.data)
    # Rewrite in place with different contents.
    d.store([(h, p) for h, p in zip(r.handles, reversed(content), strict=True)])
    assert d.load(r.handles).data == list(reversed(content))


def test_uncompressed_kinds_spend_a_page_per_nonzero_page(pages: Pages) -> None:
    d = make_device(_config("dram"))
    r = d.store([(0, pages.text()), (0, pages.zero()), (0, pages.random())])
    assert r.stored_bytes == [PAGE_SIZE, 0, PAGE_SIZE]
    s = d.stats()
    assert (s.stored_pages, s.zero_pages, s.stored_bytes) == (3, 1, 2 * PAGE_SIZE)
    assert s.physical_used_bytes == 2 * PAGE_SIZE
    assert s.compress_in_bytes == 0 and s.decompress_out_bytes == 0


def test_cram_spends_exactly_the_lz4_size_of_each_page(pages: Pages) -> None:
    d = make_device(_config("cram"))
    content = pages.mixed(40)
    r = d.store([(0, p) for p in content])
    assert r.stored_bytes == [lz4_payload(p) for p in content]
    held = dict(zip(r.handles, content, strict=True))
    s = d.stats()
    assert s.physical_used_bytes == expected_used(d, held)
    assert s.stored_bytes == sum(lz4_payload(p) for p in content)
    assert s.logical_bytes == 40 * PAGE_SIZE
    assert s.zero_pages == sum(p == pages.zero() for p in content)
    # Random pages do not shrink: kept raw, but the compressor still ran on them.
    nonzero = [p for p in content if p != pages.zero()]
    assert s.compress_in_bytes == PAGE_SIZE * len(nonzero)
    assert s.compress_out_bytes == sum(
        len(lz4.block.compress(p, store_size=False)) for p in nonzero
    )
    # Free half: usage drops by exactly what those pages held.
    gone = r.handles[::2]
    d.free(gone)
    for h in gone:
        del held[h]
    assert d.stats().physical_used_bytes == expected_used(d, held)
    assert d.load(list(held)).data == list(held.values())


def test_zero_in_place_keeps_pages_allocated(pages: Pages) -> None:
    d = make_device(_config("cram"))
    r = d.store([(0, pages.text()), (0, pages.heap())])
    z = d.zero([r.handles[0]])
    assert z.count == 1 and z.cost_ns > 0
    s = d.stats()
    assert s.allocated_pages == 2 and s.zero_pages == 1 and s.stored_pages == 2
    assert s.stored_bytes == r.stored_bytes[1]
    assert d.load([r.handles[0]]).data == [pages.zero()]
    assert s.zeroes == 1


def test_free_releases_and_handles_are_reused(pages: Pages) -> None:
    d = make_device(_config("cram"))
    r = d.store([(0, pages.text()) for _ in range(4)])
    before = d.stats().physical_used_bytes
    d.free([r.handles[1]])
    assert d.stats().physical_used_bytes == before - r.stored_bytes[1] - 64
    with pytest.raises(NodeError) as err:
        d.load([r.handles[1]])
    assert err.value.code is grpc.StatusCode.NOT_FOUND
    with pytest.raises(NodeError) as err:
        d.free([r.handles[1]])
    assert err.value.code is grpc.StatusCode.NOT_FOUND
    again = d.allocate(1)
    assert again.handles == [r.handles[1]]
    # A reused handle reads back zeros: the freed page was zeroed.
    assert d.load(again.handles).data == [pages.zero()]
    assert d.stats().frees == 1


def test_allocate_reserves_and_reads_zero() -> None:
    d = make_device(_config("cram"))
    a = d.allocate(3, size_hint=1000)
    assert a.handles == [1, 2, 3]
    assert a.cost_ns == 0  # unchecked: page-allocator bookkeeping, no device query
    assert a.state.allocated_pages == 3
    assert a.state.physical_used_bytes == 3 * 64  # only the translation entries
    assert d._reserved_bytes == 3000
    assert d.load(a.handles).data == [bytes(PAGE_SIZE)] * 3
    checked = d.allocate(1, check=True)
    assert checked.cost_ns > 0
    assert d._reserved_bytes == 3000 + PAGE_SIZE


@pytest.mark.parametrize(
    ("free", "expect"),
    [(0, 1000), (100, 1000), (101, 990), (150, 500), (199, 10), (200, 0), (10**9, 0)],
)
def test_pressure_is_linear_between_watermarks(free: int, expect: int) -> None:
    assert pressure_for(free, 100, 200) == expect


def test_pressure_events_follow_watermarks(pages: Pages, small_cram: NodeConfig) -> None:
    d = make_device(small_cram)
    sub = d.subscribe()
    first = sub.get_nowait()
    assert first is not None and first.pressure == 0 and first.sequence == 0
    low, high = small_cram.watermarks.low_free_bytes, small_cram.watermarks.high_free_bytes
    handles = []
    t = 0
    while d.free_bytes > low:
        t += 1000
        r = d.store([(0, pages.random())], now_ns=t)
        if r.codes[0] != OK:
            break
        handles += r.handles
    events = sub.drain()
    assert events, "filling the media must raise pressure"
    assert events[-1].pressure == 1000
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    for e in events:
        assert e.pressure == pressure_for(e.free_bytes, low, high)
        assert e.free_bytes + e.physical_used_bytes == small_cram.physical_bytes
        assert e.time_ns > 0 and e.time_ns % 1000 == 0
    # Freeing everything clears the pressure, in one event for the one request.
    d.free(handles, now_ns=10**9)
    (cleared,) = sub.drain()
    assert cleared.pressure == 0 and cleared.time_ns == 10**9
    assert cleared.sequence == events[-1].sequence + 1
    sub.close()
    assert d.subscriber_count == 0


def test_slow_subscriber_is_bounded_and_sees_the_latest(pages: Pages) -> None:
    d = make_device(node_config("cram", "4MiB", "64KiB", low_watermark=0, high_watermark="64KiB"))
    sub = d.subscribe(maxlen=4)
    page = pages.random()
    for _ in range(12):
        d.store([(0, page)])
    assert len(sub._queue) == 4
    assert sub.dropped > 0
    latest = sub.drain()[-1]
    assert latest.pressure == d.stats().pressure
    assert latest.sequence == d._sequence


def test_checked_allocation_refuses_before_the_media_fills(
    pages: Pages, small_cram: NodeConfig
) -> None:
    d = make_device(small_cram)
    low = small_cram.watermarks.low_free_bytes
    stored = 0
    while True:
        r = d.store([(0, pages.random())], check=True)
        if r.codes[0] == RESOURCE_EXHAUSTED:
            break
        assert r.codes[0] == OK
        stored += 1
    s = d.stats()
    assert s.write_failures == 0 and s.poisoned_pages == 0
    assert s.alloc_refused == 1
    assert r.handles == [0] and "low watermark" in r.messages[0]
    # It stopped because one more worst-case page would cross the low watermark,
    # not because the media was full.
    assert low <= d.free_bytes < low + PAGE_SIZE + 64
    with pytest.raises(NodeError) as err:
        d.allocate(1, check=True)
    assert err.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert d.stats().alloc_refused == 2
    assert d.stats().allocated_pages == stored
    # A small hint still fits: the device trusts the caller's size estimate.
    assert d.allocate(1, check=True, size_hint=64).handles
    # Reserved-but-unwritten pages count at their hint: many small promises add up.
    with pytest.raises(NodeError):
        for _ in range(100):
            d.allocate(1, check=True, size_hint=64)
    # Unchecked allocation is refused only at the advertised capacity.
    assert d.allocate(1).handles


def test_allocation_beyond_advertised_capacity_is_refused() -> None:
    d = make_device(node_config("dram", "16KiB"))
    d.allocate(4)
    before = snapshot(d)
    with pytest.raises(NodeError) as err:
        d.allocate(1)
    assert err.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert snapshot(d) == before
    r = d.store([(0, bytes(PAGE_SIZE))])
    assert r.codes == [RESOURCE_EXHAUSTED]


def test_poison_mode_drops_the_write_and_poisons(pages: Pages) -> None:
    cfg = node_config("cram", "1MiB", "16KiB", low_watermark=0, high_watermark=0)
    d = make_device(cfg)
    keep = d.store([(0, pages.text())])
    r = d.store([(0, pages.random()) for _ in range(5)])
    assert r.codes[:3] == [OK] * 3
    assert DATA_LOSS in r.codes
    bad = [h for h, c in zip(r.handles, r.codes, strict=True) if c == DATA_LOSS]
    s = d.stats()
    assert s.poisoned_pages == len(bad) and s.write_failures == len(bad)
    assert s.physical_used_bytes <= cfg.physical_bytes
    loaded = d.load(bad + keep.handles)
    assert loaded.codes == [DATA_LOSS] * len(bad) + [OK]
    assert loaded.data[: len(bad)] == [b""] * len(bad)
    assert loaded.data[-1] == d.load(keep.handles).data[0]
    assert d.stats().data_loss_reads == len(bad)
    # A successful rewrite clears the poison; freeing clears it too.
    fixed = d.store([(bad[0], pages.zero())])
    assert fixed.codes == [OK]
    assert d.load([bad[0]]).data == [pages.zero()]
    d.free(bad[1:])
    assert d.stats().poisoned_pages == 0


def test_poison_releases_the_old_payload(pages: Pages) -> None:
    a, b = pages.text(), pages.text()
    # Media for the two text pages, one random page and 100 bytes to spare.
    physical = lz4_payload(a) + lz4_payload(b) + 3 * 64 + PAGE_SIZE + 100
    d = make_device(node_config("cram", "1MiB", physical, low_watermark=0, high_watermark=0))
    r = d.store([(0, a), (0, b), (0, pages.random())])
    assert r.codes == [OK, OK, OK] and d.free_bytes == 100
    # Overwriting page `a` with a page that cannot fit poisons it, and `a`'s old
    # payload is released: the device dropped it when the write failed.
    bad = d.store([(r.handles[0], pages.random())])
    assert bad.codes == [DATA_LOSS] and bad.stored_bytes == [0]
    assert f"found {100 + lz4_payload(a)} bytes of room" in bad.messages[0]
    assert d.free_bytes == 100 + lz4_payload(a)
    assert d.load([r.handles[1]]).data == [b]


def test_machine_check_stops_the_node_until_reset(pages: Pages) -> None:
    cfg = node_config(
        "cram", "1MiB", "16KiB", overflow="machine-check", low_watermark=0, high_watermark=0
    )
    d = make_device(cfg)
    r = d.store([(0, pages.random()) for _ in range(6)])
    i = r.codes.index(FAILED_PRECONDITION)
    assert r.codes[:i] == [OK] * i
    assert r.codes[i:] == [FAILED_PRECONDITION] * (6 - i)
    assert "machine check" in r.messages[i]
    assert r.handles[i + 1 :] == [0] * (6 - i - 1)
    s = d.stats()
    assert s.machine_check and s.machine_checks == 1 and s.write_failures == 1
    assert s.poisoned_pages == 0
    assert s.stored_pages == i
    assert s.physical_used_bytes <= cfg.physical_bytes
    for op in (
        lambda: d.load([1]),
        lambda: d.store([(1, pages.zero())]),
        lambda: d.free([1]),
        lambda: d.zero([1]),
        lambda: d.allocate(1),
    ):
        with pytest.raises(NodeError) as err:
            op()
        assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert d.stats().rejected_requests == 5
    assert d.info().name == cfg.name  # describe still answers
    d.reset()
    s = d.stats()
    assert not s.machine_check and s.allocated_pages == 0 and s.machine_checks == 0
    assert d.store([(0, pages.text())]).codes == [OK]


def _bad_requests(d: MemoryDevice, pages: Pages, h: int) -> list[tuple[object, grpc.StatusCode]]:
    page = pages.text()
    return [
        (lambda: d.store([]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: d.store([(0, page)] * 257), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: d.store([(0, page[:-1])]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: d.store([(0, page + b"x")]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: d.store([(0, page), (h, b"")]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: d.store([(0, "x" * PAGE_SIZE)]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: d.store([(h, page), (h, page)]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: d.store([(0, page), (999, page)]), grpc.StatusCode.NOT_FOUND),
        (lambda: d.store([(-1, page)]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: d.store([(2**64 - 1, page)]), grpc.StatusCode.NOT_FOUND),
        (lambda: d.load([]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: d.load([h, h]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: d.load([0]), grpc.StatusCode.NOT_FOUND),
        (lambda: d.load([h, 12345]), grpc.StatusCode.NOT_FOUND),
        (lambda: d.load([h, 0], free_after=True), grpc.StatusCode.NOT_FOUND),
        (lambda: d.free([h, h]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: d.free([h, 4000]), grpc.StatusCode.NOT_FOUND),
        (lambda: d.free(list(range(1, 300))), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: d.zero([]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: d.zero([h + 50]), grpc.StatusCode.NOT_FOUND),
        (lambda: d.allocate(0), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: d.allocate(257), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: d.allocate(1, size_hint=4097), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: d.allocate(-3), grpc.StatusCode.INVALID_ARGUMENT),
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_rejected_requests_change_nothing(kind: str, pages: Pages) -> None:
    d = make_device(_config(kind, low_watermark=0, high_watermark="8KiB"))
    content = pages.mixed(8)
    r = d.store([(0, p) for p in content])
    d.free([r.handles[3]])
    h = r.handles[0]
    before = snapshot(d)
    bad = _bad_requests(d, pages, h)
    for i, (call, code) in enumerate(bad, 1):
        with pytest.raises(NodeError) as err:
            call()  # type: ignore[operator]
        assert err.value.code is code, (i, err.value)
        assert snapshot(d) == before, f"request {i} changed the node"
        assert d.stats().rejected_requests == i
    kept = [i for i in range(8) if i != 3]
    assert d.load([r.handles[i] for i in kept]).data == [content[i] for i in kept]


def test_handles_must_be_integers() -> None:
    d = make_device(_config("dram"))
    d.allocate(2)
    with pytest.raises(NodeError) as err:
        d.load([1.0])
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(NodeError):
        d.free([True])
    assert d.load([np.int64(1)]).codes == [OK]


def test_stats_and_info_describe_the_device(small_cram: NodeConfig) -> None:
    d = make_device(small_cram)
    assert isinstance(d, CramDevice)
    info = d.info()
    assert (info.kind, info.advertised_bytes, info.physical_bytes) == (
        small_cram.kind,
        4 << 20,
        256 << 10,
    )
    assert info.page_size == PAGE_SIZE and info.per_page_overhead_bytes == 64
    assert info.latency.source.startswith("KERNEL.md")
    s = d.stats()
    assert s == NodeStats(
        name="cram", kind=small_cram.kind, physical_bytes=256 << 10, advertised_bytes=4 << 20
    )
    assert isinstance(make_device(_config("dram")), DramDevice)


def test_same_seed_same_costs_and_reset_restarts_the_sequence(pages: Pages) -> None:
    content = pages.mixed(6)

    def run(d: MemoryDevice) -> list[int]:
        r = d.store([(0, p) for p in content], now_ns=100)
        return r.costs_ns + d.load(r.handles, now_ns=200).costs_ns

    def device(seed: int) -> MemoryDevice:
        return make_device(node_config("cram", "1MiB", "256KiB", seed=seed))

    a = device(5)
    first = run(a)
    assert first == run(device(5))
    assert first != run(device(6))
    a.reset()
    assert run(a) == first  # jitter and queue start over
    a.reset(seed=6)
    assert a.info().seed == 6 and run(a) == run(device(6))
    a.reset()
    assert a.info().seed == 5


def test_reset_empties_the_node_but_not_the_event_sequence(pages: Pages) -> None:
    d = make_device(node_config("cram", "1MiB", "16KiB"))
    sub = d.subscribe()
    while d.stats().pressure == 0:
        d.store([(0, pages.random())])
    seq = d._sequence
    d.reset()
    assert d.stats() == NodeStats(
        name="cram", kind=d.kind, physical_bytes=16 << 10, advertised_bytes=1 << 20
    )
    events = sub.drain()
    assert events[-1].pressure == 0 and events[-1].sequence == seq + 1
    assert d.subscriber_count == 1  # watchers survive a reset


def test_costs_are_integers_and_sum_to_the_batch(pages: Pages) -> None:
    d = make_device(_config("storage"))
    r = d.store([(0, p) for p in pages.mixed(10)], now_ns=5)
    assert all(type(c) is int and c > 0 for c in r.costs_ns)
    assert r.cost_ns == sum(r.costs_ns)
    ld = d.load(r.handles, now_ns=10)
    assert ld.cost_ns == sum(ld.costs_ns)
    assert d.stats().busy_ns == r.cost_ns + ld.cost_ns


@pytest.mark.asyncio
async def test_local_client_splits_batches_and_watches_pressure(pages: Pages) -> None:
    client = LocalNodeClient.from_config(
        node_config("cram", "4MiB", "64KiB", max_batch_pages=16, high_watermark="64KiB")
    )
    events = client.watch_pressure()
    assert (await anext(events)).pressure == 0
    r = await client.store([(0, pages.text()) for _ in range(40)])  # 16 + 16 + 8
    assert len(r.handles) == 40 and r.cost_ns == sum(r.costs_ns)
    seen = [await anext(events) for _ in range(3)]  # one event per batch of the request
    assert [e.sequence for e in seen] == [1, 2, 3]
    assert 0 < seen[0].pressure < seen[1].pressure < seen[2].pressure == r.state.pressure
    freed = await client.free(r.handles)
    assert freed.count == 40 and freed.state.allocated_pages == 0
    await events.aclose()
    assert client.device.subscriber_count == 0
    await client.close()
    with pytest.raises(NodeError) as err:
        await client.stats()
    assert err.value.code is grpc.StatusCode.CANCELLED


def test_public_api() -> None:
    import tiersim.nodes as nodes

    for name in nodes.__all__:
        assert getattr(nodes, name) is not None
    assert isinstance(LocalNodeClient.from_config(_config("dram")), nodes.NodeClient)


@pytest.mark.parametrize("size", [1, 3, 8, 9, 40])
def test_bad_handles_are_named_in_small_and_large_batches(size: int, pages: Pages) -> None:
    # Batches of up to 8 handles are checked on a plain-Python path, larger ones
    # with numpy: both must refuse the same handles with the same words.
    d = make_device(_config("cram"))
    content = pages.mixed(64)
    r = d.store([(0, p) for p in content])
    freed = r.handles[-1]
    d.free([freed])
    good = r.handles[: size - 1]
    cases = [
        ([*good, freed], grpc.StatusCode.NOT_FOUND, f"handle {freed} is not allocated"),
        ([*good, 10_000], grpc.StatusCode.NOT_FOUND, "handle 10000 is not allocated"),
        ([*good, -4], grpc.StatusCode.INVALID_ARGUMENT, "handle -4 is negative"),
        ([*good, 0], grpc.StatusCode.NOT_FOUND, "handle 0 is not allocated"),
        ([*good, -(2**63) - 1], grpc.StatusCode.INVALID_ARGUMENT, "is negative"),
        ([*good, 2**64], grpc.StatusCode.NOT_FOUND, f"handle {2**64} is not allocated"),
    ]
    if good:
        cases.append(([*good, good[0]], grpc.StatusCode.INVALID_ARGUMENT, "appears twice"))
    for handles, code, words in cases:
        with pytest.raises(NodeError) as err:
            d.load(handles)
        assert err.value.code is code, handles
        assert words in err.value.message, (handles, err.value.message)
    # And good handles pass, on either path.
    assert d.load(r.handles[:size]).data == content[:size]
