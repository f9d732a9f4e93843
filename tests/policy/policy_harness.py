"""Small scenarios and a harness that runs them with a policy agent over loopback gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from tiersim._security import ServerSecurity
from tiersim.orchestrator._grpc_server import start_server
from tiersim.orchestrator.agent import RUN_CONTEXT, SERVICE_NAME, PolicyHub, RunContext
from tiersim.orchestrator.config import PolicyConfig, RunConfig
from tiersim.orchestrator.engine import run
from tiersim.orchestrator.scenario import loads_scenario

# Demotion to a CXL expander and hint-fault promotion back: ~450 promotion and
# ~55 demotion decisions in 200 ms of simulated time.
TIERING = """
[scenario]
name = "agent-test"
description = "small tiering run for policy-agent tests"
question = "test"
seed = 5
duration = "200ms"

[[hosts]]
name = "h0"

[[nodes]]
name = "dram0"
kind = "dram"
host = "h0"
capacity = "2MiB"

[[nodes]]
name = "cxl0"
kind = "cxl"
host = "h0"
capacity = "8MiB"

[[nodes]]
name = "swap0"
kind = "storage"
host = "h0"
capacity = "32MiB"

[tunables]
demotion_enabled = true
[tunables.numa]
numa_balancing = 2
scan_delay_ms = 20
scan_period_min_ms = 20

[[cgroups]]
name = "app"

[[workloads]]
name = "app"
host = "h0"
cgroup = "app"
footprint = "4MiB"
[workloads.pattern]
kind = "shifting"
hot_pages = 256
hot_fraction = 0.9
shift_pages = 128
shift_every = 20000
write_ratio = 0.2
think = "10us"
"""

# A compressed node as demotion tier plus zswap with its shrinker: demotion,
# admission, zswap store and zswap writeback decisions.
CRAM = """
[scenario]
name = "agent-test-cram"
description = "compressed node and zswap for policy-agent tests"
question = "test"
seed = 5
duration = "200ms"

[[hosts]]
name = "h0"

[[nodes]]
name = "dram0"
kind = "dram"
host = "h0"
capacity = "2MiB"

[[nodes]]
name = "cram0"
kind = "cram"
host = "h0"
advertised = "8MiB"
physical = "1MiB"

[[nodes]]
name = "swap0"
kind = "storage"
host = "h0"
capacity = "32MiB"

[tunables]
demotion_enabled = true
[tunables.zswap]
enabled = true
max_pool_percent = 10
shrinker_enabled = true

[[cgroups]]
name = "app"

[[workloads]]
name = "app"
host = "h0"
cgroup = "app"
footprint = "6MiB"
[workloads.pattern]
kind = "shifting"
hot_pages = 256
hot_fraction = 0.8
shift_pages = 128
shift_every = 20000
write_ratio = 0.3
think = "10us"
"""

# Fields of a results document that are wall-clock measurements, not results.
WALL_CLOCK = ("wall_time_s",)


def config(text: str = TIERING, policy: str = "kernel", **options: Any) -> RunConfig:
    """The scenario's run with the given policy.

    An agent's real-time deadline defaults to 10 s here, not the product's 250 ms: a
    test that does not set one is not about deadlines, and a loaded machine must not
    turn a prompt answer into a fallback.
    """
    base = loads_scenario(text).variants[0]
    if policy == "agent":
        options.setdefault("deadline", "10s")
    return replace(base, policy=PolicyConfig(policy, options))


def comparable(doc: dict[str, Any]) -> dict[str, Any]:
    """A results document without wall-clock fields and the policy's own counters."""
    return {k: v for k, v in doc.items() if k not in (*WALL_CLOCK, "policy")}


@dataclass
class Hub:
    hub: PolicyHub
    address: str


@contextlib.asynccontextmanager
async def policy_hub(**hub_options: Any) -> AsyncIterator[Hub]:
    """A PolicyAgent server on an ephemeral loopback port, as the service would run it."""
    hub = PolicyHub(**hub_options)
    server, _, port = await start_server(
        "127.0.0.1:0", ServerSecurity(), [hub.handler()], [SERVICE_NAME]
    )
    try:
        yield Hub(hub, f"127.0.0.1:{port}")
    finally:
        hub.close_all("test over")
        await server.stop(0.2)


async def run_with_agent(
    cfg: RunConfig,
    agent: Callable[[str], Coroutine[Any, Any, Any]],
    *,
    run_id: str = "test-run",
    **hub_options: Any,
) -> tuple[dict[str, Any], Any]:
    """Run `cfg` (policy "agent") while `agent(address)` plays the agent; (results, agent's)."""
    async with policy_hub(**hub_options) as h:
        task: asyncio.Task[Any] = asyncio.create_task(agent(h.address))
        token = RUN_CONTEXT.set(RunContext(h.hub, run_id))
        try:
            doc = await run(cfg)
        finally:
            RUN_CONTEXT.reset(token)
        try:
            result = await asyncio.wait_for(task, 10)
        except Exception as exc:  # the agent's own failure is part of what tests check
            result = exc
        return doc, result
