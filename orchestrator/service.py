"""The orchestrator as a gRPC service: queued runs, their events, results and agents.

`tiersim orchestrator serve` runs one asyncio event loop holding:

* `tiersim.v1.Orchestrator`: submit a scenario (file, catalog name or TOML
  text), follow it (WatchRun), fetch its results, cancel it;
* `tiersim.v1.PolicyAgent`: where policy agents connect (see `agent.py`);
* health checking and reflection.

Runs wait in a FIFO queue and run one at a time: a simulation is CPU-bound
and deterministic, so two at once only make both slower and their wall
times meaningless. A scenario that sets `exclusive = false` in [scenario]
may start while other non-exclusive runs are in progress (at most
`max_parallel`), e.g. a run that mostly waits on remote nodes or on an
agent. The queue never reorders: a run that cannot start yet holds back the
ones behind it, so a stream of small runs cannot starve a big one.

Simulations run in the server's event loop, as tasks. Each run gets a
`RunTap` that publishes its events and also yields the loop every few
milliseconds of wall time, so the server keeps answering (progress,
cancellation, health, agents) while an embedded run computes.

Everything the service keeps is bounded: the queue (`max_queued`), the
finished runs whose results it remembers (`keep_finished`, oldest dropped
first), the watchers per run and their event queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError, Message

from tiersim._errors import ConfigError
from tiersim._lifecycle import stop_on_signals
from tiersim._logging import get_logger
from tiersim._security import ServerSecurity, format_address
from tiersim.v1 import orchestrator_pb2 as opb
from tiersim.v1 import policy_pb2 as ppb

from ._grpc_server import NOT_SERVING, start_server
from .agent import RUN_CONTEXT, PolicyHub, RunContext
from .agent import SERVICE_NAME as AGENT_SERVICE
from .config import RunConfig, Scenario
from .engine import Simulation
from .events import EventHub, RunTap

SERVICE_NAME = opb.DESCRIPTOR.services_by_name["Orchestrator"].full_name
DEFAULT_PORT = 50060
MAX_SCENARIO_BYTES = 1 << 20
FINISHED = (ppb.RUN_STATE_SUCCEEDED, ppb.RUN_STATE_FAILED, ppb.RUN_STATE_CANCELLED)
# Trailing metadata of an INVALID_ARGUMENT for a bad scenario: where it is wrong.
CONFIG_FILE_KEY = "tiersim-config-file"
CONFIG_LINE_KEY = "tiersim-config-line"
CONFIG_KEY_KEY = "tiersim-config-key"

_log = get_logger("tiersim.orchestrator.service")


class ServiceError(Exception):
    """A request the service refuses, with the status to answer."""

    def __init__(
        self, code: grpc.StatusCode, message: str, metadata: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.metadata = metadata


def _config_error(exc: ConfigError) -> ServiceError:
    md = []
    if exc.file:
        md.append((CONFIG_FILE_KEY, exc.file))
    if exc.line is not None:
        md.append((CONFIG_LINE_KEY, str(exc.line)))
    if exc.key:
        md.append((CONFIG_KEY_KEY, exc.key))
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(exc), tuple(md))


@dataclass(eq=False)
class Run:
    """One submission: a scenario's variants, run in order."""

    id: str
    label: str
    scenario: Scenario
    variants: list[RunConfig]
    exclusive: bool
    events: EventHub
    state: int = ppb.RUN_STATE_QUEUED
    error: str = ""
    variant_index: int = 0
    sim_time_ns: int = 0
    submitted_ns: int = field(default_factory=time.time_ns)
    started_ns: int = 0
    finished_ns: int = 0
    docs: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    cancel_reason: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def duration_ns(self) -> int:
        return self.variants[min(self.variant_index, len(self.variants) - 1)].duration_ns

    def results_document(self) -> dict[str, Any]:
        from .results import SCHEMA

        sc = self.scenario
        return {
            "schema": SCHEMA,
            "scenario": sc.name,
            "description": sc.description,
            "question": sc.question,
            "source": sc.path,
            "runs": self.docs,
        }


class _ServiceSimulation(Simulation):
    """A Simulation that publishes its events for the service's watchers."""

    def __init__(self, config: RunConfig, run: Run, counters_interval_ns: int) -> None:
        def progress(now: int, total: int) -> None:
            run.sim_time_ns = min(now, total)
            run.events.publish(
                ppb.Event(
                    time_ns=now,
                    progress=ppb.Progress(
                        sim_time_ns=min(now, total),
                        duration_ns=total,
                        variant_index=run.variant_index,
                        variants=len(run.variants),
                    ),
                )
            )

        super().__init__(config, progress=progress)
        self.tap = RunTap(run.events, counters_interval_ns=counters_interval_ns)

    async def build(self) -> None:
        await super().build()
        self.tap.start(self.mm)

    async def run(self) -> dict[str, Any]:
        try:
            return await super().run()
        finally:
            await self.tap.stop()


