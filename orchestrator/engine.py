"""Build a simulated cluster from a RunConfig, run it, and report.

`run(config)` is the whole life of one run: connect (or embed) the memory
nodes, lay out hosts, tiers, cgroups and processes, drive the event
scheduler until the duration ends (or every process finishes, or a lost
node stops the run), then collect the results document.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import numpy as np

from tiersim._errors import ConfigError, NodeError
from tiersim.nodes._client import NodeClient
from tiersim.nodes._config import node_config
from tiersim.nodes._factory import make_device
from tiersim.nodes._grpc_client import GrpcNodeClient
from tiersim.nodes._local import LocalNodeClient
from tiersim.nodes._types import NodeKind

from ._mm import PAGE_SIZE, CpuCosts, Host, Memcg, Mm, Numa, Process
from ._observe import SAMPLED_VMSTAT, results_extra, sample_extra
from ._pages import STATE_NAMES
from ._sched import Scheduler
from .config import NodeConfig, RunConfig
from .content import make_content
from .memcontrol import start_stats_flusher
from .memory import run_step
from .memory_tiers import (
    LOCAL_DISTANCE,
    MEMTIER_ADISTANCE_DRAM,
    REMOTE_DISTANCE,
    MemoryPerf,
    build_tiers,
    perf_to_adistance,
)
from .mmzone import (
    ZONE_MOVABLE,
    ZONE_NAMES,
    PageBlock,
    Watermarks,
    Zone,
    new_zone,
    node_watermarks,
    setup_per_zone_lowmem_reserve,
    setup_per_zone_wmarks,
    setup_zone_pageset,
)
from .numa_balancing import PromoState, start_scanner, tiering_mode
from .results import SCHEMA, LatencyHistogram
from .workloads import make_workload
from .zswap import Zswap

ProgressFn = Callable[[int, int], None]


class KillableClient:
    """Wraps a node client so a scenario can make the node disappear mid-run."""

    def __init__(self, inner: NodeClient) -> None:
        self.inner = inner
        self.killed = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr) or name in ("close", "watch_pressure"):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.killed:
                raise NodeError(grpc.StatusCode.UNAVAILABLE, "node killed by the scenario")
            return await attr(*args, **kwargs)

        return call


async def open_node(cfg: NodeConfig, seed: int, timeout_s: float) -> NodeClient:
    """An in-process device, or a client of a node server at `cfg.address`."""
    if cfg.address:
        from tiersim._security import ClientSecurity

        security = ClientSecurity.from_files(
            token_file=cfg.token_file,
            token_env=cfg.token_env,
            tls=cfg.tls,
            tls_ca=cfg.tls_ca,
            tls_cert=cfg.tls_cert,
            tls_key=cfg.tls_key,
            tls_server_name=cfg.tls_server_name,
            key_prefix=f"nodes.{cfg.name}.",
        )
        try:
            return await GrpcNodeClient.connect(
                cfg.address, timeout=timeout_s, security=security, request_timeout=timeout_s
            )
        except (NodeError, OSError, TimeoutError, grpc.aio.AioRpcError) as exc:
            raise ConfigError(
                f"node {cfg.name!r} at {cfg.address} does not answer: {exc}",
                key=f"nodes.{cfg.name}.address",
            ) from exc
    options = dict(cfg.options)
    options.setdefault("seed", zlib.crc32(f"{seed}:{cfg.name}".encode()))
    physical = cfg.physical_bytes if cfg.kind == "cram" else None
    try:
        ncfg = node_config(cfg.kind, cfg.advertised_bytes, physical, name=cfg.name, **options)
    except ConfigError as exc:
        raise ConfigError(exc.message, key=f"nodes.{cfg.name}.{exc.key or 'options'}") from exc
    return LocalNodeClient(make_device(ncfg))


def _perf(node: Numa) -> MemoryPerf:
    lat = node.info.latency
    bw = lat.bandwidth_bytes_per_sec // 1_000_000 or 1
    return MemoryPerf(node.read_ns, node.write_ns, bw, bw)


def kthread_costs(overrides: tuple[tuple[str, float], ...]) -> CpuCosts:
    """tiersim's CPU costs with a host's kernel-thread values written in."""
    base = CpuCosts()
    values: dict[str, Any] = {}
    for name, value in overrides:
        values[name] = int(value) if isinstance(getattr(base, name), int) else float(value)
    return dataclasses.replace(base, **values)


class Simulation:
    """One run. Create, then `await run()`; `mm` stays available afterwards."""

    def __init__(self, config: RunConfig, *, progress: ProgressFn | None = None) -> None:
        self.config = config
        self.sched = Scheduler()
        self.mm = Mm(config, self.sched)
        self.progress = progress
        self.wall_s = 0.0
        self.loop_wall_s = 0.0
        self._clients: list[NodeClient] = []
        self._killable: dict[str, KillableClient] = {}

    async def build(self) -> None:
        cfg = self.config
        mm = self.mm
        host_index = {h.name: i for i, h in enumerate(cfg.hosts)}
        # Nodes, in scenario order; ids are positions.
        for nid, ncfg in enumerate(cfg.nodes):
            client = await open_node(ncfg, cfg.seed, cfg.node_timeout_s)
            self._clients.append(client)
            await client.reset(0)
            killable = KillableClient(client)
            self._killable[ncfg.name] = killable
            info = await client.describe()
            pages = info.advertised_bytes // PAGE_SIZE
            lat = info.latency
            node = Numa(
                id=nid,
                name=ncfg.name,
                kind=info.kind,
                client=killable,
                info=info,
                hosts=[host_index[h] for h in ncfg.hosts],
                present_pages=pages,
                free_pages=pages,
                wmark=Watermarks(0, 0, 0, 0),
                read_ns=int(lat.read_base_ns + lat.per_cacheline_ns),
                write_ns=int(lat.write_base_ns + lat.per_cacheline_ns),
            )
            if ncfg.zones and (
                info.kind not in (NodeKind.DRAM, NodeKind.CXL)
                or sum(z.size for z in ncfg.zones) != pages * PAGE_SIZE
            ):
                raise ConfigError(
                    f"node {ncfg.name!r} reports {pages} pages of {info.kind.name.lower()} "
                    "memory; its zones describe "
                    f"{sum(z.size for z in ncfg.zones) // PAGE_SIZE} pages of dram or cxl memory",
                    key=f"nodes.{ncfg.name}.zones",
                )
            node.zones = _zones(ncfg, nid, pages)
            node.simple = len(node.zones) == 1 and not node.zones[0].blocks
            setup_per_zone_lowmem_reserve(node.zones)
            setup_per_zone_wmarks(node.zones, cfg.tunables.watermark_scale_factor)
            node.wmark = node_watermarks(node.zones)
            mm.nodes.append(node)
            mm.node_by_name[ncfg.name] = nid
        table = np.zeros((len(mm.nodes), 2), dtype=np.int64)
        for node in mm.nodes:
            table[node.id] = (node.read_ns, node.write_ns)
        mm.latency_table = table
        mm.latency_rows = table.tolist()

        # Hosts: their nodes, tiers, zonelists, watermarks and zswap.
        for hi, hcfg in enumerate(cfg.hosts):
            mine = [n for n in mm.nodes if hi in n.hosts]
            ba = [n for n in mine if n.byte_addressable]
            dram = [n for n in ba if n.kind == NodeKind.DRAM]
            dram_perf = _perf(dram[0])
            dist: dict[int, int] = {}
            for n in ba:
                d = cfg.nodes[n.id].distance
                dist[n.id] = (
                    d
                    if d is not None
                    else (LOCAL_DISTANCE if n.kind == NodeKind.DRAM else REMOTE_DISTANCE)
                )
            adist = {
                n.id: MEMTIER_ADISTANCE_DRAM
                if n.kind == NodeKind.DRAM
                else max(MEMTIER_ADISTANCE_DRAM, perf_to_adistance(_perf(n), dram_perf))
                for n in ba
            }
            pair = {
                (a.id, b.id): max(dist[a.id], dist[b.id]) if a.id != b.id else LOCAL_DISTANCE
                for a in ba
                for b in ba
            }
            tiers = build_tiers(adist, [n.id for n in dram], pair)
            # The zonelist: normal memory by distance; private (cram) nodes excluded.
            zonelist = sorted(
                (n.id for n in ba if n.kind != NodeKind.CRAM), key=lambda i: (dist[i], i)
            )
            # Watermarks: min_free_kbytes shared over every zone of the zonelist.
            own = [i for i in zonelist if mm.nodes[i].hosts[0] == hi]
            setup_per_zone_wmarks(
                [z for i in own for z in mm.nodes[i].zones],
                cfg.tunables.watermark_scale_factor,
                lowmem=sum(z.managed for i in zonelist for z in mm.nodes[i].zones),
            )
            for i in own:
                mm.nodes[i].wmark = node_watermarks(mm.nodes[i].zones)
                if cfg.tunables.pcp_lists and not mm.nodes[i].simple:
                    for z in mm.nodes[i].zones:
                        setup_zone_pageset(z, hcfg.cpus)
            host = Host(
                index=hi,
                name=hcfg.name,
                cpus=hcfg.cpus,
                kernel_cpu_scale=hcfg.kernel_cpu_scale,
                kthread_costs=kthread_costs(hcfg.kthread_costs),
                nodes=[n.id for n in ba],
                cpu_nodes=[n.id for n in dram],
                swap_nodes=[n.id for n in mine if n.kind == NodeKind.STORAGE],
                tiers=tiers,
                zonelist=zonelist,
                total_ram_pages=(
                    hcfg.total_ram // PAGE_SIZE
                    if hcfg.total_ram is not None
                    else sum(mm.nodes[i].present_pages for i in zonelist)
                ),
            )
            host.promo = PromoState()
            zt = cfg.tunables.zswap
            host.zswap = Zswap(
                host=hi,
                tunables=zt,
                total_ram_pages=host.total_ram_pages,
                direct_nodes=[
                    mm.node_by_name[n] for n in zt.direct_nodes if mm.node_by_name[n] in host.nodes
                ],
                enabled=zt.enabled,
            )
            mm.hosts.append(host)
            mm.distances.append(dist)

        # Cgroups (one instance per host that runs a member) and processes.
        cg_by_name = {c.name: c for c in cfg.cgroups}
        memcg_index: dict[tuple[int, str], int] = {}
        base = 0
        for pi, w in enumerate(cfg.workloads):
            hi = host_index[w.host]
            key = (hi, w.cgroup)
            if key not in memcg_index:
                memcg_index[key] = len(mm.memcgs)
                mm.memcgs.append(Memcg(index=len(mm.memcgs), host=hi, config=cg_by_name[w.cgroup]))
                mm.hosts[hi].memcgs.append(memcg_index[key])
            npages = max(1, w.footprint_bytes // PAGE_SIZE)
            seed = zlib.crc32(f"{cfg.seed}:{w.name}".encode())
            proc = Process(
                index=pi,
                host=hi,
                memcg=memcg_index[key],
                config=w,
                base=base,
                npages=npages,
                workload=make_workload(dict(w.pattern), npages, seed),
                content=make_content(w.content, seed=seed),
                clock_ns=w.start_ns,
            )
            proc.latency = LatencyHistogram()
            proc.node_hits = np.zeros(len(mm.nodes), dtype=np.int64)
            mm.procs.append(proc)
            base += npages
        mm.init_pages(base)
        for proc in mm.procs:
            mm.pages.memcg_np[proc.base : proc.base + proc.npages] = proc.memcg

    async def _start_policy(self) -> None:
        from .policy import make_policy

        pc = self.config.policy
        try:
            policy = make_policy(pc.name, dict(pc.options))
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc), key="policy") from exc
        self.mm.policy = policy
        self.mm.track_accesses = policy.wants_access_counts
        await policy.start(self.mm)

    def _schedule(self) -> None:
        mm = self.mm
        cfg = self.config
        for proc in mm.procs:

            def first_step(p: Process = proc) -> Awaitable[None]:
                return run_step(mm, p)

            mm.sched.at(proc.config.start_ns, first_step, f"proc{proc.index}")
            if tiering_mode(mm) or cfg.tunables.numa.numa_balancing & 1:
                start_scanner(mm, proc)
        if any(h.zswap is not None and h.zswap.tunables.shrinker_enabled for h in mm.hosts):
            start_stats_flusher(mm)
        for at_ns, name, action in cfg.faults:
            client = self._killable[name]

            async def inject(client: KillableClient = client, action: str = action) -> None:
                if action == "kill":
                    client.killed = True

            mm.sched.at(at_ns, inject, f"fault:{name}")
        if cfg.sample_interval_ns:
            self.samples: list[dict[str, Any]] = []

            async def sample() -> None:
                self.samples.append(self._sample())
                if not self._finished():
                    mm.sched.after(cfg.sample_interval_ns, sample, "sample")

            mm.sched.at(0, sample, "sample")
        if self.progress:
            step = max(cfg.duration_ns // 100, 1)

            async def tick() -> None:
                assert self.progress is not None
                self.progress(mm.sched.now_ns, cfg.duration_ns)
                if not self._finished():
                    mm.sched.after(step, tick, "progress")

            mm.sched.at(0, tick, "progress")

    def _finished(self) -> bool:
        return self.mm.finished

    def _sample(self) -> dict[str, Any]:
        mm = self.mm
        states = np.bincount(mm.pages.state_np, minlength=8)
        return {
            "time_ns": mm.sched.now_ns,
            "pages": {STATE_NAMES[i]: int(states[i]) for i in range(8)},
            "nodes": {
                n.name: {
                    "used_pages": n.nr_pages,
                    "pressure": n.pressure,
                    "physical_used_bytes": n.physical_used_bytes,
                }
                for n in mm.nodes
            },
            "vmstat": {k: sum(h.vmstat[k] for h in mm.hosts) for k in SAMPLED_VMSTAT},
            **sample_extra(mm),
        }

    async def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            await self.build()
            await self._start_policy()
            self._schedule()
            loop_start = time.perf_counter()
            await self.sched.run_until(self.config.duration_ns, stop=self._finished)
            # Wall time of the event loop alone (benchmarks), set-up excluded.
            self.loop_wall_s = time.perf_counter() - loop_start
            # Kernel threads still asleep in their work end with the run.
            await self.sched.close()
            doc = await self._results()
        finally:
            await self.sched.close()
            await self.mm.policy.close()
            for c in self._clients:
                await c.close()
        self.wall_s = time.perf_counter() - start
        doc["wall_time_s"] = round(self.wall_s, 3)
        return doc

    async def _results(self) -> dict[str, Any]:
        mm = self.mm
        cfg = self.config
        overall = LatencyHistogram()
        workloads: dict[str, Any] = {}
        sim_end = max([mm.sched.now_ns, *(p.clock_ns for p in mm.procs)])
        for p in mm.procs:
            overall.merge(p.latency)
            workloads[p.config.name] = {
                "host": cfg.hosts[p.host].name,
                "cgroup": p.config.cgroup,
                "footprint_pages": p.npages,
                "accesses": p.accesses,
                "reads": p.reads,
                "writes": p.writes,
                "sim_time_ns": p.clock_ns,
                "killed": p.killed,
                "accesses_by_node": {
                    mm.nodes[i].name: int(c) for i, c in enumerate(p.node_hits) if c
                },
                "latency": p.latency.summary(),
            }
        nodes: dict[str, Any] = {}
        write_failures = poisoned = machine_checks = 0
        compressed = 0
        for n in mm.nodes:
            device: dict[str, Any] | None = None
            if not n.lost:
                try:
                    st = await n.client.stats()
                    device = {
                        k: (int(v) if not isinstance(v, (str, bool)) else v)
                        for k, v in _asdict(st).items()
                    }
                    device["kind"] = n.kind.name.lower()
                except NodeError:
                    device = None
            if device:
                write_failures += device["write_failures"]
                poisoned += device["poisoned_pages"]
                machine_checks += device["machine_checks"]
                compressed += device["compress_in_bytes"]
            nodes[n.name] = {
                "kind": n.kind.name.lower(),
                "hosts": [cfg.hosts[h].name for h in n.hosts],
                "present_pages": n.present_pages,
                "used_pages": n.nr_pages,
                "free_pages": n.free_pages,
                "pcp_pages": n.free_pages - n.nr_free_pages,
                "watermarks": {
                    "min": n.wmark.min,
                    "low": n.wmark.low,
                    "high": n.wmark.high,
                    "promo": n.wmark.promo,
                },
                "pressure": n.pressure,
                "lost": n.lost,
                "device": device,
            }
        hosts: dict[str, Any] = {}
        for h in mm.hosts:
            z = h.zswap
            zdoc = None
            if z is not None:
                zdoc = dict(_asdict(z.stats))
                zdoc["pool_total_size"] = z.pool_pages * PAGE_SIZE
                zdoc["pool_pages"] = z.pool_pages
                zdoc["pages_compacted"] = z.zspool.pages_compacted
                zdoc["zswap"] = z.pool_bytes()
                zdoc["zswapped"] = z.zswapped_pages * PAGE_SIZE
                zdoc["max_pool_pages"] = z.max_pages()
                zdoc["pool_full"] = z.pool_full
                compressed += h.vmstat["zswpout"] * PAGE_SIZE
            dram_used = sum(mm.nodes[i].present_pages - mm.nodes[i].free_pages for i in h.cpu_nodes)
            hosts[h.name] = {
                "vmstat": dict(h.vmstat),
                "zswap": zdoc,
                "tiers": {
                    f"memory_tier{t.id}": [mm.nodes[i].name for i in t.nodes] for t in h.tiers.tiers
                },
                "adistance": {mm.nodes[i].name: a for i, a in h.tiers.adistance.items()},
                "demotion_targets": {
                    mm.nodes[i].name: {
                        "preferred": [mm.nodes[j].name for j in t.preferred],
                        "allowed": [mm.nodes[j].name for j in t.allowed],
                    }
                    for i, t in h.tiers.targets.items()
                },
                "toptier": [mm.nodes[i].name for i in h.nodes if h.tiers.is_toptier(i)],
                "dram_used_bytes": dram_used * PAGE_SIZE,
                "kthreads": {name: h.kthread_cpu_ns[name] for name in sorted(h.kthread_cpu_ns)},
                "hot_threshold_ms": [
                    {"time_ns": t, "threshold_ms": th} for t, th in h.promo.threshold_history
                ],
            }
        cgroups = {}
        for m in mm.memcgs:
            cgroups[f"{cfg.hosts[m.host].name}/{m.name}"] = {
                "memory.current": m.current,
                "memory.peak": m.peak,
                "memory.max": m.config.memory_max,
                "memory.high": m.config.memory_high,
                "memory.zswap.current": m.zswap_current,
                "memory.zswap.max": m.config.zswap_max,
                "memory.zswap.writeback": int(m.config.zswap_writeback),
                "memory.swap.current": m.swap_current,
                "memory.events": dict(m.events),
                "memory.stat": dict(m.stat),
                "reclaim_stalls": m.reclaim_stalls,
                "reclaim_no_progress": m.reclaim_no_progress,
            }
        pages_lost = sum(h.vmstat["pages_lost"] for h in mm.hosts)
        doc: dict[str, Any] = {
            "schema": SCHEMA,
            "scenario": cfg.name.split(" / ")[0],
            "variant": cfg.name,
            "seed": cfg.seed,
            "completed": mm.stopped is None,
            "stopped": mm.stopped,
            "sim_time_ns": sim_end,
            "duration_ns": cfg.duration_ns,
            "hosts": hosts,
            "nodes": nodes,
            "cgroups": cgroups,
            "workloads": workloads,
            "latency": overall.summary(),
            "latency_cdf": overall.cdf(),
            "compression": {"bytes_compressed": compressed},
            "failures": {
                "device_write_failures": write_failures,
                "poisoned_pages": poisoned,
                "machine_checks": machine_checks,
                "pages_lost": pages_lost,
                "sigbus": sum(h.vmstat["sigbus"] for h in mm.hosts),
                "memory_failure": sum(h.vmstat["memory_failure"] for h in mm.hosts),
                "corrupt_pages": mm.corrupt_pages,
                "nodes_lost": mm.failures,
            },
            "events": {"pressure_changes": len(mm.pressure_changes)},
            "policy": {"name": mm.policy.name, **mm.policy.stats()},
        }
        if cfg.sample_interval_ns:
            doc["timeseries"] = self.samples
        results_extra(mm, doc)
        return doc


def _asdict(obj: Any) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(obj, f.name) for f in fields(obj)}


async def run(config: RunConfig, *, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Run one configuration and return its results document."""
    return await Simulation(config, progress=progress).run()


async def run_all(
    configs: Sequence[RunConfig], *, progress: ProgressFn | None = None
) -> list[dict[str, Any]]:
    return [await run(c, progress=progress) for c in configs]


def _zones(ncfg: NodeConfig, nid: int, pages: int) -> list[Zone]:
    """The node's zones from its configuration; one movable zone by default."""
    if not ncfg.zones:
        return [new_zone(ZONE_MOVABLE, nid, pages)]
    zones = []
    for zc in ncfg.zones:
        blocks = [PageBlock("unmovable", n) for n in zc.unmovable] + [
            PageBlock("reclaimable", n) for n in zc.reclaimable
        ]
        managed = zc.managed // PAGE_SIZE if zc.managed is not None else None
        zones.append(
            new_zone(ZONE_NAMES.index(zc.zone), nid, zc.size // PAGE_SIZE, managed, blocks)
        )
    zones.sort(key=lambda z: z.idx)
    return zones
