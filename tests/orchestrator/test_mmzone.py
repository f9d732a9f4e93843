"""Zones within a node: watermarks, lowmem reserves, pageblock fallbacks and
watermark boosting, and kswapd balancing one zone (mmzone.py, page_alloc.py,
vmscan.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sim_helpers import ZONED, run_text, vm
from tiersim._errors import ConfigError
from tiersim.orchestrator.memory import _pay_kernel_cpu
from tiersim.orchestrator.mmzone import (
    PAGEBLOCK_NR_PAGES,
    ZONE_DMA,
    ZONE_DMA32,
    PageBlock,
    boost_watermark,
    new_zone,
    node_watermarks,
    setup_per_zone_lowmem_reserve,
    setup_per_zone_wmarks,
)
from tiersim.orchestrator.page_alloc import _rmqueue_fallback, frames_ok
from tiersim.orchestrator.scenario import loads_scenario
from tiersim.orchestrator.vmscan import kernel_thread_ran


def _guest_node0() -> list:
    """Node 0 of the reference guest (its /proc/zoneinfo): DMA beside DMA32."""
    dma = new_zone(ZONE_DMA, 0, 3808, managed=3840, blocks=[PageBlock("unmovable", 224)])
    dma32 = new_zone(ZONE_DMA32, 0, 24731, managed=32728)
    return [dma, dma32]


def test_watermarks_and_lowmem_reserve_follow_the_guests_zoneinfo() -> None:
    zones = _guest_node0()
    node1 = new_zone(ZONE_DMA32, 1, 46356, managed=48043)
    setup_per_zone_lowmem_reserve(zones)
    setup_per_zone_wmarks(zones, 10, lowmem=3840 + 32728 + 48043)
    dma, dma32 = zones
    # The guest's zoneinfo: DMA min 26 low 32 high 38, protection (0, 127, ...).
    assert (dma.wmark.min, dma.wmark.low, dma.wmark.high) == (26, 32, 38)
    assert dma.lowmem_reserve == [0, 127, 127, 127]
    assert dma32.lowmem_reserve == [0, 0, 0, 0]
    # DMA32: the kernel shows 223/278/333; min_free_kbytes is taken of
    # managed pages here (of nr_free_buffer_pages() in the kernel).
    assert abs(dma32.wmark.min - 223) <= 2 and abs(dma32.wmark.high - 333) <= 3
    # Node-wide marks carry the reserve the DMA zone keeps from user pages.
    assert node_watermarks(zones).min == dma.wmark.min + dma32.wmark.min + 127
    assert node1.lowmem_reserve == [0, 0, 0, 0]


def test_boost_adds_a_pageblock_up_to_its_cap_and_skips_tiny_zones() -> None:
    dma, _ = _guest_node0()
    setup_per_zone_wmarks([dma], 10, lowmem=84611)
    assert boost_watermark(dma)
    assert dma.watermark_boost == PAGEBLOCK_NR_PAGES
    assert boost_watermark(dma)
    # max(pageblock_nr_pages, 150 % of high): one pageblock for a 38-page high mark.
    assert dma.watermark_boost == PAGEBLOCK_NR_PAGES
    assert dma.mark("high") == 38 + PAGEBLOCK_NR_PAGES
    tiny = new_zone(ZONE_DMA, 0, 1000)
    assert not boost_watermark(tiny)
    assert tiny.watermark_boost == 0


def test_fallback_claims_half_free_blocks_and_steals_from_the_rest() -> None:
    zone = new_zone(
        ZONE_DMA32,
        0,
        4000,
        blocks=[PageBlock("unmovable", 100), PageBlock("reclaimable", 300)],
    )
    setup_per_zone_wmarks([zone], 10)
    zone.free_movable = 0
    # The largest free block is claimed whole (300 >= 256) and boosts the zone.
    _rmqueue_fallback(zone, page=7)
    assert zone.boosted and zone.watermark_boost == PAGEBLOCK_NR_PAGES
    assert zone.free_movable == 299
    assert [b.migratetype for b in zone.blocks] == ["unmovable"]
    assert 7 not in zone.stolen
    # With only a 100-page block left, a fallback boosts but takes one page,
    # which belongs to its pageblock until freed.
    zone.free_movable = 0
    zone.boosted = False
    _rmqueue_fallback(zone, page=8)
    assert zone.boosted
    block = zone.stolen[8]
    assert (block.free, block.movable) == (99, 1)


def test_small_free_blocks_are_stolen_without_a_boost() -> None:
    zone = new_zone(ZONE_DMA32, 0, 4000, blocks=[PageBlock("unmovable", 10)])
    setup_per_zone_wmarks([zone], 10)
    zone.free_movable = 0
    _rmqueue_fallback(zone, page=1)
    # Below pageblock_order / 2 no claim is tried, so no boost.
    assert not zone.boosted and zone.watermark_boost == 0
    assert zone.stolen[1].free == 9


def test_fallbacks_in_the_dma_zone_wake_kswapd_to_demote_from_it() -> None:
    """The reference `demotion` workload's mechanism: node 0 never reaches the
    slow path (its overflow goes to node 1), yet kswapd demotes from it,
    woken by the DMA zone's boosted watermarks, skipping DMA32 pages."""
    doc = run_text(ZONED)[0]
    assert vm(doc, "allocstall") == 0
    assert vm(doc, "pgalloc_dma") > 3808  # the DMA zone is refilled again and again
    assert vm(doc, "pageoutrun") >= 5
    assert vm(doc, "pgdemote_kswapd") > 1000
    assert vm(doc, "pgskip_dma32") > 0
    # pgscan_kswapd counts every page looked at (total_scan), the skipped ones too.
    assert vm(doc, "pgscan_kswapd") >= vm(doc, "pgskip_dma32") + vm(doc, "pgsteal_kswapd")
    without = run_text(ZONED.replace("unmovable = [224]", "unmovable = []"))[0]
    # Without free pages in foreign pageblocks nothing boosts the DMA zone.
    assert vm(without, "pgdemote_kswapd") == 0
    assert vm(without, "pgskip_dma32") == 0


