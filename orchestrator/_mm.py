"""The simulated kernel state that every mechanism module works on.

`Mm` holds the cluster: NUMA nodes (each backed by a memory node through the
NodeClient seam), hosts (each one kernel: its tiers, zswap pool, counters),
memory cgroups, processes and the page table. Mechanisms live in modules
named after their kernel counterparts and take an `Mm` as first argument,
the way kernel functions take a `pg_data_t` or a `struct lruvec`.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tiersim.nodes._client import NodeClient
from tiersim.nodes._types import NodeInfo, NodeKind, NodeState

from ._pages import LruLists, PageTable
from ._sched import Scheduler, Thread
from .config import CgroupConfig, RunConfig, Tunables, WorkloadConfig
from .memory_tiers import TierMap
from .mmzone import PageBlock, Watermarks, Zone
from .vmstat import VmStat

if TYPE_CHECKING:
    from .content import ContentModel
    from .workloads import Workload
    from .zswap import Zswap

PAGE_SIZE = 4096
SWAP_CLUSTER_MAX = 32  # include/linux/swap.h: pages reclaimed per batch


@dataclass(frozen=True)
class CpuCosts:
    """CPU-side costs the engine charges itself (not device time), in ns.

    Sources: KERNEL.md latency table (lz4 per 4 KiB on one core ~6.6 us
    compress / ~1.3 us decompress, 620 / 3100 MB/s) and common fault-path
    measurements (a minor fault costs about a microsecond).
    """

    minor_fault_ns: int = 1_000
    major_fault_ns: int = 2_500  # swap-in path overhead on top of device time
    hint_fault_ns: int = 1_200  # NUMA hint fault entry/exit
    wp_fault_ns: int = 1_500  # write-protect fault on a read-only cram page
    migrate_page_ns: int = 1_000  # unmap, copy setup, remap of one page
    lz4_compress_ns_per_byte: float = 6_600 / 4096
    lz4_decompress_ns_per_byte: float = 1_300 / 4096
    memcpy_ns_per_byte: float = 0.1  # ~10 GB/s: zsmalloc compaction's object copies
    reclaim_scan_ns: int = 100  # per page isolated off an LRU for reclaim
    reclaim_skip_ns: int = 10  # per page passed over for its zone (a list move)


@dataclass
class Numa:
    """One NUMA node as the kernel sees it: a memory node behind the seam."""

    id: int
    name: str
    kind: NodeKind
    client: NodeClient
    info: NodeInfo
    hosts: list[int]
    present_pages: int
    free_pages: int
    wmark: Watermarks
    # LRU list ids per memcg index: (inactive, active)
    lru: dict[int, tuple[int, int]] = field(default_factory=dict)
    # Compressed nodes: last pressure the device reported (0..1000).
    pressure: int = 0
    lost: bool = False
    kswapd_running: bool = False
    # kswapd while it runs: its work takes simulated time batch by batch
    # (vmscan.kswapd_ran()).
    kswapd_thread: Thread | None = None
    # The frames kswapd's batch frees, as (zone, foreign pageblock or None),
    # held until the batch's time has passed: the kernel frees them as
    # shrink_folio_list() ends (page_alloc.free_one()). None: freed at once.
    reclaim_held: list[tuple[Zone, PageBlock | None]] | None = None
    # Resident-access latency from the node's profile (one cacheline).
    read_ns: int = 0
    write_ns: int = 0
    # Device-reported totals for compressed nodes (from replies).
    physical_used_bytes: int = 0
    # Pages placed on the node by the engine, by state.
    nr_pages: int = 0
    # Its zones, ascending (mmzone.py); one movable-only zone unless configured.
    zones: list[Zone] = field(default_factory=list)
    # kswapd's pending request: the highest zone asked for since its last run
    # started (-1: none), as pgdat->kswapd_highest_zoneidx.
    kswapd_highest_zoneidx: int = -1
    # Runs in a row that reclaimed nothing (pgdat->kswapd_failures); reset by
    # any reclaim progress on the node.
    kswapd_failures: int = 0
    # When kswapd last went to sleep, for kswapd_low_wmark_hit_quickly.
    kswapd_slept_ns: int = -(10**18)

    # One zone without foreign pageblocks: frames are plain counts.
    simple: bool = True

    @property
    def nr_free_pages(self) -> int:
        """NR_FREE_PAGES: free frames on the buddy lists, the ones the
        watermarks count (free_pages less those on per-CPU lists)."""
        return self.free_pages - sum(z.pcp.count for z in self.zones if z.pcp is not None)

    def zone_at(self, idx: int) -> Zone:
        for z in self.zones:
            if z.idx == idx:
                return z
        raise KeyError(f"node {self.name} has no zone {idx}")

    @property
    def byte_addressable(self) -> bool:
        return self.kind in (NodeKind.DRAM, NodeKind.CXL, NodeKind.CRAM)


@dataclass
class Memcg:
    """A memory cgroup on one host (mm/memcontrol.c)."""

    index: int
    host: int
    config: CgroupConfig
    # memory.current in bytes: resident pages plus zswap charges.
    current: int = 0
    peak: int = 0
    zswap_current: int = 0  # memory.zswap.current
    swap_current: int = 0  # memory.swap.current
    # zswap_lruvec_state.nr_disk_swapins: swap-ins from disk not yet set
    # against the zswap shrinker (they protect as many zswap entries).
    zswap_disk_swapins: int = 0
    # The zswap shrinker's work deferred by do_shrink_slab() (nr_deferred).
    zswap_shrinker_deferred: int = 0
    # MEMCG_ZSWAPPED and MEMCG_ZSWAP_B as last flushed (memcontrol.py,
    # flush_memcg_stats_dwork): what zswap_shrinker_count() reads.
    zswap_stat_stored: int = 0
    zswap_stat_bytes: int = 0
    # Recent reclaim cost of the cgroup's lruvec on each node, (anon, file)
    # (lruvec->anon_cost, file_cost): get_scan_count() balances by them.
    lru_cost: dict[int, tuple[int, int]] = field(default_factory=dict)
    events: dict[str, int] = field(
        default_factory=lambda: {"low": 0, "high": 0, "max": 0, "oom": 0, "oom_kill": 0}
    )
    reclaim_stalls: int = 0
    reclaim_no_progress: int = 0
    # Swap-cache folios zswap's shrink worker wrote back through, charged to
    # the cgroup until reclaim drops them: (node, zone) of each frame, oldest
    # first (zswap._writeback_folio()).
    writeback_folios: list[tuple[int, int]] = field(default_factory=list)
    stat: dict[str, int] = field(
        default_factory=lambda: {
            "zswpout": 0,
            "zswpin": 0,
            "zswpwb": 0,
            "pswpin": 0,
            "pswpout": 0,
            "pgmajfault": 0,
            "pgfault": 0,
            "zswap_direct_charged": 0,
        }
    )

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class Process:
    index: int
    host: int
    memcg: int
    config: WorkloadConfig
    base: int  # first page index in the page table
    npages: int
    workload: Workload
    content: ContentModel
    clock_ns: int = 0
    accesses: int = 0
    reads: int = 0
    writes: int = 0
    done: bool = False
    killed: str | None = None
    # NUMA scanner (task_numa_work): position (mm->numa_scan_offset), passes
    # completed (mm->numa_scan_seq), period (p->numa_scan_period, 0 until the
    # first scan), earliest next scan (mm->numa_next_scan), the pass the task
    # last placed itself in (p->numa_scan_seq) and its local hint faults since
    # (p->numa_faults_locality[1]).
    numa_scan_offset: int = 0
    numa_scan_seq: int = 0
    numa_scan_period_ms: int = 0
    numa_next_scan_ns: int = 0
    numa_placement_seq: int = 0
    numa_local_faults: int = 0
    # Swap readahead state (the VMA's swap_readahead_info): last fault, window, hits.
    swap_ra_pfn: int = -2
    swap_ra_win: int = 0
    swap_ra_hits: int = 0
    # Latency histogram (see results.LatencyHistogram)
    latency: Any = None
    # The current chunk of accesses and the position in it.
    chunk_pages: Any = None
    chunk_writes: Any = None
    chunk_gaps: Any = None
    chunk_pos: int = 0
    chunk_len: int = 0
    window: int = 64
    chunk_lists: Any = None
    # Accesses served by each node (numpy int64 array indexed by node id).
    node_hits: Any = None
    # Whether it has run, and the host's kernel_cpu_ns when it last paid its share.
    started: bool = False
    kernel_cpu_seen_ns: int = 0


@dataclass
class Host:
    """One kernel: its view of the nodes, its tiers, its pools and counters."""

    index: int
    name: str
    cpus: int
    nodes: list[int]  # NUMA nodes this host sees (byte-addressable)
    cpu_nodes: list[int]  # its DRAM node(s)
    swap_nodes: list[int]  # storage nodes used as swap devices, by priority
    tiers: TierMap
    # Allocation fallback order (zonelist) of the host's DRAM node.
    zonelist: list[int]
    vmstat: VmStat = field(default_factory=VmStat)
    zswap: Zswap | None = None
    memcgs: list[int] = field(default_factory=list)
    # NUMA-balancing promotion state (numa_balancing.py)
    promo: Any = None
    total_ram_pages: int = 0
    # CPU time its kernel threads (kswapd) have used, in all: on a host with
    # no CPU to spare it is taken from the processes (memory.run_step()).
    kernel_cpu_ns: int = 0
    # CPU time each kernel thread of the host took, ns, by thread name
    # ("kswapd0", "zswap_shrink"), scaled as kernel_thread_ran() scales it.
    kthread_cpu_ns: dict[str, int] = field(default_factory=dict)
    # Swap slots held without a page written to the swap device: one per
    # zswap entry, and one per page loaded back from zswap that stays in the
    # swap cache (the kernel allocates the slot before zswap_store()).
    swap_slots_held: int = 0
    # How many times slower than tiersim's CPU costs its kernel threads run.
    kernel_cpu_scale: float = 1.0
    # The costs its kernel threads pay (HostConfig.kthread_costs over CpuCosts).
    kthread_costs: CpuCosts = field(default_factory=CpuCosts)


class Mm:
    """The whole simulated cluster state."""

    def __init__(self, config: RunConfig, sched: Scheduler) -> None:
        self.config = config
        self.tunables: Tunables = config.tunables
        self.sched = sched
        self.rng = random.Random(config.seed)
        self.task_costs = CpuCosts()
        # The host whose kernel thread (kswapd, the zswap shrinker) does the
        # work that runs now, or None for a task's: whose costs apply.
        self.kthread: int | None = None
        self.nodes: list[Numa] = []
        self.hosts: list[Host] = []
        self.memcgs: list[Memcg] = []
        self.procs: list[Process] = []
        self.pages = PageTable(0)
        self.lru = LruLists(self.pages)
        self._proc_bases: list[int] = []
        self.node_by_name: dict[str, int] = {}
        self.failures: list[dict[str, Any]] = []
        self.stopped: str | None = None
        # SLIT distances per host: node id -> distance from the host's CPUs.
        self.distances: list[dict[int, int]] = []
        # Resident access latency, ns: latency_table[node id, is_write].
        self.latency_table: Any = None
        # The same as nested lists, for scalar lookups.
        self.latency_rows: list[list[int]] = []
        self.corrupt_pages = 0
        from .policy import KernelPolicy, Policy

        self.policy: Policy = KernelPolicy()
        # Count per-page accesses (for policies that ask for them).
        self.track_accesses = False
        self.pressure_changes: list[tuple[int, str, int]] = []
        # Resident pages read from a swap device that keep their slot (the swap
        # cache): page -> (swap node, slot handle, page version when read).
        self.swapcache: dict[int, tuple[int, int, int]] = {}

    @property
    def costs(self) -> CpuCosts:
        """The CPU costs of the work running now: its host's kernel-thread
        costs while a kernel thread runs (Host.kthread_costs), the tasks'
        otherwise."""
        return self.task_costs if self.kthread is None else self.hosts[self.kthread].kthread_costs

    @property
    def finished(self) -> bool:
        """The run is over: stopped, or every process done."""
        return bool(self.stopped) or all(p.done for p in self.procs)

    # -- page table set-up -------------------------------------------------

    def init_pages(self, total: int) -> None:
        self.pages = PageTable(total)
        self.lru = LruLists(self.pages)
        self._proc_bases = [p.base for p in self.procs]

    def proc_of(self, page: int) -> Process:
        return self.procs[bisect.bisect_right(self._proc_bases, page) - 1]

    def page_bytes(self, page: int) -> bytes:
        """The page's current contents: real bytes from its process's model."""
        proc = self.proc_of(page)
        return proc.content.page(page - proc.base, self.pages.version[page])

    def host_of_page(self, page: int) -> Host:
        return self.hosts[self.memcgs[self.pages.memcg[page]].host]

    def lru_lists(self, nid: int, memcg: int) -> tuple[int, int]:
        node = self.nodes[nid]
        lists = node.lru.get(memcg)
        if lists is None:
            lists = (self.lru.new_list(), self.lru.new_list())
            node.lru[memcg] = lists
        return lists

    # -- helpers the mechanisms share ------------------------------------------

    def node_distance(self, host: Host, nid: int) -> int:
        """SLIT distance from the host's CPUs to a node."""
        return self.distances[host.index].get(nid, 20)

    def zswap_of_page(self, page: int) -> Zswap:
        zswap = self.host_of_page(page).zswap
        assert zswap is not None
        return zswap

    def verify(self, page: int, data: bytes) -> None:
        """A device gave back a page: it must hold exactly what was placed there."""
        if data != self.page_bytes(page):
            self.corrupt_pages += 1

    def note_state(self, nid: int, state: NodeState) -> None:
        """Learn a node's occupancy from a reply; react to pressure changes.

        A compressed node at pressure 1000 blocks migration to it and wakes
        its kswapd (the low-watermark interrupt of mm/cram.c).
        """
        node = self.nodes[nid]
        node.physical_used_bytes = state.physical_used_bytes
        if state.pressure != node.pressure:
            node.pressure = state.pressure
            self.pressure_changes.append((self.sched.now_ns, node.name, state.pressure))
            from .cram import cram_pressure_changed

            cram_pressure_changed(self, nid, state.pressure)

    def node_lost(self, nid: int, reason: str) -> None:
        """A node stopped answering (or raised a machine check): its pages are lost."""
        import numpy as np

        from ._pages import PS_CRAM_RO, PS_LOST, PS_MAPPED, PS_POISONED, PS_SWAP, PS_ZSWAP_DIRECT

        node = self.nodes[nid]
        if node.lost:
            return
        node.lost = True
        p = self.pages
        held = np.isin(p.state_np, (PS_MAPPED, PS_CRAM_RO, PS_POISONED, PS_SWAP, PS_ZSWAP_DIRECT))
        idx = np.nonzero(held & (p.node_np == nid))[0]
        per_host: dict[int, int] = {}
        for page in idx.tolist():
            host = self.memcgs[p.memcg[page]].host
            per_host[host] = per_host.get(host, 0) + 1
            if p.state[page] == PS_ZSWAP_DIRECT:
                zswap = self.hosts[host].zswap
                if zswap is not None and page in zswap.length:
                    memcg = self.memcgs[p.memcg[page]]
                    length = zswap.length.pop(page)
                    zswap.lru[memcg.index].pop(page, None)
                    memcg.current -= length
                    memcg.zswap_current -= length
                    zswap.stats.stored_pages -= 1
                    zswap.stats.stored_direct_pages -= 1
                    zswap.zswapped_pages -= 1
            elif p.state[page] in (PS_MAPPED, PS_CRAM_RO, PS_POISONED):
                self.lru.del_page(page)
                self.memcgs[p.memcg[page]].current -= PAGE_SIZE
            elif p.state[page] == PS_SWAP:
                self.memcgs[p.memcg[page]].swap_current -= PAGE_SIZE
            p.state[page] = PS_LOST
        for h, n in per_host.items():
            self.hosts[h].vmstat.inc("pages_lost", n)
        self.failures.append(
            {
                "time_ns": self.sched.now_ns,
                "node": node.name,
                "reason": reason,
                "pages_lost": int(idx.size),
            }
        )
        if self.config.on_node_loss == "stop":
            self.stopped = f"node {node.name} lost: {reason}"
