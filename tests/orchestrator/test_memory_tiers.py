"""Tiers and demotion targets follow mm/memory-tiers.c."""

from tiersim.orchestrator.memory_tiers import (
    MEMTIER_ADISTANCE_DRAM,
    MemoryPerf,
    build_tiers,
    perf_to_adistance,
    tier_id,
)


def test_dram_adistance_and_tier() -> None:
    assert MEMTIER_ADISTANCE_DRAM == 576
    assert tier_id(576) == 4


def test_hmat_example_gives_adistance_2880_tier_22() -> None:
    # The QEMU set-up of KERNEL.md: latencies 100 and 250 ns, bandwidths 20G and 10G.
    dram = MemoryPerf(100, 100, 20_000, 20_000)
    slow = MemoryPerf(250, 250, 10_000, 10_000)
    adist = perf_to_adistance(slow, dram)
    assert adist == 2880
    assert tier_id(adist) == 22


def test_perf_formula_uses_integer_arithmetic_in_kernel_order() -> None:
    dram = MemoryPerf(80, 80, 30_000, 30_000)
    cxl = MemoryPerf(170, 170, 10_000, 10_000)
    # 576 * 340 // 160 = 1224; * 60000 // 20000 = 3672
    assert perf_to_adistance(cxl, dram) == 3672


def test_demotion_targets_next_tier_preferred_lower_tiers_allowed() -> None:
    # node 0 DRAM (tier 4), nodes 1 and 2 CXL (tier 9), node 3 slower (tier 22)
    adist = {0: 576, 1: 1200, 2: 1250, 3: 2880}
    dist = {(0, 1): 20, (0, 2): 30, (0, 3): 20, (1, 3): 20, (2, 3): 25}
    tm = build_tiers(adist, cpu_nodes=[0], distance=dist)
    assert [t.id for t in tm.tiers] == [4, 9, 22]
    # Preferred: the nearest node of the next tier only, not node 3 (two tiers down).
    assert tm.targets[0].preferred == (1,)
    assert tm.targets[0].allowed == (1, 2, 3)
    assert tm.targets[1].preferred == (3,)
    assert tm.targets[2].preferred == (3,)
    assert 3 not in tm.targets  # last tier demotes nowhere


def test_equal_distance_targets_are_all_preferred() -> None:
    adist = {0: 576, 1: 1200, 2: 1200}
    tm = build_tiers(adist, cpu_nodes=[0], distance={(0, 1): 20, (0, 2): 20})
    assert tm.targets[0].preferred == (1, 2)


def test_toptier_ends_at_slowest_tier_with_a_cpu() -> None:
    adist = {0: 576, 1: 1200, 2: 2880}
    tm = build_tiers(adist, cpu_nodes=[0], distance={})
    assert tm.is_toptier(0)
    assert not tm.is_toptier(1)
    assert tm.top_tier_adistance == 4 * 128 + 127
    # A CPU in tier 9 makes tier 9 part of the top tier.
    tm2 = build_tiers(adist, cpu_nodes=[0, 1], distance={})
    assert tm2.is_toptier(1) and not tm2.is_toptier(2)


def test_describe_matches_kernel_dump_format() -> None:
    tm = build_tiers({0: 576, 1: 2880}, cpu_nodes=[0], distance={})
    assert tm.describe() == [
        "Demotion targets for Node 0: preferred: 1, fallback: 1",
        "Demotion targets for Node 1: null",
    ]