def test_a_node_without_zones_is_one_movable_zone() -> None:
    plain = ZONED.split("[[nodes.zones]]")[0] + ZONED.split("reclaimable = [512, 298]\n")[1]
    doc = run_text(plain)[0]
    assert vm(doc, "pgalloc_dma") == vm(doc, "pgalloc_dma32") == 0
    assert vm(doc, "pgalloc_movable") > 0
    assert vm(doc, "pgdemote_kswapd") == 0


@pytest.mark.parametrize(
    ("edit", "key", "message"),
    [
        (('zone = "DMA"\n', 'zone = "HighMem"\n'), "zone", "must be one of"),
        (('size = "15232KiB"', 'size = "15233KiB"'), "size", "whole number"),
        (('size = "15232KiB"', 'size = "14MiB"'), "zones", "add up to"),
        (('managed = "15MiB"', 'managed = "1MiB"'), "managed", "less than size"),
        (("unmovable = [224]", "unmovable = [600]"), "unmovable", "each 1 to 512"),
        (('zone = "DMA32"', 'zone = "DMA"'), "zone", "listed twice"),
    ],
)
def test_zone_mistakes_name_the_key(edit: tuple[str, str], key: str, message: str) -> None:
    text = ZONED.replace(edit[0], edit[1], 1)
    with pytest.raises(ConfigError) as info:
        loads_scenario(text)
    assert message in info.value.message
    assert info.value.key is not None and info.value.key.endswith(key)
    assert info.value.line is not None


def _workload_ns(doc: dict) -> int:
    return int(doc["workloads"]["ref"]["sim_time_ns"])


def test_kswapd_shares_a_busy_hosts_cpu_and_sets_the_process_back() -> None:
    """On one CPU kswapd's work delays the process; with CPUs to spare it does not."""
    one = run_text(ZONED)[0]
    four = run_text(ZONED.replace("cpus = 1", "cpus = 4"))[0]
    assert vm(one, "pgdemote_kswapd") > 0 and vm(four, "pgdemote_kswapd") > 0
    assert _workload_ns(one) > _workload_ns(four)
    # Kernel work that is slower by a factor weighs more on the busy host.
    slow = run_text(ZONED.replace("cpus = 1", "cpus = 1\nkernel_cpu_scale = 50"))[0]
    assert _workload_ns(slow) > _workload_ns(one)
    # Each node's kswapd reports the CPU time it took, scaled with the host.
    (host_one,) = one["hosts"].values()
    (host_slow,) = slow["hosts"].values()
    per_page = [
        h["kthreads"]["kswapd0"] / h["vmstat"]["pgsteal_kswapd"] for h in (host_one, host_slow)
    ]
    assert per_page[0] > 0
    assert per_page[1] > 10 * per_page[0]


def test_a_process_pays_for_kernel_time_only_after_it_started() -> None:
    host = SimpleNamespace(kernel_cpu_ns=5_000_000, cpus=1)
    proc = SimpleNamespace(
        host=0, started=False, done=False, kernel_cpu_seen_ns=0, clock_ns=0, numa_next_scan_ns=0
    )
    mm = SimpleNamespace(hosts=[host], procs=[proc])
    _pay_kernel_cpu(mm, proc)  # its first step: kswapd's earlier work is not its loss
    assert proc.clock_ns == 0 and proc.started
    proc.numa_next_scan_ns = 50_000
    host.kernel_cpu_ns += 1_000
    _pay_kernel_cpu(mm, proc)
    assert proc.clock_ns == 1_000
    # The NUMA scanner runs on the task's runtime: its next pass waits as long.
    assert proc.numa_next_scan_ns == 51_000
    host.cpus = 2  # a CPU to spare: kswapd runs there
    host.kernel_cpu_ns += 1_000
    _pay_kernel_cpu(mm, proc)
    assert proc.clock_ns == 1_000


