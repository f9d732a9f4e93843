"""One test per kernel rule the engine implements, asserting counters by name.

Each runs a small scenario in-process (tests/orchestrator/conftest.py) and
checks the counters the kernel would export: vmstat, zswap's debugfs files,
memory.* files of the cgroup.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sim_helpers import vm, zs
from tiersim.orchestrator.config import NumaTunables
from tiersim.orchestrator.numa_balancing import (
    PromoState,
    adjust_threshold,
    task_numa_fault,
)
from tiersim.orchestrator.zswap import Zswap, ZswapTunables


def cg(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["cgroups"]["h0/app"]


# -- zswap ---------------------------------------------------------------------


def test_demotion_is_off_by_default_and_overflow_goes_to_swap(simulate: Any) -> None:
    doc = simulate()
    assert vm(doc, "pgdemote_kswapd") + vm(doc, "pgdemote_direct") == 0
    assert vm(doc, "pswpout") > 0
    assert vm(doc, "zswpout") == 0  # zswap is off by default too


def test_zswap_stores_and_loads_are_exclusive(simulate: Any) -> None:
    doc = simulate(tunables__zswap__enabled=True, tunables__zswap__max_pool_percent=50)
    assert vm(doc, "zswpout") > 0 and vm(doc, "zswpin") > 0
    # Every load frees its entry: what is stored is what went in minus what
    # came back out (loads) or was written back.
    assert zs(doc, "stored_pages") == vm(doc, "zswpout") - vm(doc, "zswpin") - vm(doc, "zswpwb")
    assert cg(doc)["memory.zswap.current"] > 0
    assert cg(doc)["memory.stat"]["zswpout"] == vm(doc, "zswpout")


def test_zero_filled_pages_never_reach_zswap(simulate: Any) -> None:
    doc = simulate(tunables__zswap__enabled=True, workloads__w__content="zero")
    assert vm(doc, "swpout_zero") > 0
    assert vm(doc, "zswpout") == 0
    assert vm(doc, "pswpout") == 0


def test_incompressible_pages_stored_as_is_when_writeback_allowed(simulate: Any) -> None:
    doc = simulate(
        tunables__zswap__enabled=True,
        tunables__zswap__max_pool_percent=50,
        workloads__w__content="incompressible",
    )
    assert zs(doc, "stored_incompressible_pages") > 0
    assert zs(doc, "reject_compress_fail") == 0
    # As-is entries take a whole page of pool each.
    assert zs(doc, "pool_total_size") >= zs(doc, "stored_incompressible_pages") * 4096


def test_incompressible_pages_refused_without_writeback(simulate: Any) -> None:
    doc = simulate(
        tunables__zswap__enabled=True,
        workloads__w__content="incompressible",
        **{"cgroups.app.zswap_writeback": False},
    )
    # Linux 7.3 counts these as reject_compress_fail (reference recording).
    assert zs(doc, "reject_compress_fail") > 0
    assert zs(doc, "reject_compress_poor") == 0
    assert zs(doc, "stored_incompressible_pages") == 0
    # A page zswap refuses does not fall through to the swap device.
    assert vm(doc, "pswpout") == 0
    assert vm(doc, "zswpwb") == 0


def test_pool_limit_hit_and_writeback_to_swap(simulate: Any) -> None:
    doc = simulate(tunables__zswap__enabled=True, tunables__zswap__max_pool_percent=5)
    assert zs(doc, "pool_limit_hit") > 0
    assert zs(doc, "written_back_pages") > 0
    assert vm(doc, "zswpwb") == zs(doc, "written_back_pages")
    host = next(iter(doc["hosts"].values()))
    # pool_total_size counts allocator pages, never above the cap for long.
    assert host["zswap"]["pool_total_size"] <= (host["zswap"]["max_pool_pages"] + 4) * 4096


# A write-only scan through more pages than the cgroup may hold: every page
# reclaimed is swapped out once and never read back (no swap-cache pages).
_WRITE_SCAN = {
    "cgroups__app__memory_max": "6MiB",
    "workloads__w__pattern__kind": "scan",
    "workloads__w__pattern__write_ratio": 1.0,
    "workloads__w__accesses": 4096,
    "scenario__duration": "10s",
}


def test_reclaim_does_not_wait_for_its_swap_writes(simulate: Any) -> None:
    """pageout() submits the write (__swap_writepage()) and reclaim goes on:
    a slower swap device does not slow the task that reclaims."""
    runs = [
        simulate(nodes__swap0__options__latency__write_base_ns=ns, **_WRITE_SCAN)
        for ns in (20_000, 2_000_000)
    ]
    assert all(vm(d, "pswpout") > 1000 for d in runs)
    fast, slow = (d["workloads"]["w"]["sim_time_ns"] for d in runs)
    assert fast == slow


def test_shrink_worker_writes_back_through_a_charged_swap_cache_folio(simulate: Any) -> None:
    """zswap_writeback_entry() decompresses into a folio charged to the entry's
    cgroup; written, it waits at the inactive tail until reclaim drops it."""
    doc = simulate(
        tunables__zswap__enabled=True, tunables__zswap__max_pool_percent=5, **_WRITE_SCAN
    )
    written_back = vm(doc, "zswpwb")
    assert written_back > 500 and vm(doc, "pgrotated") == written_back
    # Reclaim freed the pages it stored or wrote out, and the folios besides.
    swapped = vm(doc, "zswpout") + vm(doc, "pswpout") - written_back + vm(doc, "swpout_zero")
    folios = vm(doc, "pgsteal_direct") - swapped
    assert 0.9 * written_back <= folios <= written_back
    assert cg(doc)["memory.current"] <= 6 << 20


def test_swapped_out_pages_hold_swap_slots_until_a_write_fault_frees_them(simulate: Any) -> None:
    """add_to_swap() gives a page its slot before zswap_store() sees it: zswap
    entries hold slots too (memory.swap.current). A page read back keeps its
    slot in the swap cache; a write fault frees it (should_try_to_free_swap())."""
    common: dict[str, Any] = {
        "tunables__zswap__enabled": True,
        "tunables__zswap__max_pool_percent": 50,
        "cgroups__app__memory_max": "6MiB",
        "workloads__w__content": "text",
    }

    def slots(doc: dict[str, Any]) -> int:
        return int(cg(doc)["memory.swap.current"]) // 4096

    def entries_and_device(doc: dict[str, Any]) -> int:
        return zs(doc, "stored_pages") + int(doc["nodes"]["swap0"]["used_pages"])

    writes = simulate(workloads__w__pattern__write_ratio=1.0, **common)
    assert zs(writes, "stored_pages") > 1000
    assert slots(writes) == entries_and_device(writes)
    reads = simulate(workloads__w__pattern__write_ratio=0.0, **common)
    assert vm(reads, "zswpin") > 1000
    # Pages loaded back from zswap and not written keep their slots.
    assert entries_and_device(reads) < slots(reads)
    assert slots(reads) <= entries_and_device(reads) + vm(reads, "zswpin")


def test_a_full_swap_device_leaves_no_slot_for_zswap_either(simulate: Any) -> None:
    """add_to_swap() fails once every slot is taken and zswap_store() never
    sees the page: with a 1 MiB swap device (256 slots) the pool holds at
    most 256 entries, reclaim runs out of pages to swap, and the cgroup's
    OOM killer ends the task, which completes with the slots it needs."""
    knobs: dict[str, Any] = {
        "tunables__zswap__enabled": True,
        "tunables__zswap__max_pool_percent": 50,
        "cgroups__app__memory_max": "6MiB",
        "workloads__w__content": "text",
    }
    small = simulate(nodes__swap0__capacity="1MiB", **knobs)
    assert vm(small, "zswpout") > 200
    assert vm(small, "zswpout") - vm(small, "zswpin") - vm(small, "zswpwb") <= 256
    assert small["workloads"]["w"]["killed"] == "memcg oom"
    roomy = simulate(**knobs)
    assert roomy["workloads"]["w"]["killed"] is None


def test_zsmalloc_pool_is_compacted_by_global_reclaim_only(simulate: Any) -> None:
    """zsmalloc's shrinker is not memcg-aware: kswapd compacts, limit reclaim never does."""
    glob = simulate(tunables__zswap__enabled=True, tunables__zswap__max_pool_percent=50)
    assert vm(glob, "pgscan_kswapd") > 0
    assert zs(glob, "pages_compacted") > 0
    limit = simulate(
        tunables__zswap__enabled=True,
        tunables__zswap__max_pool_percent=50,
        nodes__dram0__capacity="64MiB",
        cgroups__app__memory_max="8MiB",
    )
    assert vm(limit, "pgscan_kswapd") == 0 and vm(limit, "zswpin") > 0
    assert zs(limit, "pages_compacted") == 0
    # Loads free entries across the pool's zspages and nothing moves the rest
    # together: the pool holds well over the bytes its entries' classes take.
    assert zs(limit, "pool_pages") * 4096 > 1.1 * zs(limit, "zswap")


