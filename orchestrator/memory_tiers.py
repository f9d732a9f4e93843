"""Memory tiers and demotion targets, computed as mm/memory-tiers.c computes them.

Each memory node gets an abstract distance (adistance). DRAM is
MEMTIER_ADISTANCE_DRAM (576); other nodes derive theirs from their latency
and bandwidth relative to DRAM (`mt_perf_to_adistance`). Nodes whose
adistance falls in the same 128-wide chunk share a tier. Demotion targets
are then built by `establish_demotion_targets()`:

* a node in the last tier has none;
* otherwise its *preferred* targets are the nodes of the next tier down at
  the smallest node distance (ties kept), one picked at random per demotion;
* its *allowed* (fallback) mask is every node in every lower tier.

The top tier ends at the slowest tier that holds a CPU node; promotion only
ever targets top-tier nodes (`node_is_toptier`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

MEMTIER_CHUNK_BITS = 7
MEMTIER_CHUNK_SIZE = 1 << MEMTIER_CHUNK_BITS
# include/linux/memory-tiers.h: 4 * 128 + 128 / 2
MEMTIER_ADISTANCE_DRAM = (4 * MEMTIER_CHUNK_SIZE) + (MEMTIER_CHUNK_SIZE >> 1)
# drivers/dax/kmem.c: devices with no performance data (Optane-class, +400 %)
MEMTIER_DEFAULT_DAX_ADISTANCE = MEMTIER_ADISTANCE_DRAM * 5
# include/linux/topology.h
LOCAL_DISTANCE = 10
REMOTE_DISTANCE = 20


@dataclass(frozen=True)
class MemoryPerf:
    """HMAT-style access coordinates: latency in ns, bandwidth in MB/s."""

    read_latency: int
    write_latency: int
    read_bandwidth: int
    write_bandwidth: int


def perf_to_adistance(perf: MemoryPerf, dram: MemoryPerf) -> int:
    """mt_perf_to_adistance(): integer arithmetic in the kernel's order."""
    if (
        perf.read_latency + perf.write_latency == 0
        or perf.read_bandwidth + perf.write_bandwidth == 0
    ):
        raise ValueError("performance data must have non-zero latency and bandwidth")
    adist = MEMTIER_ADISTANCE_DRAM * (perf.read_latency + perf.write_latency)
    adist //= dram.read_latency + dram.write_latency
    adist *= dram.read_bandwidth + dram.write_bandwidth
    adist //= perf.read_bandwidth + perf.write_bandwidth
    return adist


def tier_id(adistance: int) -> int:
    """The memory_tier<N> a node of this adistance joins."""
    return adistance >> MEMTIER_CHUNK_BITS


@dataclass(frozen=True)
class MemoryTier:
    id: int
    nodes: tuple[int, ...]

    @property
    def adistance_start(self) -> int:
        return self.id << MEMTIER_CHUNK_BITS


@dataclass(frozen=True)
class DemotionTargets:
    preferred: tuple[int, ...]
    allowed: tuple[int, ...]


@dataclass(frozen=True)
class TierMap:
    """The tiers of one host's memory nodes and the demotion graph between them."""

    adistance: Mapping[int, int]
    tiers: tuple[MemoryTier, ...]
    targets: Mapping[int, DemotionTargets]
    top_tier_adistance: int

    def tier_of(self, node: int) -> int:
        return tier_id(self.adistance[node])

    def is_toptier(self, node: int) -> bool:
        """node_is_toptier(): adistance at or above the top tier's end."""
        return self.adistance[node] <= self.top_tier_adistance

    def describe(self) -> list[str]:
        """Lines as the kernel's dump_demotion_targets() prints them."""
        lines = []
        for node in sorted(self.adistance):
            t = self.targets.get(node)
            if t is None or not t.preferred:
                lines.append(f"Demotion targets for Node {node}: null")
            else:
                lines.append(
                    f"Demotion targets for Node {node}: preferred: {_nodelist(t.preferred)}, "
                    f"fallback: {_nodelist(t.allowed)}"
                )
        return lines


def _nodelist(nodes: Sequence[int]) -> str:
    return ",".join(str(n) for n in sorted(nodes))


def _by_distance(dist: Callable[[int, int], int], node: int, other: int) -> tuple[int, int]:
    return (dist(node, other), other)


def build_tiers(
    adistance: Mapping[int, int],
    cpu_nodes: Sequence[int],
    distance: Mapping[tuple[int, int], int],
) -> TierMap:
    """establish_demotion_targets() over nodes with the given adistances.

    `distance[(a, b)]` is the SLIT node distance; missing pairs default to
    LOCAL_DISTANCE for a == b and REMOTE_DISTANCE otherwise.
    """

    def dist(a: int, b: int) -> int:
        return distance.get((a, b), LOCAL_DISTANCE if a == b else REMOTE_DISTANCE)

    by_tier: dict[int, list[int]] = {}
    for node, adist in adistance.items():
        by_tier.setdefault(tier_id(adist), []).append(node)
    tiers = tuple(MemoryTier(t, tuple(sorted(by_tier[t]))) for t in sorted(by_tier))

    targets: dict[int, DemotionTargets] = {}
    for index, tier in enumerate(tiers):
        if index == len(tiers) - 1:
            continue  # the last tier demotes nowhere
        lower = tiers[index + 1]
        allowed = tuple(sorted(n for t in tiers[index + 1 :] for n in t.nodes))
        for node in tier.nodes:
            # find_next_best_node() walks candidates in distance order (ties
            # by node id); keep all at the best distance.
            ranked = sorted(lower.nodes, key=partial(_by_distance, dist, node))
            best = dist(node, ranked[0])
            preferred = tuple(n for n in ranked if dist(node, n) == best)
            targets[node] = DemotionTargets(preferred=preferred, allowed=allowed)

    top = -1
    for tier in reversed(tiers):
        if any(n in cpu_nodes for n in tier.nodes):
            top = tier.adistance_start + MEMTIER_CHUNK_SIZE - 1
            break
    return TierMap(adistance=dict(adistance), tiers=tiers, targets=targets, top_tier_adistance=top)
