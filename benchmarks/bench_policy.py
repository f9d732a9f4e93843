"""Decisions through an external policy agent over loopback, against the built-in policy.

    python benchmarks/bench_policy.py [--quick] [--variant NAME] [--repeat N]

Runs the hint-fault variants of the `promotion` scenario twice each, in
this one process: with the built-in kernel policy, and with every decision
kind delegated to an agent in another process (started here, connected over
loopback gRPC to a PolicyAgent server in this process). The agent echoes the
built-in verdicts it is sent, so both runs must give identical results: that
is checked, and makes the comparison one of cost alone.

Both promotion modes are measured: per fault (`promote_batch = 1`, the
kernel's do_numa_page(), one round trip per hint fault) and batched
(`promote_batch = 64`, one round trip per batch of hint-faulted pages).

Printed per variant: wall time of each run, decisions asked of the agent,
decisions per second (over the whole run, and over the time spent waiting
for answers), the mean round trip, and the ratio of the agent run's wall
time to the built-in's. Target: ratio <= 3.

These are figures to read, not assertions: the machine may be busy. Runs
alternate built-in / agent and the best of `--repeat` is kept for each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any

VARIANTS = ("hint faults, 1000 ms", "hint faults, 100 ms", "hint faults, 1 MB/s")
ALL_KINDS = ["demotion", "promotion", "admission", "zswap_store", "zswap_writeback"]


def _comparable(doc: dict[str, Any]) -> Any:
    return json.loads(
        json.dumps({k: v for k, v in doc.items() if k not in ("wall_time_s", "policy")})
    )


async def serve_agent(address: str) -> None:
    """The external agent: echo the built-in verdicts until the stream ends."""
    from tiersim.orchestrator.agent_client import PolicyAgentClient, echo

    async with PolicyAgentClient(address, decisions=ALL_KINDS, name="bench") as agent:
        await agent.serve(echo)


ECHO_METHOD = "/tiersim.bench.Echo/Chat"


async def serve_echo(address_file: str) -> None:
    """The transport baseline's far end: a bidi stream that echoes raw bytes."""
    import grpc
    import grpc.aio

    async def chat(requests: Any, context: Any) -> Any:
        async for raw in requests:
            yield raw

    handler = grpc.method_handlers_generic_handler(
        "tiersim.bench.Echo", {"Chat": grpc.stream_stream_rpc_method_handler(chat)}
    )
    server = grpc.aio.server(handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    with open(address_file + ".tmp", "w") as f:
        f.write(f"127.0.0.1:{port}")
    os.replace(address_file + ".tmp", address_file)
    await server.wait_for_termination()


async def bare_round_trip_us(n: int = 2000) -> float:
    """Mean round trip of one 200-byte message on a bare gRPC bidi stream to a
    Python process over loopback: the floor under any per-decision round trip."""
    import grpc.aio

    with tempfile.TemporaryDirectory() as tmp:
        addr_file = os.path.join(tmp, "echo.addr")
        proc = subprocess.Popen([sys.executable, __file__, "--serve-echo", addr_file])
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(addr_file):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the echo server did not start")
                await asyncio.sleep(0.05)
            with open(addr_file) as f:
                address = f.read()
            async with grpc.aio.insecure_channel(address) as channel:
                call: Any = channel.stream_stream(ECHO_METHOD)()
                message = b"x" * 200
                for _ in range(200):  # warm up
                    await call.write(message)
                    await call.read()
                start = time.perf_counter()
                for _ in range(n):
                    await call.write(message)
                    await call.read()
                elapsed = time.perf_counter() - start
                await call.done_writing()
        finally:
            proc.terminate()
            proc.wait(10)
    return elapsed / n * 1e6


async def bench(args: argparse.Namespace) -> int:
    from tiersim._security import ServerSecurity
    from tiersim.orchestrator._cli import load
    from tiersim.orchestrator._grpc_server import start_server
    from tiersim.orchestrator.agent import RUN_CONTEXT, SERVICE_NAME, PolicyHub, RunContext
    from tiersim.orchestrator.config import PolicyConfig
    from tiersim.orchestrator.engine import run

    hub = PolicyHub()
    server, _, port = await start_server(
        "127.0.0.1:0", ServerSecurity(), [hub.handler()], [SERVICE_NAME]
    )
    address = f"127.0.0.1:{port}"
    agent = subprocess.Popen([sys.executable, __file__, "--serve-agent", address])
    token = RUN_CONTEXT.set(RunContext(hub, "bench", "promotion"))
    rows = []
    try:
        # Warm up: content models, caches and the agent's connection, in neither figure.
        warm = load("promotion", ['scenario.duration="1s"']).variants[1]
        await run(warm)
        await run(replace(warm, policy=PolicyConfig("agent", {"agent": "bench"})))
        for batch in args.promote_batch:
            sets = ['scenario.duration="2s"'] if args.quick else []
            sets.append(f"tunables.numa.promote_batch={batch}")
            scenario = load("promotion", sets)
            for cfg in [v for v in scenario.variants if v.name in (args.variant or VARIANTS)]:
                builtin_s = agent_s = float("inf")
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    base = await run(cfg)
                    builtin_s = min(builtin_s, time.perf_counter() - start)
                    agent_cfg = replace(cfg, policy=PolicyConfig("agent", {"agent": "bench"}))
                    start = time.perf_counter()
                    doc = await run(agent_cfg)
                    agent_s = min(agent_s, time.perf_counter() - start)
                pol = doc["policy"]
                rows.append(
                    {
                        "batch": batch,
                        "variant": cfg.name,
                        "builtin_s": builtin_s,
                        "agent_s": agent_s,
                        "requests": pol["requests"],
                        "verdicts": pol["verdicts"],
                        "fallbacks": pol["fallback_timeout"]
                        + pol["fallback_disconnect"]
                        + pol["fallback_invalid"],
                        "wait_s": pol["wait_s"],
                        "rtt_us": pol["mean_round_trip_us"],
                        "identical": _comparable(doc) == _comparable(base),
                    }
                )
    finally:
        RUN_CONTEXT.reset(token)
        hub.close_all("benchmark over")
        await server.stop(1.0)
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()

    bare_us = await bare_round_trip_us()
    length = "2 s of simulated time (quick)" if args.quick else "full length"
    print(
        f"promotion scenario, {length}; best of {args.repeat}; echo agent in another process "
        "over loopback gRPC, registered for every decision kind"
    )
    head = (
        f"{'promote_batch':>13} {'variant':<21}{'built-in s':>11}{'agent s':>9}{'ratio':>7}"
        f"{'requests':>10}{'decisions':>11}{'dec/s':>8}{'rtt us':>8}{'same':>6}"
    )
    print(head)
    print("-" * len(head))
    worst: dict[int, float] = {}
    for r in rows:
        ratio = r["agent_s"] / r["builtin_s"]
        worst[r["batch"]] = max(worst.get(r["batch"], 0.0), ratio)
        print(
            f"{r['batch']:>13} {r['variant']:<21}{r['builtin_s']:>11.2f}{r['agent_s']:>9.2f}"
            f"{ratio:>6.2f}x{r['requests']:>10,}{r['verdicts']:>11,}"
            f"{r['verdicts'] / r['agent_s']:>8,.0f}{r['rtt_us']:>8.0f}"
            f"{'yes' if r['identical'] else 'NO':>6}"
        )
        if r["fallbacks"]:
            print(f"  ({r['fallbacks']} decisions fell back to the built-in policy)")
    print(
        "requests: round trips to the agent; decisions: per-page verdicts it returned; dec/s: "
        "decisions per second of the agent run; same: results identical to the built-in's"
    )
    print(
        f"bare gRPC round trip to a Python process over loopback (same run): {bare_us:.0f} us; "
        "floor: the built-in run plus one bare round trip per request"
    )
    for r in rows:
        floor = (r["builtin_s"] + r["requests"] * bare_us / 1e6) / r["builtin_s"]
        print(
            f"  promote_batch {r['batch']:>3} {r['variant']:<21} agent rtt / bare = "
            f"{r['rtt_us'] / bare_us:.2f}; ratio floor {floor:.2f}x"
        )
    for batch, ratio in worst.items():
        mode = "per fault" if batch == 1 else f"batches of {batch}"
        print(f"promotion {mode}: worst ratio {ratio:.2f}x (target <= 3x)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s of simulated time per run")
    parser.add_argument(
        "--variant",
        action="append",
        help="variant(s) to run (default: the three with hint-fault promotion)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each kind; best is kept")
    parser.add_argument(
        "--promote-batch",
        type=int,
        action="append",
        metavar="N",
        help="tunables.numa.promote_batch of both runs, repeatable "
        "(default: 1, per fault, then 64)",
    )
    parser.add_argument("--serve-agent", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--serve-echo", metavar="ADDRESS_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_agent:
        asyncio.run(serve_agent(args.serve_agent))
        return 0
    if args.serve_echo:
        asyncio.run(serve_echo(args.serve_echo))
        return 0
    args.promote_batch = args.promote_batch or [1, 64]
    return asyncio.run(bench(args))


if __name__ == "__main__":
    raise SystemExit(main())