def test_pool_cap_is_a_share_of_total_ram(simulate: Any) -> None:
    """zswap_max_pages() = totalram_pages() * max_pool_percent / 100: MemTotal, which
    counts the kernel's own memory, not just what workloads may use."""
    default = simulate(tunables__zswap__enabled=True)
    host = default["hosts"]["h0"]["zswap"]
    assert host["max_pool_pages"] == (8 + 4) * 256 * 20 // 100  # dram0 + cxl0
    bigger = simulate(tunables__zswap__enabled=True, hosts__h0__total_ram="24MiB")
    assert bigger["hosts"]["h0"]["zswap"]["max_pool_pages"] == 24 * 256 * 20 // 100


def test_pool_limit_hysteresis_accept_threshold() -> None:
    z = Zswap(
        host=0,
        tunables=ZswapTunables(enabled=True),
        total_ram_pages=1000,
        direct_nodes=[],
    )
    assert z.max_pages() == 200 and z.accept_thr_pages() == 180
    z.zspool.pages_allocated = 199
    assert not z.check_limits()
    z.zspool.pages_allocated = 200
    assert z.check_limits() and z.stats.pool_limit_hit == 1
    # Below the cap but above the accept threshold: still full.
    z.zspool.pages_allocated = 190
    assert z.check_limits()
    z.zspool.pages_allocated = 180
    assert not z.check_limits()
    assert z.stats.pool_limit_hit == 1


