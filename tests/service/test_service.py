"""tiersim.v1.Orchestrator: submissions, the queue, events, results, cancellation, bad input."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from service_harness import Service, service, small

from tiersim.orchestrator.agent_client import PolicyAgentClient, echo
from tiersim.orchestrator.engine import run
from tiersim.orchestrator.scenario import loads_scenario
from tiersim.v1 import orchestrator_pb2 as opb
from tiersim.v1 import policy_pb2 as ppb

pytestmark = pytest.mark.asyncio

Q, R, OK, FAIL, CANCEL = (
    ppb.RUN_STATE_QUEUED,
    ppb.RUN_STATE_RUNNING,
    ppb.RUN_STATE_SUCCEEDED,
    ppb.RUN_STATE_FAILED,
    ppb.RUN_STATE_CANCELLED,
)


def without_wall_clock(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as JSON gives it back, minus the wall-clock field."""
    return {k: v for k, v in json.loads(json.dumps(doc)).items() if k != "wall_time_s"}


async def _code(call: Any) -> tuple[grpc.StatusCode, str, dict[str, Any]]:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        md = {k: v for k, v in (err.trailing_metadata() or ())}
        return err.code(), err.details() or "", md
    raise AssertionError("the call succeeded")


async def test_a_submitted_scenario_runs_streams_events_and_gives_the_engines_results() -> None:
    text = small()
    async with service(counters_interval_ns=20_000_000) as s:
        status = await s.submit(text, label="first")
        assert status.state in (Q, R)
        assert status.scenario == "svc-test" and status.label == "first"
        assert list(status.variants) == ["base", "no demotion"]
        events = await s.wait(status.run_id)
        final = await s.stub.GetRun(opb.GetRunRequest(run_id=status.run_id))
        doc = await s.results(status.run_id)
    kinds = Counter(ev.WhichOneof("body") for ev in events)
    assert kinds["progress"] > 50 and kinds["counters"] >= 4
    assert kinds["pressure"] >= 1 and kinds["cgroup_limit"] >= 1
    assert events[0].WhichOneof("body") == "run_state" and events[0].run_state.state == R
    assert events[-1].run_state.state == OK
    assert {ev.variant for ev in events if ev.WhichOneof("body") == "progress"} == {
        "base",
        "no demotion",
    }
    seq = [ev.sequence for ev in events]
    assert seq == sorted(seq) and len(set(seq)) == len(seq)
    limit = next(ev.cgroup_limit for ev in events if ev.WhichOneof("body") == "cgroup_limit")
    assert (limit.host, limit.cgroup, limit.event) == ("h0", "app", "max")
    assert final.state == OK and final.finished_unix_ns >= final.started_unix_ns > 0
    # Through the service, the same results as the engine gives directly.
    assert doc["scenario"] == "svc-test" and len(doc["runs"]) == 2
    direct = [await run(v) for v in loads_scenario(text).variants]
    assert [without_wall_clock(d) for d in doc["runs"]] == [without_wall_clock(d) for d in direct]


