"""External placement policies: the orchestrator's side of the policy stream.

A policy agent is a gRPC client (any language) that opens one
bidirectional stream, `tiersim.v1.PolicyAgent/Connect`, registers for the
decision kinds it wants, and answers `DecisionRequest`s (see
`protos/tiersim/v1/policy.proto` for the protocol itself).

Three pieces live here:

* `AgentSession`: one Connect stream. It reads the agent's messages as
  they come, hands each reply to the request it answers, and deals with
  everything else (late, duplicate and unsolicited replies, garbage,
  floods) without ever queueing more than a fixed amount.
* `PolicyHub`: the PolicyAgent servicer. Agents wait in it until a run
  claims one; a run gives its agent back when it ends, so one connection
  can serve many runs.
* `AgentPolicy`: the `Policy` the engine calls (`[policy] name = "agent"`).
  Each decision first gets the built-in policy's answer (the fallback,
  `kernel` unless the options say otherwise); for the kinds the agent
  registered, it then asks the agent with a deadline in real and in
  simulated time and applies the reply only if it is on time and makes
  sense. Otherwise the built-in answer stands, and the reason is counted
  (`fallback_timeout`, `fallback_disconnect`, `fallback_invalid`).

Why this shape. The engine awaits each policy call in order and does
nothing else meanwhile, so at most one request per run is ever out:
matching replies needs no more than a dict of one entry, and the run stays
a pure function of the agent's answers -- whatever the network does, only
*whether* an answer was applied can vary, and that is counted. The real-time
deadline bounds how long a hung agent can stall a run; after `max_missed`
misses in a row the agent is dropped so a dead agent cannot make a run take
`decisions x deadline`. The simulated deadline lets an agent model its own
thinking time deterministically (`answered_at_ns`).

Inside `tiersim orchestrator serve`, the service passes its hub and the
run's event hub through `RUN_CONTEXT`. Under a plain `tiersim run` the
policy starts its own listener (`listen`, default an ephemeral loopback
port; `address_file` tells scripts where it is).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import os
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from tiersim import __version__
from tiersim._errors import ConfigError
from tiersim._logging import get_logger
from tiersim._security import ServerSecurity
from tiersim._units import parse_duration_ns
from tiersim.v1 import policy_pb2 as ppb

from ._pages import F_ACTIVE, F_REFERENCED, F_YOUNG
from .events import EventHub, RunTap
from .policy import PAGE_SIZE, Policy, make_policy

if TYPE_CHECKING:
    from ._mm import Host, Mm

SERVICE_NAME = ppb.DESCRIPTOR.services_by_name["PolicyAgent"].full_name

KIND_NAMES = {
    ppb.DECISION_KIND_DEMOTION: "demotion",
    ppb.DECISION_KIND_PROMOTION: "promotion",
    ppb.DECISION_KIND_ADMISSION: "admission",
    ppb.DECISION_KIND_ZSWAP_STORE: "zswap_store",
    ppb.DECISION_KIND_ZSWAP_WRITEBACK: "zswap_writeback",
}
# Agents connected to one hub at most (waiting or serving).
MAX_SESSIONS = 64
# A connection must register within this many seconds.
REGISTER_TIMEOUT_S = 10.0
MAX_AGENT_NAME = 128
# Unsolicited messages (duplicates, replies to requests never sent, empty
# messages) an agent may send in a burst, and refilled per second; beyond,
# the stream is closed with RESOURCE_EXHAUSTED.
FLOOD_BURST = 256
FLOOD_RATE_PER_S = 64.0
# Rejection notices being written to one agent at once; more are dropped.
MAX_NOTICES_IN_FLIGHT = 16
# Request ids remembered after their deadline passed (to tell late from unknown).
EXPIRED_MEMORY = 4096
# While no agent is attached, yield the event loop this often (wall-clock seconds).
YIELD_WITHOUT_AGENT_S = 0.005

_log = get_logger("tiersim.policy.agent")


class AgentGone(Exception):
    """The agent's stream ended while a request was out."""


@dataclass
class RunContext:
    """What the orchestrator service gives the policy of a run it starts."""

    hub: PolicyHub
    run_id: str
    # The scenario's name (a RunConfig knows only its variant's).
    scenario: str = ""


# Set by the service for the task that runs a simulation; unset under `tiersim run`.
RUN_CONTEXT: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "tiersim_run_context", default=None
)


def _duration_ns(value: object, option: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool):
        raise ValueError(f"policy option {option}: expected a duration, got {value!r}")
    if isinstance(value, int):
        ns = value
    elif isinstance(value, str):
        try:
            ns = parse_duration_ns(value)
        except (ValueError, ConfigError) as exc:
            raise ValueError(f"policy option {option}: {exc}") from None
    else:
        raise ValueError(f'policy option {option}: expected a duration like "250ms", got {value!r}')
    if ns < 0 or (ns == 0 and not allow_zero):
        raise ValueError(f"policy option {option} must be positive, got {value!r}")
    return ns


# ---------------------------------------------------------------- one stream