def test_memcg_zswap_max_caps_the_cgroups_pool_usage(simulate: Any) -> None:
    doc = simulate(
        tunables__zswap__enabled=True,
        tunables__zswap__max_pool_percent=50,
        **{"cgroups.app.zswap_max": "256KiB"},
    )
    assert cg(doc)["memory.zswap.current"] <= 256 * 1024 + 4096
    assert vm(doc, "zswpout") > 0
    assert vm(doc, "pswpout") > 0  # the rest went to the swap device


def test_zswap_direct_stores_whole_pages_on_the_compressed_node(simulate: Any) -> None:
    doc = simulate(
        tunables__zswap__enabled=True,
        tunables__zswap__direct_nodes=["cram0"],
    )
    assert zs(doc, "stored_direct_pages") > 0
    cram = doc["nodes"]["cram0"]["device"]
    assert cram["stored_pages"] == zs(doc, "stored_direct_pages")
    # Charged a whole page each, as posted.
    assert cg(doc)["memory.stat"]["zswap_direct_charged"] >= 4096 * vm(doc, "zswpout") // 2


def test_zswap_direct_falls_back_to_compression_when_node_refuses(simulate: Any) -> None:
    doc = simulate(
        tunables__zswap__enabled=True,
        tunables__zswap__max_pool_percent=50,
        tunables__zswap__direct_nodes=["cram0"],
        **{"nodes.cram0.physical": "1MiB", "nodes.cram0.advertised": "8MiB"},
    )
    assert zs(doc, "direct_refused") > 0
    assert zs(doc, "stored_pages") > zs(doc, "stored_direct_pages")
    assert doc["failures"]["device_write_failures"] == 0


# -- demotion, the cram tier, promotion -----------------------------------------


def test_demotion_to_cxl_when_enabled(simulate: Any) -> None:
    doc = simulate(tunables__demotion_enabled=True)
    host = doc["hosts"]["h0"]
    assert host["demotion_targets"]["dram0"]["preferred"] == ["cxl0"]
    assert vm(doc, "pgdemote_kswapd") + vm(doc, "pgdemote_direct") > 0
    assert doc["nodes"]["cxl0"]["used_pages"] > 0


def test_tiers_from_latency_profiles(simulate: Any) -> None:
    doc = simulate(tunables__demotion_enabled=True, tunables__cram__tier_enabled=True)
    host = doc["hosts"]["h0"]
    assert host["adistance"]["dram0"] == 576
    assert host["adistance"]["dram0"] < host["adistance"]["cxl0"] < host["adistance"]["cram0"]
    assert host["toptier"] == ["dram0"]
    assert host["demotion_targets"]["cxl0"]["preferred"] == ["cram0"]
    assert "cram0" not in host["demotion_targets"]


