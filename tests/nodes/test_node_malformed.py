"""A running node answers hundreds of malformed requests precisely and keeps serving."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from node_helpers import Pages
from tiersim.nodes.testing import running_server
from tiersim.v1 import node_pb2 as pb
from tiersim.v1 import node_pb2_grpc as pb_grpc

pytestmark = pytest.mark.asyncio

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


_STATUS = {c.value[0]: c for c in grpc.StatusCode}


async def _stream_status(call: Any, messages: list[Any]) -> tuple[grpc.StatusCode, list[Any]]:
    """Send batches and read every reply: the status of the first batch the node
    rejected in its reply, or else the stream's own status; and the replies."""
    replies: list[Any] = []
    try:
        for m in messages:
            await call.write(m)
        await call.done_writing()
        async for reply in call:
            replies.append(reply)
    except grpc.aio.AioRpcError as err:
        return err.code(), replies
    for reply in replies:
        if reply.code:
            return _STATUS[reply.code], replies
    return await call.code(), replies


async def test_malformed_requests_are_answered_and_change_nothing(pages: Pages) -> None:
    rng = random.Random(1234)
    content = pages.mixed(40)
    async with (
        running_server(kind="cram", advertised="8MiB", physical="2MiB") as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.MemoryNodeStub(channel)
        handles = []
        for p in content:
            r = await stub.Store(pb.StoreRequest(page=pb.PageWrite(data=p)))
            handles.append(r.handle)
        before = await stub.Stats(pb.StatsRequest())
        top = max(handles)

        def unknown() -> int:
            return rng.choice([top + rng.randint(1, 10**6), 2**64 - 1, 2**40, 0])

        def unknown_nonzero() -> int:
            return rng.choice([top + rng.randint(1, 10**6), 2**64 - 1, 2**40])

        def bad_len() -> bytes:
            return bytes(rng.choice([0, 1, 100, 4095, 4097, 8192]))

        def known() -> int:
            return rng.choice(handles)

        def pw(h: int, data: bytes | None = None) -> pb.PageWrite:
            return pb.PageWrite(handle=h, data=content[0] if data is None else data)

        def unary(f: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[grpc.StatusCode]]:
            async def run() -> grpc.StatusCode:
                try:
                    await f()
                except grpc.aio.AioRpcError as err:
                    return err.code()
                return grpc.StatusCode.OK

            return run

        def store_stream(batches: list[pb.StoreBatch]) -> Callable[[], Awaitable[grpc.StatusCode]]:
            async def run() -> grpc.StatusCode:
                call = stub.StoreStream()
                code, replies = await _stream_status(call, batches)
                # The rejection is the batch's reply, with a reason and nothing applied;
                # the stream itself ends normally.
                assert [r.batch_id for r in replies] == [b.batch_id for b in batches]
                assert replies[-1].message and not replies[-1].results
                assert await call.code() is grpc.StatusCode.OK
                return code

            return run

        def load_stream(batches: list[pb.LoadBatch]) -> Callable[[], Awaitable[grpc.StatusCode]]:
            async def run() -> grpc.StatusCode:
                code, _ = await _stream_status(stub.LoadStream(), batches)
                return code

            return run

        templates: list[
            Callable[[], tuple[Callable[[], Awaitable[grpc.StatusCode]], grpc.StatusCode]]
        ] = [
            lambda: (unary(lambda: stub.Store(pb.StoreRequest(page=pw(0, bad_len())))), INVALID),
            lambda: (
                unary(lambda: stub.Store(pb.StoreRequest(page=pw(known(), bad_len())))),
                INVALID,
            ),
            lambda: (
                unary(lambda: stub.Store(pb.StoreRequest(page=pw(unknown_nonzero())))),
                NOT_FOUND,
            ),
            lambda: (unary(lambda: stub.Store(pb.StoreRequest())), INVALID),
            lambda: (unary(lambda: stub.Load(pb.LoadRequest(handle=unknown()))), NOT_FOUND),
            lambda: (
                unary(lambda: stub.Load(pb.LoadRequest(handle=unknown(), free_after=True))),
                NOT_FOUND,
            ),
            lambda: (unary(lambda: stub.Allocate(pb.AllocateRequest(count=0))), INVALID),
            lambda: (
                unary(lambda: stub.Allocate(pb.AllocateRequest(count=rng.randint(257, 2**32 - 1)))),
                INVALID,
            ),
            lambda: (
                unary(
                    lambda: stub.Allocate(
                        pb.AllocateRequest(count=1, size_hint_bytes=rng.randint(4097, 2**32 - 1))
                    )
                ),
                INVALID,
            ),
            lambda: (unary(lambda: stub.Free(pb.FreeRequest())), INVALID),
            lambda: (unary(lambda: stub.Free(pb.FreeRequest(handles=[known()] * 2))), INVALID),
            lambda: (
                unary(lambda: stub.Free(pb.FreeRequest(handles=[known(), unknown()]))),
                NOT_FOUND,
            ),
            lambda: (unary(lambda: stub.Free(pb.FreeRequest(handles=handles * 7))), INVALID),
            lambda: (unary(lambda: stub.Zero(pb.ZeroRequest(handles=[unknown()]))), NOT_FOUND),
            lambda: (unary(lambda: stub.Zero(pb.ZeroRequest())), INVALID),
            lambda: (store_stream([pb.StoreBatch(batch_id=rng.randint(1, 99))]), INVALID),
            lambda: (store_stream([pb.StoreBatch(batch_id=5, pages=[pw(0)] * 257)]), INVALID),
            lambda: (
                store_stream([pb.StoreBatch(batch_id=6, pages=[pw(0), pw(0, bad_len())])]),
                INVALID,
            ),
            lambda: (
                store_stream([pb.StoreBatch(batch_id=7, pages=[pw(h := known()), pw(h)])]),
                INVALID,
            ),
            lambda: (
                store_stream([pb.StoreBatch(batch_id=8, pages=[pw(0), pw(unknown_nonzero())])]),
                NOT_FOUND,
            ),
            lambda: (load_stream([pb.LoadBatch(batch_id=1)]), INVALID),
            lambda: (
                load_stream([pb.LoadBatch(batch_id=2, handles=[known(), unknown()])]),
                NOT_FOUND,
            ),
            lambda: (
                load_stream([pb.LoadBatch(batch_id=3, handles=[h := known(), h], free_after=True)]),
                INVALID,
            ),
            lambda: (load_stream([pb.LoadBatch(batch_id=4, handles=handles * 7)]), INVALID),
        ]
        model_rejections = 0
        sent = 0
        for _ in range(300):
            request, expected = rng.choice(templates)()
            code = await request()
            assert code is expected
            model_rejections += 1
            sent += 1

        # Bytes that are not a protobuf message at all, and a message over the size limit:
        # gRPC refuses them before the node model sees them.
        garbage: Any = channel.unary_unary(
            "/tiersim.v1.MemoryNode/Store", request_serializer=None, response_deserializer=None
        )
        for blob in (b"\xff" * 10, b"\x0a\xff\xff\xff\xff\x0f", b"\x08"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await garbage(blob)
            assert err.value.code() is INVALID
            assert "not a valid tiersim.v1.StoreRequest" in (err.value.details() or "")
            model_rejections += 1
        raw_stream: Any = channel.stream_stream(
            "/tiersim.v1.MemoryNode/StoreStream",
            request_serializer=None,
            response_deserializer=pb.StoreBatchResult.FromString,
        )
        valid = pb.StoreBatch(batch_id=1, pages=[pw(handles[0], content[0])]).SerializeToString()
        code, _ = await _stream_status(raw_stream(), [valid, b"\x0a\x05\x12"])
        assert code is INVALID
        model_rejections += 1
        async with grpc.aio.insecure_channel(
            server.address, options=[("grpc.max_send_message_length", 64 << 20)]
        ) as big_channel:
            big = pb_grpc.MemoryNodeStub(big_channel)
            huge = pb.StoreBatch(batch_id=1, pages=[pw(0)] * 2500)  # ~10 MiB
            code, _ = await _stream_status(big.StoreStream(), [huge])
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED

        after = await stub.Stats(pb.StatsRequest())
        assert after.rejected_requests == before.rejected_requests + model_rejections
        # The one valid batch above rewrote page 0 with its own contents.
        assert after.stores == before.stores + 1
        for name in (
            "rejected_requests",
            "stores",
            "busy_ns",
            "compress_in_bytes",
            "compress_out_bytes",
        ):
            setattr(after, name, getattr(before, name))
        assert after == before
        # Still serving the same bytes, and new work.
        loaded = await stub.Load(pb.LoadRequest(handle=handles[3]))
        assert loaded.data == content[3]
        replies = [
            r async for r in stub.LoadStream(iter([pb.LoadBatch(batch_id=1, handles=handles)]))
        ]
        assert [x.data for x in replies[0].results] == content
        r = await stub.Store(pb.StoreRequest(page=pw(0, content[1])))
        assert r.code == 0 and r.handle not in handles
        assert sent == 300


@pytest.mark.filterwarnings("ignore::pytest.PytestWarning")
def test_stats_message_fields_match_the_dataclass() -> None:
    from tiersim.nodes import NodeStats

    assert [f.name for f in pb.NodeStats.DESCRIPTOR.fields] == [
        f.name for f in dataclasses.fields(NodeStats)
    ]
