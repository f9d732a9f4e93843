"""The local launcher: a three-node cluster runs a catalog scenario with the embedded results.

Also: the launcher's promises (no duplicates, nothing left behind, stop of
nothing says so) and its faults, seen by a run in progress.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from check_results import differences

from deploy_helpers import (
    LONG,
    SCENARIO,
    SHORT,
    VARIANT,
    node_processes,
    tiersim_argv,
    wait_until_running,
)
from tiersim.orchestrator.launcher import (
    ClusterError,
    ClusterSpec,
    HostSpec,
    Launcher,
    NodeSpec,
    bind_scenario,
    cluster_from_scenario,
)
from tiersim.orchestrator.results import strip_wall_clock

pytestmark = pytest.mark.slow


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tiersim_argv(*args), capture_output=True, text=True, timeout=timeout)


def run_json(scenario: str | Path, out: Path, *sets: str, timeout: float = 300) -> dict:
    argv = [
        "--log-level",
        "warning",
        "run",
        str(scenario),
        "--variant",
        VARIANT,
        "--quiet",
        "--json",
        str(out),
    ]
    for s in sets:
        argv += ["--set", s]
    done = run_cli(*argv, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert len(doc["runs"]) == 1
    return doc["runs"][0]


def test_three_node_cluster_gives_the_embedded_results(launcher: Launcher, tmp_path: Path) -> None:
    """Acceptance: start; run a catalog scenario against it and embedded; compare; stop."""
    spec = cluster_from_scenario(SCENARIO)
    t0 = time.monotonic()
    addresses = launcher.start(spec)
    started = time.monotonic() - t0
    assert sorted(addresses) == ["cram0", "dram0", "swap0"]
    assert all(a.startswith("127.0.0.1:") for a in addresses.values())
    assert started < 30
    assert json.loads(launcher.addresses_path.read_text())["nodes"] == addresses
    assert all(s.health == "SERVING" and s.state == "running" for s in launcher.status())

    bound = tmp_path / "bound.toml"
    bound.write_text(
        bind_scenario(
            SCENARIO, addresses, devices=launcher.devices(), token_file=launcher.token_file()
        )
    )
    over_grpc = run_json(bound, tmp_path / "grpc.json", *SHORT)
    embedded = run_json(SCENARIO, tmp_path / "embedded.json", *SHORT)
    assert differences(strip_wall_clock(over_grpc), strip_wall_clock(embedded)) == []
    vm = over_grpc["hosts"]["host0"]["vmstat"]
    assert vm["pgmigrate_success"] > 0  # pages really crossed the wire
    pids = [s.pid for s in launcher.status()]

    stopped = launcher.stop()
    assert sorted(stopped) == ["cram0", "dram0", "swap0"]
    assert node_processes(launcher.run_dir) == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert not launcher.state_path.exists()
    assert not launcher.addresses_path.exists()


def test_cli_start_twice_stop_twice(tmp_path: Path) -> None:
    run_dir = tmp_path / "cli"
    start = run_cli("cluster", "start", "--scenario", SCENARIO, "--run-dir", str(run_dir))
    try:
        assert start.returncode == 0, start.stderr
        assert "3 nodes healthy" in start.stdout
        again = run_cli("cluster", "start", "--scenario", SCENARIO, "--run-dir", str(run_dir))
        assert again.returncode == 1
        assert "already running" in again.stderr and "3 of 3 nodes up" in again.stderr
        status = run_cli("cluster", "status", "--json", "--run-dir", str(run_dir))
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert doc["healthy"] and len(doc["nodes"]) == 3
        sets = run_cli("cluster", "addresses", "--format", "sets", "--run-dir", str(run_dir))
        assert sets.stdout.count("--set nodes.") == 3
        addresses = json.loads(run_cli("cluster", "addresses", "--run-dir", str(run_dir)).stdout)
        health = run_cli("health", *addresses.values())
        assert health.returncode == 0 and health.stdout.count("SERVING") == 3
        logs = run_cli("cluster", "logs", "cram0", "-n", "5", "--run-dir", str(run_dir))
        assert "node listening" in logs.stdout
    finally:
        stop = run_cli("cluster", "stop", "--run-dir", str(run_dir))
    assert stop.returncode == 0, stop.stderr
    assert "stopped 3 nodes" in stop.stdout
    assert node_processes(run_dir) == []
    again = run_cli("cluster", "stop", "--run-dir", str(run_dir))
    assert again.returncode == 1
    assert "no cluster running" in again.stderr
    status = run_cli("cluster", "status", "--run-dir", str(run_dir))
    assert status.returncode == 1 and "no cluster running" in status.stderr


def test_cli_bad_cluster_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[nodes]]\nname = "a"\nkind = "hbm"\ncapacity = "1MiB"\n')
    done = run_cli("cluster", "start", str(bad), "--run-dir", str(tmp_path / "r"))
    assert done.returncode == 2
    assert f"{bad}:3" in done.stderr and "unknown kind 'hbm'" in done.stderr
    assert not (tmp_path / "r" / "state.json").exists()


def test_health_of_nothing_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = run_cli("health", f"127.0.0.1:{port}", "--timeout", "0.5")
    assert done.returncode == 1 and "UNREACHABLE" in done.stdout


def test_failed_start_leaves_nothing_behind(launcher: Launcher) -> None:
    """A node that cannot bind fails the start; the nodes already up are stopped."""
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        spec = ClusterSpec(
            name="clash",
            hosts=(HostSpec(name="local"),),
            nodes=(
                NodeSpec(
                    name="ok", kind="dram", host="local", advertised=1 << 20, physical=1 << 20
                ),
                NodeSpec(
                    name="bad",
                    kind="dram",
                    host="local",
                    advertised=1 << 20,
                    physical=1 << 20,
                    port=port,
                ),
            ),
            start_timeout_s=20,
        )
        with pytest.raises(ClusterError, match="node bad exited during start-up"):
            launcher.start(spec)
    assert node_processes(launcher.run_dir) == []
    assert not launcher.state_path.exists()
    with pytest.raises(ClusterError, match="no cluster running"):
        launcher.stop()


def test_stale_state_is_cleaned_and_restart_fault_comes_back(launcher: Launcher) -> None:
    spec = ClusterSpec(
        name="small",
        hosts=(HostSpec(name="local"),),
        nodes=(
            NodeSpec(name="n", kind="dram", host="local", advertised=1 << 20, physical=1 << 20),
        ),
    )
    address = launcher.start(spec)["n"]
    assert "restarted n empty at " + address in launcher.fault("n", "restart")
    assert [s.health for s in launcher.status()] == ["SERVING"]
    with pytest.raises(ClusterError, match="no link of its own"):
        launcher.fault("n", "cut")
    # Every node dies behind the launcher's back: the next start cleans up and starts.
    pid = launcher.status()[0].pid
    launcher.fault("n", "kill")
    assert launcher.status()[0].state == "killed"
    assert (
        not Path(f"/proc/{pid}/cmdline").exists() or not Path(f"/proc/{pid}/cmdline").read_bytes()
    )
    assert launcher.start(spec)["n"]


def _run_with_fault(
    launcher: Launcher, tmp_path: Path, action: str, on_node_loss: str, node_timeout: str = "2s"
) -> tuple[dict | None, float, subprocess.CompletedProcess[str] | None]:
    """Run the scenario against the cluster; inject `action` into cram0 mid-run.

    Returns (results, seconds from the fault to the run's end, process).
    The run is given a hard limit so that a client without deadlines shows
    up as a failed expectation, never as a hung test.
    """
    addresses = launcher.start(cluster_from_scenario(SCENARIO))
    bound = tmp_path / "bound.toml"
    bound.write_text(
        bind_scenario(
            SCENARIO, addresses, devices=launcher.devices(), token_file=launcher.token_file()
        )
    )
    out = tmp_path / "fault.json"
    argv = tiersim_argv(
        "--log-level",
        "warning",
        "run",
        str(bound),
        "--variant",
        VARIANT,
        "--quiet",
        "--json",
        str(out),
        "--set",
        LONG[0],
        "--set",
        f"scenario.on_node_loss={on_node_loss}",
        "--set",
        f"scenario.node_timeout={node_timeout}",
    )
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_running(launcher, "cram0", proc)
        launcher.fault("cram0", action)
        faulted = time.monotonic()
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - faulted, None
        took = time.monotonic() - faulted
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
        if action == "pause":
            launcher.fault("cram0", "resume")
    done = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    assert proc.returncode == 0, stderr[-2000:]
    return json.loads(out.read_text())["runs"][0], took, done


def _assert_lost(run: dict, stopped: bool) -> None:
    lost = run["failures"]["nodes_lost"]
    assert [x["node"] for x in lost] == ["cram0"]
    assert lost[0]["pages_lost"] > 0
    assert run["failures"]["pages_lost"] == lost[0]["pages_lost"]
    assert run["nodes"]["cram0"]["lost"] is True
    if stopped:
        assert run["completed"] is False and "cram0 lost" in run["stopped"]
    else:
        assert run["completed"] is True and run["stopped"] is None


def test_killed_node_is_lost_and_the_run_carries_on(launcher: Launcher, tmp_path: Path) -> None:
    run, _, _ = _run_with_fault(launcher, tmp_path, "kill", "continue")
    assert run is not None
    _assert_lost(run, stopped=False)
    assert "UNAVAILABLE" in run["failures"]["nodes_lost"][0]["reason"]


def test_killed_node_stops_the_run_at_once(launcher: Launcher, tmp_path: Path) -> None:
    run, took, _ = _run_with_fault(launcher, tmp_path, "kill", "stop")
    assert run is not None
    _assert_lost(run, stopped=True)
    # A reset connection is seen at once, not after node_timeout: UNAVAILABLE, not
    # DEADLINE_EXCEEDED (the time is bounded only generously: a slow machine).
    assert "UNAVAILABLE" in run["failures"]["nodes_lost"][0]["reason"]
    assert took < 15


def test_paused_node_is_lost_within_node_timeout(launcher: Launcher, tmp_path: Path) -> None:
    run, took, _ = _run_with_fault(launcher, tmp_path, "pause", "stop", node_timeout="2s")
    assert run is not None, "the run hung on a paused node"
    _assert_lost(run, stopped=True)
    assert "DEADLINE_EXCEEDED" in run["failures"]["nodes_lost"][0]["reason"]
    # The deadline, plus the time to write results and exit (generous: a slow machine; the
    # DEADLINE_EXCEEDED reason above already shows the deadline acted).
    assert took < 2 + 15


def test_node_restarted_empty_is_lost_and_the_run_carries_on(
    launcher: Launcher, tmp_path: Path
) -> None:
    """A node that comes back empty must not be trusted with the pages it held."""
    run, _, _ = _run_with_fault(launcher, tmp_path, "restart", "continue")
    assert run is not None
    _assert_lost(run, stopped=False)
    assert [s.health for s in launcher.status() if s.name == "cram0"] == ["SERVING"]