def test_write_to_read_only_cram_page_promotes_it(simulate: Any) -> None:
    doc = simulate(
        tunables__demotion_enabled=True,
        tunables__cram__tier_enabled=True,
        **{"nodes.cxl0.capacity": "4KiB"},
    )
    assert vm(doc, "cram_demote") > 0
    assert vm(doc, "cram_write_fault") > 0
    assert vm(doc, "pgpromote_success") >= vm(doc, "cram_write_fault") - vm(
        doc, "cram_promote_fail"
    )
    # Promotion read the page back and freed the device copy.
    cram = doc["nodes"]["cram0"]["device"]
    assert cram["frees"] > 0 or cram["loads"] > 0
    assert doc["failures"]["corrupt_pages"] == 0


def test_migration_blocked_at_pressure_1000_with_safety_check(simulate: Any) -> None:
    over = {
        "tunables.demotion_enabled": True,
        "tunables.cram.tier_enabled": True,
        "nodes.cxl0.capacity": "4KiB",
        "nodes.cram0.advertised": "64MiB",
        "nodes.cram0.physical": "2MiB",
        "workloads.w.content": "incompressible",
    }
    unsafe = simulate(
        **over, **{"tunables.cram.safety_check": False, "tunables.cram.reclaim": False}
    )
    assert unsafe["failures"]["device_write_failures"] > 0
    assert unsafe["failures"]["poisoned_pages"] > 0 or unsafe["failures"]["memory_failure"] > 0
    safe = simulate(**over, **{"tunables.cram.safety_check": True, "tunables.cram.reclaim": False})
    assert safe["failures"]["device_write_failures"] == 0
    assert vm(safe, "cram_demote_refused") > 0
    # Refused pages fell back to the swap path.
    assert vm(safe, "pswpout") > 0


def test_hot_threshold_adjusts_every_period() -> None:
    numa = NumaTunables(numa_balancing=2, promote_rate_limit_MBps=1)
    mm = SimpleNamespace(tunables=SimpleNamespace(numa=numa))
    host = SimpleNamespace(promo=PromoState())
    ps = host.promo.of(0)
    period = numa.threshold_adjust_period_ms * 1_000_000
    ref_cand = 256 * 60  # 1 MB/s in pages x 60 s
    # Too many candidates: threshold drops by 125 ms.
    ps.candidates = ref_cand * 2
    adjust_threshold(mm, host, 0, period)  # type: ignore[arg-type]
    assert ps.threshold_ms == 1000 - 125
    # Too few: rises by 125 ms.
    adjust_threshold(mm, host, 0, 2 * period)  # type: ignore[arg-type]
    assert ps.threshold_ms == 1000
    # Within 90..110 %: unchanged. Not before the period has passed.
    ps.candidates += ref_cand
    adjust_threshold(mm, host, 0, 2 * period + 1)  # type: ignore[arg-type]
    assert ps.threshold_ms == 1000
    adjust_threshold(mm, host, 0, 3 * period)  # type: ignore[arg-type]
    assert ps.threshold_ms == 1000
    # Floor 125 ms, ceiling 2000 ms.
    for k in range(4, 40):
        ps.candidates += ref_cand * 3
        adjust_threshold(mm, host, 0, k * period)  # type: ignore[arg-type]
    assert ps.threshold_ms == 125
    for k in range(40, 80):
        adjust_threshold(mm, host, 0, k * period)  # type: ignore[arg-type]
    assert ps.threshold_ms == 2000


def test_hint_fault_promotion_from_cxl(simulate: Any) -> None:
    base = {
        "tunables.demotion_enabled": True,
        "scenario.duration": "3s",
        "workloads.w.accesses": 400000,
        "workloads.w.pattern": {
            "kind": "shifting",
            "hot_pages": 512,
            "shift_pages": 256,
            "shift_every": 50000,
            "write_ratio": 0.1,
            "think": "5us",
        },
        "tunables.numa.scan_delay_ms": 200,
        "tunables.numa.scan_period_min_ms": 200,
        "nodes.cxl0.capacity": "64MiB",
    }
    off = simulate(**base)
    assert vm(off, "numa_hint_faults") == 0 and vm(off, "pgpromote_success") == 0
    on = simulate(**base, **{"tunables.numa.numa_balancing": 2})
    assert vm(on, "numa_pte_updates") > 0
    assert vm(on, "numa_hint_faults") > 0
    assert vm(on, "pgpromote_success") > 0
    assert vm(on, "pgpromote_success") == vm(on, "numa_pages_migrated")

    # Promotion moves the hot set's accesses onto DRAM.
    def dram_share(doc: dict[str, Any]) -> float:
        by_node = doc["workloads"]["w"]["accesses_by_node"]
        return by_node["dram0"] / sum(by_node.values())

    assert dram_share(on) > dram_share(off)


