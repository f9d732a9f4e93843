"""An external agent over loopback gRPC: applied answers, and every way an agent can fail.

Each failure test runs a short simulation to its end and checks what the
issue asks: the run completes, the built-in answer applied where the agent
failed, and the fallback counters say why.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import structlog.testing
from policy_harness import CRAM, TIERING, comparable, config, run_with_agent

from tiersim._errors import ConfigError
from tiersim.orchestrator.agent_client import PolicyAgentClient, echo
from tiersim.orchestrator.engine import run
from tiersim.v1 import policy_pb2 as ppb

pytestmark = pytest.mark.asyncio

_BASELINES: dict[str, dict[str, Any]] = {}


async def kernel(text: str = TIERING) -> dict[str, Any]:
    """The built-in policy's results for a scenario (computed once)."""
    if text not in _BASELINES:
        _BASELINES[text] = await run(config(text))
    return _BASELINES[text]


def vmstat(doc: dict[str, Any], name: str) -> int:
    return int(doc["hosts"]["h0"]["vmstat"][name])


ALL = ["demotion", "promotion", "admission", "zswap_store", "zswap_writeback"]


async def test_echo_agent_reproduces_the_builtin_policy_exactly() -> None:
    """Answering with the defaults gives the built-in results, byte for byte, for all kinds."""
    for text in (TIERING, CRAM):
        agent = PolicyAgentClient.__new__(PolicyAgentClient)

        async def play(address: str) -> PolicyAgentClient:
            nonlocal agent
            agent = PolicyAgentClient(address, decisions=ALL, name="echo")
            async with agent:
                await agent.serve(echo, runs=1)
            return agent

        doc, _ = await run_with_agent(config(text, "agent", agent="echo"), play)
        assert comparable(doc) == comparable(await kernel(text))
        pol = doc["policy"]
        assert pol["name"] == "agent"
        assert pol["requests"] == pol["decisions"] > 0
        assert pol["fallback_timeout"] == pol["fallback_disconnect"] == pol["fallback_invalid"] == 0
        assert pol["overridden"] == 0
        assert agent.answered == pol["requests"]
        assert agent.attached is not None and agent.attached.variant == "agent-test" + (
            "-cram" if text is CRAM else ""
        )
    kinds = set(doc["policy"]["by_kind"])
    assert kinds == {"demotion", "admission", "zswap_store", "zswap_writeback"}


async def test_agent_answers_change_the_outcome() -> None:
    """Refusing every promotion leaves pages on the slow tier; the counters show it."""

    def never(req: ppb.DecisionRequest) -> ppb.DecisionReply:
        reply = ppb.DecisionReply(request_id=req.request_id)
        for page in req.pages:
            reply.verdicts.add(page=page.page, accept=False)
        return reply

    async def play(address: str) -> None:
        async with PolicyAgentClient(address, decisions=["promotion"]) as agent:
            await agent.serve(never, runs=1)

    doc, _ = await run_with_agent(config(TIERING, "agent"), play)
    base = await kernel()
    assert vmstat(base, "pgpromote_success") > 100
    assert vmstat(doc, "pgpromote_success") == 0
    pol = doc["policy"]
    assert pol["overridden"] > 100
    assert pol["by_kind"]["promotion"]["decisions"] == pol["decisions"]
    assert doc["completed"]


async def test_late_answers_fall_back_and_are_counted() -> None:
    late = {5, 10, 15, 20}

    async def play(address: str) -> PolicyAgentClient:
        # The orchestrator asks one question at a time, so the next request arriving means
        # the held one's deadline has passed. Its reply goes out then, ahead of the answer
        # to the next request: late for certain, and while the run is still going, so it
        # is counted whatever the machine's speed.
        agent = PolicyAgentClient(address, decisions=ALL)
        held: list[ppb.DecisionRequest] = []
        async with agent:
            async for msg in agent.messages():
                body = msg.WhichOneof("body")
                if body == "request":
                    for req in held:
                        await agent.reply(echo(req))
                    held.clear()
                    if msg.request.request_id in late:
                        held.append(msg.request)
                    else:
                        await agent.reply(echo(msg.request))
                elif body == "rejected":
                    agent.rejected.append(msg.rejected)
                elif body == "detached":
                    break
        assert not held, "the run ended on a held request; every late one must precede another"
        return agent

    doc, agent = await run_with_agent(
        # 1 s: the held answers are late for certain; the others, prompt, are not late
        # even when the machine stalls for a moment.
        config(TIERING, "agent", deadline="1s", max_missed=0),
        play,
    )
    pol = doc["policy"]
    assert doc["completed"]
    assert pol["fallback_timeout"] == len(late)
    assert pol["decisions"] == pol["requests"] - len(late)
    # Each late reply arrived while a later request was out: counted, and the agent told.
    assert pol["late_answers"] == len(late)
    problems = [r.problem for r in agent.rejected]
    assert problems.count(ppb.ReplyRejected.PROBLEM_LATE) == len(late)
    # The built-in answers applied: the same results as the kernel's.
    assert comparable(doc) == comparable(await kernel())


