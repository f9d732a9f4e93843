"""NodeClient over gRPC: the wire side of the engine/node seam.

Stores and loads travel on two long-lived bidirectional streams, one per
direction, in batches of up to the node's max_batch_pages. Several batches are
kept in flight (pipelined) and replies are matched to requests by batch_id,
so one caller with a large request, or many concurrent callers, keep the
stream full. Everything else is a unary call.

A node answers a malformed batch in its reply (`code`, `message`) and keeps
the stream: concurrent callers do not suffer for one bad request. Every batch
carries its request's id, so the node applies no later batch of a request
one of whose batches it rejected (they answer ABORTED), as the in-process
client stops at the first error; the client fails the request with the
rejected batch's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from tiersim._errors import NodeError
from tiersim._security import INSECURE, ClientSecurity
from tiersim.v1 import node_pb2 as pb
from tiersim.v1 import node_pb2_grpc as pb_grpc

from ._convert import (
    encode_store_batch,
    event_from_pb,
    info_from_pb,
    op_result_from_pb,
    results_from_pb,
    state_from_pb,
    stats_from_pb,
)
from ._local import chunks, merge_batches, merge_ops
from ._types import AllocateResult, BatchResult, NodeInfo, NodeStats, OpResult, PressureEvent

# Large enough for the biggest batch any node accepts (4096 pages of 4 KiB).
CLIENT_MESSAGE_LIMIT = 64 << 20
DEFAULT_IN_FLIGHT = 8

R = TypeVar("R", pb.StoreBatchResult, pb.LoadBatchResult)
T = TypeVar("T")
M = TypeVar("M")


def _request(factory: Callable[..., M], **fields: Any) -> M:
    """Build a request message; values protobuf cannot carry are the caller's INVALID_ARGUMENT."""
    try:
        return factory(**fields)
    except (TypeError, ValueError) as exc:
        raise NodeError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None


def node_error(err: grpc.aio.AioRpcError) -> NodeError:
    """The NodeError a failed call stands for: same status code, the node's message."""
    code = err.code()
    return NodeError(code, err.details() or code.name)


_STATUS = {code.value[0]: code for code in grpc.StatusCode}


def batch_error(code: int, message: str) -> NodeError:
    """The NodeError of a batch the node rejected in its reply."""
    status = _STATUS.get(code, grpc.StatusCode.UNKNOWN)
    return NodeError(status, message or status.name)


class _Pending:
    __slots__ = ("future", "group")

    def __init__(self, group: int, future: asyncio.Future[Any]) -> None:
        self.group = group
        self.future = future


