"""The lz4 worker process of a compressing node server (nodes/_encoder.py).

The worker must lay every page out exactly as the device would itself, and a
worker that dies must cost the node nothing but speed.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from node_helpers import Pages, lz4_payload
from tiersim.nodes import PAGE_SIZE, CramDevice, GrpcNodeClient, make_device, node_config
from tiersim.nodes._encoder import ProcessEncoder, ThreadEncoder, start_encoder
from tiersim.nodes.testing import running_server

pytestmark = pytest.mark.asyncio


def _cram(max_batch: int = 64) -> CramDevice:
    device = make_device(node_config("cram", "64MiB", "16MiB", max_batch_pages=max_batch))
    assert isinstance(device, CramDevice)
    return device


def _incompressible_tail(pages: Pages) -> bytes:
    # lz4 output just over a page: stored raw by the device.
    return pages.random()


async def _exited(pid: int, timeout: float = 5.0) -> bool:
    for _ in range(int(timeout / 0.05)):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie until its parent reaps it counts as gone.
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_worker_lays_pages_out_as_the_device_does() -> None:
    device = _cram()
    pages = Pages(11)
    batch = pages.mixed(60) + [_incompressible_tail(pages)] * 4
    encoder = await ProcessEncoder.start(device, max_pages=64)
    try:
        # As bytes, and as the memoryviews decode_store_batch hands over.
        for datas in (batch, [memoryview(b"\x00" + p)[1:] for p in batch]):
            got = await encoder.encode(datas)
            assert got == device.encode_pages(batch)
        assert got is not None
        assert [e[1] for e in got] == [lz4_payload(p) for p in batch]
        assert sum(1 for e in got if e[1] == 0) == 15
        assert sum(1 for e in got if e[1] == PAGE_SIZE) > 4
    finally:
        await encoder.aclose()
    assert await _exited(encoder.pid)


async def test_batches_in_flight_at_once_each_get_their_own_answer() -> None:
    device = _cram(max_batch=32)
    pages = Pages(12)
    batches = [pages.mixed(32) for _ in range(12)]  # three times the slots
    encoder = await ProcessEncoder.start(device, max_pages=32)
    try:
        got = await asyncio.gather(*(encoder.encode(b) for b in batches))
        assert got == [device.encode_pages(b) for b in batches]
    finally:
        await encoder.aclose()


async def test_a_cancelled_batch_leaves_the_answers_in_step() -> None:
    device = _cram(max_batch=64)
    pages = Pages(13)
    encoder = await ProcessEncoder.start(device, max_pages=64, slots=1)
    try:
        first = asyncio.get_running_loop().create_task(encoder.encode(pages.mixed(64)))
        await asyncio.sleep(0)  # the request is sent
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        # The only slot is taken again at once; the worker's answer for the
        # cancelled batch must not be read as this one's.
        batch = pages.mixed(64)[::-1]
        assert await encoder.encode(batch) == device.encode_pages(batch)
        batch = pages.mixed(48)
        assert await encoder.encode(batch) == device.encode_pages(batch)
    finally:
        await encoder.aclose()


async def test_what_is_not_a_page_is_left_to_the_device() -> None:
    device = _cram()
    encoder = await ProcessEncoder.start(device, max_pages=64)
    try:
        assert await encoder.encode([b"short"]) is None
        assert await encoder.encode([bytearray(PAGE_SIZE)]) is None
        assert await encoder.encode([bytes(PAGE_SIZE)] * 65) is None  # over the slot
        assert await encoder.encode([]) is None
        assert await encoder.encode([bytes(PAGE_SIZE)]) == [(b"", 0, 0, 0)]
    finally:
        await encoder.aclose()


async def test_a_dead_worker_leaves_the_device_to_encode() -> None:
    device = _cram()
    encoder = await ProcessEncoder.start(device, max_pages=64)
    try:
        os.kill(encoder.pid, signal.SIGKILL)
        assert await _exited(encoder.pid)
        assert await encoder.encode(Pages(14).mixed(8)) is None
    finally:
        await encoder.aclose()


def _cores() -> int:
    return len(os.sched_getaffinity(0))


async def test_only_compressing_devices_get_an_encoder() -> None:
    assert await start_encoder(make_device(node_config("dram", "16MiB")), 64) is None
    encoder = await start_encoder(_cram(), 64)
    try:
        expected = ProcessEncoder if _cores() > 1 else ThreadEncoder
        assert type(encoder) is expected
    finally:
        assert encoder is not None
        await encoder.aclose()


async def test_compress_in_chooses_the_encoder() -> None:
    for where, kind in (("thread", ThreadEncoder), ("process", ProcessEncoder)):
        encoder = await start_encoder(_cram(), 64, where)
        assert type(encoder) is kind
        assert encoder is not None
        await encoder.aclose()


async def test_a_node_with_a_thread_encoder_stores_exact_pages() -> None:
    from tiersim.nodes import ServerOptions

    pages = Pages(18).mixed(300)
    opts = ServerOptions(compress_in="thread")
    async with running_server(options=opts, max_batch_pages=64) as server:
        assert type(server.encoder) is ThreadEncoder
        client = await GrpcNodeClient.connect(server.address)
        try:
            r = await client.store([(0, p) for p in pages])
            assert r.stored_bytes == [lz4_payload(p) for p in pages]
            assert (await client.load(r.handles)).data == pages
        finally:
            await client.close()


async def test_a_node_whose_worker_dies_keeps_serving_exact_pages() -> None:
    pages = Pages(15)
    async with running_server(max_batch_pages=64) as server:
        encoder = server.encoder
        if not isinstance(encoder, ProcessEncoder):
            pytest.skip("no lz4 worker process on a single-core machine")
        client = await GrpcNodeClient.connect(server.address)
        try:
            before = pages.mixed(200)
            r1 = await client.store([(0, p) for p in before])
            os.kill(encoder.pid, signal.SIGKILL)
            assert await _exited(encoder.pid)
            after = pages.mixed(200)
            r2 = await client.store([(0, p) for p in after])
            assert r1.ok and r2.ok
            assert r1.stored_bytes + r2.stored_bytes == [lz4_payload(p) for p in before + after]
            assert (await client.load(r1.handles + r2.handles)).data == before + after
            stats = await client.stats()
            assert stats.stored_bytes == sum(map(lz4_payload, before + after))
            assert stats.allocated_pages == stats.stored_pages == 400
        finally:
            await client.close()
    # The server's stop ends its worker (here already dead) without hanging.
    assert server.encoder is None


async def test_stopping_a_node_ends_its_worker() -> None:
    async with running_server() as server:
        encoder = server.encoder
        if not isinstance(encoder, ProcessEncoder):
            pytest.skip("no lz4 worker process on a single-core machine")
        pid = encoder.pid
    assert await _exited(pid)


async def test_a_stuck_worker_is_killed_and_the_device_encodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tiersim.nodes._encoder as encoder_module

    monkeypatch.setattr(encoder_module, "ANSWER_TIMEOUT_S", 0.5)
    device = _cram()
    encoder = await ProcessEncoder.start(device, max_pages=64)
    try:
        os.kill(encoder.pid, signal.SIGSTOP)
        assert await encoder.encode(Pages(16).mixed(8)) is None
        assert await _exited(encoder.pid)
        assert await encoder.encode(Pages(16).mixed(8)) is None
    finally:
        await encoder.aclose()


async def test_a_server_that_fails_to_start_leaves_no_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tiersim.nodes import NodeServer

    server = NodeServer(node_config("cram", "64MiB", "16MiB"))
    spawned: list[int] = []
    real_start = ProcessEncoder.start

    async def start(*args: object, **kwargs: object) -> ProcessEncoder:
        encoder = await real_start(*args, **kwargs)  # type: ignore[arg-type]
        spawned.append(encoder.pid)
        return encoder

    async def broken(*args: object) -> None:
        raise RuntimeError("health service broke")

    monkeypatch.setattr(ProcessEncoder, "start", start)
    monkeypatch.setattr(server.health, "set", broken)
    with pytest.raises(RuntimeError, match="health service broke"):
        await server.start()
    if _cores() > 1:
        assert spawned and await _exited(spawned[0])
    assert server.encoder is None


async def test_concurrent_streams_through_one_worker_keep_exact_data() -> None:
    pages = Pages(17)
    contents = [pages.mixed(300) for _ in range(4)]
    async with running_server(max_batch_pages=32) as server:
        clients = [await GrpcNodeClient.connect(server.address) for _ in contents]
        try:
            results = await asyncio.gather(
                *(c.store([(0, p) for p in pp]) for c, pp in zip(clients, contents, strict=True))
            )
            for c, r, pp in zip(clients, results, contents, strict=True):
                assert r.ok
                assert r.stored_bytes == [lz4_payload(p) for p in pp]
                assert (await c.load(r.handles)).data == pp
            stats = await clients[0].stats()
            assert stats.stored_pages == 1200
            assert stats.stored_bytes == sum(lz4_payload(p) for pp in contents for p in pp)
        finally:
            for c in clients:
                await c.close()


async def test_a_refused_compress_in_binds_no_port(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import tiersim.nodes._server as server_module
    from tiersim import ConfigError
    from tiersim.nodes import NodeServer, ServerOptions

    async def refuse(*args: object) -> None:
        raise ConfigError("compress_in = process: no lz4 worker here", key="compress_in")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = ServerOptions(port=port, compress_in="process")
    config = node_config("cram", "64MiB", "16MiB")
    monkeypatch.setattr(server_module, "start_encoder", refuse)
    with pytest.raises(ConfigError, match="no lz4 worker"):
        await NodeServer(config, opts).start()
    monkeypatch.undo()
    # The port is free for the next server.
    server = NodeServer(config, ServerOptions(port=port))
    assert await server.start() == f"127.0.0.1:{port}"
    await server.stop(grace=0.2)


async def test_compress_in_is_checked_where_it_is_used() -> None:
    with pytest.raises(ValueError, match="compress_in"):
        await start_encoder(_cram(), 64, "gpu")
