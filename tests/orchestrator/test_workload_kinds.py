"""The application-shaped workloads: masim phases, key-value store, GUPS, graph walks."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from tiersim.orchestrator._workloads_app import GraphWorkload, KeyValueWorkload
from tiersim.orchestrator._workloads_phases import PhasesWorkload
from tiersim.orchestrator.engine import run
from tiersim.orchestrator.scenario import loads_scenario
from tiersim.orchestrator.workloads import AccessChunk, Workload, WorkloadSpec, make_workload

SPECS: dict[str, dict[str, Any]] = {
    "stairs": {"kind": "phases", "shape": "stairs", "regions": 5, "phase_accesses": 700},
    "zigzag": {"kind": "phases", "shape": "zigzag", "random": True, "phase_accesses": 500},
    "phases": {
        "kind": "phases",
        "regions": [{"name": "a", "size": "4MiB"}, {"name": "b", "size": "16MiB"}],
        "phases": [
            {
                "name": "warm",
                "accesses": 900,
                "access": [
                    {"region": "a", "stride_bytes": 64},
                    {"region": "b", "random": True, "weight": 2},
                ],
            },
            {"accesses": 400, "access": [{"region": "b", "stride_bytes": "8KiB"}]},
        ],
        "write_ratio": 0.3,
    },
    "kv": {
        "kind": "kv",
        "alpha": 0.99,
        "set_ratio": 0.25,
        "value_size": "512",
        "value_size_max": "20KiB",
        "think": "1us",
    },
    "gups": {"kind": "gups", "hot_pages": 500, "hot_fraction": 0.8},
    "graph": {"kind": "graph", "degree": 6, "walkers": 4, "write_ratio": 0.1},
}
FOOTPRINT = 10_000


def drain(w: Workload, sizes: list[int]) -> AccessChunk:
    chunks = [w.next_chunk(n) for n in sizes]
    return AccessChunk(
        np.concatenate([c.pages for c in chunks]),
        np.concatenate([c.writes for c in chunks]),
        np.concatenate([c.gap_ns for c in chunks]),
    )


def same(a: AccessChunk, b: AccessChunk) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("pages", "writes", "gap_ns"))


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_deterministic_chunk_invariant_and_in_range(kind: str) -> None:
    whole = drain(make_workload(SPECS[kind], FOOTPRINT, seed=3), [12_000])
    pieces = drain(make_workload(SPECS[kind], FOOTPRINT, seed=3), [1, 999, 4096, 0, 3000, 3904])
    assert same(whole, pieces)
    assert whole.pages.dtype == np.int64 and whole.writes.dtype == np.bool_
    assert whole.pages.min() >= 0 and whole.pages.max() < FOOTPRINT
    w = make_workload(SPECS[kind], FOOTPRINT, seed=3)
    first = drain(w, [5000])
    w.reset()
    assert same(first, drain(w, [5000]))
    spec = WorkloadSpec.from_dict(SPECS[kind])
    assert WorkloadSpec.from_dict(spec.to_dict()) == spec


def test_stairs_and_zigzag_walk_the_regions() -> None:
    stairs = make_workload(SPECS["stairs"], FOOTPRINT, seed=1)
    assert isinstance(stairs, PhasesWorkload)
    pages = stairs.next_chunk(700 * 6).pages
    regions = [int(np.median(pages[i * 700 : (i + 1) * 700])) // 2000 for i in range(6)]
    assert regions == [0, 1, 2, 3, 4, 0]  # and around again
    # Sequential within a phase: consecutive pages of the region.
    assert np.array_equal(pages[:700], np.arange(700))
    zig = make_workload(SPECS["zigzag"], FOOTPRINT, seed=1)
    zpages = zig.next_chunk(500 * 15).pages
    order = [int(zpages[i * 500 : (i + 1) * 500].mean()) * 8 // FOOTPRINT for i in range(15)]
    assert order == [0, 1, 2, 3, 4, 5, 6, 7, 6, 5, 4, 3, 2, 1, 0]
    assert isinstance(zig, PhasesWorkload) and zig.phase_at(500 * 9) == 9


def test_explicit_phases_follow_their_patterns() -> None:
    w = make_workload(SPECS["phases"], FOOTPRINT, seed=2)
    c = w.next_chunk(1300)
    warm, second = c.pages[:900], c.pages[900:]
    in_a = warm < 1024
    assert 0.25 < in_a.mean() < 0.42  # weight 1 of 3
    # Region a is streamed 64 bytes at a time: 64 accesses per page.
    assert np.array_equal(np.unique(warm[in_a]), np.arange(int(np.ceil(in_a.sum() / 64))))
    # Then region b, every other page (8 KiB stride).
    assert np.array_equal(second, 1024 + 2 * np.arange(400))
    assert 0.2 < c.writes.mean() < 0.4


def test_key_value_store_reads_the_index_then_the_value() -> None:
    w = make_workload(SPECS["kv"], FOOTPRINT, seed=5)
    assert isinstance(w, KeyValueWorkload)
    c = w.next_chunk(50_000)
    index = c.pages < w.index_pages
    assert index[0] and not c.writes[index].any()  # index accesses read
    assert 0.05 < c.writes.mean() < 0.3
    # Every operation starts at the index: as many index reads as operations.
    ops = int(index.sum())
    assert ops > 5000
    assert w.keys * 512 <= w.value_bytes <= (FOOTPRINT - w.index_pages) * 4096
    # Zipf keys: the hottest 1 % of value pages take a large share of value reads.
    counts = np.sort(np.bincount(c.pages[~index]))[::-1]
    assert counts[: len(counts) // 100].sum() > 0.15 * counts.sum()
    with pytest.raises(ValueError, match=r"1000000 keys need .* pages"):
        make_workload({"kind": "kv", "keys": 1_000_000}, 1000)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) write_ratio"):
        make_workload({"kind": "kv", "write_ratio": 0.5}, 1000)
    with pytest.raises(ValueError, match=r"value_size_max must be >= 1024"):
        make_workload({"kind": "kv", "value_size_max": 100}, 1000)


def test_gups_updates_write_and_favour_the_hot_set() -> None:
    w = make_workload(SPECS["gups"], FOOTPRINT, seed=1)
    c = w.next_chunk(40_000)
    assert c.writes.all()
    hot = (c.pages >= w.hot_start) & (c.pages < w.hot_start + 500)
    assert 0.78 < hot.mean() < 0.84  # 80 % + the cold updates landing there
    flat = make_workload({"kind": "gups"}, 1000, seed=1).next_chunk(100_000).pages
    assert np.bincount(flat, minlength=1000).min() > 50


def test_graph_walk_chases_vertices_then_edges() -> None:
    w = make_workload({"kind": "graph", "alpha": 1.2, "walkers": 16}, FOOTPRINT, seed=4)
    assert isinstance(w, GraphWorkload)
    c = w.next_chunk(64_000)
    vertex_pages = -(-w.vertices * 64 // 4096)
    assert (c.pages[0::2] < vertex_pages).all() and (c.pages[1::2] >= vertex_pages).all()
    counts = np.sort(np.bincount(c.pages[0::2]))[::-1]
    assert counts[:10].sum() > 0.2 * counts.sum()  # a few vertices reached from everywhere
    # The edge slot read decides the next vertex: the scalar and vector chases agree.
    v = np.arange(0, 5000, 7, dtype=np.int64)
    j = v % 8
    assert w.neighbour(v, j).tolist() == [
        w.neighbour_of(int(a), int(b)) for a, b in zip(v, j, strict=True)
    ]
    few = drain(make_workload(SPECS["graph"], FOOTPRINT, seed=3), [6000])
    many = drain(make_workload({**SPECS["graph"], "walkers": 32}, FOOTPRINT, seed=3), [6000])
    assert not np.array_equal(few.pages, many.pages)
    with pytest.raises(ValueError, match="fewer than two vertices"):
        make_workload({"kind": "graph", "vertex_bytes": 8192}, 2)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "phases"}, r"give a shape \(stairs, zigzag\) or a list of phases"),
        ({"kind": "phases", "shape": "spiral"}, r"shape must be one of stairs, zigzag"),
        ({"kind": "phases", "shape": "stairs", "regions": 0}, r"regions must be between 1"),
        (
            {
                "kind": "phases",
                "regions": [{"name": "a", "size": "1GiB"}],
                "phases": [{"access": [{"region": "a"}]}],
            },
            r"the regions need 262144 pages but the footprint is 1000 pages",
        ),
        (
            {
                "kind": "phases",
                "regions": [{"name": "a", "size": 4096}],
                "phases": [{"access": [{"region": "b"}]}],
            },
            r"phases\[0\].access\[0\].region: unknown region 'b' \(regions: a\)",
        ),
        (
            {
                "kind": "phases",
                "regions": [{"name": "a", "size": 4096}],
                "phases": [{"access": [{"region": "a", "weight": 0}]}],
            },
            r"weight must be a number > 0",
        ),
        ({"kind": "gups", "hot_pages": 5000}, r"hot_pages \(5000\) must not exceed"),
        ({"kind": "trace"}, r"path is required"),
    ],
)
def test_bad_specs_name_the_parameter(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_workload(spec, 1000, seed=1)


TENANTS = """
[scenario]
name = "tenants"
description = "four processes, each in its own cgroup, on one host"
question = "do the new workload kinds run side by side?"
seed = 5
duration = "1s"
sample_interval = "10ms"
[[hosts]]
name = "h0"
[[nodes]]
name = "dram0"
kind = "dram"
host = "h0"
capacity = "24MiB"
[[nodes]]
name = "swap0"
kind = "storage"
host = "h0"
capacity = "128MiB"
[tunables.zswap]
enabled = true
[[cgroups]]
name = "cache"
memory_max = "12MiB"
[[cgroups]]
name = "batch"
[[cgroups]]
name = "graph"
[[cgroups]]
name = "scan"