class OrchestratorService:
    """Runs, their queue and their life cycle; the RPCs are thin wrappers around it."""

    def __init__(
        self,
        *,
        max_queued: int = 64,
        keep_finished: int = 32,
        max_parallel: int = 4,
        scenario_root: str | Path | None = None,
        counters_interval_ns: int = 100_000_000,
    ) -> None:
        self.max_queued = max_queued
        self.keep_finished = keep_finished
        self.max_parallel = max(1, max_parallel)
        self.scenario_root = Path(scenario_root).resolve() if scenario_root else None
        self.counters_interval_ns = counters_interval_ns
        self.runs: OrderedDict[str, Run] = OrderedDict()
        self.queue: list[Run] = []
        self.running: set[Run] = set()
        self.hub = PolicyHub(events_for=self.events_for)
        self._seq = itertools.count(1)
        self._prefix = secrets.token_hex(2)
        self._closing = False

    # -- submissions ---------------------------------------------------------------

    def _load(self, request: opb.SubmitRunRequest) -> Scenario:
        from .scenario import load_scenario, loads_scenario, parse_override

        overrides: dict[str, object] = {}
        for item in request.set:
            try:
                key, value = parse_override(item)
            except ConfigError as exc:
                raise _config_error(exc) from None
            overrides[key] = value
        which = request.WhichOneof("scenario")
        try:
            if which == "toml":
                if len(request.toml.encode()) > MAX_SCENARIO_BYTES:
                    raise ServiceError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"scenario text is larger than {MAX_SCENARIO_BYTES} bytes",
                    )
                source = f"<{request.label}>" if request.label else "<submitted scenario>"
                return loads_scenario(request.toml, source=source, overrides=overrides)
            if which == "path":
                return load_scenario(self._resolve_path(request.path), overrides)
        except ConfigError as exc:
            raise _config_error(exc) from None
        raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "give a scenario: path or toml")

    def _resolve_path(self, name: str) -> Path:
        from ._cli import catalog

        if not name.strip():
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "empty scenario path")
        path = Path(name)
        if self.scenario_root is not None:
            path = (self.scenario_root / path).resolve()
            if not path.is_relative_to(self.scenario_root):
                cat = catalog()
                if name in cat and "/" not in name:
                    return cat[name]
                raise ServiceError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{name!r} is outside the scenario root of this orchestrator",
                )
        if path.is_file():
            return path
        cat = catalog()
        if name in cat:
            return cat[name]
        raise ServiceError(
            grpc.StatusCode.NOT_FOUND,
            f"no scenario file {name!r} on the orchestrator's host and no catalog entry of "
            f"that name (catalog: {', '.join(cat)})",
        )

    def submit(self, request: opb.SubmitRunRequest) -> Run:
        if self._closing:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "the orchestrator is shutting down")
        if len(request.label) > 256:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT, "label is longer than 256 characters"
            )
        if len(self.queue) >= self.max_queued:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the queue is full ({self.max_queued} runs waiting); try again later",
            )
        scenario = self._load(request)
        variants = list(scenario.variants)
        if request.variant:
            variants = [
                v
                for v in variants
                if v.name == request.variant or v.name.endswith(f" / {request.variant}")
            ]
            if not variants:
                names = ", ".join(v.name for v in scenario.variants)
                raise ServiceError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"no variant {request.variant!r} in scenario {scenario.name!r} ({names})",
                )
        run_id = f"run-{self._prefix}-{next(self._seq)}"
        run = Run(
            id=run_id,
            label=request.label,
            scenario=scenario,
            variants=variants,
            exclusive=any(v.exclusive for v in variants),
            events=EventHub(run_id),
        )
        self.runs[run_id] = run
        self.queue.append(run)
        self._publish_state(run)
        _log.info(
            "run queued",
            run_id=run_id,
            scenario=scenario.name,
            variants=len(variants),
            exclusive=run.exclusive,
            label=run.label or None,
        )
        self._schedule()
        return run

    # -- the queue -------------------------------------------------------------------

    def _can_start(self, run: Run) -> bool:
        if not self.running:
            return True
        if run.exclusive or any(r.exclusive for r in self.running):
            return False
        return len(self.running) < self.max_parallel

    def _schedule(self) -> None:
        while self.queue and not self._closing and self._can_start(self.queue[0]):
            run = self.queue.pop(0)
            self.running.add(run)
            run.state = ppb.RUN_STATE_RUNNING
            run.started_ns = time.time_ns()
            run.task = asyncio.get_running_loop().create_task(self._execute(run), name=run.id)

    async def _execute(self, run: Run) -> None:
        self._publish_state(run)
        _log.info("run started", run_id=run.id, scenario=run.scenario.name)
        try:
            for i, cfg in enumerate(run.variants):
                run.variant_index = i
                run.sim_time_ns = 0
                run.events.new_variant(cfg.name)
                RUN_CONTEXT.set(RunContext(self.hub, run.id, run.scenario.name))
                sim = _ServiceSimulation(cfg, run, self.counters_interval_ns)
                run.docs.append(await sim.run())
            run.state = ppb.RUN_STATE_SUCCEEDED
        except asyncio.CancelledError:
            run.state = ppb.RUN_STATE_CANCELLED
            run.error = run.cancel_reason or "cancelled"
        except ConfigError as exc:
            run.state = ppb.RUN_STATE_FAILED
            run.error = str(exc)
        except Exception as exc:
            _log.exception("run failed", run_id=run.id)
            run.state = ppb.RUN_STATE_FAILED
            run.error = f"{type(exc).__name__}: {exc}"
        finally:
            run.finished_ns = time.time_ns()
            self.running.discard(run)
            self._finish(run)

    def _finish(self, run: Run) -> None:
        self._publish_state(run)
        run.events.close()
        _log.info(
            "run finished",
            run_id=run.id,
            state=ppb.RunState.Name(run.state),
            error=run.error or None,
        )
        self._trim()
        if not self._closing:
            self._schedule()

    def _trim(self) -> None:
        finished = [r for r in self.runs.values() if r.finished]
        for run in finished[: max(0, len(finished) - self.keep_finished)]:
            del self.runs[run.id]

    def _publish_state(self, run: Run) -> None:
        run.events.publish(
            ppb.Event(
                time_ns=run.sim_time_ns,
                run_state=ppb.RunStateChange(state=run.state, error=run.error),
            )
        )

    # -- lookups and control -----------------------------------------------------------

    def get(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, f"no run {run_id!r}")
        return run

    def events_for(self, run_id: str) -> EventHub | None:
        if run_id:
            run = self.runs.get(run_id)
            return run.events if run is not None and not run.events.closed else None
        for run in [*self.running, *self.queue]:
            return run.events
        return None

    async def cancel(self, run_id: str, reason: str = "cancelled by request") -> Run:
        run = self.get(run_id)
        if run.finished:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"run {run_id} already finished ({ppb.RunState.Name(run.state)})",
            )
        if run in self.queue:
            self.queue.remove(run)
            run.state = ppb.RUN_STATE_CANCELLED
            run.error = reason
            run.finished_ns = time.time_ns()
            self._finish(run)
            return run
        run.cancel_reason = reason
        if run.task is not None:
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(run.task), 10.0)
        return run

    def status(self, run: Run) -> opb.RunStatus:
        position = self.queue.index(run) if run in self.queue else 0
        return opb.RunStatus(
            run_id=run.id,
            state=run.state,
            scenario=run.scenario.name,
            label=run.label,
            variants=[v.name for v in run.variants],
            variant_index=run.variant_index,
            sim_time_ns=run.sim_time_ns,
            duration_ns=run.duration_ns,
            error=run.error,
            queue_position=position,
            exclusive=run.exclusive,
            submitted_unix_ns=run.submitted_ns,
            started_unix_ns=run.started_ns,
            finished_unix_ns=run.finished_ns,
        )

    async def shutdown(self) -> None:
        """Cancel what is queued and running; end agent streams."""
        self._closing = True
        for run in list(self.queue):
            with contextlib.suppress(ServiceError):
                await self.cancel(run.id, "orchestrator shutting down")
        for run in list(self.running):
            with contextlib.suppress(ServiceError):
                await self.cancel(run.id, "orchestrator shutting down")
        self.hub.close_all("orchestrator shutting down")

    # -- RPCs --------------------------------------------------------------------------

    async def SubmitRun(self, request: opb.SubmitRunRequest) -> opb.RunStatus:
        return self.status(self.submit(request))

    async def GetRun(self, request: opb.GetRunRequest) -> opb.RunStatus:
        return self.status(self.get(request.run_id))

    async def ListRuns(self, request: opb.ListRunsRequest) -> opb.ListRunsResponse:
        return opb.ListRunsResponse(runs=[self.status(r) for r in self.runs.values()])

    async def GetResults(self, request: opb.GetResultsRequest) -> opb.RunResults:
        import json

        run = self.get(request.run_id)
        if not run.finished:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"run {run.id} has not finished ({ppb.RunState.Name(run.state)})",
            )
        return opb.RunResults(
            run_id=run.id,
            state=run.state,
            results_json=json.dumps(run.results_document()),
        )

    async def CancelRun(self, request: opb.CancelRunRequest) -> opb.RunStatus:
        return self.status(await self.cancel(request.run_id))

    async def WatchRun(self, request: opb.WatchRunRequest) -> AsyncIterator[ppb.Event]:
        run = self.get(request.run_id)
        try:
            sub = run.events.subscribe(request.kinds)
        except OverflowError as exc:
            raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        async for event in sub:
            yield event

    def handler(self) -> grpc.GenericRpcHandler:
        """tiersim.v1.Orchestrator, decoding requests itself (garbage is INVALID_ARGUMENT)."""

        async def decode(cls: Any, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                return cls.FromString(raw)
            except DecodeError as exc:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"not a valid {cls.DESCRIPTOR.full_name} message: {exc}",
                )

        async def fail(context: grpc.aio.ServicerContext[Any, Any], exc: ServiceError) -> None:
            await context.abort(exc.code, exc.message, trailing_metadata=exc.metadata)

        def unary(
            cls: Any, method: Callable[[Any], Awaitable[Message]]
        ) -> grpc.RpcMethodHandler[Any, Any]:
            async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
                request = await decode(cls, raw, context)
                try:
                    return await method(request)
                except ServiceError as exc:
                    await fail(context, exc)
                    raise  # unreachable: abort raises

            return grpc.unary_unary_rpc_method_handler(
                handle, response_serializer=lambda m: m.SerializeToString()
            )

        async def watch(
            raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[ppb.Event]:
            request = await decode(opb.WatchRunRequest, raw, context)
            try:
                async for event in self.WatchRun(request):
                    yield event
            except ServiceError as exc:
                await fail(context, exc)

        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "SubmitRun": unary(opb.SubmitRunRequest, self.SubmitRun),
                "GetRun": unary(opb.GetRunRequest, self.GetRun),
                "ListRuns": unary(opb.ListRunsRequest, self.ListRuns),
                "GetResults": unary(opb.GetResultsRequest, self.GetResults),
                "CancelRun": unary(opb.CancelRunRequest, self.CancelRun),
                "WatchRun": grpc.unary_stream_rpc_method_handler(
                    watch, response_serializer=ppb.Event.SerializeToString
                ),
            },
        )


