"""An orchestrator service on an ephemeral loopback port, and scenarios to feed it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc.aio

from tiersim._security import ClientSecurity, ServerSecurity
from tiersim.orchestrator.service import OrchestratorServer
from tiersim.v1 import orchestrator_pb2 as opb
from tiersim.v1 import orchestrator_pb2_grpc as opb_grpc
from tiersim.v1 import policy_pb2 as ppb

SMALL = """
[scenario]
name = "svc-test"
description = "small run for service tests"
question = "test"
seed = 9
duration = "{duration}"
exclusive = {exclusive}

[[hosts]]
name = "h0"

[[nodes]]
name = "dram0"
kind = "dram"
host = "h0"
capacity = "512KiB"

[[nodes]]
name = "cram0"
kind = "cram"
host = "h0"
advertised = "8MiB"
physical = "256KiB"

[[nodes]]
name = "swap0"
kind = "storage"
host = "h0"
capacity = "32MiB"

[tunables]
demotion_enabled = true

[[cgroups]]
name = "app"
memory_max = "768KiB"

[[workloads]]
name = "app"
host = "h0"
cgroup = "app"
footprint = "6MiB"
[workloads.pattern]
kind = "shifting"
hot_pages = 512
hot_fraction = 0.8
shift_pages = 256
shift_every = 20000
write_ratio = 0.3
think = "10us"

[[variants]]
name = "base"

[[variants]]
name = "no demotion"
[variants.set]
"tunables.demotion_enabled" = false
"""


def small(duration: str = "150ms", exclusive: bool = True) -> str:
    return SMALL.format(duration=duration, exclusive="true" if exclusive else "false")


@dataclass
class Service:
    server: OrchestratorServer
    channel: grpc.aio.Channel
    stub: opb_grpc.OrchestratorStub

    @property
    def address(self) -> str:
        return self.server.address

    async def submit(self, toml: str | None = None, **fields: Any) -> opb.RunStatus:
        if toml is not None:
            fields["toml"] = toml
        return await self.stub.SubmitRun(opb.SubmitRunRequest(**fields))

    async def wait(self, run_id: str) -> list[ppb.Event]:
        """Every event of the run until it ends."""
        return [ev async for ev in self.stub.WatchRun(opb.WatchRunRequest(run_id=run_id))]

    async def results(self, run_id: str) -> dict[str, Any]:
        r = await self.stub.GetResults(opb.GetResultsRequest(run_id=run_id))
        doc: dict[str, Any] = json.loads(r.results_json)
        return doc


@contextlib.asynccontextmanager
async def service(
    security: ServerSecurity | None = None,
    client: ClientSecurity | None = None,
    **options: Any,
) -> AsyncIterator[Service]:
    server = OrchestratorServer("127.0.0.1", 0, security, **options)
    await server.start()
    try:
        channel = (client or ClientSecurity()).channel(server.address)
        async with channel:
            yield Service(server, channel, opb_grpc.OrchestratorStub(channel))
    finally:
        await server.stop(0.5)