def test_a_kernel_thread_shares_a_busy_cpu_and_runs_at_the_hosts_speed() -> None:
    host = SimpleNamespace(
        kernel_cpu_scale=10.0,
        cpus=1,
        kernel_cpu_ns=0,
        kthread_cpu_ns={},
        nodes=[0, 1],
        zswap=SimpleNamespace(shrink_running=False),
    )
    proc = SimpleNamespace(host=0, started=True, done=False)
    nodes = [SimpleNamespace(kswapd_running=True), SimpleNamespace(kswapd_running=False)]
    mm = SimpleNamespace(hosts=[host], procs=[proc], nodes=nodes)
    # 1 us of CPU work (10 us on this slower host) shared with the busy CPU's process.
    assert kernel_thread_ran(mm, [0], 1_000, "kswapd0") == 10_000 * 2
    assert host.kernel_cpu_ns == 10_000 and host.kthread_cpu_ns == {"kswapd0": 10_000}
    # Node 1's kswapd at work too: three share the CPU.
    nodes[1].kswapd_running = True
    assert kernel_thread_ran(mm, [0], 1_000, "kswapd0") == 10_000 * 3
    assert host.kernel_cpu_ns == 20_000
    # And zswap's shrink worker: four. The worker itself counts both kswapd.
    host.zswap.shrink_running = True
    assert kernel_thread_ran(mm, [0], 1_000, "kswapd0") == 10_000 * 4
    assert kernel_thread_ran(mm, [0], 1_000, "zswap_shrink") == 10_000 * 4
    assert host.kernel_cpu_ns == 40_000
    host.cpus = 4  # a CPU to spare: the thread runs there, the process loses nothing
    assert kernel_thread_ran(mm, [0], 1_000) == 10_000
    assert host.kernel_cpu_ns == 40_000


def test_reclaim_allocations_may_take_frames_below_the_min_watermark() -> None:
    node = SimpleNamespace(
        lost=False, simple=True, free_pages=10, wmark=SimpleNamespace(min=20, low=25)
    )
    mm = SimpleNamespace(nodes=[node])
    assert not frames_ok(mm, 0, "min", 1) and not frames_ok(mm, 0, "low", 1)
    # ALLOC_NO_WATERMARKS (PF_MEMALLOC): any free frame will do, none is none.
    assert frames_ok(mm, 0, "none", 10) and not frames_ok(mm, 0, "none", 11)
    node.lost = True
    assert not frames_ok(mm, 0, "none", 1)


def test_kernel_cpu_scale_below_one_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        loads_scenario(ZONED.replace("cpus = 1", "cpus = 1\nkernel_cpu_scale = 0.5"))
    assert info.value.key == "hosts.guest.kernel_cpu_scale"


def test_kswapd_pays_its_hosts_kernel_thread_costs() -> None:
    """hosts.kthread_costs price kswapd's work, not the process's own."""
    base = run_text(ZONED)[0]
    same = run_text(
        ZONED.replace("cpus = 1", "cpus = 1\nkthread_costs = { migrate_page_ns = 1000 }")
    )
    # The default value written out changes nothing.
    assert same[0]["hosts"] == base["hosts"]
    slow = run_text(
        ZONED.replace("cpus = 1", "cpus = 1\nkthread_costs = { migrate_page_ns = 100000 }")
    )[0]
    (host_base,) = base["hosts"].values()
    (host_slow,) = slow["hosts"].values()
    per_page = [
        h["kthreads"]["kswapd0"] / h["vmstat"]["pgdemote_kswapd"] for h in (host_base, host_slow)
    ]
    # 100 us a demotion instead of 1 us: kswapd's CPU per page follows.
    assert per_page[0] < 10_000
    assert per_page[1] > per_page[0] + 90_000
    assert _workload_ns(slow) > _workload_ns(base)


def test_kernel_thread_costs_are_checked() -> None:
    with pytest.raises(ConfigError) as info:
        loads_scenario(ZONED.replace("cpus = 1", "cpus = 1\nkthread_costs = { migrate_ns = 5 }"))
    assert info.value.key == "hosts.guest.kthread_costs.migrate_ns"
    assert "migrate_page_ns" in info.value.message
    with pytest.raises(ConfigError) as info:
        loads_scenario(
            ZONED.replace("cpus = 1", "cpus = 1\nkthread_costs = { reclaim_scan_ns = -1 }")
        )
    assert info.value.key == "hosts.guest.kthread_costs.reclaim_scan_ns"


def test_a_run_whose_processes_finish_ends_with_the_last_of_them() -> None:
    doc = run_text(ZONED)[0]
    assert doc["completed"]
    assert doc["sim_time_ns"] == _workload_ns(doc) < doc["duration_ns"]
