"""The memory-node gRPC server.

One asyncio event loop serves every client. Device-model calls are
synchronous and never await, so each request is applied atomically and the
accounting stays exact however many clients store and free concurrently.

Alongside tiersim.v1.MemoryNode the server offers gRPC health checking
(NOT_SERVING while a machine check is raised), reflection (so grpcurl works
without the .proto), and Prometheus metrics on a port of their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import prometheus_client
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from tiersim import __version__
from tiersim._errors import ConfigError, NodeError
from tiersim._lifecycle import stop_on_signals
from tiersim._logging import get_logger
from tiersim._security import ServerSecurity, format_address
from tiersim.v1 import node_pb2 as pb
from tiersim.v1 import node_pb2_grpc as pb_grpc

from ._config import NodeConfig, ServerOptions
from ._convert import (
    StoreWrites,
    decode_store_batch,
    event_to_pb,
    info_to_pb,
    page_result_to_pb,
    results_to_pb,
    state_to_pb,
    stats_to_pb,
)
from ._device import Encoded, MemoryDevice, PressureSubscriber
from ._encoder import PageEncoder, start_encoder
from ._factory import make_device
from ._types import DATA_LOSS, PAGE_SIZE, NodeStats

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MemoryNode"].full_name
# Request ids with a rejected batch remembered per stream: enough for every
# request a client can have in flight, bounded against a client that never ends.
FAILED_REQUESTS_KEPT = 1024
_ABORTED = grpc.StatusCode.ABORTED.value[0]
# Real-time mode sleeps once the modelled time owed reaches this much, so that
# sub-microsecond costs add up instead of vanishing in timer granularity.
PACE_QUANTUM_NS = 1_000_000
# Store batches received and being compressed ahead of the one the model applies.
STORE_READ_AHEAD = 2

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def message_limit(max_batch_pages: int) -> int:
    """gRPC message size limit for batches of `max_batch_pages` pages, with headroom."""
    return max(8 << 20, 2 * max_batch_pages * (PAGE_SIZE + 64) + (64 << 10))


def grpc_options(max_batch_pages: int) -> list[tuple[str, Any]]:
    limit = message_limit(max_batch_pages)
    return [
        # Two nodes must never share a port by accident.
        ("grpc.so_reuseport", 0),
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
    ]


def write_address_file(path: str | os.PathLike[str], address: str) -> None:
    """Write `address` atomically: a reader sees no file or the whole line."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(address + "\n")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class NodeServicer(pb_grpc.MemoryNodeServicer):
    """tiersim.v1.MemoryNode over one device model."""

    def __init__(
        self,
        device: MemoryDevice,
        *,
        health: health_aio.HealthServicer | None = None,
        realtime_dilation: float = 0.0,
        encoder: PageEncoder | None = None,
    ) -> None:
        self.device = device
        # Compresses StoreStream batches ahead of the model (nodes/_encoder.py);
        # NodeServer sets it when it starts and clears it when it stops.
        self.encoder = encoder
        self._health = health
        self._dilation = realtime_dilation
        self._debt_ns = 0.0
        self._subscribers: set[PressureSubscriber] = set()
        self._log = get_logger("tiersim.nodes.server").bind(node=device.config.name)
        self._machine_check_seen = False
        self._poisoned_unlogged = 0
        self._poison_logged_at = -1.0

    # ------------------------------------------------------------ helpers

    async def _abort(self, context: grpc.aio.ServicerContext[Any, Any], exc: NodeError) -> None:
        await self._rejected(exc)
        await context.abort(exc.code, exc.message)

    async def _rejected(self, exc: NodeError) -> None:
        self._log.debug("request rejected", code=exc.code.name, reason=exc.message)
        await self._check_health()

    async def _reject_batch(
        self,
        exc: NodeError,
        request_id: int,
        failed: dict[int, None],
        out: pb.StoreBatchResult | pb.LoadBatchResult,
    ) -> None:
        """Answer a rejected batch in its reply; the stream goes on.

        Ending the call instead would race the client's pipelined writes: a
        write that fails after the status arrives makes grpc.aio report
        INTERNAL in place of the node's status (grpc/grpc#36066).
        """
        await self._rejected(exc)
        if request_id:
            failed[request_id] = None
            if len(failed) > FAILED_REQUESTS_KEPT:
                del failed[next(iter(failed))]
        out.code = exc.code.value[0]
        out.message = exc.message
        out.state.CopyFrom(state_to_pb(self.device.state()))

    def _skip_batch(
        self,
        request_id: int,
        failed: dict[int, None],
        out: pb.StoreBatchResult | pb.LoadBatchResult,
    ) -> bool:
        """A later batch of a request one of whose batches was rejected: not applied."""
        if not request_id or request_id not in failed:
            return False
        out.code = _ABORTED
        out.message = f"not applied: an earlier batch of request {request_id} was rejected"
        out.state.CopyFrom(state_to_pb(self.device.state()))
        return True

    async def _check_health(self) -> None:
        mc = self.device.machine_check
        if mc == self._machine_check_seen:
            return
        self._machine_check_seen = mc
        if mc:
            self._log.error(
                "machine check raised: a write found no physical room; "
                "data operations refused until reset",
                physical_used_bytes=self.device.physical_used_bytes,
            )
        if self._health is not None:
            status = _NOT_SERVING if mc else _SERVING
            await self._health.set("", status)
            await self._health.set(SERVICE_NAME, status)

    async def _after(self, cost_ns: int, codes: list[int] | None = None) -> None:
        """Bookkeeping after a data operation: health, logs, real-time pacing."""
        if codes is not None and DATA_LOSS in codes:
            self._poisoned_unlogged += codes.count(DATA_LOSS)
            now = time.monotonic()
            # At most one line a second: an unsafe policy may poison pages by the thousand.
            if now - self._poison_logged_at >= 1.0:
                self._log.warning(
                    "writes found no physical room: pages poisoned",
                    pages=self._poisoned_unlogged,
                    physical_used_bytes=self.device.physical_used_bytes,
                )
                self._poisoned_unlogged, self._poison_logged_at = 0, now
        if self.device.machine_check != self._machine_check_seen:
            await self._check_health()
        if self._dilation:
            await self._pace(cost_ns)

    async def _pace(self, cost_ns: int) -> None:
        self._debt_ns += cost_ns * self._dilation
        if self._debt_ns < PACE_QUANTUM_NS:
            return
        # Take the whole debt before sleeping, so concurrent requests do not pay it twice;
        # over- or under-sleeping is carried over.
        owed, self._debt_ns = self._debt_ns, 0.0
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(owed / 1e9)
        self._debt_ns += owed - (loop.time() - start) * 1e9

    def close_watchers(self) -> None:
        for sub in list(self._subscribers):
            sub.close()

    # ------------------------------------------------------------ RPCs

    async def Describe(
        self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.NodeInfo:
        return info_to_pb(self.device.info())

    async def Allocate(
        self, request: pb.AllocateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AllocateResponse:
        try:
            r = self.device.allocate(
                request.count,
                check=request.check,
                size_hint=request.size_hint_bytes,
                now_ns=request.issue_time_ns,
            )
        except NodeError as exc:
            await self._abort(context, exc)
            raise  # unreachable: abort raises
        await self._after(r.cost_ns)
        return pb.AllocateResponse(handles=r.handles, cost_ns=r.cost_ns, state=state_to_pb(r.state))

    async def Store(
        self, request: pb.StoreRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PageResult:
        page = request.page
        try:
            r = self.device.store(
                [(page.handle, page.data)], check=request.check, now_ns=request.issue_time_ns
            )
        except NodeError as exc:
            await self._abort(context, exc)
            raise
        await self._after(r.cost_ns, r.codes)
        return page_result_to_pb(r)

    async def Load(
        self, request: pb.LoadRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PageResult:
        try:
            r = self.device.load(
                [request.handle], free_after=request.free_after, now_ns=request.issue_time_ns
            )
        except NodeError as exc:
            await self._abort(context, exc)
            raise
        await self._after(r.cost_ns)
        if r.codes[0] == DATA_LOSS:
            await context.abort(grpc.StatusCode.DATA_LOSS, r.messages[0])
        return page_result_to_pb(r)

    async def StoreStream(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[StoreWrites],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.StoreBatchResult]:
        """StoreBatch messages arrive decoded by `decode_store_batch`."""
        device = self.device
        failed: dict[int, None] = {}
        async for batch, encoded in self._store_batches(request_iterator):
            out = pb.StoreBatchResult(batch_id=batch.batch_id)
            if self._skip_batch(batch.request_id, failed, out):
                yield out
                continue
            try:
                r = device.store(
                    batch.pages, check=batch.check, now_ns=batch.issue_time_ns, encoded=encoded
                )
            except NodeError as exc:
                await self._reject_batch(exc, batch.request_id, failed, out)
                yield out
                continue
            results_to_pb(r, out)
            await self._after(r.cost_ns, r.codes)
            yield out

    async def _store_batches(
        self, request_iterator: AsyncIterator[StoreWrites]
    ) -> AsyncIterator[tuple[StoreWrites, list[Encoded | None] | None]]:
        """Batches of a StoreStream, in order, with their pages compressed ahead.

        On a compressing device, lz4 runs in the encoder (an lz4 worker
        process, see _encoder.py) while the event loop receives the next
        batches; the model call that follows stays atomic. Other devices get
        no read-ahead.
        """
        if self.encoder is None:
            async for batch in request_iterator:
                yield batch, None
            return
        loop = asyncio.get_running_loop()
        encoder = self.encoder
        ahead = asyncio.Semaphore(STORE_READ_AHEAD)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        done = object()

        async def read() -> None:
            try:
                async for batch in request_iterator:
                    encoding = encoder.encode([d for _, d in batch.pages])
                    queue.put_nowait((batch, loop.create_task(encoding)))
                    await ahead.acquire()
                queue.put_nowait(done)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                queue.put_nowait(exc)

        reader = loop.create_task(read())
        try:
            while True:
                item = await queue.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                batch, future = item
                encoded = await future
                ahead.release()
                yield batch, encoded
        finally:
            reader.cancel()
            left = [reader]
            while not queue.empty():
                item = queue.get_nowait()
                if isinstance(item, tuple):
                    item[1].cancel()
                    left.append(item[1])
            await asyncio.gather(*left, return_exceptions=True)

    async def LoadStream(
        self,
        request_iterator: AsyncIterator[pb.LoadBatch],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.LoadBatchResult]:
        device = self.device
        failed: dict[int, None] = {}
        async for batch in request_iterator:
            out = pb.LoadBatchResult(batch_id=batch.batch_id)
            if self._skip_batch(batch.request_id, failed, out):
                yield out
                continue
            try:
                r = device.load(
                    batch.handles, free_after=batch.free_after, now_ns=batch.issue_time_ns
                )
            except NodeError as exc:
                await self._reject_batch(exc, batch.request_id, failed, out)
                yield out
                continue
            results_to_pb(r, out)
            await self._after(r.cost_ns)
            yield out

    async def Free(
        self, request: pb.FreeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.FreeResponse:
        try:
            r = self.device.free(request.handles, now_ns=request.issue_time_ns)
        except NodeError as exc:
            await self._abort(context, exc)
            raise
        await self._after(r.cost_ns)
        return pb.FreeResponse(freed=r.count, cost_ns=r.cost_ns, state=state_to_pb(r.state))

    async def Zero(
        self, request: pb.ZeroRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ZeroResponse:
        try:
            r = self.device.zero(request.handles, now_ns=request.issue_time_ns)
        except NodeError as exc:
            await self._abort(context, exc)
            raise
        await self._after(r.cost_ns)
        return pb.ZeroResponse(zeroed=r.count, cost_ns=r.cost_ns, state=state_to_pb(r.state))

    async def Stats(
        self, request: pb.StatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.NodeStats:
        return stats_to_pb(self.device.stats())

    async def Reset(
        self, request: pb.ResetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ResetResponse:
        try:
            self.device.reset(request.seed)
        except NodeError as exc:
            await self._abort(context, exc)
            raise
        self._debt_ns = 0.0
        self._log.info("node reset", seed=self.device.info().seed)
        await self._check_health()
        return pb.ResetResponse()

    async def WatchPressure(
        self, request: pb.WatchPressureRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.PressureEvent]:
        sub = self.device.subscribe()
        self._subscribers.add(sub)
        try:
            while True:
                try:
                    event = await sub.get()
                except EOFError:
                    return
                yield event_to_pb(event)
        finally:
            sub.close()
            self._subscribers.discard(sub)


# ---------------------------------------------------------------- registration

_UNARY: dict[str, tuple[type[Message], type[Message]]] = {
    "Describe": (pb.DescribeRequest, pb.NodeInfo),
    "Allocate": (pb.AllocateRequest, pb.AllocateResponse),
    "Store": (pb.StoreRequest, pb.PageResult),
    "Load": (pb.LoadRequest, pb.PageResult),
    "Free": (pb.FreeRequest, pb.FreeResponse),
    "Zero": (pb.ZeroRequest, pb.ZeroResponse),
    "Stats": (pb.StatsRequest, pb.NodeStats),
    "Reset": (pb.ResetRequest, pb.ResetResponse),
}
_STREAMS = {
    "StoreStream": (pb.StoreBatch, pb.StoreBatchResult),
    "LoadStream": (pb.LoadBatch, pb.LoadBatchResult),
}


def _service_handler(servicer: NodeServicer) -> grpc.GenericRpcHandler:
    """tiersim.v1.MemoryNode with requests decoded by the servicer itself.

    The generated registration decodes in gRPC's core, where a corrupt
    message becomes UNKNOWN and a logged traceback. Decoding here answers it
    as what it is, INVALID_ARGUMENT, and counts it as a rejected request.
    """

    def decode(cls: Any, raw: bytes) -> Any:
        try:
            # StoreBatch has a decoder of its own that does not copy the pages.
            return decode_store_batch(raw) if cls is pb.StoreBatch else cls.FromString(raw)
        except DecodeError as exc:
            servicer.device.count_rejected()
            raise NodeError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"not a valid {cls.DESCRIPTOR.full_name} message: {exc}",
            ) from None

    def unary(name: str, cls: Any) -> Any:
        method = getattr(servicer, name)

        async def handler(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                request = decode(cls, raw)
            except NodeError as exc:
                await servicer._abort(context, exc)
                raise
            return await method(request, context)

        return handler

    def stream(name: str, cls: Any) -> Any:
        method = getattr(servicer, name)

        async def handler(
            raw_requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async def requests() -> AsyncIterator[Any]:
                async for raw in raw_requests:
                    yield decode(cls, raw)

            # A corrupt message surfaces here, in the handler's own task, and not in
            # a read-ahead task: aborting while a reply is being sent breaks the call.
            try:
                async for reply in method(requests(), context):
                    yield reply
            except NodeError as exc:
                await servicer._abort(context, exc)
                raise

        return handler

    async def watch(
        raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.PressureEvent]:
        try:
            request = decode(pb.WatchPressureRequest, raw)
        except NodeError as exc:
            await servicer._abort(context, exc)
            raise
        async for event in servicer.WatchPressure(request, context):
            yield event

    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        name: grpc.unary_unary_rpc_method_handler(
            unary(name, req), response_serializer=resp.SerializeToString
        )
        for name, (req, resp) in _UNARY.items()
    }
    for name, (req, resp) in _STREAMS.items():
        handlers[name] = grpc.stream_stream_rpc_method_handler(
            stream(name, req), response_serializer=resp.SerializeToString
        )
    handlers["WatchPressure"] = grpc.unary_stream_rpc_method_handler(
        watch, response_serializer=pb.PressureEvent.SerializeToString
    )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


# ---------------------------------------------------------------- metrics

_GAUGES = (
    "allocated_pages",
    "stored_pages",
    "zero_pages",
    "poisoned_pages",
    "logical_bytes",
    "stored_bytes",
    "physical_used_bytes",
    "physical_bytes",
    "advertised_bytes",
    "pressure",
    "machine_check",
)
_COUNTERS = (
    "stores",
    "loads",
    "frees",
    "zeroes",
    "alloc_refused",
    "write_failures",
    "machine_checks",
    "data_loss_reads",
    "compress_in_bytes",
    "compress_out_bytes",
    "decompress_out_bytes",
    "busy_ns",
    "queue_ns",
    "rejected_requests",
)
_HELP = {
    "allocated_pages": "Handles allocated (reserved or stored).",
    "stored_pages": "Pages holding data.",
    "zero_pages": "Stored pages that are entirely zero.",
    "poisoned_pages": "Pages poisoned by an overflowing write.",
    "logical_bytes": "Logical bytes held (stored_pages x 4096).",
    "stored_bytes": "Sum of stored (compressed, on cram) payload sizes.",
    "physical_used_bytes": "Media in use: stored bytes plus per-page overhead.",
    "physical_bytes": "Media present.",
    "advertised_bytes": "Capacity offered to the system.",
    "pressure": "Watermark pressure, 0..1000.",
    "machine_check": "1 while a machine check is raised.",
    "stores": "Pages written.",
    "loads": "Pages read.",
    "frees": "Pages freed.",
    "zeroes": "Pages zeroed in place.",
    "alloc_refused": "Checked allocations refused for lack of headroom.",
    "write_failures": "Writes that found no physical room.",
    "machine_checks": "Machine checks raised.",
    "data_loss_reads": "Loads answered DATA_LOSS.",
    "compress_in_bytes": "Bytes passed through the compressor.",
    "compress_out_bytes": "Bytes produced by the compressor.",
    "decompress_out_bytes": "Bytes produced by the decompressor.",
    "busy_ns": "Modelled device time spent, in ns.",
    "queue_ns": "Modelled time spent queueing, in ns.",
    "rejected_requests": "Requests rejected as malformed or impossible.",
}


class NodeStatsCollector(Collector):
    """Exposes NodeStats as tiersim_node_* metrics, read at scrape time.

    The scrape runs in the metrics server's thread; the snapshot is taken on
    the event loop, so it is consistent with the requests around it.
    """

    def __init__(self, device: MemoryDevice, loop: asyncio.AbstractEventLoop) -> None:
        self._device = device
        self._loop = loop

    def _snapshot(self) -> NodeStats:
        if self._loop.is_running() and threading.current_thread() is not threading.main_thread():
            future: concurrent.futures.Future[NodeStats] = concurrent.futures.Future()

            def take() -> None:
                try:
                    future.set_result(self._device.stats())
                except BaseException as exc:  # pragma: no cover - stats() does not raise
                    future.set_exception(exc)

            try:
                self._loop.call_soon_threadsafe(take)
                return future.result(timeout=5)
            except (RuntimeError, concurrent.futures.TimeoutError):
                pass  # the loop is closing or stuck: fall back to a direct read
        return self._device.stats()

    def collect(self) -> Iterable[prometheus_client.Metric]:
        stats = self._snapshot()
        labels = [stats.name]
        info = InfoMetricFamily("tiersim_node", "What this node is.", labels=["node"])
        info.add_metric(labels, {"kind": stats.kind.name.lower(), "version": __version__})
        yield info
        for name in _GAUGES:
            g = GaugeMetricFamily(f"tiersim_node_{name}", _HELP[name], labels=["node"])
            g.add_metric(labels, float(getattr(stats, name)))
            yield g
        for name in _COUNTERS:
            c = CounterMetricFamily(f"tiersim_node_{name}", _HELP[name], labels=["node"])
            c.add_metric(labels, float(getattr(stats, name)))
            yield c


# ---------------------------------------------------------------- server


class NodeServer:
    """A running memory node: gRPC server, health, reflection and metrics."""

    def __init__(
        self,
        config: NodeConfig,
        options: ServerOptions | None = None,
        *,
        device: MemoryDevice | None = None,
        security: ServerSecurity | None = None,
    ) -> None:
        self.config = config
        self.options = options or ServerOptions()
        # Token and/or TLS; none is allowed on loopback only (tiersim._security).
        self.security = security or ServerSecurity()
        self.device = device if device is not None else make_device(config)
        self.health = health_aio.HealthServicer()
        self.servicer = NodeServicer(
            self.device, health=self.health, realtime_dilation=self.options.realtime_dilation
        )
        self.registry = CollectorRegistry(auto_describe=False)
        self._server: grpc.aio.Server | None = None
        self._metrics: Any = None
        self.port = 0
        self.metrics_port: int | None = None
        self._log = get_logger("tiersim.nodes.server").bind(node=config.name)

    @property
    def address(self) -> str:
        return format_address(self.options.host, self.port)

    async def start(self) -> str:
        """Bind and start serving; return the bound address (host:port)."""
        opts = self.options
        self.security.check_bind(opts.host)
        # Compression ahead of the model (nodes/_encoder.py), ready before any
        # request; everything that may fail after it comes before the port is
        # bound, since a bound gRPC server that never started keeps its socket.
        self.servicer.encoder = await start_encoder(
            self.device, self.config.max_batch_pages, opts.compress_in
        )
        try:
            await self.health.set("", _SERVING)
            await self.health.set(SERVICE_NAME, _SERVING)
            server = grpc.aio.server(
                options=grpc_options(self.config.max_batch_pages),
                interceptors=self.security.interceptors(),
            )
            server.add_generic_rpc_handlers((_service_handler(self.servicer),))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            reflection.enable_server_reflection(
                (
                    SERVICE_NAME,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                    reflection.SERVICE_NAME,
                ),
                server,
            )
            port = await self.security.listen(server, format_address(opts.host, opts.port))
            await server.start()
        except BaseException:
            await self._close_encoder()
            raise
        self.port = port
        self._server = server
        try:
            if opts.metrics_port is not None:
                self.registry.register(NodeStatsCollector(self.device, asyncio.get_running_loop()))
                try:
                    httpd, _ = prometheus_client.start_http_server(
                        opts.metrics_port, addr=opts.host, registry=self.registry
                    )
                except OSError as exc:
                    raise ConfigError(
                        f"cannot serve metrics on {format_address(opts.host, opts.metrics_port)}: "
                        f"{exc.strerror}",
                        key="metrics_port",
                    ) from None
                self._metrics = httpd
                self.metrics_port = httpd.server_port
            self._log.info(
                "node listening",
                address=self.address,
                kind=self.config.kind.name.lower(),
                advertised_bytes=self.config.advertised_bytes,
                physical_bytes=self.config.physical_bytes,
                metrics_port=self.metrics_port,
            )
        except BaseException:
            await self.stop(None)
            raise
        return self.address

    async def stop(self, grace: float | None = 2.0) -> None:
        """Stop accepting work, let running calls finish for `grace` seconds, then close."""
        if self._server is None:
            return
        server, self._server = self._server, None
        await self.health.enter_graceful_shutdown()
        # Pressure watchers never end by themselves; end them so grace is not wasted.
        self.servicer.close_watchers()
        await server.stop(grace)
        await self._close_encoder()
        if self._metrics is not None:
            httpd, self._metrics = self._metrics, None
            await asyncio.to_thread(httpd.shutdown)
            httpd.server_close()
        self._log.info("node stopped")

    @property
    def encoder(self) -> PageEncoder | None:
        """What compresses the node's incoming batches while it serves (None: nothing)."""
        return self.servicer.encoder

    async def _close_encoder(self) -> None:
        encoder, self.servicer.encoder = self.servicer.encoder, None
        if encoder is not None:
            await encoder.aclose()

    async def __aenter__(self) -> NodeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(
    config: NodeConfig,
    options: ServerOptions | None = None,
    *,
    grace: float = 5.0,
    stop_event: asyncio.Event | None = None,
    security: ServerSecurity | None = None,
) -> int:
    """Run a node until SIGTERM or SIGINT (or `stop_event`); return the exit status 0.

    Prints `listening HOST:PORT` on stdout once serving, and writes the same
    address to `options.address_file` when set.
    """
    stop = stop_event or asyncio.Event()
    server = NodeServer(config, options, security=security)
    with stop_on_signals(stop):
        try:
            await server.start()
            print(f"listening {server.address}", flush=True)
            if server.options.address_file:
                write_address_file(server.options.address_file, server.address)
            await stop.wait()
            get_logger("tiersim.nodes.server").info("shutting down", grace_s=grace)
        finally:
            await server.stop(grace)
            sys.stdout.flush()
    return 0
