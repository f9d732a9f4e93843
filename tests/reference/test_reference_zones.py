"""The guest's zones from /proc/zoneinfo and /proc/pagetypeinfo, their
translation to [[nodes.zones]], and recordings merged with --append."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from reference_samples import TIERED

from tiersim.orchestrator.scenario import loads_scenario
from tiersim.reference.errors import HarnessError
from tiersim.reference.record import merge
from tiersim.reference.spec import PAGE_SIZE, parse_workload
from tiersim.reference.translate import node_capacities, node_zones, scenario_toml
from tiersim.reference.zones import fallback_blocks, guest_zones, zones_of_run

# Node 0 and 1 of a reference guest at the workload's start (trimmed).
ZONEINFO = """\
Node 0, zone      DMA
  per-node stats
      pgdemote_kswapd 0
  pages free     3808
        boost    0
        min      26
        low      32
        high     38
        promo    44
        spanned  4095
        present  3998
        managed  3840
        cma      0
        protection: (0, 127, 127, 127, 127)
Node 0, zone    DMA32
  pages free     24731
        boost    0
        min      223
        low      278
        high     333
        promo    388
        managed  32728
        protection: (0, 0, 0, 0, 0)
Node 0, zone   Normal
  pages free     0
        managed  0
Node 1, zone    DMA32
  pages free     46356
        min      328
        low      410
        high     492
        managed  48043
        protection: (0, 0, 0, 0, 0)
""".splitlines()

PAGETYPEINFO = """\
Page block order: 9
Pages per block:  512

Free pages count per migrate type at order       0      1      2      3      4      5      6      7      8      9     10
Node    0, zone      DMA, type    Unmovable      0      0      0      0      0      1      1      1      0      0      0
Node    0, zone      DMA, type      Movable      0      0      0      0      0      0      0      0      0      1      3
Node    0, zone      DMA, type  Reclaimable      0      0      0      0      0      0      0      0      0      0      0
Node    0, zone    DMA32, type    Unmovable      3      6      1      0      1      1      1      0      0      0      0
Node    0, zone    DMA32, type      Movable      1      2      2      2      1      4      1      2      5      1     21
Node    0, zone    DMA32, type  Reclaimable      0      1      0      1      0      1      0      0      1      1      0

Number of blocks type     Unmovable      Movable  Reclaimable   HighAtomic          CMA      Isolate
Node 0, zone      DMA            1            7            0            0            0            0
Node 0, zone    DMA32           12           74            2            0            0            0
Page block order: 9
Pages per block:  512

Free pages count per migrate type at order       0      1      2      3      4      5      6      7      8      9     10
Node    1, zone    DMA32, type    Unmovable      0      1      3      0      0      1      0      1      0      1      0
Node    1, zone    DMA32, type      Movable      2      4      1      3      0      0      1      2      1      0     44

