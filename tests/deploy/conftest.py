"""Fixtures of the deployment tests (helpers live in deploy_helpers.py).

Tests that need something this machine may lack (root for namespaces, a
Docker engine) skip on a developer's machine, saying why, and fail in CI
(CI=true), where a test that cannot run is a broken pipeline, not a pass.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy_helpers import NETNS_SCRIPT, NetnsHosts, can_make_netns, node_processes, require
from tiersim.orchestrator.launcher import ClusterError, Launcher


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    """A launcher with its own run directory; whatever it started is stopped afterwards."""
    launcher = Launcher(tmp_path / "run")
    yield launcher
    with contextlib.suppress(ClusterError):
        launcher.stop(grace=2)
    assert node_processes(launcher.run_dir) == []


@pytest.fixture(scope="module")
def netns_hosts() -> Iterator[NetnsHosts]:
    why = can_make_netns()
    require(why is None, why or "")
    # A prefix of our own, so a run beside another never touches its hosts.
    prefix = "t" + secrets.token_hex(3)
    hosts = NetnsHosts(prefix, 3, "198.18.101")
    up = subprocess.run(
        [
            "bash",
            str(NETNS_SCRIPT),
            "up",
            "--hosts",
            "3",
            "--prefix",
            prefix,
            "--subnet",
            hosts.subnet,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert up.returncode == 0, up.stderr
    try:
        yield hosts
    finally:
        hosts.script("down", check=False)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert prefix not in left
