"""Acceptance: the example agent, in its own process, changes a run in the expected direction.

examples/policies/promote_twice.py promotes a page only on its second hint
fault, so against the kernel's promote-on-first-fault it must promote fewer
pages, and with fewer pages bouncing between the tiers, demote fewer too.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc.aio
import pytest

from tiersim.orchestrator.service import OrchestratorServer
from tiersim.v1 import orchestrator_pb2 as opb
from tiersim.v1 import orchestrator_pb2_grpc as opb_grpc
from tiersim.v1 import policy_pb2 as ppb

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "policies" / "promote_twice.py"
VARIANT = "hint faults, 1000 ms"
SHORTER = 'scenario.duration="2s"'

pytestmark = pytest.mark.slow


def vm(run: dict[str, Any], name: str) -> int:
    return int(run["hosts"]["host0"]["vmstat"][name])


async def _submit_and_wait(stub: opb_grpc.OrchestratorStub, *sets: str) -> dict[str, Any]:
    status = await stub.SubmitRun(
        opb.SubmitRunRequest(path="promotion", variant=VARIANT, set=[SHORTER, *sets])
    )
    async for _ in stub.WatchRun(opb.WatchRunRequest(run_id=status.run_id)):
        pass
    results = await stub.GetResults(opb.GetResultsRequest(run_id=status.run_id))
    assert results.state == ppb.RUN_STATE_SUCCEEDED, results
    runs: list[dict[str, Any]] = json.loads(results.results_json)["runs"]
    return runs[0]


@pytest.mark.asyncio
async def test_example_agent_promotes_less_than_the_kernel() -> None:
    async with OrchestratorServer(port=0) as server:
        agent = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLE),
            "--address",
            server.address,
            "--once",
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = opb_grpc.OrchestratorStub(channel)
                kernel = await _submit_and_wait(stub)
                twice = await _submit_and_wait(
                    stub,
                    'policy.name="agent"',
                    'policy.options.agent="promote-twice"',
                    # Generous: this test is about the agent's answers, not its speed.
                    'policy.options.deadline="10s"',
                )
            _, err = await asyncio.wait_for(agent.communicate(), 30)
        finally:
            if agent.returncode is None:
                agent.kill()
                await agent.wait()
    assert agent.returncode == 0, err.decode()
    log = err.decode()
    assert "serving run" in log and "held back" in log

    pol = twice["policy"]
    assert pol["name"] == "agent" and pol["agent"] == "promote-twice"
    assert pol["fallback_timeout"] == pol["fallback_disconnect"] == pol["fallback_invalid"] == 0
    assert pol["by_kind"]["promotion"]["overridden"] > 0
    # The expected direction: markedly fewer promotions, and fewer demotions that followed them.
    assert vm(twice, "pgpromote_success") < 0.8 * vm(kernel, "pgpromote_success")
    assert vm(twice, "pgdemote_kswapd") < vm(kernel, "pgdemote_kswapd")
    assert twice["completed"] and kernel["completed"]


def test_example_agent_with_tiersim_run(tmp_path: Path) -> None:
    """The same agent against a plain `tiersim run`: its own listener, found by address file."""
    addr = tmp_path / "policy.addr"
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tiersim",
            "run",
            "promotion",
            "--variant",
            VARIANT,
            "--set",
            SHORTER,
            "--set",
            'policy.name="agent"',
            "--set",
            f'policy.options.address_file="{addr}"',
            "--set",
            'policy.options.deadline="10s"',
            "--json",
            str(out),
            "--quiet",
            "--no-progress",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(600):
            if addr.exists() or run.poll() is not None:
                break
            time.sleep(0.05)
        assert addr.exists(), run.communicate()[1].decode()
        agent = subprocess.run(
            [sys.executable, str(EXAMPLE), "--address", addr.read_text().strip(), "--once"],
            capture_output=True,
            timeout=120,
            env=env,
        )
        assert agent.returncode == 0, agent.stderr.decode()
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err.decode()
    finally:
        if run.poll() is None:
            run.kill()
    doc = json.loads(out.read_text())["runs"][0]
    assert doc["policy"]["name"] == "agent"
    assert doc["policy"]["decisions"] > 0
    assert doc["policy"]["by_kind"]["promotion"]["overridden"] > 0
