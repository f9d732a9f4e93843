"""Helpers of the deployment tests: launched clusters, namespace hosts, capability checks.

Tests that need something this machine may lack (root for namespaces, a
Docker engine) skip on a developer's machine, saying why, and fail in CI
(CI=true), where a test that cannot run is a broken pipeline, not a pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiersim.orchestrator.launcher import Launcher

REPO = Path(__file__).resolve().parents[2]
NETNS_SCRIPT = REPO / "deploy" / "netns" / "netns-hosts.sh"

# The catalog scenario the acceptance tests run, shortened: a run over gRPC
# takes a few seconds on this 2-core machine instead of a minute.
SCENARIO = "default"
VARIANT = "cram tier"
SHORT = ["workloads.kv.accesses=40000"]
LONG = ["workloads.kv.accesses=200000"]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require(ok: bool, why: str) -> None:
    """Skip (developer machine) or fail (CI) when a precondition is missing."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"cannot run in CI: {why}")
    pytest.skip(why)


def tiersim_argv(*args: str, netns: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "tiersim", *args]
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


_PROBE = """
import asyncio, sys
from tiersim._security import ClientSecurity
from tiersim.nodes import GrpcNodeClient

async def main():
    token = sys.argv[2] or None
    client = await GrpcNodeClient.connect(
        sys.argv[1],
        timeout=10,
        security=ClientSecurity.from_files(token_file=token),
        request_timeout=10,
    )
    try:
        print((await client.stats()).allocated_pages)
    finally:
        await client.close()

asyncio.run(main())
"""


def allocated_pages(launcher: Launcher, node: str, netns: str | None = None) -> int:
    """Pages `node` holds now, asked over gRPC from `netns` (the orchestrator's host)."""
    argv = [sys.executable, "-c", _PROBE, launcher.addresses()[node], launcher.token_file() or ""]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"asking {node} for its pages took over 60 s") from None
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip())


def wait_until_running(
    launcher: Launcher, node: str, proc: subprocess.Popen[str], netns: str | None = None
) -> None:
    """Return once the run in `proc` has set up `node` and placed pages on it.

    The engine resets every node when it connects; the node logs it. From then
    on the node is asked how many pages it holds until it holds some, so a
    fault injected next loses pages however slow the machine is.
    """
    log = launcher.log_paths(node)[node]
    deadline = time.monotonic() + 60
    while b"node reset" not in log.read_bytes():
        assert proc.poll() is None, "the run ended before it reached the nodes"
        assert time.monotonic() < deadline, "the run did not reach the nodes within 60 s"
        time.sleep(0.1)
    deadline = time.monotonic() + 120
    while allocated_pages(launcher, node, netns) == 0:
        assert proc.poll() is None, f"the run ended before it placed pages on {node}"
        assert time.monotonic() < deadline, f"no page reached {node} within 120 s"
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before the fault"


def node_processes(run_dir: Path) -> list[int]:
    """Pids of live processes whose command line mentions `run_dir` (our nodes)."""
    needle = str(run_dir.resolve()).encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state = stat[stat.rfind(")") + 2 :].split()[0]
        if needle in cmdline and state not in ("Z", "X"):
            out.append(int(entry))
    return out


def can_make_netns() -> str | None:
    if os.geteuid() != 0:
        return "network-namespace hosts need root (or CAP_SYS_ADMIN+CAP_NET_ADMIN)"
    for tool in ("ip", "tc"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"{tool} (iproute2) is not installed"
    probe = f"tprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class NetnsHosts:
    """Three test hosts and an orchestrator host built by deploy/netns/netns-hosts.sh."""

    def __init__(self, prefix: str, count: int, subnet: str) -> None:
        self.prefix = prefix
        self.count = count
        self.subnet = subnet

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def address(self, i: int) -> str:
        return f"{self.subnet}.{10 + i}"

    def script(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(NETNS_SCRIPT), *args, "--prefix", self.prefix],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )


_DEADLINE_PROBE: dict[str, bool] = {}
