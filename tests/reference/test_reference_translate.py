"""The translation to a tiersim scenario, checked by tiersim's own scenario loader."""

from __future__ import annotations

import asyncio
import tomllib
from typing import Any

import pytest
from reference_samples import MINIMAL, TIERED

from tiersim.reference.image import access_trace, process_seed
from tiersim.reference.spec import PAGE_SIZE, library, load_workload, parse_workload
from tiersim.reference.translate import (
    dumps_toml,
    guest_baseline,
    guest_think_ns,
    guest_think_schedule,
    node_capacities,
    scenario_toml,
    to_run_config,
    to_scenario,
    total_ram,
)

DATA: dict[str, Any] = {
    "plan": {"accesses": 6144},
    "guest": {
        "meminfo": {
            "node0.MemFree": {"min": 200 << 20, "max": 201 << 20},
            "global.MemTotal": {"min": 230 << 20, "max": 230 << 20},
        },
        "elapsed_ns": {
            "min": 6_000_000_000,
            "max": 6_288_000_000,
            "values": [6_000_000_000, 6_288_000_000],
        },
    },
    "counters": {"workload.baseline_bytes": {"min": 100_000, "max": 110_000, "values": [100_000]}},
}


def test_scenario_dict() -> None:
    w = parse_workload(MINIMAL)
    s = to_scenario(w)
    assert s["scenario"]["seed"] == 1
    assert [n["kind"] for n in s["nodes"]] == ["dram", "storage"]
    assert s["nodes"][0]["capacity"] == "256MiB"
    assert s["tunables"]["zswap"] == {
        "enabled": True,
        "compressor": "lz4",
        "max_pool_percent": 20,
        "accept_threshold_percent": 90,
        "shrinker_enabled": False,
    }
    assert s["cgroups"][0]["memory_max"] == "8MiB"
    wl = s["workloads"][0]
    assert wl["name"] == "ref" and wl["cgroup"] == "ref" and wl["host"] == "guest"
    assert wl["accesses"] == w.access.accesses
    assert wl["pattern"] == {"kind": "scan", "write_ratio": 0.0}


def test_tiered_scenario_gets_hmat_latencies() -> None:
    s = to_scenario(parse_workload(TIERED))
    n0, n1 = s["nodes"]
    assert n1["kind"] == "cxl"
    assert n0["options"]["latency"]["read_base_ns"] == 100
    assert n1["options"]["latency"]["read_base_ns"] == 250
    assert n1["options"]["latency"]["bandwidth_bytes_per_sec"] == 10 << 30
    assert s["tunables"]["demotion_enabled"] is True
    assert s["tunables"]["numa"]["numa_balancing"] == 2


def test_calibration_from_a_recording() -> None:
    w = parse_workload(MINIMAL)
    caps = node_capacities(w, DATA)
    assert caps == [200 << 20]
    # The kernel takes max_pool_percent of MemTotal (230 MiB), not of the free 200 MiB.
    assert total_ram(DATA, caps) == 230 << 20
    assert total_ram(None, caps) is None
    assert guest_baseline(DATA) == 110_592  # rounded up to pages
    assert guest_think_ns(w, DATA) == (6_144_000_000 // 6144)
    s = to_scenario(w, DATA)
    assert s["hosts"][0]["total_ram"] == "230MiB"
    assert s["tunables"]["zswap"]["max_pool_percent"] == w.zswap.max_pool_percent
    assert s["cgroups"][0]["memory_max"] == f"{(8 << 10) - 108}KiB"
    assert "think_ns" not in s["workloads"][0]["pattern"]  # not a NUMA workload
    s = to_scenario(w, DATA, guest_time=True)
    assert s["workloads"][0]["pattern"]["think_ns"] == 1_000_000
    assert s["workloads"][0]["pattern"]["think_distribution"] == "fixed"


def test_guest_time_by_default_where_time_drives_the_outcome() -> None:
    from tiersim.reference.translate import use_guest_time

    assert not use_guest_time(parse_workload(MINIMAL), None)
    # The NUMA scanner, and the zswap shrinker (it counts from cgroup
    # statistics flushed every 2 s), run on the clock.
    assert use_guest_time(parse_workload(TIERED), None)
    shrinker = MINIMAL.replace("[zswap]", "[zswap]\nshrinker_enabled = true")
    assert use_guest_time(parse_workload(shrinker), None)
    assert not use_guest_time(parse_workload(shrinker), False)


def test_guest_clock_readings_become_a_think_schedule() -> None:
    w = parse_workload(MINIMAL)
    # Two runs, readings every 2048 accesses (6144 in all): the first third
    # of the run took 3x as long per access as the rest.
    data = {
        **DATA,
        "guest": {
            **DATA["guest"],
            "progress_ns": {
                "every": 2048,
                "values": [
                    [0, 3_000_000_000, 4_500_000_000],
                    [0, 3_288_000_000, 4_788_000_000],
                ],
            },
        },
    }
    per = 1_500_000_000 / 2048
    assert guest_think_schedule(w, data) == [[0, round(3_144_000_000 / 2048)], [2048, round(per)]]
    s = to_scenario(w, data, guest_time=True)
    pattern = s["workloads"][0]["pattern"]
    assert pattern["think_schedule"] == guest_think_schedule(w, data)
    assert "think_ns" not in pattern
    # Readings that do not line up with the runs' end times are not used.
    bad = {**data, "guest": {**data["guest"], "elapsed_ns": {"values": [6_144_000_000]}}}
    assert guest_think_schedule(w, bad) is None
    assert to_scenario(w, bad, guest_time=True)["workloads"][0]["pattern"]["think_ns"] > 0


def test_toml_round_trip() -> None:
    doc = to_scenario(parse_workload(TIERED), DATA)
    assert tomllib.loads(dumps_toml(doc)) == doc


@pytest.mark.parametrize("name", sorted(library()))
def test_library_translates_to_valid_scenarios(name: str) -> None:
    w = load_workload(name)
    text = scenario_toml(w)
    assert text.startswith("# tiersim scenario")
    cfg = to_run_config(w)
    assert cfg.seed == w.seed
    (wl,) = cfg.workloads
    assert wl.footprint_bytes == w.npages * PAGE_SIZE
    assert wl.accesses == w.access.accesses


def test_engine_sees_the_guests_pages_and_accesses() -> None:
    """The seed coupling: tiersim's process gets the content and access
    models the data disk was written from."""
    from tiersim.orchestrator.content import make_content
    from tiersim.orchestrator.engine import Simulation

    w = parse_workload(TIERED)
    sim = Simulation(to_run_config(w))
    asyncio.run(sim.build())
    (proc,) = sim.mm.procs
    ours = make_content(w.content, process_seed(w.seed))
    for page in (0, 1, 17, w.npages - 1):
        assert proc.content.page(page, 1) == ours.page(page, 1)
    pages, writes = access_trace(w)
    chunk = proc.workload.next_chunk(1000)
    assert (chunk.pages == pages[:1000]).all() and (chunk.writes == writes[:1000]).all()