class OrchestratorServer:
    """A running orchestrator service: gRPC server, the service, agents, health, reflection."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        security: ServerSecurity | None = None,
        **service_options: Any,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.security = security or ServerSecurity()
        self.service = OrchestratorService(**service_options)
        self._server: grpc.aio.Server | None = None
        self._health: Any = None
        self.port = 0

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    async def start(self) -> str:
        server, health, port = await start_server(
            format_address(self.host, self.requested_port),
            self.security,
            [self.service.handler(), self.service.hub.handler()],
            [SERVICE_NAME, AGENT_SERVICE],
        )
        self._server, self._health, self.port = server, health, port
        _log.info("orchestrator listening", address=self.address, security=self.security.describe())
        return self.address

    async def stop(self, grace: float = 2.0) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        with contextlib.suppress(Exception):
            await self._health.set("", NOT_SERVING)
        await self.service.shutdown()
        await asyncio.sleep(0)
        await server.stop(grace)
        _log.info("orchestrator stopped")

    async def __aenter__(self) -> OrchestratorServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(
    server: OrchestratorServer,
    *,
    address_file: str | None = None,
    grace: float = 5.0,
    stop_event: asyncio.Event | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT (or `stop_event`); prints `listening HOST:PORT` once up."""
    await server.start()
    print(f"listening {server.address}", flush=True)
    if address_file:
        from tiersim.nodes._server import write_address_file

        write_address_file(address_file, server.address)
    stop = stop_event or asyncio.Event()
    with stop_on_signals(stop):
        try:
            await stop.wait()
            _log.info("shutting down", grace_s=grace)
        finally:
            await server.stop(grace)
            sys.stdout.flush()
    return 0
