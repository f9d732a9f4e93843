"""Every catalog scenario runs, scaled down, and shows the effect it exists to show."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sim_helpers import vm, zs
from tiersim.orchestrator._cli import catalog, load, run_scenario


def run_catalog(name: str, *sets: str) -> dict[str, dict[str, Any]]:
    scenario = load(name, list(sets))
    docs = asyncio.run(run_scenario(scenario))
    return {d["variant"].split(" / ")[-1]: d for d in docs}


def test_catalog_lists_every_scenario_the_docs_promise() -> None:
    assert set(catalog()) == {
        "default",
        "cram-overcommit",
        "zswap-backends",
        "memcg-charging",
        "promotion",
        "pooled-cram",
        "node-loss",
    }


def test_default_compares_the_four_ways() -> None:
    runs = run_catalog("default", "workloads.kv.accesses=60000")
    assert list(runs) == ["swap only", "zswap", "cram tier", "zswap direct"]
    assert vm(runs["swap only"], "pswpout") > 0 and vm(runs["swap only"], "zswpout") == 0
    assert vm(runs["zswap"], "zswpout") > 0
    assert vm(runs["cram tier"], "cram_demote") > 0
    assert zs(runs["zswap direct"], "stored_direct_pages") + vm(runs["zswap direct"], "zswpin") > 0
    # Keeping overflow in compressed memory beats going to the swap device.
    assert runs["cram tier"]["latency"]["mean_ns"] < runs["swap only"]["latency"]["mean_ns"]
    assert runs["zswap"]["latency"]["mean_ns"] < runs["swap only"]["latency"]["mean_ns"]


@pytest.mark.slow
def test_cram_overcommit_check_prevents_device_failures() -> None:
    runs = run_catalog("cram-overcommit", "workloads.app.accesses=60000")
    for ratio in ("2:1", "1:1"):
        assert runs[f"{ratio} no check"]["failures"]["device_write_failures"] > 0
    for name, doc in runs.items():
        if "check" in name and "no check" not in name:
            assert doc["failures"]["device_write_failures"] == 0, name
            assert doc["failures"]["poisoned_pages"] == 0, name
    # Data that compresses 4:1 fits the device even without the check.
    assert runs["4:1 no check"]["failures"]["device_write_failures"] == 0
    # With the check, refused pages take the swap path instead.
    assert vm(runs["1:1 check"], "cram_demote_refused") > 0
    assert vm(runs["1:1 check"], "pswpout") > 0


def test_zswap_backends_differ_as_expected() -> None:
    runs = run_catalog("zswap-backends", "workloads.app.accesses=60000")
    classic, direct, tier = runs["classic zswap"], runs["zswap direct"], runs["cram read-only tier"]
    assert zs(classic, "stored_direct_pages") == 0 and vm(classic, "zswpout") > 0
    assert vm(direct, "zswpout") > 0
    assert direct["nodes"]["cram0"]["device"]["stores"] > 0
    assert vm(tier, "zswpout") == 0 and vm(tier, "cram_demote") > 0
    # The read-only tier serves reads without faults: fewest major faults.
    assert vm(tier, "pgmajfault") < vm(direct, "pgmajfault")
    assert vm(tier, "pgmajfault") < vm(classic, "pgmajfault")
    # Classic zswap compresses in software; the tier leaves it to the device.
    assert classic["nodes"]["cram0"]["device"]["stores"] == 0


@pytest.mark.slow
def test_memcg_charging_whole_pages_thrashes() -> None:
    runs = run_catalog("memcg-charging", "workloads.app.accesses=40000")
    page = runs["charge page"]
    assert vm(page, "oom_kill") >= 1
    assert page["cgroups"]["host0/limited"]["memory.events"]["oom_kill"] >= 1
    for name in ("charge device size", "charge fuzzy"):
        assert vm(runs[name], "oom_kill") == 0, name
        assert runs[name]["workloads"]["app"]["accesses"] == 40000


def test_promotion_hint_faults_versus_fault_driven() -> None:
    runs = run_catalog("promotion", "scenario.duration=3s")
    fault = runs["fault-driven only"]
    assert vm(fault, "numa_hint_faults") == 0 and vm(fault, "pgpromote_success") == 0
    hint = runs["hint faults, 1000 ms"]
    assert vm(hint, "numa_hint_faults") > 0 and vm(hint, "pgpromote_success") > 0
    limited = runs["hint faults, 1 MB/s"]
    assert vm(limited, "pgpromote_success") < vm(hint, "pgpromote_success")
    strict = runs["hint faults, 100 ms"]
    assert vm(strict, "pgpromote_success") <= vm(hint, "pgpromote_success")


def test_pooled_cram_incompressible_tenant_hurts_neighbours() -> None:
    sets = [f"workloads.{w}.accesses=40000" for w in ("a", "b", "noisy")]
    runs = run_catalog("pooled-cram", *sets)
    quiet, noisy = runs["quiet neighbours"], runs["incompressible neighbour"]
    assert noisy["events"]["pressure_changes"] > 0
    refused = vm(noisy, "cram_demote_refused")
    assert refused > vm(quiet, "cram_demote_refused")
    # The well-behaved tenants on host0 and host1 now swap.
    for host in ("host0", "host1"):
        assert (
            noisy["hosts"][host]["vmstat"]["pswpout"] >= quiet["hosts"][host]["vmstat"]["pswpout"]
        )
    assert noisy["failures"]["device_write_failures"] == 0


def test_node_loss_is_counted_and_never_hangs() -> None:
    runs = run_catalog("node-loss", "workloads.app.accesses=100000")
    carry, stop = runs["carry on"], runs["stop"]
    for doc in (carry, stop):
        assert doc["failures"]["pages_lost"] > 0
        assert doc["failures"]["nodes_lost"][0]["node"] == "cram0"
        assert doc["nodes"]["cram0"]["lost"] is True
    assert carry["completed"] is True
    # Carrying on: the run went to its end (all accesses, or the duration).
    done = carry["workloads"]["app"]["accesses"] == 100000
    assert done or carry["sim_time_ns"] >= carry["duration_ns"]
    assert carry["workloads"]["app"]["accesses"] > stop["workloads"]["app"]["accesses"]
    assert stop["completed"] is False and "cram0" in stop["stopped"]
    assert stop["sim_time_ns"] < carry["sim_time_ns"]
