"""`tiersim orchestrator serve` as a process: announce, serve, stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from tiersim.v1 import orchestrator_pb2 as opb
from tiersim.v1 import orchestrator_pb2_grpc as opb_grpc


def test_serve_announces_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    addr = tmp_path / "orchestrator.addr"
    token = tmp_path / "token"
    token.write_text("cli-token\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tiersim",
            "--log-json",
            "orchestrator",
            "serve",
            "--port",
            "0",
            "--address-file",
            str(addr),
            "--token-file",
            str(token),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        for _ in range(600):
            if addr.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert addr.exists(), proc.communicate(timeout=10)
        address = addr.read_text().strip()
        with grpc.insecure_channel(address) as channel:
            stub = opb_grpc.OrchestratorStub(channel)
            metadata = (("authorization", "Bearer cli-token"),)
            assert stub.ListRuns(opb.ListRunsRequest(), metadata=metadata, timeout=10).runs == []
            try:
                stub.ListRuns(opb.ListRunsRequest(), timeout=10)
                raise AssertionError("accepted a call without the token")
            except grpc.RpcError as refused:
                assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.startswith(f"listening {address}")
    assert '"orchestrator stopped"' in err and '"security": "token"' in err


def test_serve_rejects_bad_flags() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "tiersim", "orchestrator", "serve", "--counters-interval", "soon"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "--counters-interval" in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "tiersim", "orchestrator", "serve", "--tls-cert", "x.pem"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "TLS needs both a certificate and its key" in run.stderr