class _BatchStream(Generic[R]):
    """One long-lived bidirectional stream of batches, replies matched by batch_id."""

    def __init__(
        self,
        open_call: Callable[[], grpc.aio.StreamStreamCall[bytes, R]],
        max_in_flight: int,
    ) -> None:
        self._open_call: Callable[[], grpc.aio.StreamStreamCall[bytes, R]] = open_call
        self._pending: dict[int, _Pending] = {}  # in send order
        self._call: grpc.aio.StreamStreamCall[bytes, R] | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._closed = False
        # Requests one of whose batches was rejected: their later batches are not sent.
        self._failed_groups: set[int] = set()

    def _open(self) -> grpc.aio.StreamStreamCall[bytes, R]:
        call = self._open_call()
        self._call = call
        task = asyncio.get_running_loop().create_task(self._read(call))
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)
        return call

    async def send(self, batch_id: int, group: int, message: bytes) -> asyncio.Future[R]:
        """Queue one batch; the future resolves to its reply or a NodeError."""
        await self._slots.acquire()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda _: self._slots.release())
        async with self._lock:
            if self._closed:
                future.set_exception(NodeError(grpc.StatusCode.CANCELLED, "client is closed"))
                return future
            if group in self._failed_groups:
                future.cancel()
                return future
            self._pending[batch_id] = _Pending(group, future)
            call = self._call or self._open()
            # If the stream already failed, its reader fails this batch.
            with contextlib.suppress(
                grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError
            ):
                await call.write(message)
        return future

    async def _read(self, call: grpc.aio.StreamStreamCall[bytes, R]) -> None:
        pending = self._pending
        while True:
            try:
                reply: Any = await call.read()
            except grpc.aio.AioRpcError as err:
                await self._broken(call, err)
                return
            if reply is grpc.aio.EOF:
                await self._broken(call, None)
                return
            entry = pending.pop(reply.batch_id, None)
            if entry is None or entry.future.done():
                continue
            if reply.code:
                # Later batches of the request are not sent (or, if in flight, the
                # node answers them ABORTED).
                self._failed_groups.add(entry.group)
                entry.future.set_exception(batch_error(reply.code, reply.message))
            else:
                entry.future.set_result(reply)

    async def _broken(
        self, call: grpc.aio.StreamStreamCall[bytes, R], err: grpc.aio.AioRpcError | None
    ) -> None:
        async with self._lock:
            if self._call is not call:
                return  # a stream given up (abort, close): its batches were settled then
            self._call = None
            pending = self._pending
            exc = (
                node_error(err)
                if err is not None
                else NodeError(grpc.StatusCode.UNAVAILABLE, "node closed the stream")
            )
            for entry in pending.values():
                if not entry.future.done():
                    entry.future.set_exception(exc)
            pending.clear()

    def abort(self, exc: NodeError) -> None:
        """The node stopped answering: drop the stream, fail every pending batch with `exc`.

        Synchronous on purpose: a send stuck in write() on the silent stream may
        hold the lock. The next send opens a fresh stream.
        """
        call, self._call = self._call, None
        if call is not None:
            call.cancel()
        for entry in self._pending.values():
            if not entry.future.done():
                entry.future.set_exception(exc)
        self._pending.clear()

    def forget(self, group: int) -> None:
        """The request `group` is over; drop what was remembered about it."""
        self._failed_groups.discard(group)

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            call, self._call = self._call, None
            if call is not None:
                call.cancel()
            for entry in self._pending.values():
                if not entry.future.done():
                    entry.future.set_exception(
                        NodeError(grpc.StatusCode.CANCELLED, "client is closed")
                    )
            self._pending.clear()
        for task in list(self._readers):
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


async def _gather_in_order(futures: list[asyncio.Future[R]]) -> list[R]:
    """Await replies in send order; on the first error cancel the rest and raise it."""
    out: list[R] = []
    try:
        for f in futures:
            out.append(await f)
    except BaseException:
        for f in futures:
            if not f.done():
                f.cancel()
            elif not f.cancelled():
                f.exception()  # mark retrieved: the first error is the one raised
        raise
    return out