async def test_scenario_errors_name_file_line_and_key() -> None:
    async with service() as s:
        code, details, md = await _code(s.submit('[scenario]\nname = "x"\nduration = \n'))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "invalid TOML" in details and "<submitted scenario>:3" in details
        assert md["tiersim-config-line"] == "3"

        bad = small().replace('duration = "150ms"', 'duration = "soon"')
        code, details, md = await _code(s.submit(bad, label="mine"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert md["tiersim-config-key"] == "scenario.duration"
        assert md["tiersim-config-file"] == "<mine>" and "soon" in details

        code, details, _ = await _code(s.submit(small(), set=["nonsense"]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "key=value" in details
        code, details, md = await _code(s.submit(small(), set=["tunables.nope=1"]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "nope" in details
        code, details, _ = await _code(s.submit(small(), variant="missing"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "no variant 'missing'" in details
        code, details, _ = await _code(s.stub.SubmitRun(opb.SubmitRunRequest()))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "give a scenario" in details
        code, _, _ = await _code(s.submit("x" * ((1 << 20) + 1)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        # Nothing of this was queued.
        assert not (await s.stub.ListRuns(opb.ListRunsRequest())).runs


async def test_undecodable_requests_are_invalid_argument() -> None:
    async with service() as s:
        method: Any = s.channel.unary_unary("/tiersim.v1.Orchestrator/SubmitRun")
        call = method(b"\xff\xff\xff")
        code, details, _ = await _code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "tiersim.v1.SubmitRunRequest" in details


async def test_scenario_paths(tmp_path: Path) -> None:
    inside = tmp_path / "root"
    inside.mkdir()
    (inside / "mine.toml").write_text(small())
    (tmp_path / "outside.toml").write_text(small())
    async with service(scenario_root=inside) as s:
        ok = await s.submit(path="mine.toml", variant="base")
        assert ok.variants == ["base"]
        code, details, _ = await _code(s.submit(path="../outside.toml"))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "outside the scenario root" in details
        code, details, _ = await _code(s.submit(path="absent.toml"))
        assert code == grpc.StatusCode.NOT_FOUND and "catalog" in details
        # Catalog names always work.
        cat = await s.submit(path="promotion", variant="fault-driven only")
        assert cat.scenario == "promotion"
        await s.stub.CancelRun(opb.CancelRunRequest(run_id=cat.run_id))
        await s.wait(ok.run_id)
    async with service() as s:
        anywhere = await s.submit(path=str(tmp_path / "outside.toml"), variant="base")
        await s.wait(anywhere.run_id)
        assert (await s.results(anywhere.run_id))["source"] == str(tmp_path / "outside.toml")


async def test_unknown_runs_are_not_found() -> None:
    async with service() as s:
        for call in (
            s.stub.GetRun(opb.GetRunRequest(run_id="run-x")),
            s.stub.GetResults(opb.GetResultsRequest(run_id="run-x")),
            s.stub.CancelRun(opb.CancelRunRequest(run_id="run-x")),
        ):
            code, details, _ = await _code(call)
            assert code == grpc.StatusCode.NOT_FOUND and "run-x" in details
        stream = s.stub.WatchRun(opb.WatchRunRequest(run_id="run-x"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.read()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def _states(s: Service) -> list[int]:
    return [r.state for r in (await s.stub.ListRuns(opb.ListRunsRequest())).runs]


async def test_runs_queue_and_run_one_at_a_time() -> None:
    async with service() as s:
        runs = [await s.submit(small(), variant="base") for _ in range(3)]
        assert [r.state for r in runs] == [R, Q, Q]
        assert [r.queue_position for r in runs[1:]] == [0, 1]
        code, details, _ = await _code(
            s.stub.GetResults(opb.GetResultsRequest(run_id=runs[1].run_id))
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "not finished" in details
        seen_running = 0
        while True:
            states = await _states(s)
            seen_running = max(seen_running, states.count(R))
            if all(st == OK for st in states):
                break
            await asyncio.sleep(0.02)
        assert seen_running == 1
        statuses = [await s.stub.GetRun(opb.GetRunRequest(run_id=r.run_id)) for r in runs]
        for before, after in itertools.pairwise(statuses):
            assert after.started_unix_ns >= before.finished_unix_ns


async def test_non_exclusive_runs_share_the_orchestrator() -> None:
    async with service() as s:
        shared = [await s.submit(small("400ms", exclusive=False), variant="base") for _ in range(2)]
        assert [r.state for r in shared] == [R, R]
        exclusive = await s.submit(small(), variant="base")
        assert exclusive.state == Q
        assert exclusive.exclusive and not any(r.exclusive for r in shared)
        for r in shared:
            await s.wait(r.run_id)
        await s.wait(exclusive.run_id)
        assert await _states(s) == [OK, OK, OK]


async def test_queue_full_is_resource_exhausted() -> None:
    async with service(max_queued=1) as s:
        first = await s.submit(small("1s"), variant="base")
        second = await s.submit(small(), variant="base")
        assert (first.state, second.state) == (R, Q)
        code, details, _ = await _code(s.submit(small()))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue is full" in details
        await s.stub.CancelRun(opb.CancelRunRequest(run_id=first.run_id))


async def test_cancel_queued_running_and_finished_runs() -> None:
    async with service() as s:
        running = await s.submit(small("5s"), variant="base")
        queued = await s.submit(small(), variant="base")
        after = await s.stub.CancelRun(opb.CancelRunRequest(run_id=queued.run_id))
        assert after.state == CANCEL
        # The running run keeps the server responsive: it answers while the run computes.
        start = time.perf_counter()
        now = await s.stub.GetRun(opb.GetRunRequest(run_id=running.run_id))
        assert now.state == R and time.perf_counter() - start < 2.0
        after = await s.stub.CancelRun(opb.CancelRunRequest(run_id=running.run_id))
        assert after.state == CANCEL and after.error == "cancelled by request"
        results = await s.stub.GetResults(opb.GetResultsRequest(run_id=running.run_id))
        assert results.state == CANCEL
        code, details, _ = await _code(
            s.stub.CancelRun(opb.CancelRunRequest(run_id=running.run_id))
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "already finished" in details
        # The queue moves on after a cancellation.
        last = await s.submit(small(), variant="base")
        assert last.state == R
        await s.wait(last.run_id)


async def test_a_run_that_cannot_start_fails_with_its_reason() -> None:
    text = small() + '\n[policy]\nname = "agent"\noptions = { connect_timeout = "100ms" }\n'
    async with service() as s:
        status = await s.submit(text, variant="base")
        events = await s.wait(status.run_id)
        assert events[-1].run_state.state == FAIL
        assert "no policy agent connected within 0.1 s" in events[-1].run_state.error
        final = await s.stub.GetRun(opb.GetRunRequest(run_id=status.run_id))
        assert final.state == FAIL and "policy.options.connect_timeout" in final.error


async def test_a_run_with_an_agent_through_the_service() -> None:
    """An agent registered for one run id is claimed by that run; it subscribes to its events."""
    # A generous deadline: this test is about claiming, not the agent's speed.
    text = small() + '\n[policy]\nname = "agent"\noptions = { deadline = "10s" }\n'
    async with service() as s:
        status = await s.submit(text, variant="base")
        agent = PolicyAgentClient(
            s.address, decisions=["demotion", "admission"], run_id=status.run_id
        )
        events: list[ppb.Event] = []
        async with agent, grpc.aio.insecure_channel(s.address) as channel:
            sub: Any = channel.unary_stream(
                "/tiersim.v1.PolicyAgent/Subscribe", response_deserializer=ppb.Event.FromString
            )(
                ppb.SubscribeRequest(
                    run_id=status.run_id, kinds=[ppb.EVENT_KIND_PRESSURE]
                ).SerializeToString()
            )

            async def collect() -> None:
                async for ev in sub:
                    events.append(ev)

            collector = asyncio.create_task(collect())
            await agent.serve(echo, runs=1)
            await asyncio.wait_for(collector, 10)
        doc = await s.results(status.run_id)
    assert agent.attached is not None and agent.attached.run_id == status.run_id
    pol = doc["runs"][0]["policy"]
    assert pol["decisions"] == pol["requests"] > 0
    assert set(pol["by_kind"]) == {"demotion", "admission"}
    assert events and {ev.WhichOneof("body") for ev in events} == {"pressure"}


async def test_finished_runs_are_forgotten_beyond_the_limit() -> None:
    async with service(keep_finished=2) as s:
        runs = [await s.submit(small("20ms"), variant="base") for _ in range(3)]
        # Runs go one at a time, in order: when the last is over, so are the others
        # (and the first may be forgotten already, so it is not waited for).
        await s.wait(runs[2].run_id)
        code, _, _ = await _code(s.stub.GetRun(opb.GetRunRequest(run_id=runs[0].run_id)))
        assert code == grpc.StatusCode.NOT_FOUND
        assert (await s.stub.GetRun(opb.GetRunRequest(run_id=runs[2].run_id))).state == OK


async def test_health_and_reflection() -> None:
    async with service() as s:
        health: Any = health_pb2_grpc.HealthStub(s.channel)
        for name in ("", "tiersim.v1.Orchestrator", "tiersim.v1.PolicyAgent"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl: Any = reflection_pb2_grpc.ServerReflectionStub(s.channel)  # type: ignore[arg-type]
        call = refl.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await call.read()
        await call.done_writing()
        names = {svc.name for svc in reply.list_services_response.service}
        assert {"tiersim.v1.Orchestrator", "tiersim.v1.PolicyAgent"} <= names