def test_scanner_leaves_prot_none_ptes_alone(simulate: Any) -> None:
    # prot_numa_skip(): a PTE already PROT_NONE keeps the scan time of the
    # pass that marked it and is not counted again, so every PTE update is
    # of a page that arrived on the slow tier or took a hint fault since.
    doc = simulate(
        **{
            "tunables.demotion_enabled": True,
            "tunables.numa.numa_balancing": 2,
            "tunables.numa.scan_delay_ms": 100,
            "tunables.numa.scan_period_min_ms": 100,
            "scenario.duration": "5s",
            # A hot set that walks once over the footprint and never returns:
            # what it leaves on the slow tier is marked once and never faults.
            "workloads.w.accesses": 150000,
            "workloads.w.pattern": {
                "kind": "shifting",
                "hot_pages": 256,
                "shift_pages": 256,
                "shift_every": 10000,
                "hot_fraction": 1.0,
                "think": "20us",
            },
            "nodes.cxl0.capacity": "64MiB",
        }
    )
    arrived = vm(doc, "numa_miss") + vm(doc, "pgdemote_kswapd") + vm(doc, "pgdemote_direct")
    assert vm(doc, "numa_pte_updates") > 0
    assert vm(doc, "numa_pte_updates") <= arrived + vm(doc, "numa_hint_faults")


def test_scan_period_adapts_to_the_tasks_faults() -> None:
    tun = SimpleNamespace(numa=NumaTunables())
    mm = SimpleNamespace(tunables=tun, sched=SimpleNamespace(now_ns=5_000_000_000))
    proc = SimpleNamespace(
        npages=1000,
        clock_ns=5_000_000_000,
        numa_scan_seq=1,
        numa_placement_seq=0,
        numa_scan_period_ms=1000,
        numa_next_scan_ns=0,
        numa_local_faults=4,
    )
    # update_task_scan_period(), once per pass: all-private faults of which
    # some were local slow the scan by 3 period slots (30 %).
    task_numa_fault(mm, proc, local=True)  # type: ignore[arg-type]
    assert proc.numa_scan_period_ms == 1300 and proc.numa_local_faults == 1
    task_numa_fault(mm, proc, local=True)  # type: ignore[arg-type]
    assert proc.numa_scan_period_ms == 1300 and proc.numa_local_faults == 2
    proc.numa_scan_seq = 2
    task_numa_fault(mm, proc, local=True)  # type: ignore[arg-type]
    assert proc.numa_scan_period_ms == 1690
    # Promotions in tiering mode: the page came from a CPU-less node, so the
    # fault is remote; with no local fault since the last placement the
    # period doubles and the next scan is pushed out.
    proc.numa_local_faults = 0
    proc.numa_scan_seq = 3
    task_numa_fault(mm, proc, local=False)  # type: ignore[arg-type]
    assert proc.numa_scan_period_ms == 3380 and proc.numa_local_faults == 0
    assert proc.numa_next_scan_ns == 5_000_000_000 + 3380 * 1_000_000
    # Never beyond scan_period_max_ms.
    for seq in range(4, 24):
        proc.numa_scan_seq = seq
        task_numa_fault(mm, proc, local=False)  # type: ignore[arg-type]
    assert proc.numa_scan_period_ms == 60000


def test_promotion_rate_limit_caps_candidates(simulate: Any) -> None:
    base = {
        "tunables.demotion_enabled": True,
        "tunables.numa.numa_balancing": 2,
        "scenario.duration": "3s",
        "workloads.w.accesses": 300000,
        "workloads.w.pattern": {
            "kind": "shifting",
            "hot_pages": 512,
            "shift_pages": 256,
            "shift_every": 50000,
            "write_ratio": 0.1,
            "think": "5us",
        },
        "tunables.numa.scan_delay_ms": 200,
        "tunables.numa.scan_period_min_ms": 200,
        "nodes.cxl0.capacity": "64MiB",
    }
    free = simulate(**base)
    limited = simulate(**base, **{"tunables.numa.promote_rate_limit_MBps": 1})
    assert vm(limited, "pgpromote_success") < vm(free, "pgpromote_success")
    # 1 MB/s = 256 pages per second per node, over 3 s, plus the first window.
    assert vm(limited, "pgpromote_success") <= 256 * 4