Number of blocks type     Unmovable      Movable  Reclaimable   HighAtomic          CMA      Isolate
Node 1, zone    DMA32            4           92            0            0            0            0
""".splitlines()  # noqa: E501


def test_zones_are_read_from_zoneinfo_and_pagetypeinfo() -> None:
    zones = guest_zones(ZONEINFO, PAGETYPEINFO)
    assert [(z["node"], z["zone"]) for z in zones] == [(0, "DMA"), (0, "DMA32"), (1, "DMA32")]
    dma, dma32, node1 = zones
    assert (dma["free"], dma["managed"], dma["low"]) == (3808, 3840, 32)
    assert dma["protection"] == [0, 127, 127, 127, 127]
    # DMA: one unmovable pageblock holding free blocks of 32, 64 and 128 pages.
    assert dma["fallback_blocks"] == {"Unmovable": [224]}
    # A whole free reclaimable pageblock, and the other one's smaller blocks.
    assert dma32["fallback_blocks"] == {"Reclaimable": [512, 298], "Unmovable": [131]}
    assert node1["fallback_blocks"] == {"Unmovable": [512, 174]}


def test_free_blocks_are_packed_into_pageblocks_largest_first() -> None:
    # Three pageblocks, free blocks of 256 + 256 + 128 + 16 pages.
    assert fallback_blocks([0, 0, 0, 0, 1, 0, 0, 1, 2], 3, 9) == [512, 144]
    assert fallback_blocks([0] * 11, 4, 9) == []
    assert fallback_blocks([0] * 9 + [1, 1], 2, 9) == [512, 512, 512]


def _recording(runs: int = 1) -> dict[str, Any]:
    zones = guest_zones(ZONEINFO, PAGETYPEINFO)
    return {
        "schema": "tiersim-reference-data/1",
        "workload": "t",
        "workload_sha256": "abc",
        "kernel": {"release": "7.3.4"},
        "runs": runs,
        "plan": {"accesses": 6144},
        "guest": {
            "meminfo": {"node0.MemFree": {"min": 1, "max": 1, "values": [1] * runs}},
            "elapsed_ns": {"min": 5, "max": 5, "values": [5] * runs},
            "wall_s": {"min": 1.0, "max": 1.0, "values": [1.0] * runs},
            "progress_ns": {"every": 4096, "values": [[0, 100]] * runs},
            "zones": [zones] * runs,
        },
        "counters": {"vmstat.zswpout": {"min": 7, "max": 7, "values": [7] * runs}},
    }


def test_translation_gives_each_node_its_recorded_zones() -> None:
    w = parse_workload(TIERED, "tiered.toml")
    data = _recording()
    zones = node_zones(w, data)
    assert [z["zone"] for z in zones[0]] == ["DMA", "DMA32"]
    assert zones[0][0]["unmovable"] == [224]
    caps = node_capacities(w, data)
    assert caps == [(3808 + 24731) * PAGE_SIZE, 46356 * PAGE_SIZE]
    # The scenario loads: zones add up to the capacities, keys are valid.
    scenario = loads_scenario(scenario_toml(w, data))
    node0 = scenario.variants[0].nodes[0]
    assert [z.zone for z in node0.zones] == ["DMA", "DMA32"]
    assert node0.zones[1].reclaimable == (512, 298)
    assert zones_of_run({"guest": {"zones": [[], []]}}) == []


def test_append_merges_runs_and_refuses_another_kernel() -> None:
    old = _recording(2)
    del old["guest"]["zones"]  # recorded before zones were
    new = _recording(1)
    new["counters"]["vmstat.pgdemote_kswapd"] = {"min": 3, "max": 3, "values": [3]}
    doc = merge(old, new)
    assert doc["runs"] == 3
    assert doc["counters"]["vmstat.zswpout"]["values"] == [7, 7, 7]
    # A counter the old recording dropped was zero in its runs.
    assert doc["counters"]["vmstat.pgdemote_kswapd"] == {"min": 0, "max": 3, "values": [0, 0, 3]}
    assert [bool(z) for z in doc["guest"]["zones"]] == [False, False, True]
    assert len(doc["guest"]["progress_ns"]["values"]) == 3
    # CPU times the older runs did not measure are not taken as zero: they
    # hold the measuring runs' values, aligned with their clock readings.
    new["counters"]["workload.cpu_ns"] = {"min": 4, "max": 4, "values": [4]}
    new["guest"]["progress_cpu_ns"] = [[0, 60]]
    doc = merge(old, new)
    assert doc["counters"]["workload.cpu_ns"]["values"] == [4]
    assert doc["guest"]["progress_cpu_ns"] == [[0, 60]]
    assert merge(doc, new)["counters"]["workload.cpu_ns"]["values"] == [4, 4]
    assert merge(new, new)["counters"]["workload.cpu_ns"]["values"] == [4, 4]
    other = copy.deepcopy(new)
    other["kernel"]["release"] = "7.4.0"
    with pytest.raises(HarnessError, match="kernel"):
        merge(old, other)
    # A traced run held the trace buffer in the guest's memory: not one of
    # the workload's ordinary runs, whichever side it is on.
    traced = copy.deepcopy(new)
    traced["guest"]["trace"] = {
        "events": ["kmem:mm_page_alloc"],
        "functions": [],
        "buffer_kb": 32768,
    }
    for a, b in ((old, traced), (traced, new)):
        with pytest.raises(HarnessError, match="traced"):
            merge(a, b)