async def test_disconnect_mid_run_falls_back_for_the_rest() -> None:
    async def play(address: str) -> int:
        agent = PolicyAgentClient(address, decisions=ALL)
        await agent.connect()
        async for msg in agent.messages():
            if msg.WhichOneof("body") == "request":
                await agent.reply(echo(msg.request))
                if agent.answered == 50:
                    break
        await agent.close()
        return agent.answered

    doc, answered = await run_with_agent(config(TIERING, "agent"), play)
    pol = doc["policy"]
    assert answered == 50
    assert doc["completed"]
    assert pol["decisions"] == 50
    assert pol["fallback_disconnect"] > 100
    assert pol["sessions"] == 1
    assert comparable(doc) == comparable(await kernel())


async def test_an_agent_that_reconnects_takes_over_again() -> None:
    async def play(address: str) -> None:
        first = PolicyAgentClient(address, decisions=ALL, name="a")
        second = PolicyAgentClient(address, decisions=ALL, name="a")
        await first.connect()
        async for msg in first.messages():
            if msg.WhichOneof("body") == "request":
                await first.reply(echo(msg.request))
                if first.answered == 5:
                    # Registered while the run still holds the first: the hub keeps it
                    # waiting, so the run finds it at its next request once the first
                    # has gone, however slow the machine.
                    await second.connect()
                if first.answered == 10:
                    break
        await first.close()
        await second.serve(echo, runs=1)
        await second.close()

    doc, _ = await run_with_agent(config(TIERING, "agent", agent="a"), play)
    pol = doc["policy"]
    assert pol["sessions"] == 2
    assert pol["decisions"] > 10
    assert comparable(doc) == comparable(await kernel())


def _demote_to(target: int) -> Any:
    def decide(req: ppb.DecisionRequest) -> ppb.DecisionReply:
        reply = ppb.DecisionReply(request_id=req.request_id)
        for page in req.pages:
            if req.kind == ppb.DECISION_KIND_DEMOTION:
                reply.verdicts.add(page=page.page, accept=True, target=target)
            else:
                reply.verdicts.add(page=page.page, accept=True)
        return reply

    return decide


@pytest.mark.parametrize(
    ("decide", "problem", "kinds"),
    [
        # Node 0 is the DRAM node being reclaimed: not a demotion target.
        (_demote_to(0), ppb.ReplyRejected.PROBLEM_TARGET_NOT_ALLOWED, ["demotion"]),
        (_demote_to(42), ppb.ReplyRejected.PROBLEM_TARGET_NOT_ALLOWED, ["demotion"]),
    ],
    ids=["source-node", "no-such-node"],
)
async def test_invalid_targets_fall_back(decide: Any, problem: int, kinds: list[str]) -> None:
    async def play(address: str) -> PolicyAgentClient:
        agent = PolicyAgentClient(address, decisions=kinds)
        async with agent:
            await agent.serve(decide, runs=1)
        return agent

    doc, agent = await run_with_agent(config(TIERING, "agent"), play)
    pol = doc["policy"]
    assert doc["completed"]
    assert pol["requests"] > 10
    assert pol["fallback_invalid"] == pol["requests"]
    assert pol["decisions"] == 0
    assert {r.problem for r in agent.rejected} == {problem}
    assert "not an allowed demotion target" in agent.rejected[0].detail
    assert comparable(doc) == comparable(await kernel())


def _nonsense(kind: str) -> Any:
    def decide(req: ppb.DecisionRequest) -> ppb.DecisionReply:
        reply = echo(req)
        first = req.pages[0].page
        if kind == "unknown-page":
            reply.verdicts.add(page=10**12, accept=True)
        elif kind == "duplicate-page":
            reply.verdicts.add(page=first, accept=True)
        elif kind == "target-on-promotion":
            del reply.verdicts[:]
            reply.verdicts.add(page=first, accept=True, target=1)
        elif kind == "target-without-accept":
            del reply.verdicts[:]
            reply.verdicts.add(page=first, accept=False, target=1)
        return reply

    return decide