class _Bucket:
    """Token bucket: how many unsolicited messages an agent may still send."""

    def __init__(self, burst: int, rate: float) -> None:
        self.burst = float(burst)
        self.rate = rate
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class AgentSession:
    """One agent's Connect stream, from registration to its end."""

    def __init__(
        self,
        hub: PolicyHub,
        context: grpc.aio.ServicerContext[Any, Any],
        register: ppb.Register,
        session_id: str,
    ) -> None:
        self.hub = hub
        self.context = context
        self.id = session_id
        self.name = register.agent
        self.run_id = register.run_id
        self.kinds = frozenset(register.decisions)
        self.peer = context.peer()
        self.closed = False
        self.close_reason = ""
        # The one request in flight (at most one per run; a dict keeps it general).
        self.pending: dict[int, asyncio.Future[ppb.DecisionReply]] = {}
        self._ids = itertools.count(1)
        self.last_sent = 0
        self._expired: OrderedDict[int, None] = OrderedDict()
        self._write_lock = asyncio.Lock()
        self._notices: set[asyncio.Task[None]] = set()
        self._bucket = _Bucket(FLOOD_BURST, FLOOD_RATE_PER_S)
        self._kick: asyncio.Future[tuple[grpc.StatusCode, str] | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.policy: AgentPolicy | None = None
        self.log = _log.bind(session=session_id, agent=self.name, peer=self.peer)

    # -- writing -------------------------------------------------------------

    def next_id(self) -> int:
        rid = next(self._ids)
        self.last_sent = rid
        return rid

    async def write(self, data: bytes) -> None:
        """Send one serialised OrchestratorMessage; AgentGone if the stream is over."""
        if self.closed:
            raise AgentGone(self.close_reason)
        try:
            async with self._write_lock:
                await self.context.write(data)
        except Exception as exc:  # the stream is over, whichever way gRPC reports it
            self.close(f"write failed: {type(exc).__name__}")
            raise AgentGone(self.close_reason) from None

    def expire(self, rid: int) -> None:
        """The request's deadline passed: a reply to it is late, not unknown."""
        self._expired[rid] = None
        while len(self._expired) > EXPIRED_MEMORY:
            self._expired.popitem(last=False)

    def notice(self, rid: int, problem: int, detail: str) -> None:
        """Tell the agent a reply was not applied (bounded; extra notices are dropped)."""
        if self.closed:
            return
        if len(self._notices) >= MAX_NOTICES_IN_FLIGHT:
            if self.policy is not None:
                self.policy.counters["notices_dropped"] += 1
            return
        data = ppb.OrchestratorMessage(
            rejected=ppb.ReplyRejected(request_id=rid, problem=problem, detail=detail)
        ).SerializeToString()

        async def send() -> None:
            with contextlib.suppress(AgentGone):
                await self.write(data)

        task = asyncio.get_running_loop().create_task(send())
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    # -- ending --------------------------------------------------------------

    def kick(self, code: grpc.StatusCode | None, message: str) -> None:
        """End the stream from the orchestrator's side (None: a normal end, status OK)."""
        if not self._kick.done():
            self._kick.set_result(None if code is None else (code, message))

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(AgentGone(reason))
        self.kick(None, reason)
        self.hub._forget(self)

    # -- reading -------------------------------------------------------------

    async def serve(self) -> tuple[grpc.StatusCode, str] | None:
        """Read until the agent ends the stream, breaks the protocol or is kicked."""
        reader = asyncio.get_running_loop().create_task(self._read())
        try:
            done, _ = await asyncio.wait({reader, self._kick}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                return reader.result()
            return self._kick.result()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(self) -> tuple[grpc.StatusCode, str] | None:
        while True:
            raw = await self.context.read()
            if raw is grpc.aio.EOF:
                return None
            try:
                msg = ppb.AgentMessage.FromString(raw)
            except DecodeError as exc:
                return (
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"not a valid tiersim.v1.AgentMessage: {exc}",
                )
            body = msg.WhichOneof("body")
            if body == "reply":
                outcome = self._on_reply(msg.reply)
                if outcome is not None:
                    return outcome
            elif body == "register":
                return grpc.StatusCode.FAILED_PRECONDITION, "already registered on this stream"
            else:
                self._count("unsolicited_messages")
                if not self._bucket.take():
                    return self._flooded()

    def _on_reply(self, reply: ppb.DecisionReply) -> tuple[grpc.StatusCode, str] | None:
        rid = reply.request_id
        fut = self.pending.get(rid)
        if fut is not None and not fut.done():
            fut.set_result(reply)
            return None
        if rid in self._expired:
            del self._expired[rid]
            self._count("late_answers")
            self.notice(
                rid,
                ppb.ReplyRejected.PROBLEM_LATE,
                "arrived after the real-time deadline; the built-in answer was applied",
            )
            return None
        if 0 < rid <= self.last_sent:
            self._count("duplicate_answers")
            self.notice(
                rid, ppb.ReplyRejected.PROBLEM_DUPLICATE_REPLY, "this request was already answered"
            )
        else:
            self._count("unsolicited_answers")
            self.notice(
                rid,
                ppb.ReplyRejected.PROBLEM_UNKNOWN_REQUEST,
                "no request with this id was sent on this stream",
            )
        if not self._bucket.take():
            return self._flooded()
        return None

    def _flooded(self) -> tuple[grpc.StatusCode, str]:
        self._count("agents_flooding")
        return (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"too many unsolicited messages (more than {FLOOD_BURST} in a burst)",
        )

    def _count(self, name: str) -> None:
        if self.policy is not None:
            self.policy.counters[name] += 1


# ---------------------------------------------------------------- the hub


class PolicyHub:
    """tiersim.v1.PolicyAgent: where agents connect and wait for runs to claim them."""

    def __init__(
        self,
        *,
        events_for: Callable[[str], EventHub | None] | None = None,
        max_sessions: int = MAX_SESSIONS,
        register_timeout_s: float = REGISTER_TIMEOUT_S,
    ) -> None:
        self._events_for = events_for or (lambda run_id: None)
        self.max_sessions = max_sessions
        self.register_timeout_s = register_timeout_s
        self.sessions: dict[str, AgentSession] = {}
        self._waiting: deque[AgentSession] = deque()
        self._claimers: list[asyncio.Future[None]] = []
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(3)

    # -- claiming --------------------------------------------------------------

    def try_claim(self, agent: str, run_id: str) -> AgentSession | None:
        """A waiting session for this run, if one is there; it leaves the waiting list."""
        for session in self._waiting:
            if session.closed:
                continue
            if agent and session.name != agent:
                continue
            if session.run_id and session.run_id != run_id:
                continue
            self._waiting.remove(session)
            return session
        return None

    @property
    def has_waiting(self) -> bool:
        return bool(self._waiting)

    async def claim(self, agent: str, run_id: str, timeout_s: float) -> AgentSession | None:
        """Wait up to `timeout_s` seconds for a matching agent to be available."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            session = self.try_claim(agent, run_id)
            if session is not None:
                return session
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            fut: asyncio.Future[None] = loop.create_future()
            self._claimers.append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                pass
            finally:
                with contextlib.suppress(ValueError):
                    self._claimers.remove(fut)

    def release(self, session: AgentSession) -> None:
        """A run is done with the agent: it waits for the next one."""
        session.policy = None
        if not session.closed and session not in self._waiting:
            self._waiting.append(session)
            self._wake()

    def _wake(self) -> None:
        for fut in self._claimers:
            if not fut.done():
                fut.set_result(None)

    def _forget(self, session: AgentSession) -> None:
        self.sessions.pop(session.id, None)
        with contextlib.suppress(ValueError):
            self._waiting.remove(session)

    def close_all(self, reason: str) -> None:
        """End every agent stream normally (the server is going away)."""
        for session in list(self.sessions.values()):
            session.kick(None, reason)

    # -- RPCs ------------------------------------------------------------------

    async def connect(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if len(self.sessions) >= self.max_sessions:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.max_sessions} policy agents are connected already",
            )
        try:
            raw = await asyncio.wait_for(context.read(), self.register_timeout_s)
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no Register message within {self.register_timeout_s:g} s",
            )
        if raw is grpc.aio.EOF:
            return
        try:
            msg = ppb.AgentMessage.FromString(raw)
        except DecodeError as exc:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"not a valid tiersim.v1.AgentMessage: {exc}"
            )
        if msg.WhichOneof("body") != "register":
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "the first message must be a Register"
            )
        problem = _register_problem(msg.register)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        session = AgentSession(self, context, msg.register, f"{self._prefix}-{next(self._ids)}")
        self.sessions[session.id] = session
        outcome: tuple[grpc.StatusCode, str] | None = None
        try:
            registered = ppb.OrchestratorMessage(
                registered=ppb.Registered(
                    session_id=session.id, decisions=sorted(session.kinds), version=__version__
                )
            )
            await session.write(registered.SerializeToString())
            session.log.info(
                "policy agent registered",
                decisions=[KIND_NAMES[k] for k in sorted(session.kinds)],
                run_id=session.run_id or None,
            )
            self._waiting.append(session)
            self._wake()
            outcome = await session.serve()
        except AgentGone:
            pass
        finally:
            reason = "stream ended" if outcome is None else f"{outcome[0].name}: {outcome[1]}"
            if session.policy is not None:
                session.policy.session_lost(session, reason)
            session.close(reason)
            if outcome is None:
                session.log.info("policy agent disconnected")
            else:
                session.log.warning(
                    "policy agent stream closed", code=outcome[0].name, reason=outcome[1]
                )
        if outcome is not None:
            await context.abort(outcome[0], outcome[1])

    async def subscribe(
        self, request: ppb.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[ppb.Event]:
        hub = self._events_for(request.run_id)
        if hub is None:
            what = f"run {request.run_id!r}" if request.run_id else "a run in progress"
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no {what} to subscribe to")
        assert hub is not None
        try:
            sub = hub.subscribe(request.kinds)
        except OverflowError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        async for event in sub:
            yield event

    def handler(self) -> grpc.GenericRpcHandler:
        """The PolicyAgent service, decoding requests itself.

        Connect reads raw bytes so that an undecodable message is answered
        INVALID_ARGUMENT (the generated registration would turn it into
        UNKNOWN with a traceback in the log).
        """

        async def connect(
            request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> None:
            await self.connect(context)

        async def subscribe(
            raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[ppb.Event]:
            try:
                request = ppb.SubscribeRequest.FromString(raw)
            except DecodeError as exc:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"not a valid tiersim.v1.SubscribeRequest: {exc}",
                )
            async for event in self.subscribe(request, context):
                yield event

        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Connect": grpc.stream_stream_rpc_method_handler(connect),
                "Subscribe": grpc.unary_stream_rpc_method_handler(
                    subscribe, response_serializer=ppb.Event.SerializeToString
                ),
            },
        )


def _register_problem(reg: ppb.Register) -> str | None:
    if len(reg.agent) > MAX_AGENT_NAME or not reg.agent.isprintable():
        return f"agent name must be printable and at most {MAX_AGENT_NAME} characters"
    if not reg.decisions:
        return "register at least one decision kind"
    bad = [k for k in reg.decisions if k not in KIND_NAMES]
    if bad:
        return f"unknown decision kind(s) {bad}; known: " + ", ".join(
            f"{k} ({ppb.DecisionKind.Name(k)})" for k in KIND_NAMES
        )
    if len(reg.run_id) > 128:
        return "run_id is too long"
    return None


# ---------------------------------------------------------------- the policy


_COUNTERS = (
    "requests",
    "decisions",
    "verdicts",
    "overridden",
    "abstained",
    "builtin",
    "fallback_timeout",
    "fallback_disconnect",
    "fallback_invalid",
    "late_answers",
    "sim_deadline_missed",
    "duplicate_answers",
    "unsolicited_answers",
    "unsolicited_messages",
    "agents_flooding",
    "notices_dropped",
    "agents_dropped",
    "sessions",
)


class AgentPolicy(Policy):
    """Decisions taken by an external agent, with the built-in policy as the safety net.

    Options (`[policy] options = {...}`):

    - agent: name of the agent to wait for ("" = the first that registers)
    - fallback, fallback_options: the built-in policy applied when the agent
      abstains, is late, gone or wrong (default "kernel")
    - deadline: real-time budget of one request (default "250ms")
    - sim_budget: simulated-time budget of one request (default "1ms")
    - connect_timeout: how long the run waits for an agent at start ("30s")
    - max_missed: deadlines missed in a row before the agent is dropped (8;
      0 never drops)
    - access_counts: count per-page accesses for PageInfo.accesses (true)
    - counters_interval: simulated time between counter events ("100ms")
    - listen, address_file, token_file, token_env, tls_cert, tls_key,
      tls_client_ca: the stand-alone listener of a `tiersim run` (ignored
      inside the orchestrator service, which has its own)
    """

    name = "agent"

    def __init__(
        self,
        agent: str = "",
        fallback: str = "kernel",
        fallback_options: dict[str, Any] | None = None,
        deadline: str | int = "250ms",
        sim_budget: str | int = "1ms",
        connect_timeout: str | int = "30s",
        max_missed: int = 8,
        access_counts: bool = True,
        counters_interval: str | int = "100ms",
        listen: str = "127.0.0.1:0",
        address_file: str | None = None,
        token_file: str | None = None,
        token_env: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_client_ca: str | None = None,
    ) -> None:
        if not isinstance(agent, str):
            raise ValueError(f"policy option agent: expected a name, got {agent!r}")
        if fallback == "agent":
            raise ValueError("policy option fallback: must be a built-in policy, not 'agent'")
        self.agent = agent
        self.fallback: Policy = make_policy(fallback, dict(fallback_options or {}))
        self.deadline_ns = _duration_ns(deadline, "deadline")
        self.deadline_s = self.deadline_ns / 1e9
        # The wire field is 32-bit: over an hour and 11 minutes reads as "that long or more".
        self._budget_us = min(self.deadline_ns // 1000, 0xFFFFFFFF)
        self.sim_budget_ns = _duration_ns(sim_budget, "sim_budget")
        self.connect_timeout_s = _duration_ns(connect_timeout, "connect_timeout") / 1e9
        self.counters_interval_ns = _duration_ns(
            counters_interval, "counters_interval", allow_zero=True
        )
        if not isinstance(max_missed, int) or isinstance(max_missed, bool) or max_missed < 0:
            raise ValueError(f"policy option max_missed: expected a count >= 0, got {max_missed!r}")
        self.max_missed = max_missed
        self.wants_access_counts = bool(access_counts) or self.fallback.wants_access_counts
        self._listen = listen
        self._address_file = address_file
        self._security_options = {
            "token_file": token_file,
            "token_env": token_env,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
            "tls_client_ca": tls_client_ca,
        }
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self.by_kind: dict[str, dict[str, int]] = {
            name: {"requests": 0, "decisions": 0, "overridden": 0} for name in KIND_NAMES.values()
        }
        self._mm: Mm | None = None
        self._hub: PolicyHub | None = None
        self._run_id = ""
        self._session: AgentSession | None = None
        self._kinds: frozenset[int] = frozenset()
        self._missed_in_row = 0
        self._wait_ns = 0
        self._last_yield = 0.0
        self._scenario = ""
        self._own_server: grpc.aio.Server | None = None
        self._own_tap: RunTap | None = None
        self._own_events: EventHub | None = None
        self.address = ""

    # -- life cycle -----------------------------------------------------------------

    async def start(self, mm: Mm) -> None:
        self._mm = mm
        await self.fallback.start(mm)
        ctx = RUN_CONTEXT.get()
        if ctx is not None:
            self._hub, self._run_id = ctx.hub, ctx.run_id
            self._scenario = ctx.scenario
        else:
            await self._start_own_listener(mm)
        assert self._hub is not None
        _log.info(
            "waiting for a policy agent",
            agent=self.agent or "(any)",
            run_id=self._run_id,
            address=self.address or None,
            timeout_s=self.connect_timeout_s,
        )
        session = await self._hub.claim(self.agent, self._run_id, self.connect_timeout_s)
        if session is None:
            who = f"named {self.agent!r} " if self.agent else ""
            raise ConfigError(
                f"no policy agent {who}connected within {self.connect_timeout_s:g} s"
                + (f" (agents connect to {self.address})" if self.address else ""),
                key="policy.options.connect_timeout",
            )
        await self._attach(session)

    async def _start_own_listener(self, mm: Mm) -> None:
        from tiersim._security import format_address

        from ._grpc_server import start_server

        security = ServerSecurity.from_files(**self._security_options, key_prefix="policy.options.")
        self._run_id = f"run-{secrets.token_hex(4)}"
        events = EventHub(self._run_id)
        events.new_variant(mm.config.name)
        self._own_events = events
        self._hub = PolicyHub(
            events_for=lambda run_id: events if run_id in ("", events.run_id) else None
        )
        server, _, port = await start_server(
            self._listen, security, [self._hub.handler()], [SERVICE_NAME]
        )
        self._own_server = server
        host = self._listen.rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
        self.address = format_address(host, port)
        if self._address_file:
            _write_atomic(self._address_file, self.address + "\n")
        tap = RunTap(events, counters_interval_ns=self.counters_interval_ns)
        tap.start(mm)
        self._own_tap = tap

    async def _attach(self, session: AgentSession) -> None:
        mm = self._mm
        assert mm is not None
        self._session = session
        session.policy = self
        self._kinds = session.kinds
        self._missed_in_row = 0
        self.counters["sessions"] += 1
        msg = ppb.OrchestratorMessage(attached=self._describe_run(mm, session))
        session.log.info("policy agent attached", run_id=self._run_id)
        try:
            await asyncio.wait_for(session.write(msg.SerializeToString()), self.deadline_s)
        except (AgentGone, TimeoutError):
            self.session_lost(session, "could not send the run's description")

    async def _current_session(self) -> AgentSession | None:
        """The agent to ask: the attached one, or after a disconnect one newly waiting."""
        session = self._session
        if session is not None and not session.closed:
            return session
        hub = self._hub
        if hub is None:
            return None
        if not hub.has_waiting:
            # Without an agent to wait for, an embedded run never yields the event loop, and
            # an agent reconnecting could not even register: let the loop turn now and then.
            now = time.perf_counter()
            if now - self._last_yield >= YIELD_WITHOUT_AGENT_S:
                self._last_yield = now
                for _ in range(3):
                    await asyncio.sleep(0)
            if not hub.has_waiting:
                return None
        session = hub.try_claim(self.agent, self._run_id)
        if session is None:
            return None
        session.log.info("policy agent attached mid-run", run_id=self._run_id)
        await self._attach(session)
        return self._session

    def session_lost(self, session: AgentSession, reason: str) -> None:
        if self._session is session:
            self._session = None
            _log.warning(
                "policy agent lost; built-in answers apply", run_id=self._run_id, reason=reason
            )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed and self._hub is not None:
            detached = ppb.OrchestratorMessage(
                detached=ppb.RunDetached(run_id=self._run_id, reason=self._end_reason())
            )
            with contextlib.suppress(AgentGone, TimeoutError):
                await asyncio.wait_for(session.write(detached.SerializeToString()), 1.0)
            self._hub.release(session)
        await self.fallback.close()
        if self._own_tap is not None:
            await self._own_tap.stop()
        if self._own_events is not None:
            self._own_events.close()
        if self._own_server is not None:
            assert self._hub is not None
            self._hub.close_all("run finished")
            await asyncio.sleep(0)
            await self._own_server.stop(0.5)
            self._own_server = None

    def _end_reason(self) -> str:
        mm = self._mm
        if mm is not None and mm.stopped:
            return f"stopped: {mm.stopped}"
        return "completed"

    def stats(self) -> dict[str, Any]:
        c = self.counters
        asked = c["decisions"] + c["fallback_timeout"] + c["fallback_invalid"]
        wait_s = self._wait_ns / 1e9
        return {
            "agent": self.agent,
            "fallback": self.fallback.name,
            **c,
            "by_kind": {k: dict(v) for k, v in self.by_kind.items() if v["requests"]},
            "fallback_stats": self.fallback.stats(),
            # Wall-clock figures: not part of the deterministic results.
            "wait_s": round(wait_s, 3),
            "mean_round_trip_us": round(self._wait_ns / asked / 1e3, 1) if asked else 0.0,
        }

    # -- asking ------------------------------------------------------------------------

    def _describe_run(self, mm: Mm, session: AgentSession) -> ppb.RunAttached:
        cfg = mm.config
        out = ppb.RunAttached(
            run_id=self._run_id,
            scenario=self._scenario or cfg.name.split(" / ")[0],
            variant=cfg.name,
            seed=cfg.seed,
            duration_ns=cfg.duration_ns,
            decisions=sorted(session.kinds),
            real_budget_us=self._budget_us,
            sim_budget_ns=self.sim_budget_ns,
            fallback_policy=self.fallback.name,
        )
        for node in mm.nodes:
            wm = node.info.watermarks
            out.nodes.add(
                id=node.id,
                name=node.name,
                kind=int(node.kind),
                hosts=node.hosts,
                advertised_bytes=node.info.advertised_bytes,
                physical_bytes=node.info.physical_bytes,
                low_free_bytes=wm.low_free_bytes,
                high_free_bytes=wm.high_free_bytes,
            )
        for host in mm.hosts:
            hd = out.hosts.add(
                index=host.index, name=host.name, nodes=host.nodes, cpu_nodes=host.cpu_nodes
            )
            for tier in host.tiers.tiers:
                hd.tiers.add(id=tier.id, nodes=list(tier.nodes))
            for nid, t in sorted(host.tiers.targets.items()):
                if t.allowed:
                    hd.demotion_targets.add(
                        node=nid, preferred=list(t.preferred), allowed=list(t.allowed)
                    )
            for index in host.memcgs:
                memcg = mm.memcgs[index]
                hd.cgroups.add(
                    index=index,
                    name=memcg.name,
                    memory_max=memcg.config.memory_max or 0,
                    zswap_max=memcg.config.zswap_max or 0,
                )
        return out

    async def _new_request(
        self, kind: int, host: Host
    ) -> tuple[ppb.OrchestratorMessage, ppb.DecisionRequest] | None:
        """A request to fill, or None when no agent is there to ask."""
        if await self._current_session() is None:
            return None
        mm = self._mm
        assert mm is not None
        msg = ppb.OrchestratorMessage()
        req = msg.request
        req.kind = kind
        req.host = host.index
        req.now_ns = mm.sched.now_ns
        return msg, req

    def _page(self, req: ppb.DecisionRequest, page: int) -> None:
        mm = self._mm
        assert mm is not None
        p = mm.pages
        f = p.flags[page]
        zs = p.zsize[page]
        scan = p.scan_ns[page]
        pi = req.pages.add()
        pi.page = page
        pi.node = p.node[page]
        pi.cgroup = p.memcg[page]
        pi.young = bool(f & F_YOUNG)
        pi.referenced = bool(f & F_REFERENCED)
        pi.active = bool(f & F_ACTIVE)
        pi.accesses = p.hits[page]
        pi.writes = p.version[page]
        pi.compressed_size = PAGE_SIZE if zs == 0xFFFF else zs
        pi.since_scan_ns = max(0, mm.sched.now_ns - scan) if scan else 0

    async def _ask(
        self, msg: ppb.OrchestratorMessage, req: ppb.DecisionRequest, kind_name: str
    ) -> ppb.DecisionReply | None:
        """Send the request; the reply if it came in time, else None (counted)."""
        session = self._session
        if session is None or session.closed:
            self.counters["fallback_disconnect"] += 1
            return None
        rid = session.next_id()
        req.request_id = rid
        deadline = req.deadline
        deadline.sim_ns = req.now_ns + self.sim_budget_ns
        start = time.time_ns()
        deadline.real_unix_ns = start + self.deadline_ns
        deadline.real_budget_us = self._budget_us
        self.counters["requests"] += 1
        self.by_kind[kind_name]["requests"] += 1
        fut: asyncio.Future[ppb.DecisionReply] = asyncio.get_running_loop().create_future()
        session.pending[rid] = fut
        try:
            async with asyncio.timeout(self.deadline_s):
                await session.write(msg.SerializeToString())
                reply = await fut
        except TimeoutError:
            session.expire(rid)
            self.counters["fallback_timeout"] += 1
            self._wait_ns += time.time_ns() - start
            self._missed(session)
            return None
        except AgentGone:
            self.counters["fallback_disconnect"] += 1
            return None
        finally:
            session.pending.pop(rid, None)
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: a stream that died under a write set one
        self._wait_ns += time.time_ns() - start
        self._missed_in_row = 0
        at = reply.answered_at_ns
        if at and (at > deadline.sim_ns or at < req.now_ns):
            self.counters["sim_deadline_missed"] += 1
            self.counters["fallback_timeout"] += 1
            session.notice(
                rid,
                ppb.ReplyRejected.PROBLEM_SIM_DEADLINE,
                f"answered_at_ns {at} is outside [{req.now_ns}, {deadline.sim_ns}]",
            )
            return None
        return reply

    def _missed(self, session: AgentSession) -> None:
        self._missed_in_row += 1
        if self.max_missed and self._missed_in_row >= self.max_missed:
            self.counters["agents_dropped"] += 1
            reason = f"missed {self._missed_in_row} deadlines in a row"
            self.session_lost(session, reason)
            session.kick(grpc.StatusCode.DEADLINE_EXCEEDED, reason)

    def _invalid(self, req: ppb.DecisionRequest, problem: int, detail: str) -> None:
        self.counters["fallback_invalid"] += 1
        if self._session is not None:
            self._session.notice(req.request_id, problem, detail)

    def _verdicts(
        self, req: ppb.DecisionRequest, reply: ppb.DecisionReply, pages: list[int]
    ) -> dict[int, ppb.Verdict] | None:
        """The reply's verdicts by position in `pages`, or None (counted) if it makes no sense."""
        index = {page: i for i, page in enumerate(pages)}
        out: dict[int, ppb.Verdict] = {}
        for v in reply.verdicts:
            i = index.get(v.page)
            if i is None:
                self._invalid(
                    req,
                    ppb.ReplyRejected.PROBLEM_UNKNOWN_PAGE,
                    f"page {v.page} is not in the request",
                )
                return None
            if i in out:
                self._invalid(
                    req, ppb.ReplyRejected.PROBLEM_DUPLICATE_PAGE, f"page {v.page} answered twice"
                )
                return None
            out[i] = v
        return out

    def _applied(self, kind_name: str, n: int, answered: int, overridden: int) -> None:
        c = self.counters
        c["decisions"] += 1
        c["verdicts"] += answered
        c["abstained"] += n - answered
        c["overridden"] += overridden
        k = self.by_kind[kind_name]
        k["decisions"] += 1
        k["overridden"] += overridden

    async def _yes_no(
        self,
        kind: int,
        host: Host,
        pages: list[int],
        defaults: list[bool],
        fill: Callable[[ppb.DecisionRequest], None],
    ) -> list[bool]:
        """Ask a per-page yes/no decision; the defaults where the agent cannot answer."""
        if kind not in self._kinds:
            self.counters["builtin"] += 1
            return defaults
        made = await self._new_request(kind, host)
        if made is None:
            self.counters["fallback_disconnect"] += 1
            return defaults
        msg, req = made
        for page, d in zip(pages, defaults, strict=True):
            self._page(req, page)
            req.defaults.add(page=page, accept=d)
        fill(req)
        name = KIND_NAMES[kind]
        reply = await self._ask(msg, req, name)
        if reply is None:
            return defaults
        verdicts = self._verdicts(req, reply, pages)
        if verdicts is None:
            return defaults
        out = list(defaults)
        overridden = 0
        for i, v in verdicts.items():
            if v.HasField("target"):
                self._invalid(
                    req,
                    ppb.ReplyRejected.PROBLEM_BAD_VERDICT,
                    f"page {v.page}: only demotion verdicts have a target",
                )
                return defaults
            if v.accept != out[i]:
                overridden += 1
            out[i] = v.accept
        self._applied(name, len(pages), len(verdicts), overridden)
        return out

    # -- the Policy interface -------------------------------------------------------

    async def demotion(
        self, mm: Mm, host: Host, nid: int, candidates: list[int], default: list[int | None]
    ) -> list[int | None]:
        builtin = await self.fallback.demotion(mm, host, nid, candidates, default)
        kind = ppb.DECISION_KIND_DEMOTION
        if kind not in self._kinds:
            self.counters["builtin"] += 1
            return builtin
        made = await self._new_request(kind, host)
        if made is None:
            self.counters["fallback_disconnect"] += 1
            return builtin
        msg, req = made
        targets = host.tiers.targets.get(nid)
        allowed = set(targets.allowed) if targets else set()
        ctx = req.demotion
        ctx.source_node = nid
        if targets:
            ctx.preferred.extend(targets.preferred)
            ctx.allowed.extend(targets.allowed)
        for page, target in zip(candidates, builtin, strict=True):
            self._page(req, page)
            if target is None:
                req.defaults.add(page=page, accept=False)
            else:
                req.defaults.add(page=page, accept=True, target=target)
        reply = await self._ask(msg, req, "demotion")
        if reply is None:
            return builtin
        verdicts = self._verdicts(req, reply, candidates)
        if verdicts is None:
            return builtin
        out = list(builtin)
        overridden = 0
        for i, v in verdicts.items():
            choice: int | None
            if v.HasField("target"):
                if not v.accept:
                    self._invalid(
                        req,
                        ppb.ReplyRejected.PROBLEM_BAD_VERDICT,
                        f"page {v.page}: a target with accept = false",
                    )
                    return builtin
                if v.target not in allowed:
                    self._invalid(
                        req,
                        ppb.ReplyRejected.PROBLEM_TARGET_NOT_ALLOWED,
                        f"page {v.page}: node {v.target} is not an allowed demotion "
                        f"target of node {nid} (allowed: {sorted(allowed)})",
                    )
                    return builtin
                choice = v.target
            elif v.accept:
                choice = builtin[i] if builtin[i] is not None else default[i]
            else:
                choice = None
            if choice != out[i]:
                overridden += 1
            out[i] = choice
        self._applied("demotion", len(candidates), len(verdicts), overridden)
        return out

    def _promotion_fill(
        self, mm: Mm, host: Host, dst: int
    ) -> Callable[[ppb.DecisionRequest], None]:
        def fill(req: ppb.DecisionRequest) -> None:
            node = mm.nodes[dst]
            st = host.promo.nodes.get(dst) if host.promo is not None else None
            ctx = req.promotion
            ctx.target_node = dst
            ctx.hot_threshold_ms = (
                st.threshold_ms if st and st.threshold_ms else mm.tunables.numa.hot_threshold_ms
            )
            ctx.target_free_pages = node.free_pages
            ctx.target_promo_watermark_pages = node.wmark.promo

        return fill

    async def promotion(self, mm: Mm, host: Host, page: int, dst: int, default: bool) -> bool:
        builtin = await self.fallback.promotion(mm, host, page, dst, default)
        fill = self._promotion_fill(mm, host, dst)
        out = await self._yes_no(ppb.DECISION_KIND_PROMOTION, host, [page], [builtin], fill)
        return out[0]

    async def promotion_batch(
        self, mm: Mm, host: Host, pages: list[int], dst: int, default: list[bool]
    ) -> list[bool]:
        # Batched promotion: the whole batch is one request.
        builtin = await self.fallback.promotion_batch(mm, host, pages, dst, default)
        fill = self._promotion_fill(mm, host, dst)
        return await self._yes_no(ppb.DECISION_KIND_PROMOTION, host, pages, builtin, fill)

    async def admission(
        self, mm: Mm, host: Host, pages: list[int], nid: int, default: list[bool]
    ) -> list[bool]:
        builtin = await self.fallback.admission(mm, host, pages, nid, default)

        def fill(req: ppb.DecisionRequest) -> None:
            node = mm.nodes[nid]
            info = node.info
            ctx = req.admission
            ctx.node = nid
            ctx.pressure = node.pressure
            ctx.physical_bytes = info.physical_bytes
            ctx.physical_used_bytes = node.physical_used_bytes
            ctx.low_free_bytes = info.watermarks.low_free_bytes
            ctx.high_free_bytes = info.watermarks.high_free_bytes
            ctx.stored_pages = node.nr_pages
            ctx.per_page_overhead_bytes = info.per_page_overhead_bytes

        return await self._yes_no(ppb.DECISION_KIND_ADMISSION, host, pages, builtin, fill)

    def _zswap_fill(self, mm: Mm, host: Host, page: int) -> Callable[[ppb.DecisionRequest], None]:
        def fill(req: ppb.DecisionRequest) -> None:
            z = host.zswap
            ctx = req.zswap
            if z is not None:
                ctx.pool_bytes = z.pool_bytes()
                ctx.pool_total_size = z.pool_pages * PAGE_SIZE
                ctx.max_pool_bytes = z.max_pages() * PAGE_SIZE
                ctx.stored_pages = z.stats.stored_pages
                ctx.pool_full = z.pool_full
            memcg = mm.memcgs[mm.pages.memcg[page]]
            ctx.cgroup_zswap_current = memcg.zswap_current
            ctx.cgroup_zswap_max = memcg.config.zswap_max or 0

        return fill

    async def zswap_store(self, mm: Mm, host: Host, page: int, default: bool) -> bool:
        builtin = await self.fallback.zswap_store(mm, host, page, default)
        out = await self._yes_no(
            ppb.DECISION_KIND_ZSWAP_STORE, host, [page], [builtin], self._zswap_fill(mm, host, page)
        )
        return out[0]

    async def zswap_writeback(self, mm: Mm, host: Host, page: int, default: bool) -> bool:
        builtin = await self.fallback.zswap_writeback(mm, host, page, default)
        out = await self._yes_no(
            ppb.DECISION_KIND_ZSWAP_WRITEBACK,
            host,
            [page],
            [builtin],
            self._zswap_fill(mm, host, page),
        )
        return out[0]


def _write_atomic(path: str, text: str) -> None:
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, target)


def kinds_from_names(names: Iterable[str]) -> list[int]:
    """Decision kinds from their short names ("promotion", "demotion" ...)."""
    by_name = {v: k for k, v in KIND_NAMES.items()}
    out = []
    for name in names:
        if name not in by_name:
            raise ValueError(f"unknown decision kind {name!r} (known: {', '.join(by_name)})")
        out.append(by_name[name])
    return out
