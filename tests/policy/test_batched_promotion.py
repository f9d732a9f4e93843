"""Batched promotion (tunables.numa.promote_batch): one policy call per batch of hint faults."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import pytest
from policy_harness import TIERING, comparable, config, run_with_agent

from tiersim._errors import ConfigError
from tiersim.orchestrator import policy as policy_module
from tiersim.orchestrator.agent_client import PolicyAgentClient, echo
from tiersim.orchestrator.engine import run
from tiersim.orchestrator.scenario import loads_scenario
from tiersim.v1 import policy_pb2 as ppb

BATCHED = TIERING.replace(
    "scan_period_min_ms = 20\n", "scan_period_min_ms = 20\npromote_batch = 16\n"
)


class Recording(policy_module.Policy):
    """The kernel's answers, recording how the engine asked."""

    name = "recording"
    batches: ClassVar[list[int]] = []
    singles: ClassVar[int] = 0

    async def promotion(self, mm: Any, host: Any, page: int, dst: int, default: bool) -> bool:
        Recording.singles += 1
        return default

    async def promotion_batch(
        self, mm: Any, host: Any, pages: list[int], dst: int, default: list[bool]
    ) -> list[bool]:
        Recording.batches.append(len(pages))
        assert len(set(pages)) == len(pages)
        return list(default)


@pytest.mark.asyncio
async def test_the_engine_asks_once_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(policy_module.BUILTIN, "recording", Recording)
    Recording.batches, Recording.singles = [], 0
    doc = await run(config(BATCHED, "recording"))
    assert Recording.singles == 0
    assert Recording.batches and max(Recording.batches) <= 16
    # Most batches fill up; the last ones of a burst leave after the delay, partly full.
    assert (
        sum(Recording.batches) > 100 and Recording.batches.count(16) > len(Recording.batches) // 2
    )
    vm = doc["hosts"]["h0"]["vmstat"]
    assert 0 < vm["pgpromote_success"] <= sum(Recording.batches)
    assert vm["numa_hint_faults"] >= sum(Recording.batches)


@pytest.mark.asyncio
async def test_a_policy_defining_only_promotion_works_batched() -> None:
    """The default promotion_batch asks promotion page by page: the kernel policy unchanged."""
    kernel = await run(config(BATCHED))
    again = await run(config(BATCHED))
    assert comparable(kernel) == comparable(again)
    per_fault = await run(config(TIERING))
    # Batched promotion is a different kernel behaviour, not a different policy.
    assert comparable(kernel) != comparable(per_fault)


@pytest.mark.asyncio
async def test_an_agent_answers_a_batch_in_one_request() -> None:
    kernel = await run(config(BATCHED))

    async def play(address: str) -> PolicyAgentClient:
        agent = PolicyAgentClient(address, decisions=["promotion"])
        async with agent:
            await agent.serve(echo, runs=1)
        return agent

    doc, _ = await run_with_agent(config(BATCHED, "agent"), play)
    assert comparable(doc) == comparable(kernel)
    pol = doc["policy"]
    assert pol["verdicts"] > pol["requests"] * 4  # pages per request: batches, not single faults
    assert pol["fallback_timeout"] == pol["fallback_disconnect"] == pol["fallback_invalid"] == 0

    def refuse_half(req: ppb.DecisionRequest) -> ppb.DecisionReply:
        reply = ppb.DecisionReply(request_id=req.request_id)
        for i, page in enumerate(req.pages):
            reply.verdicts.add(page=page.page, accept=req.defaults[i].accept and i % 2 == 0)
        return reply

    async def picky(address: str) -> None:
        async with PolicyAgentClient(address, decisions=["promotion"]) as client:
            await client.serve(refuse_half, runs=1)

    doc, _ = await run_with_agent(config(BATCHED, "agent"), picky)
    vm = doc["hosts"]["h0"]["vmstat"]
    pol = doc["policy"]
    # Every refusal of a page the kernel would promote is applied: the pages
    # promoted, or tried and found no room, are the accepted ones at most.
    assert pol["overridden"] > 0
    accepted = pol["verdicts"] - pol["overridden"]
    assert vm["pgpromote_success"] > 0
    assert vm["pgpromote_success"] + vm["pgpromote_fail"] <= accepted


def test_promote_batch_is_validated() -> None:
    for bad, message in (
        ("promote_batch = 0", "promote_batch"),
        ("promote_batch_delay_ms = -1", "promote_batch_delay_ms"),
    ):
        text = TIERING.replace("scan_period_min_ms = 20\n", f"scan_period_min_ms = 20\n{bad}\n")
        with pytest.raises(ConfigError, match=message):
            loads_scenario(text)
    numa = loads_scenario(BATCHED).variants[0].tunables.numa
    assert (numa.promote_batch, numa.promote_batch_delay_ms) == (16, 10)
    assert replace(numa, promote_batch=1).promote_batch == 1