[[workloads]]
name = "kv"
host = "h0"
cgroup = "cache"
footprint = "16MiB"
accesses = 15000
pattern = { kind = "kv", value_size = "2KiB", set_ratio = 0.2 }

[[workloads]]
name = "gups"
host = "h0"
cgroup = "batch"
footprint = "8MiB"
accesses = 15000
pattern = { kind = "gups" }

[[workloads]]
name = "bfs"
host = "h0"
cgroup = "graph"
footprint = "8MiB"
accesses = 15000
pattern = { kind = "graph", walkers = 8 }

[[workloads]]
name = "stairs"
host = "h0"
cgroup = "scan"
footprint = "8MiB"
accesses = 15000
pattern = { kind = "phases", shape = "stairs", regions = 4, phase_accesses = 2000 }
"""


def test_several_processes_with_their_own_cgroups() -> None:
    (doc,) = [asyncio.run(run(v)) for v in loads_scenario(TENANTS).variants]
    assert {w: doc["workloads"][w]["accesses"] for w in doc["workloads"]} == {
        "kv": 15000,
        "gups": 15000,
        "bfs": 15000,
        "stairs": 15000,
    }
    assert doc["workloads"]["gups"]["writes"] == 15000
    cg = doc["cgroups"]
    assert set(cg) == {"h0/cache", "h0/batch", "h0/graph", "h0/scan"}
    assert cg["h0/cache"]["memory.peak"] <= 12 * 1024 * 1024
    assert cg["h0/cache"]["memory.stat"]["zswpout"] > 0  # the limited tenant is reclaimed
