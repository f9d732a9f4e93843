"""A scenario across network-namespace hosts: same results as embedded, and link faults.

Three hosts (h1..h3) each run one memory node; the orchestrator runs in a
fourth namespace, so every page crosses a veth pair and a bridge.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from check_results import differences

from deploy_helpers import (
    LONG,
    NETNS_SCRIPT,
    SCENARIO,
    SHORT,
    VARIANT,
    NetnsHosts,
    node_processes,
    tiersim_argv,
    wait_until_running,
)
from tiersim.orchestrator.launcher import (
    ClusterSpec,
    HostSpec,
    Launcher,
    bind_scenario,
    cluster_from_scenario,
)
from tiersim.orchestrator.results import strip_wall_clock

pytestmark = pytest.mark.slow


def netns_cluster(hosts: NetnsHosts) -> ClusterSpec:
    """The scenario's nodes, one per namespace host: dram0 on h1, cram0 on h2, swap0 on h3."""
    import dataclasses

    spec = cluster_from_scenario(SCENARIO)
    host_specs = tuple(
        HostSpec(name=f"h{i}", address=hosts.address(i), netns=hosts.ns(f"h{i}"), link="eth0")
        for i in range(1, hosts.count + 1)
    )
    nodes = tuple(dataclasses.replace(n, host=f"h{i + 1}") for i, n in enumerate(spec.nodes))
    return dataclasses.replace(spec, name="netns", hosts=host_specs, nodes=nodes)


def orchestrate(hosts: NetnsHosts, *args: str) -> list[str]:
    return tiersim_argv("--log-level", "warning", *args, netns=hosts.ns("orch"))