@pytest.mark.parametrize(
    ("kind", "decisions", "problem"),
    [
        ("unknown-page", ["promotion"], ppb.ReplyRejected.PROBLEM_UNKNOWN_PAGE),
        ("duplicate-page", ["promotion"], ppb.ReplyRejected.PROBLEM_DUPLICATE_PAGE),
        ("target-on-promotion", ["promotion"], ppb.ReplyRejected.PROBLEM_BAD_VERDICT),
        ("target-without-accept", ["demotion"], ppb.ReplyRejected.PROBLEM_BAD_VERDICT),
    ],
)
async def test_nonsense_replies_fall_back(kind: str, decisions: list[str], problem: int) -> None:
    async def play(address: str) -> PolicyAgentClient:
        agent = PolicyAgentClient(address, decisions=decisions)
        async with agent:
            await agent.serve(_nonsense(kind), runs=1)
        return agent

    doc, agent = await run_with_agent(config(TIERING, "agent"), play)
    pol = doc["policy"]
    assert doc["completed"]
    assert pol["fallback_invalid"] == pol["requests"] > 0
    assert agent.rejected and {r.problem for r in agent.rejected} == {problem}
    # Kinds the agent did not register for were taken by the built-in without asking.
    unregistered = "promotion" if decisions == ["demotion"] else "demotion"
    assert unregistered not in pol["by_kind"] and pol["builtin"] > 0
    assert comparable(doc) == comparable(await kernel())


async def test_duplicate_and_unsolicited_replies_are_counted_not_applied() -> None:
    async def play(address: str) -> PolicyAgentClient:
        agent = PolicyAgentClient(address, decisions=["promotion"])
        async with agent:
            async for msg in agent.messages():
                body = msg.WhichOneof("body")
                if body == "request":
                    reply = echo(msg.request)
                    await agent.reply(reply)
                    if msg.request.request_id % 50 == 0:
                        # The same answer again, inverted, and one to a request never sent.
                        flipped = ppb.DecisionReply(request_id=reply.request_id)
                        for v in reply.verdicts:
                            flipped.verdicts.add(page=v.page, accept=not v.accept)
                        await agent.reply(flipped)
                        await agent.reply(ppb.DecisionReply(request_id=10**9))
                elif body == "rejected":
                    agent.rejected.append(msg.rejected)
                elif body == "detached":
                    break
        return agent

    doc, agent = await run_with_agent(config(TIERING, "agent"), play)
    pol = doc["policy"]
    assert pol["duplicate_answers"] == pol["unsolicited_answers"] == pol["requests"] // 50
    assert pol["fallback_invalid"] == pol["fallback_timeout"] == 0
    problems = {r.problem for r in agent.rejected}
    assert problems == {
        ppb.ReplyRejected.PROBLEM_DUPLICATE_REPLY,
        ppb.ReplyRejected.PROBLEM_UNKNOWN_REQUEST,
    }
    # The duplicates were not applied: same results as the built-in policy.
    assert comparable(doc) == comparable(await kernel())


async def test_a_flooding_agent_is_cut_off_and_the_run_goes_on() -> None:
    async def play(address: str) -> str:
        agent = PolicyAgentClient(address, decisions=ALL)
        await agent.connect()
        junk = ppb.AgentMessage(reply=ppb.DecisionReply(request_id=10**9)).SerializeToString()
        try:
            async for msg in agent.messages():
                if msg.WhichOneof("body") == "request":
                    for _ in range(5000):
                        await agent.send_raw(junk)
            return "not cut off"
        except grpc.aio.AioRpcError:
            return "cut off"
        finally:
            await agent.close()

    with structlog.testing.capture_logs() as logs:
        doc, outcome = await run_with_agent(config(TIERING, "agent"), play)
    assert outcome == "cut off"
    # The status the orchestrator sent (a client whose write was in flight when the stream
    # ended sees INTERNAL from its own gRPC core instead, so check the server's side).
    closed = [e for e in logs if e["event"] == "policy agent stream closed"]
    assert closed and closed[0]["code"] == "RESOURCE_EXHAUSTED"
    assert "unsolicited" in closed[0]["reason"]
    pol = doc["policy"]
    assert doc["completed"]
    assert pol["agents_flooding"] == 1
    assert pol["fallback_disconnect"] > 0
    # Bounded: the flood was cut off after a burst, not read to the end.
    assert pol["unsolicited_answers"] < 1000
    assert comparable(doc) == comparable(await kernel())


