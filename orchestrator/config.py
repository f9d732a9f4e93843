"""The parsed, validated form of a scenario: plain frozen data classes.

`scenario.py` turns a TOML file into these; the engine consumes only these.
Sizes are bytes, times are integer nanoseconds. Names of kernel tunables
follow the kernel (`demotion_enabled`, `max_pool_percent`, `hot_threshold_ms`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

NodeKindName = Literal["dram", "cxl", "cram", "storage"]
ChargeMode = Literal["page", "device", "fuzzy"]
OnNodeLoss = Literal["continue", "stop"]


@dataclass(frozen=True)
class HostConfig:
    name: str
    cpus: int = 4
    # MemTotal: the memory the host's kernel manages, its own use included
    # (totalram_pages()). None: the capacities of its DRAM and CXL nodes, all
    # of which tiersim hands to workloads. zswap's max_pool_percent is a share
    # of it; set it above the capacities to model a kernel that keeps part of
    # its memory for itself.
    total_ram: int | None = None
    # How many times slower than tiersim's CPU costs (CpuCosts) this host runs
    # its kernel threads' work (kswapd): 1 for the hardware the costs describe.
    kernel_cpu_scale: float = 1.0
    # CpuCosts fields its kernel threads (kswapd, the zswap shrinker) pay
    # instead of tiersim's defaults, as (name, value): a machine whose kinds
    # of kernel work are slowed by different factors (an emulated guest).
    kthread_costs: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ZoneConfig:
    """One zone of a DRAM or CXL node (mmzone.py): its share of the node's capacity.

    `size` is what tiersim hands out from the zone (its free memory when the
    run starts); `managed` the zone's managed pages, the base of its
    watermarks and lowmem reserves (default: size). `unmovable` and
    `reclaimable` give the free pages in each pageblock of that migratetype
    at the start: a movable allocation reaches them only by a fallback.
    """

    zone: str  # "DMA", "DMA32", "Normal" or "Movable"
    size: int
    managed: int | None = None
    unmovable: tuple[int, ...] = ()
    reclaimable: tuple[int, ...] = ()


@dataclass(frozen=True)
class NodeConfig:
    """One memory node of the cluster, embedded or reached at `address`."""

    name: str
    kind: NodeKindName
    # Hosts that see this node as a NUMA node. A DRAM node has exactly one.
    hosts: tuple[str, ...]
    advertised_bytes: int
    # Media present (cram only may differ from advertised).
    physical_bytes: int
    # "host:port" of a running node server; None = embedded in-process.
    address: str | None = None
    # SLIT distance from the hosts' CPUs (10 = local). None = by kind.
    distance: int | None = None
    # Device options passed to an embedded node (overflow, watermarks ...).
    options: dict[str, Any] = field(default_factory=dict)
    # How to authenticate to a node at `address`: where its token is (a file or
    # an environment variable, never the token itself), and TLS settings.
    token_file: str | None = None
    token_env: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None
    # Its zones, ascending; empty: one zone with all of its memory movable.
    zones: tuple[ZoneConfig, ...] = ()


@dataclass(frozen=True)
class ZswapTunables:
    """/sys/module/zswap/parameters/ (see KERNEL.md, "zswap")."""

    enabled: bool = False
    compressor: str = "lz4"
    max_pool_percent: int = 20
    accept_threshold_percent: int = 90
    shrinker_enabled: bool = False
    # zswap direct (Price's v3 7/8): cram nodes tried in turn for whole pages.
    direct_nodes: tuple[str, ...] = ()
    # How the memcg is charged for a page stored directly on a compressed node:
    # "page" (PAGE_SIZE, as posted), "device" (size the node reports), or
    # "fuzzy" (PAGE_SIZE scaled by the node's current compression ratio).
    direct_charge: ChargeMode = "page"


@dataclass(frozen=True)
class CramTunables:
    """Compressed memory as a byte-addressable demotion tier (mm/cram.c, v4)."""

    # Use cram nodes as demotion targets (mapped read-only).
    tier_enabled: bool = True
    # Ask node_private_allocated before each migration. False reproduces the
    # unsafe policy that lets the device overflow.
    safety_check: bool = True
    # Reclaim cram pages to swap when the node reports pressure.
    reclaim: bool = True


@dataclass(frozen=True)
class NumaTunables:
    """kernel.numa_balancing and its memory-tiering knobs."""

    # 0 off, 1 normal, 2 memory tiering (NUMA_BALANCING_MEMORY_TIERING), 3 both.
    numa_balancing: int = 0
    hot_threshold_ms: int = 1000
    promote_rate_limit_MBps: int = 65536
    scan_delay_ms: int = 1000
    scan_period_min_ms: int = 1000
    scan_period_max_ms: int = 60000
    scan_size_mb: int = 256
    # Period of the hot-threshold adjustment (kernel: 60 s).
    threshold_adjust_period_ms: int = 60000
    # Hint-faulted candidates decided and promoted together. 1: in the fault
    # path, as do_numa_page() does. More: the fault only records the candidate
    # and a background step decides a batch (one policy call per batch).
    promote_batch: int = 1
    # Longest a recorded candidate waits for its batch, in simulated ms.
    promote_batch_delay_ms: int = 10


@dataclass(frozen=True)
class Tunables:
    demotion_enabled: bool = False
    # vm.swappiness; 0 disables anon reclaim to swap unless required.
    swappiness: int = 60
    # vm.watermark_scale_factor, in units of 1/10000 of the node.
    watermark_scale_factor: int = 10
    # vm.page-cluster: swap readahead reads up to 2**page_cluster pages a fault.
    page_cluster: int = 3
    # The per-CPU page lists of nodes with zones (mmzone.Pcp). Always there in
    # the kernel; off by default here until the reference calibration of
    # kernel threads' CPU time accounts for them (docs/fidelity.md).
    pcp_lists: bool = False
    zswap: ZswapTunables = field(default_factory=ZswapTunables)
    cram: CramTunables = field(default_factory=CramTunables)
    numa: NumaTunables = field(default_factory=NumaTunables)


@dataclass(frozen=True)
class CgroupConfig:
    """A memory cgroup (cgroup v2 memory controller files)."""

    name: str
    memory_max: int | None = None  # memory.max; None = "max"
    memory_high: int | None = None  # memory.high
    zswap_max: int | None = None  # memory.zswap.max
    zswap_writeback: bool = True  # memory.zswap.writeback


@dataclass(frozen=True)
class WorkloadConfig:
    """One process: where it runs, what it touches and what its pages hold."""

    name: str
    host: str
    cgroup: str
    footprint_bytes: int
    # Access pattern spec for workloads.make_workload (kind and parameters).
    pattern: dict[str, Any]
    # Content spec for content.make_content.
    content: Any = "default"
    # Stop after this many accesses (None = run for the scenario duration).
    accesses: int | None = None
    # Simulated time at which the process starts.
    start_ns: int = 0


@dataclass(frozen=True)
class PolicyConfig:
    name: str = "kernel"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    """Everything one simulation run needs (one variant of a scenario)."""

    name: str
    seed: int
    duration_ns: int
    hosts: tuple[HostConfig, ...]
    nodes: tuple[NodeConfig, ...]
    cgroups: tuple[CgroupConfig, ...]
    workloads: tuple[WorkloadConfig, ...]
    tunables: Tunables = field(default_factory=Tunables)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    # What to do when a node is lost mid-run.
    on_node_loss: OnNodeLoss = "continue"
    # Deadline of one node request in real time, for lost-node detection.
    node_timeout_s: float = 5.0
    # Sampling interval of the time series in the results (0 = none).
    sample_interval_ns: int = 0
    # Node faults to inject: (time_ns, node name, action) with action "kill".
    faults: tuple[tuple[int, str, str], ...] = ()
    # What this run changes relative to the scenario file, as (dotted key,
    # value) pairs in the order applied: `--set` overrides first, then the
    # variant's own. Results report them so a comparison says what differed.
    overrides: tuple[tuple[str, Any], ...] = ()
    # Whether the run needs the orchestrator service to itself. False lets the
    # service start it while other non-exclusive runs are in progress.
    exclusive: bool = True


@dataclass(frozen=True)
class Scenario:
    """A scenario file: a base run and the variants compared against it."""

    name: str
    description: str
    question: str
    path: str | None
    variants: tuple[RunConfig, ...]