def test_scenario_across_namespace_hosts_equals_embedded(
    netns_hosts: NetnsHosts, launcher: Launcher, tmp_path: Path
) -> None:
    addresses = launcher.start(netns_cluster(netns_hosts))
    assert {a.rpartition(":")[0] for a in addresses.values()} == {
        netns_hosts.address(i) for i in (1, 2, 3)
    }
    status = launcher.status()
    assert [(s.health, s.link) for s in status] == [("SERVING", "up")] * 3
    # Beyond loopback the nodes demand a token: the launcher made one for them.
    token = Path(str(launcher.token_file()))
    assert token.parent == launcher.run_dir.resolve()
    assert token.stat().st_mode & 0o777 == 0o600
    bound = tmp_path / "bound.toml"
    bound.write_text(
        bind_scenario(
            SCENARIO, addresses, devices=launcher.devices(), token_file=launcher.token_file()
        )
    )
    out = tmp_path / "netns.json"
    argv = ["run", str(bound), "--variant", VARIANT, "--quiet", "--json", str(out)]
    done = subprocess.run(
        orchestrate(netns_hosts, *argv, "--set", SHORT[0]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    across = json.loads(out.read_text())["runs"][0]
    # The nodes are not reachable from the machine's own namespace at all.
    unreachable = subprocess.run(
        tiersim_argv("health", addresses["cram0"], "--timeout", "0.5"), capture_output=True
    )
    assert unreachable.returncode == 1
    emb = tmp_path / "embedded.json"
    done = subprocess.run(
        tiersim_argv(
            "--log-level",
            "warning",
            "run",
            SCENARIO,
            "--variant",
            VARIANT,
            "--quiet",
            "--json",
            str(emb),
            "--set",
            SHORT[0],
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    embedded = json.loads(emb.read_text())["runs"][0]
    assert differences(strip_wall_clock(across), strip_wall_clock(embedded)) == []
    assert across["hosts"]["host0"]["vmstat"]["pgmigrate_success"] > 0
    launcher.stop()
    assert node_processes(launcher.run_dir) == []
    for i in (1, 2, 3):
        pids = subprocess.run(
            ["ip", "netns", "pids", netns_hosts.ns(f"h{i}")], capture_output=True, text=True
        ).stdout
        assert pids.strip() == ""


def _fault_mid_run(
    hosts: NetnsHosts, launcher: Launcher, tmp_path: Path, action: str, on_node_loss: str
) -> tuple[dict | None, float]:
    addresses = launcher.start(netns_cluster(hosts))
    bound = tmp_path / "bound.toml"
    bound.write_text(
        bind_scenario(
            SCENARIO, addresses, devices=launcher.devices(), token_file=launcher.token_file()
        )
    )
    out = tmp_path / "fault.json"
    argv = orchestrate(
        hosts,
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
        "scenario.node_timeout=2s",
    )
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_running(launcher, "cram0", proc, netns=hosts.ns("orch"))
        what = launcher.fault("cram0", action)
        faulted = time.monotonic()
        try:
            _, stderr = proc.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - faulted
        took = time.monotonic() - faulted
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
        if action == "cut":
            launcher.fault("cram0", "heal")
    assert proc.returncode == 0, stderr[-2000:]
    if action == "cut":
        assert "link eth0 of host h2 down" in what
    return json.loads(out.read_text())["runs"][0], took


def test_link_cut_mid_run_is_detected_counted_and_reported(
    netns_hosts: NetnsHosts, launcher: Launcher, tmp_path: Path
) -> None:
    """Acceptance: h2's link goes down mid-run; the run ends within the deadline, loss counted."""
    run, took = _fault_mid_run(netns_hosts, launcher, tmp_path, "cut", "stop")
    assert run is not None, "the run hung on a cut link"
    lost = run["failures"]["nodes_lost"]
    assert [x["node"] for x in lost] == ["cram0"]
    assert "DEADLINE_EXCEEDED" in lost[0]["reason"]
    assert lost[0]["pages_lost"] > 0 and run["failures"]["pages_lost"] == lost[0]["pages_lost"]
    assert run["completed"] is False and "cram0 lost" in run["stopped"]
    # node_timeout is 2 s; the rest is writing the results and exiting (generous: a slow
    # machine; the DEADLINE_EXCEEDED reason above already shows the deadline acted).
    assert took < 2 + 15, f"loss reported {took:.1f} s after the cut"


def test_killed_node_across_hosts_carries_on(
    netns_hosts: NetnsHosts, launcher: Launcher, tmp_path: Path
) -> None:
    run, _ = _fault_mid_run(netns_hosts, launcher, tmp_path, "kill", "continue")
    assert run is not None
    lost = run["failures"]["nodes_lost"]
    assert [x["node"] for x in lost] == ["cram0"] and lost[0]["pages_lost"] > 0
    assert run["completed"] is True
    # The others served to the end: their device stats are in the results.
    assert run["nodes"]["dram0"]["device"] is not None
    assert run["nodes"]["cram0"]["device"] is None


def test_rate_limit_and_link_state(netns_hosts: NetnsHosts) -> None:
    done = netns_hosts.script("rate", "h3", "100mbit")
    assert done.returncode == 0, done.stderr
    qdisc = subprocess.run(
        ["ip", "netns", "exec", netns_hosts.ns("h3"), "tc", "qdisc", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
    ).stdout
    assert "tbf" in qdisc and "100Mbit" in qdisc
    netns_hosts.script("rate", "h3", "off")
    netns_hosts.script("cut", "h3")
    status = netns_hosts.script("status").stdout
    assert f"{netns_hosts.ns('h3')}" in status and "link down" in status
    netns_hosts.script("heal", "h3")
    assert "link down" not in netns_hosts.script("status").stdout


def test_script_refuses_twice_and_bad_input(netns_hosts: NetnsHosts) -> None:
    again = netns_hosts.script("up", check=False)
    assert again.returncode == 1 and "exist already" in again.stderr
    bad = subprocess.run(
        ["bash", str(NETNS_SCRIPT), "up", "--hosts", "0", "--prefix", "tzz"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "--hosts must be 1..200" in bad.stderr
    bad = subprocess.run(
        ["bash", str(NETNS_SCRIPT), "up", "--rate", "fast", "--prefix", "tzz"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "bad rate" in bad.stderr
    down = subprocess.run(
        ["bash", str(NETNS_SCRIPT), "down", "--prefix", "tzz"], capture_output=True, text=True
    )
    assert down.returncode == 1 and "no hosts" in down.stderr


def test_script_without_privileges_fails_cleanly() -> None:
    """Run as an unprivileged user: a clear error, and no namespace left behind."""
    if os.geteuid() != 0 or subprocess.run(["which", "setpriv"], capture_output=True).returncode:
        pytest.skip("needs root and setpriv to drop to an unprivileged user")
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    done = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "bash",
            str(NETNS_SCRIPT),
            "up",
            "--hosts",
            "2",
            "--prefix",
            "tnopriv",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "needs root or CAP_SYS_ADMIN+CAP_NET_ADMIN" in done.stderr
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert after == before and "tnopriv" not in after


def test_launcher_refuses_missing_namespace(launcher: Launcher, netns_hosts: NetnsHosts) -> None:
    import dataclasses

    from tiersim.orchestrator.launcher import ClusterError

    spec = netns_cluster(netns_hosts)
    gone = dataclasses.replace(spec.hosts[0], netns="tnosuchns-h1")
    spec = dataclasses.replace(spec, hosts=(gone, *spec.hosts[1:]))
    with pytest.raises(ClusterError, match="network namespace 'tnosuchns-h1' does not exist"):
        launcher.start(spec)
    assert not launcher.state_path.exists()
