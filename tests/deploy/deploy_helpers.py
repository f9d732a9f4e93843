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


def wait_until_running(
    launcher: Launcher, node: str, proc: subprocess.Popen[str], settle: float = 2.0
) -> None:
    """Return once the run in `proc` has set up `node` and worked a while.

    The engine resets every node when it connects; the node logs it. From
    then on the run moves pages, and `settle` seconds later the node holds
    some (the scenarios used here demote early). Timing the fault from the
    run's own progress, not from its start, keeps it mid-run on a busy machine.
    """
    log = launcher.log_paths(node)[node]
    deadline = time.monotonic() + 60
    while b"node reset" not in log.read_bytes():
        assert proc.poll() is None, "the run ended before it reached the nodes"
        assert time.monotonic() < deadline, "the run did not reach the nodes within 60 s"
        time.sleep(0.1)
    time.sleep(settle)
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
