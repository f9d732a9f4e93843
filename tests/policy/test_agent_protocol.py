"""The Connect stream's protocol errors, the stand-alone listener, and event subscriptions."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from policy_harness import TIERING, comparable, config, policy_hub

from tiersim.orchestrator.agent import AgentPolicy
from tiersim.orchestrator.agent_client import PolicyAgentClient, echo
from tiersim.orchestrator.config import PolicyConfig
from tiersim.orchestrator.engine import run
from tiersim.v1 import policy_pb2 as ppb


async def _connect_raw(address: str, *messages: bytes) -> tuple[grpc.StatusCode, str, list[Any]]:
    """Send raw messages on Connect; how the stream ended and what came back."""
    async with grpc.aio.insecure_channel(address) as channel:
        call: Any = channel.stream_stream("/tiersim.v1.PolicyAgent/Connect")()
        got = []
        for m in messages:
            await call.write(m)
        try:
            while (raw := await call.read()) is not grpc.aio.EOF:
                got.append(ppb.OrchestratorMessage.FromString(raw))
        except grpc.aio.AioRpcError:
            pass
        return await call.code(), await call.details() or "", got


def _register(*kinds: int, agent: str = "") -> bytes:
    return ppb.AgentMessage(register=ppb.Register(agent=agent, decisions=kinds)).SerializeToString()


def _reply(rid: int) -> bytes:
    return ppb.AgentMessage(reply=ppb.DecisionReply(request_id=rid)).SerializeToString()


PROMO = ppb.DECISION_KIND_PROMOTION


@pytest.mark.parametrize(
    ("messages", "code", "detail"),
    [
        ([b"\xff\x01garbage"], grpc.StatusCode.INVALID_ARGUMENT, "not a valid"),
        ([_reply(1)], grpc.StatusCode.FAILED_PRECONDITION, "first message must be a Register"),
        ([_register()], grpc.StatusCode.INVALID_ARGUMENT, "at least one decision kind"),
        ([_register(99)], grpc.StatusCode.INVALID_ARGUMENT, "unknown decision kind"),
        ([_register(PROMO, agent="x" * 200)], grpc.StatusCode.INVALID_ARGUMENT, "agent name"),
        ([_register(PROMO), _register(PROMO)], grpc.StatusCode.FAILED_PRECONDITION, "already"),
        ([_register(PROMO), b"\xff\xff"], grpc.StatusCode.INVALID_ARGUMENT, "not a valid"),
    ],
    ids=["garbage", "reply-first", "no-kinds", "unknown-kind", "long-name", "twice", "junk-later"],
)
@pytest.mark.asyncio
async def test_protocol_errors_have_precise_codes(
    messages: list[bytes], code: grpc.StatusCode, detail: str
) -> None:
    async with policy_hub() as h:
        got_code, details, _ = await _connect_raw(h.address, *messages)
        assert got_code == code
        assert detail in details
        # The hub forgot the broken stream.
        for _ in range(500):
            if not h.hub.sessions:
                break
            await asyncio.sleep(0.01)
        assert not h.hub.sessions


@pytest.mark.asyncio
async def test_registration_is_answered_and_deduplicated() -> None:
    async with (
        policy_hub() as h,
        PolicyAgentClient(
            h.address, decisions=["promotion", "promotion", "demotion"], name="a"
        ) as agent,
    ):
        assert agent.registered is not None
        assert list(agent.registered.decisions) == [
            ppb.DECISION_KIND_DEMOTION,
            ppb.DECISION_KIND_PROMOTION,
        ]
        assert agent.registered.session_id in h.hub.sessions


@pytest.mark.asyncio
async def test_a_connection_that_never_registers_is_closed() -> None:
    async with (
        policy_hub(register_timeout_s=0.2) as h,
        grpc.aio.insecure_channel(h.address) as channel,
    ):
        call: Any = channel.stream_stream("/tiersim.v1.PolicyAgent/Connect")()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.asyncio
async def test_connections_are_limited() -> None:
    async with policy_hub(max_sessions=2) as h:
        async with (
            PolicyAgentClient(h.address, decisions=["promotion"]),
            PolicyAgentClient(h.address, decisions=["promotion"]),
        ):
            code, details, _ = await _connect_raw(h.address, _register(PROMO))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2 policy agents are connected" in details
        # Once they leave, there is room again.
        for _ in range(500):
            if not h.hub.sessions:
                break
            await asyncio.sleep(0.01)
        async with PolicyAgentClient(h.address, decisions=["promotion"]) as agent:
            assert agent.registered is not None


@pytest.mark.asyncio
async def test_subscribe_to_an_unknown_run_is_not_found() -> None:
    async with policy_hub() as h, grpc.aio.insecure_channel(h.address) as channel:
        call: Any = channel.unary_stream(
            "/tiersim.v1.PolicyAgent/Subscribe", response_deserializer=ppb.Event.FromString
        )(ppb.SubscribeRequest(run_id="nope").SerializeToString())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.asyncio
async def test_standalone_listener_serves_an_agent_and_its_events(tmp_path: Path) -> None:
    """Under `tiersim run` the policy listens itself; agents find it by the address file."""
    addr_file = tmp_path / "agent.addr"
    cfg = config(TIERING, "agent", address_file=str(addr_file), counters_interval="20ms")
    events: list[ppb.Event] = []

    async def agent() -> PolicyAgentClient:
        while not addr_file.exists():
            await asyncio.sleep(0.01)
        address = addr_file.read_text().strip()
        client = PolicyAgentClient(address, decisions=["promotion", "demotion"])
        async with client, grpc.aio.insecure_channel(address) as channel:
            await client.connect() if client.registered is None else None
            sub: Any = channel.unary_stream(
                "/tiersim.v1.PolicyAgent/Subscribe", response_deserializer=ppb.Event.FromString
            )(ppb.SubscribeRequest().SerializeToString())

            async def collect() -> None:
                async for ev in sub:
                    events.append(ev)

            collector = asyncio.create_task(collect())
            await client.serve(echo, runs=1)
            await asyncio.wait_for(collector, 5)
        return client

    task = asyncio.create_task(agent())
    doc = await run(cfg)
    client = await task
    assert doc["policy"]["decisions"] > 0
    assert comparable(doc) == comparable(await run(config(TIERING)))
    assert client.attached is not None and client.attached.run_id.startswith("run-")
    kinds = {ev.WhichOneof("body") for ev in events}
    assert {"pressure", "counters"} <= kinds
    assert all(ev.run_id == client.attached.run_id for ev in events)
    counters = [ev for ev in events if ev.WhichOneof("body") == "counters"]
    assert counters[-1].counters.hosts[0].vmstat["pgpromote_success"] > 0
    seqs = [ev.sequence for ev in events]
    assert seqs == sorted(seqs)


@pytest.mark.asyncio
async def test_standalone_listener_refuses_the_network_without_authentication() -> None:
    cfg = config(TIERING, "agent", listen="0.0.0.0:0", connect_timeout="1s")
    with pytest.raises(Exception, match=r"refusing to listen on 0\.0\.0\.0"):
        await run(cfg)


def test_topology_description_matches_the_run() -> None:
    """RunAttached describes nodes, tiers and demotion targets as the kernel computed them."""

    async def go() -> ppb.RunAttached:
        from tiersim.orchestrator.engine import Simulation

        sim = Simulation(replace(config(TIERING), policy=PolicyConfig("kernel")))
        await sim.build()
        policy = AgentPolicy()
        policy._run_id = "r"

        class FakeSession:
            kinds = frozenset({ppb.DECISION_KIND_DEMOTION})

        session: Any = FakeSession()
        return policy._describe_run(sim.mm, session)

    attached = asyncio.run(go())
    assert [n.name for n in attached.nodes] == ["dram0", "cxl0", "swap0"]
    assert attached.nodes[1].kind == 2  # NODE_KIND_CXL
    host = attached.hosts[0]
    assert host.cpu_nodes == [0]
    targets = {t.node: (list(t.preferred), list(t.allowed)) for t in host.demotion_targets}
    assert targets == {0: ([1], [1])}
    assert [c.name for c in host.cgroups] == ["app"]
    assert attached.decisions == [ppb.DECISION_KIND_DEMOTION]
    assert attached.real_budget_us == 250_000 and attached.sim_budget_ns == 1_000_000