async def test_an_undecodable_message_closes_the_stream_with_invalid_argument() -> None:
    async def play(address: str) -> tuple[grpc.StatusCode, str] | None:
        agent = PolicyAgentClient(address, decisions=ALL)
        await agent.connect()
        try:
            async for msg in agent.messages():
                if msg.WhichOneof("body") == "request":
                    await agent.send_raw(b"\xff\xff\xff")
            return None
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or ""
        finally:
            await agent.close()

    doc, (code, details) = await run_with_agent(config(TIERING, "agent"), play)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid tiersim.v1.AgentMessage" in details
    assert doc["completed"] and doc["policy"]["fallback_disconnect"] > 0


async def test_simulated_deadline() -> None:
    """answered_at_ns within the simulated budget is applied; beyond it, it is late."""

    def thinking(ns: int) -> Any:
        def decide(req: ppb.DecisionRequest) -> ppb.DecisionReply:
            reply = ppb.DecisionReply(request_id=req.request_id, answered_at_ns=req.now_ns + ns)
            for page in req.pages:
                reply.verdicts.add(page=page.page, accept=False)
            return reply

        return decide

    for think_ns, applied in ((500_000, True), (2_000_000, False)):

        async def play(address: str, think_ns: int = think_ns) -> None:
            async with PolicyAgentClient(address, decisions=["promotion"]) as agent:
                await agent.serve(thinking(think_ns), runs=1)

        doc, _ = await run_with_agent(config(TIERING, "agent", sim_budget="1ms"), play)
        pol = doc["policy"]
        if applied:
            assert pol["sim_deadline_missed"] == 0 and pol["decisions"] == pol["requests"]
            assert vmstat(doc, "pgpromote_success") == 0
        else:
            assert pol["sim_deadline_missed"] == pol["fallback_timeout"] == pol["requests"]
            assert comparable(doc) == comparable(await kernel())


async def test_a_silent_agent_is_dropped_after_max_missed() -> None:
    async def play(address: str) -> grpc.StatusCode | None:
        agent = PolicyAgentClient(address, decisions=ALL)
        await agent.connect()
        try:
            async for _ in agent.messages():
                pass
            return None
        except grpc.aio.AioRpcError as err:
            return err.code()
        finally:
            await agent.close()

    # 1 s: long enough that the attach write cannot time out on a stalled machine.
    doc, code = await run_with_agent(config(TIERING, "agent", deadline="1s", max_missed=3), play)
    pol = doc["policy"]
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert pol["fallback_timeout"] == 3 and pol["agents_dropped"] == 1
    assert pol["fallback_disconnect"] > 100
    assert doc["completed"]


async def test_without_an_agent_the_run_fails_clearly() -> None:
    async def nobody(address: str) -> None:
        return None

    with pytest.raises(ConfigError, match=r"no policy agent named 'x' connected within 0\.2 s"):
        await run_with_agent(config(TIERING, "agent", agent="x", connect_timeout="200ms"), nobody)


async def test_runs_only_take_agents_meant_for_them() -> None:
    """An agent registered under another name or for another run is left waiting."""

    async def others(address: str) -> None:
        async with (
            PolicyAgentClient(address, decisions=ALL, name="y"),
            PolicyAgentClient(address, decisions=ALL, name="x", run_id="another-run"),
        ):
            await asyncio.sleep(0.5)

    with pytest.raises(ConfigError, match="no policy agent named 'x'"):
        await run_with_agent(config(TIERING, "agent", agent="x", connect_timeout="300ms"), others)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"deadline": "soon"}, "policy option deadline"),
        ({"deadline": 0}, "deadline must be positive"),
        ({"fallback": "agent"}, "must be a built-in policy"),
        ({"fallback": "nope"}, "unknown policy 'nope'"),
        ({"max_missed": -1}, "max_missed"),
        ({"colour": "blue"}, "colour"),
    ],
)
async def test_bad_options_are_configuration_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        await run(config(TIERING, "agent", **options))
    assert info.value.key == "policy"