# -- memcg ----------------------------------------------------------------------


def test_memory_max_is_enforced_by_reclaim(simulate: Any) -> None:
    doc = simulate(**{"cgroups.app.memory_max": "4MiB"})
    c = cg(doc)
    assert c["memory.peak"] <= 4 * 1024 * 1024
    assert c["memory.events"]["max"] > 0
    assert vm(doc, "pswpout") > 0


def test_memcg_reclaim_walks_priorities_and_reclaims_whole_chunks(simulate: Any) -> None:
    # do_try_to_free_pages() for a cgroup: each priority scans lru >> priority
    # (times the anon share), SWAP_CLUSTER_MAX at a time, and stops only after
    # the priority that reached the target, so calls reclaim more than the
    # 32 pages a charge asks for, as the kernel's do (32-94, 48 on average,
    # on the zswap-incomp-wb reference workload).
    # A sequential scan: no page is used twice, so a reclaimer that stopped
    # at the first 32 pages would reclaim exactly 32 a call.
    doc = simulate(**{"cgroups.app.memory_max": "4MiB", "workloads.w.pattern": {"kind": "scan"}})
    c = cg(doc)
    calls = c["reclaim_stalls"]
    assert calls > 0
    assert vm(doc, "pgsteal_direct") > 32 * calls
    assert vm(doc, "pgscan_direct") >= vm(doc, "pgsteal_direct")


def test_cgroup_reclaim_with_swappiness_0_cannot_reclaim_anon(simulate: Any) -> None:
    # get_scan_count(): cgroup reclaim with swappiness 0 scans file pages
    # only; a cgroup of anon pages over memory.max goes OOM.
    base = {"cgroups.app.memory_max": "4MiB"}
    zero = simulate(**base, **{"tunables.swappiness": 0})
    assert cg(zero)["memory.events"]["oom"] >= 1
    assert vm(zero, "pgscan_direct") == 0 and vm(zero, "pswpout") == 0
    assert cg(simulate(**base))["memory.events"]["oom"] == 0


def test_zswap_shrinker_counts_from_flushed_cgroup_statistics(simulate: Any) -> None:
    # zswap_shrinker_count() reads MEMCG_ZSWAPPED and MEMCG_ZSWAP_B, which
    # readers see as of the last periodic flush (every 2 s): in a run that
    # ends before the first flush the shrinker finds nothing to count.
    base = {
        "tunables.zswap.enabled": True,
        "tunables.zswap.max_pool_percent": 50,
        "tunables.zswap.shrinker_enabled": True,
        "scenario.duration": "10s",
    }
    short = simulate(
        **base,
        **{"workloads.w.pattern": {"kind": "uniform", "write_ratio": 0.2, "think": "50us"}},
    )
    assert short["sim_time_ns"] < 2_000_000_000
    assert vm(short, "zswpout") > 0 and vm(short, "zswpwb") == 0
    long = simulate(
        **base,
        **{"workloads.w.pattern": {"kind": "uniform", "write_ratio": 0.2, "think": "100us"}},
    )
    assert long["sim_time_ns"] > 2_000_000_000
    assert vm(long, "zswpwb") > 0


