"""A policy agent's side of the Connect stream, for agents written in Python.

Agents in other languages implement `protos/tiersim/v1/policy.proto`
directly (see `examples/policies/`). Python agents may use this instead:

    async with PolicyAgentClient(address, decisions=["promotion"]) as agent:
        await agent.serve(decide)   # decide(request) -> DecisionReply | None

`decide` may be a plain function or a coroutine function; returning None
abstains from the whole request (the built-in answers apply, nothing is
sent). The client speaks raw bytes on the wire, so tests can also send
malformed messages through `send_raw`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
import grpc.aio

from tiersim._security import INSECURE, ClientSecurity
from tiersim.v1 import policy_pb2 as ppb

from .agent import kinds_from_names

Decide = Callable[
    [ppb.DecisionRequest], "ppb.DecisionReply | Awaitable[ppb.DecisionReply | None] | None"
]


def echo(request: ppb.DecisionRequest) -> ppb.DecisionReply:
    """Answer with the built-in policy's verdicts: reproduces the built-in policy."""
    reply = ppb.DecisionReply(request_id=request.request_id)
    reply.verdicts.extend(request.defaults)
    return reply


class PolicyAgentClient:
    """One Connect stream to an orchestrator (or a `tiersim run` policy listener)."""

    def __init__(
        self,
        address: str,
        *,
        decisions: Iterable[str | int],
        name: str = "",
        run_id: str = "",
        security: ClientSecurity = INSECURE,
        connect_timeout_s: float = 30.0,
    ) -> None:
        self.address = address
        self.name = name
        self.run_id = run_id
        kinds = [d for d in decisions if isinstance(d, int)]
        kinds += kinds_from_names(d for d in decisions if isinstance(d, str))
        self.decisions = kinds
        self.security = security
        self.connect_timeout_s = connect_timeout_s
        self.channel: grpc.aio.Channel | None = None
        self.call: Any = None
        self.registered: ppb.Registered | None = None
        self.attached: ppb.RunAttached | None = None
        # The latest notices and detachments (bounded: a long run may send many).
        self.rejected: deque[ppb.ReplyRejected] = deque(maxlen=1024)
        self.detached: deque[ppb.RunDetached] = deque(maxlen=1024)
        self.answered = 0
        # gRPC allows one write in flight per stream; tasks answering concurrently queue here.
        self._write_lock = asyncio.Lock()

    async def connect(self) -> ppb.Registered:
        """Open the stream and register; the orchestrator's Registered answer."""
        if self.channel is None:  # a caller may have opened (and warmed) one already
            self.channel = self.security.channel(self.address)
        self.call = self.channel.stream_stream(
            "/tiersim.v1.PolicyAgent/Connect", request_serializer=None, response_deserializer=None
        )(wait_for_ready=True, timeout=None)
        register = ppb.Register(agent=self.name, decisions=self.decisions, run_id=self.run_id)
        await self.send(ppb.AgentMessage(register=register))
        msg = await self.read()
        if msg is None or msg.WhichOneof("body") != "registered":
            raise RuntimeError(f"expected Registered, got {msg}")
        self.registered = msg.registered
        return msg.registered

    async def __aenter__(self) -> PolicyAgentClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self.channel is not None:
            await self.channel.close()

    async def send(self, message: ppb.AgentMessage) -> None:
        await self.send_raw(message.SerializeToString())

    async def send_raw(self, data: bytes) -> None:
        async with self._write_lock:
            await self.call.write(data)

    async def done_writing(self) -> None:
        await self.call.done_writing()

    async def status(self) -> tuple[grpc.StatusCode, str]:
        """How the stream ended (waits for its end): the status code and details."""
        return await self.call.code(), await self.call.details()

    async def read(self) -> ppb.OrchestratorMessage | None:
        """The next message, or None once the orchestrator ended the stream normally."""
        raw = await self.call.read()
        if raw is grpc.aio.EOF:
            return None
        return ppb.OrchestratorMessage.FromString(raw)

    async def messages(self) -> AsyncIterator[ppb.OrchestratorMessage]:
        while (msg := await self.read()) is not None:
            yield msg

    async def reply(self, reply: ppb.DecisionReply) -> None:
        await self.send(ppb.AgentMessage(reply=reply))
        self.answered += 1

    async def serve(self, decide: Decide = echo, *, runs: int | None = None) -> None:
        """Answer requests with `decide` until the stream ends (or `runs` runs detached)."""
        async for msg in self.messages():
            body = msg.WhichOneof("body")
            if body == "request":
                reply = decide(msg.request)
                if inspect.isawaitable(reply):
                    reply = await reply
                if reply is not None:
                    await self.reply(reply)
            elif body == "attached":
                self.attached = msg.attached
            elif body == "rejected":
                self.rejected.append(msg.rejected)
            elif body == "detached":
                self.detached.append(msg.detached)
                if runs is not None and len(self.detached) >= runs:
                    return
