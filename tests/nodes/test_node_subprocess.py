"""`tiersim node` as a real process: address file, calls, reflection, metrics, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tiersim.nodes import GrpcNodeClient
from tiersim.v1 import node_pb2 as pb
from tiersim.v1 import node_pb2_grpc as pb_grpc

TIERSIM = [sys.executable, "-m", "tiersim"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "node did not write its address"
        time.sleep(0.05)
    return path.read_text().strip()


def test_node_process_serves_reflects_exports_metrics_and_stops(tmp_path: Path) -> None:
    addr_file = tmp_path / "sub" / "node.addr"
    addr_file.parent.mkdir()
    metrics_port = _free_port()
    proc = subprocess.Popen(
        [
            *TIERSIM,
            "node",
            "--kind",
            "cram",
            "--advertised",
            "64MiB",
            "--physical",
            "16MiB",
            "--port",
            "0",
            "--name",
            "proc0",
            "--metrics-port",
            str(metrics_port),
            "--address-file",
            str(addr_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        address = _wait_for(addr_file, proc)
        host, port = address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        assert list(addr_file.parent.iterdir()) == [addr_file]  # no temp file left behind

        page = b"tiersim " * 512

        async def use() -> None:
            async with await GrpcNodeClient.connect(address) as client:
                assert client.info.name == "proc0"
                r = await client.store([(0, page), (0, bytes(4096))])
                assert r.ok
                assert (await client.load(r.handles)).data == [page, bytes(4096)]

        asyncio.run(use())

        with grpc.insecure_channel(address) as channel:
            db = ProtoReflectionDescriptorDatabase(channel)
            services = db.get_services()
            assert "tiersim.v1.MemoryNode" in services
            assert "grpc.health.v1.Health" in services
            desc = db.FindFileContainingSymbol("tiersim.v1.MemoryNode")
            methods = {m.name for s in desc.service for m in s.method}
            assert {"Store", "StoreStream", "LoadStream", "WatchPressure", "Stats"} <= methods
            health_stub: Any = health_pb2_grpc.HealthStub(channel)
            health = health_stub.Check(
                health_pb2.HealthCheckRequest(service="tiersim.v1.MemoryNode")
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stats = pb_grpc.MemoryNodeStub(channel).Stats(pb.StatsRequest())
            assert stats.stores == 2 and stats.loads == 2

        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        text = body.read().decode()
        assert 'tiersim_node_stores_total{node="proc0"} 2.0' in text
        assert 'tiersim_node_loads_total{node="proc0"} 2.0' in text
        assert 'tiersim_node_allocated_pages{node="proc0"} 2.0' in text

        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.strip().splitlines() == [f"listening {address}"]
    assert "node listening" in err and "shutting down" in err


def test_sigint_also_stops_cleanly(tmp_path: Path) -> None:
    addr_file = tmp_path / "a"
    proc = subprocess.Popen(
        [
            *TIERSIM,
            "node",
            "--kind",
            "dram",
            "--advertised",
            "1MiB",
            "--address-file",
            str(addr_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(addr_file, proc)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0


def test_cli_errors_exit_non_zero_naming_the_problem(tmp_path: Path) -> None:
    # In-process CLI tests cover each kind of error; this checks the real exit status.
    toml = tmp_path / "node.toml"
    toml.write_text('kind = "cram"\nadvertised = "1GiB"\nphysical = "4GiB"\n')
    bad = subprocess.run(
        [*TIERSIM, "node", "--config", str(toml)], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    assert f"{toml}:3" in bad.stderr and "physical" in bad.stderr
    assert bad.stdout == ""