def test_anon_scan_share_follows_reclaim_cost() -> None:
    from tiersim.orchestrator.vmscan import anon_scan_fraction, lru_note_cost

    memcg = SimpleNamespace(index=0, lru_cost={})
    lru = SimpleNamespace(count=[3000, 1000])
    mm = SimpleNamespace(
        tunables=SimpleNamespace(swappiness=60), lru=lru, lru_lists=lambda nid, idx: (0, 1)
    )
    # No cost yet: swappiness alone, 60 / (60 + 140).
    assert anon_scan_fraction(mm, memcg, 0) == (60, 200)  # type: ignore[arg-type]
    # Anon reclaim that costs I/O, and no file pages: anon's share drops
    # towards 90/510.
    lru_note_cost(mm, memcg, 0, nr_io=20, nr_rotated=10)  # type: ignore[arg-type]
    assert memcg.lru_cost[0] == (650, 0)
    num, den = anon_scan_fraction(mm, memcg, 0)  # type: ignore[arg-type]
    assert 0.17 < num / den < 0.18
    # Costs halve once they pass a quarter of the lruvec (1000 pages).
    lru_note_cost(mm, memcg, 0, nr_io=12, nr_rotated=0)  # type: ignore[arg-type]
    assert memcg.lru_cost[0] == ((650 + 384) // 2, 0)


def test_direct_charge_modes_reproduce_the_thrashing_concern(simulate: Any) -> None:
    base = {
        "tunables.zswap.enabled": True,
        "tunables.zswap.direct_nodes": ["cram0"],
        "cgroups.app.memory_max": "10MiB",
        "nodes.dram0.capacity": "32MiB",
        "nodes.cram0.physical": "16MiB",
    }
    page = simulate(**base, **{"tunables.zswap.direct_charge": "page"})
    device = simulate(**base, **{"tunables.zswap.direct_charge": "device"})
    # Charged a whole page, a stored page frees nothing: reclaim stalls, OOM.
    assert cg(page)["reclaim_no_progress"] > cg(device)["reclaim_no_progress"]
    assert vm(page, "oom_kill") >= 1
    assert vm(device, "oom_kill") == 0
    assert device["workloads"]["w"]["accesses"] > page["workloads"]["w"]["accesses"]


def test_zswap_shrinker_writes_back_under_reclaim(simulate: Any) -> None:
    # 30,000 accesses 100 us apart: three seconds, past the first flush of
    # the cgroup statistics the shrinker counts from (2 s).
    base = {
        "tunables.zswap.enabled": True,
        "tunables.zswap.max_pool_percent": 50,
        "scenario.duration": "10s",
        "workloads.w.pattern": {"kind": "uniform", "write_ratio": 0.2, "think": "100us"},
    }
    off = simulate(**base)
    on = simulate(**base, **{"tunables.zswap.shrinker_enabled": True})
    # Without the shrinker, writeback only happens at the pool limit.
    assert zs(off, "pool_limit_hit") == 0 and vm(off, "zswpwb") == 0
    assert vm(on, "zswpwb") > 0
    assert zs(on, "written_back_pages") == vm(on, "zswpwb")


def test_zswap_shrinker_runs_in_the_cgroups_own_reclaim(simulate: Any) -> None:
    """Incompressible pages under memory.max: each zswap entry is charged a whole
    page, so reclaim into zswap frees nothing; the shrinker writing entries back
    from the cgroup's reclaim is what keeps the workload from the OOM killer.
    Half the pages compress, so the pool fills the cgroup gradually: at a page
    a millisecond, not before the first flush of the statistics the shrinker
    counts from (2 s)."""
    base = {
        "tunables.zswap.enabled": True,
        # No global pool limit in the way: only the cgroup's.
        "tunables.zswap.max_pool_percent": 100,
        "cgroups.app.memory_max": "6MiB",
        "workloads.w.content": {"mix": {"incompressible": 0.5, "text": 0.5}},
        "workloads.w.pattern": {"kind": "scan", "think": "1ms"},
        "scenario.duration": "120s",
    }
    off = simulate(**base)
    on = simulate(**base, **{"tunables.zswap.shrinker_enabled": True})
    assert vm(off, "oom_kill") == 1 and vm(off, "zswpwb") == 0
    assert vm(on, "oom_kill") == 0 and vm(on, "zswpwb") > 0
    assert zs(on, "written_back_pages") == vm(on, "zswpwb")


def test_cram_guard_policy_keeps_device_below_low_watermark(simulate: Any) -> None:
    over = {
        "tunables.demotion_enabled": True,
        "tunables.cram.tier_enabled": True,
        "tunables.cram.safety_check": False,
        "tunables.cram.reclaim": False,
        "nodes.cxl0.capacity": "4KiB",
        "nodes.cram0.advertised": "64MiB",
        "nodes.cram0.physical": "2MiB",
        "workloads.w.content": "ratio2",
    }
    kernel = simulate(**over)
    assert kernel["failures"]["device_write_failures"] > 0
    guarded = simulate(**over, **{"scenario.policy": "cram-guard"})
    assert guarded["policy"]["name"] == "cram-guard"
    assert guarded["policy"]["refused"] > 0 and guarded["policy"]["admitted"] > 0
    assert guarded["failures"]["device_write_failures"] == 0
    assert guarded["nodes"]["cram0"]["pressure"] < 1000
    assert vm(guarded, "cram_demote") > 0


# -- swap readahead (mm/swap_state.c) -------------------------------------------


def test_swapin_window_grows_on_sequential_faults_and_hits() -> None:
    from tiersim.orchestrator.swap_state import swapin_nr_pages

    # No hits to judge by: one page, unless the fault is next to the last one.
    assert swapin_nr_pages(prev=100, pfn=500, hits=0, max_pages=8, prev_win=0) == 1
    assert swapin_nr_pages(prev=100, pfn=101, hits=0, max_pages=8, prev_win=1) == 2
    assert swapin_nr_pages(prev=100, pfn=99, hits=0, max_pages=8, prev_win=1) == 2
    # hits + 2, rounded up to a power of two from 4, capped at 2**page-cluster.
    assert swapin_nr_pages(prev=0, pfn=9, hits=1, max_pages=8, prev_win=2) == 4
    assert swapin_nr_pages(prev=0, pfn=9, hits=3, max_pages=8, prev_win=4) == 8
    assert swapin_nr_pages(prev=0, pfn=9, hits=40, max_pages=8, prev_win=8) == 8
    # ...and never shrinks below half the previous window.
    assert swapin_nr_pages(prev=0, pfn=500, hits=0, max_pages=8, prev_win=8) == 4


def _scan_under_limit(simulate: Any, page_cluster: int, kind: str) -> dict[str, Any]:
    return simulate(
        **{
            "tunables.zswap.enabled": True,
            "tunables.page_cluster": page_cluster,
            "cgroups.app.memory_max": "6MiB",
            "workloads.w.pattern.kind": kind,
            "workloads.w.pattern.write_ratio": 0.0,
        }
    )


def test_sequential_swapin_reads_ahead_a_window_per_major_fault(simulate: Any) -> None:
    doc = _scan_under_limit(simulate, 3, "scan")
    loaded = vm(doc, "zswpin") + vm(doc, "pswpin") + vm(doc, "swpin_zero")
    assert vm(doc, "swap_ra") > 0 and vm(doc, "swap_ra_hit") > 0
    # Every page brought back was either the faulting one or read ahead.
    assert loaded == vm(doc, "pgmajfault") + vm(doc, "swap_ra")
    # A sequential scan reaches the full 8-page window: about one major fault in eight.
    assert vm(doc, "pgmajfault") * 6 < loaded
    assert vm(doc, "swap_ra_hit") <= vm(doc, "swap_ra")

    off = _scan_under_limit(simulate, 0, "scan")
    assert vm(off, "swap_ra") == vm(off, "swap_ra_hit") == 0
    assert vm(off, "pgmajfault") == vm(off, "zswpin") + vm(off, "pswpin") + vm(off, "swpin_zero")


def test_random_swapin_keeps_the_window_shut(simulate: Any) -> None:
    doc = _scan_under_limit(simulate, 3, "uniform")
    assert vm(doc, "pgmajfault") > 100
    # Faults are rarely adjacent and readahead rarely hits: the window stays at one page.
    assert vm(doc, "swap_ra") * 10 < vm(doc, "pgmajfault")


# -- the swap cache (mm/swap_state.c, do_swap_page) -------------------------------


def _steal(doc: dict[str, Any]) -> int:
    return vm(doc, "pgsteal_kswapd") + vm(doc, "pgsteal_direct")


def test_clean_pages_read_from_swap_keep_their_slot(simulate: Any) -> None:
    overrides = {
        "cgroups.app.memory_max": "4MiB",
        "workloads.w.pattern.kind": "scan",
        "tunables.page_cluster": 0,
    }
    read = simulate(**overrides, **{"workloads.w.pattern.write_ratio": 0.0})
    assert vm(read, "pswpin") > 1000
    # Pages read back and not written since are dropped by reclaim without I/O.
    written = vm(read, "pswpout") + vm(read, "swpout_zero")
    assert _steal(read) > written + vm(read, "pswpin") // 2

    dirty = simulate(**overrides, **{"workloads.w.pattern.write_ratio": 1.0})
    assert vm(dirty, "pswpin") > 1000
    # Every page written after it came back has a stale slot: it is written again.
    assert _steal(dirty) == vm(dirty, "pswpout") + vm(dirty, "swpout_zero")