class GrpcNodeClient:
    """NodeClient speaking tiersim.v1.MemoryNode to a node server.

    Create with `await GrpcNodeClient.connect(address)`; close with `close()`
    or use it as an async context manager.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        info: NodeInfo,
        *,
        address: str = "",
        max_in_flight: int = DEFAULT_IN_FLIGHT,
        request_timeout: float | None = None,
    ) -> None:
        self.address = address
        # Real-time deadline of one request (None: none). A paused node, or one
        # whose link is cut, keeps its TCP connection and answers nothing: only a
        # deadline turns that silence into an error the engine can act on.
        self.request_timeout = request_timeout
        self.info = info
        self._channel = channel
        self._stub = pb_grpc.MemoryNodeStub(channel)
        self._max_batch = info.max_batch_pages
        self._ids = itertools.count(1)
        self._groups = itertools.count(1)
        self._closed = False
        self._stores: _BatchStream[pb.StoreBatchResult] = _BatchStream(
            channel.stream_stream(
                "/tiersim.v1.MemoryNode/StoreStream",
                request_serializer=None,
                response_deserializer=pb.StoreBatchResult.FromString,
            ),
            max_in_flight,
        )
        self._loads: _BatchStream[pb.LoadBatchResult] = _BatchStream(
            channel.stream_stream(
                "/tiersim.v1.MemoryNode/LoadStream",
                request_serializer=None,
                response_deserializer=pb.LoadBatchResult.FromString,
            ),
            max_in_flight,
        )

    @classmethod
    async def connect(
        cls,
        address: str,
        timeout: float = 10.0,
        *,
        max_in_flight: int = DEFAULT_IN_FLIGHT,
        security: ClientSecurity | None = None,
        request_timeout: float | None = None,
    ) -> GrpcNodeClient:
        """Open a channel to `address` (host:port), wait until the node answers.

        `security` carries the node's token and/or TLS settings (plain text
        without either). Raises NodeError(UNAVAILABLE) when no node answers
        within `timeout` seconds, or when the server there is not a tiersim
        memory node; UNAUTHENTICATED when it wants a token we do not have.
        """
        channel = (security or INSECURE).channel(
            address,
            options=[
                ("grpc.max_send_message_length", CLIENT_MESSAGE_LIMIT),
                ("grpc.max_receive_message_length", CLIENT_MESSAGE_LIMIT),
            ],
        )
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout)
        except TimeoutError:
            await channel.close()
            raise NodeError(
                grpc.StatusCode.UNAVAILABLE,
                f"no memory node answered at {address} within {timeout:g} s",
            ) from None
        stub = pb_grpc.MemoryNodeStub(channel)
        try:
            info = await stub.Describe(pb.DescribeRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            await channel.close()
            if err.code() is grpc.StatusCode.UNIMPLEMENTED:
                raise NodeError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the server at {address} is not a tiersim memory node",
                ) from None
            raise node_error(err) from None
        return cls(
            channel,
            info_from_pb(info),
            address=address,
            max_in_flight=max_in_flight,
            request_timeout=request_timeout,
        )

    async def __aenter__(self) -> GrpcNodeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise NodeError(grpc.StatusCode.CANCELLED, "client is closed")

    def _expired(self) -> NodeError:
        return NodeError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"no reply from the node at {self.address} within {self.request_timeout:g} s",
        )

    async def _timed(self, request: Awaitable[T], stream: _BatchStream[Any] | None = None) -> T:
        """Await `request` within the request deadline; on expiry give up the stream it used."""
        try:
            async with asyncio.timeout(self.request_timeout):
                return await request
        except TimeoutError:
            if stream is not None:
                stream.abort(self._expired())
            raise self._expired() from None

    async def _unary(self, make_call: Callable[[], Awaitable[Any]]) -> Any:
        self._check_open()
        try:
            return await self._timed(make_call())
        except grpc.aio.AioRpcError as err:
            raise node_error(err) from None
        except grpc.aio.UsageError as err:  # closed underneath us
            raise NodeError(grpc.StatusCode.CANCELLED, str(err)) from None

    # ------------------------------------------------------------ NodeClient

    async def describe(self) -> NodeInfo:
        info = info_from_pb(await self._unary(lambda: self._stub.Describe(pb.DescribeRequest())))
        self.info = info
        return info

    async def allocate(
        self, count: int, *, check: bool = False, size_hint: int = 0, now_ns: int = 0
    ) -> AllocateResult:
        request = _request(
            pb.AllocateRequest,
            count=count,
            check=check,
            size_hint_bytes=size_hint,
            issue_time_ns=now_ns,
        )
        r = await self._unary(lambda: self._stub.Allocate(request))
        return AllocateResult(
            handles=list(r.handles), cost_ns=r.cost_ns, state=state_from_pb(r.state)
        )

    async def store(
        self, pages: Sequence[tuple[int, bytes]], *, check: bool = False, now_ns: int = 0
    ) -> BatchResult:
        self._check_open()
        return await self._timed(self._store(pages, check, now_ns), self._stores)

    async def _store(
        self, pages: Sequence[tuple[int, bytes]], check: bool, now_ns: int
    ) -> BatchResult:
        group = next(self._groups)
        futures: list[asyncio.Future[pb.StoreBatchResult]] = []
        try:
            for part in chunks(pages, self._max_batch):
                bid = next(self._ids)
                try:
                    message = encode_store_batch(
                        part, check=check, issue_time_ns=now_ns, batch_id=bid, request_id=group
                    )
                except (TypeError, ValueError) as exc:
                    for f in futures:
                        f.cancel()
                    raise NodeError(grpc.StatusCode.INVALID_ARGUMENT, f"bad page: {exc}") from None
                futures.append(await self._stores.send(bid, group, message))
            replies = await _gather_in_order(futures)
        finally:
            self._stores.forget(group)
        return merge_batches(
            [results_from_pb(r.results, r.cost_ns, r.state, with_data=False) for r in replies]
        )

    async def load(
        self, handles: Sequence[int], *, free_after: bool = False, now_ns: int = 0
    ) -> BatchResult:
        self._check_open()
        return await self._timed(self._load(handles, free_after, now_ns), self._loads)

    async def _load(self, handles: Sequence[int], free_after: bool, now_ns: int) -> BatchResult:
        group = next(self._groups)
        futures: list[asyncio.Future[pb.LoadBatchResult]] = []
        try:
            for part in chunks(handles, self._max_batch):
                bid = next(self._ids)
                try:
                    message = pb.LoadBatch(
                        handles=part,
                        free_after=free_after,
                        issue_time_ns=now_ns,
                        batch_id=bid,
                        request_id=group,
                    ).SerializeToString()
                except (TypeError, ValueError) as exc:
                    for f in futures:
                        f.cancel()
                    raise NodeError(
                        grpc.StatusCode.INVALID_ARGUMENT, f"bad handle: {exc}"
                    ) from None
                futures.append(await self._loads.send(bid, group, message))
            replies = await _gather_in_order(futures)
        finally:
            self._loads.forget(group)
        return merge_batches(
            [results_from_pb(r.results, r.cost_ns, r.state, with_data=True) for r in replies]
        )

    async def free(self, handles: Sequence[int], *, now_ns: int = 0) -> OpResult:
        parts = []
        for part in chunks(handles, self._max_batch):
            request = _request(pb.FreeRequest, handles=part, issue_time_ns=now_ns)
            r = await self._unary(functools.partial(self._stub.Free, request))
            parts.append(op_result_from_pb(r.freed, r.cost_ns, r.state))
        return merge_ops(parts)

    async def zero(self, handles: Sequence[int], *, now_ns: int = 0) -> OpResult:
        parts = []
        for part in chunks(handles, self._max_batch):
            request = _request(pb.ZeroRequest, handles=part, issue_time_ns=now_ns)
            r = await self._unary(functools.partial(self._stub.Zero, request))
            parts.append(op_result_from_pb(r.zeroed, r.cost_ns, r.state))
        return merge_ops(parts)

    async def stats(self) -> NodeStats:
        return stats_from_pb(await self._unary(lambda: self._stub.Stats(pb.StatsRequest())))

    async def reset(self, seed: int = 0) -> None:
        await self._unary(lambda: self._stub.Reset(_request(pb.ResetRequest, seed=seed)))

    async def watch_pressure(self) -> AsyncIterator[PressureEvent]:
        self._check_open()
        call = self._stub.WatchPressure(pb.WatchPressureRequest())
        try:
            async for event in call:
                yield event_from_pb(event)
        except grpc.aio.AioRpcError as err:
            if self._closed and err.code() is grpc.StatusCode.CANCELLED:
                return
            raise node_error(err) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._stores.close()
        await self._loads.close()
        await self._channel.close()
