"""kswapd's per-page costs in the reference guest, fitted from recordings that
measured its CPU time, and their use in the translated scenario."""

from __future__ import annotations

import copy
from typing import Any

from reference_samples import MINIMAL, TIERED

from tiersim.reference.kthread_costs import (
    KthreadCosts,
    fit_kthread_costs,
    library_kthread_costs,
)
from tiersim.reference.spec import PAGE_SIZE, parse_workload
from tiersim.reference.translate import guest_think_schedule, to_scenario

SCAN, DEMOTE, SWAPOUT = 400.0, 90_000.0, 150_000.0


def _values(xs: list[float]) -> dict[str, Any]:
    return {"min": min(xs), "max": max(xs), "values": xs}


def _recording(runs: list[tuple[int, int, int]], cpu_runs: int | None = None) -> dict[str, Any]:
    """A recording whose kswapd CPU time is exactly the cost model's, per run
    (scanned, demoted, swapped out); only the last `cpu_runs` measured it."""
    cpu = [SCAN * s + DEMOTE * d + SWAPOUT * o for s, d, o in runs]
    n = cpu_runs if cpu_runs is not None else len(runs)
    return {
        "runs": len(runs),
        "counters": {
            "vmstat.pgscan_kswapd": _values([float(s) for s, _, _ in runs]),
            "vmstat.pgdemote_kswapd": _values([float(d) for _, d, _ in runs]),
            "vmstat.pgsteal_kswapd": _values([float(d + o) for _, d, o in runs]),
            # Two threads: their CPU times add up.
            "kthreads.kswapd0": _values([c * 0.75 for c in cpu[len(runs) - n :]]),
            "kthreads.kswapd1": _values([c * 0.25 for c in cpu[len(runs) - n :]]),
        },
    }


def test_the_fit_recovers_the_per_page_costs() -> None:
    demotion = _recording([(200_000, 15_000, 0), (300_000, 16_000, 0), (180_000, 11_000, 0)])
    mixed = _recording([(600_000, 48_000, 85_000), (540_000, 50_000, 80_000)])
    fit = fit_kthread_costs([("demotion", demotion), ("mixed", mixed)])
    assert fit is not None
    assert abs(fit.scan_ns - SCAN) < 1e-6 * SCAN
    assert abs(fit.demote_ns - DEMOTE) < 1e-6 * DEMOTE
    assert abs(fit.swapout_ns - SWAPOUT) < 1e-6 * SWAPOUT
    assert fit.runs == 5 and fit.workloads == ("demotion", "mixed")
    assert fit.rel_rms < 1e-9
    assert fit.scenario_costs() == {
        "reclaim_scan_ns": 400,
        "reclaim_skip_ns": 400,
        "migrate_page_ns": 90_000,
        "lz4_compress_ns_per_byte": round(SWAPOUT / PAGE_SIZE, 3),
    }


def test_cpu_times_belong_to_the_last_runs_of_a_merged_recording() -> None:
    # Two older runs without CPU times (their counters would spoil the fit
    # if paired with the newer runs' CPU), then three that measured it.
    merged = _recording(
        [(9, 9, 9), (9, 9, 9), (200_000, 15_000, 0), (600_000, 48_000, 85_000), (5, 1, 2)],
        cpu_runs=3,
    )
    fit = fit_kthread_costs([("w", merged)])
    assert fit is not None and fit.runs == 3
    assert abs(fit.demote_ns - DEMOTE) < 1e-6 * DEMOTE


def test_no_fit_without_the_runs_to_determine_it() -> None:
    demotion_only = _recording([(200_000, 15_000, 0), (300_000, 16_000, 0), (180_000, 11_000, 0)])
    # No run swaps out: the swap-out cost is not determined.
    assert fit_kthread_costs([("demotion", demotion_only)]) is None
    unmeasured = copy.deepcopy(demotion_only)
    for key in ("kthreads.kswapd0", "kthreads.kswapd1"):
        del unmeasured["counters"][key]
    assert fit_kthread_costs([("demotion", unmeasured)]) is None
    assert fit_kthread_costs([]) is None


def test_the_library_recordings_determine_the_guest_costs() -> None:
    """The committed tiered recordings carry kswapd's CPU time: the fit uses
    them all and explains each run's CPU time to within a fifth."""
    fit = library_kthread_costs()
    assert fit is not None
    assert set(fit.workloads) >= {"demotion", "promotion", "zswap-demotion"}
    assert fit.runs >= 9
    # Under TCG a demotion or a swap-out costs the guest tens of microseconds.
    assert 10_000 < fit.demote_ns < 1_000_000 and 10_000 < fit.swapout_ns < 1_000_000
    assert fit.rel_rms < 0.25


def _paced(data: dict[str, Any]) -> dict[str, Any]:
    return {
        **data,
        "plan": {"accesses": 6144},
        "guest": {
            "progress_ns": {"every": 2048, "values": [[0, 3_000, 4_500], [0, 3_200, 4_700]]},
            "elapsed_ns": {"values": [6_000, 6_200]},
            "progress_cpu_ns": [[0, 2_048, 3_072], [0, 2_048, 3_072]],
        },
        "counters": {"workload.cpu_ns": {"min": 4_096, "max": 4_096, "values": [4_096, 4_096]}},
    }


def test_a_recording_with_cpu_times_paces_by_them_and_prices_kswapd() -> None:
    w = parse_workload(TIERED)
    costs = KthreadCosts(436.0, 95_000.0, 168_000.0, runs=18, workloads=("x",), rel_rms=0.1)
    data = _paced({})
    # 2048 accesses per reading, 1 ns of the workload's own CPU per access.
    assert guest_think_schedule(w, data) == [[0, 1], [2048, 0]]
    s = to_scenario(w, data, guest_time=True, kthread_costs=costs)
    (host,) = s["hosts"]
    assert host["kthread_costs"] == costs.scenario_costs()
    assert "kernel_cpu_scale" not in host
    # Without CPU times: the clock's pace, kswapd scaled by the first touches.
    clock = copy.deepcopy(data)
    del clock["guest"]["progress_cpu_ns"]
    assert guest_think_schedule(w, clock) == [[0, round(3_100 / 2048)], [2048, round(1_500 / 2048)]]
    (host,) = to_scenario(w, clock, guest_time=True, kthread_costs=costs)["hosts"]
    assert "kthread_costs" not in host and host["kernel_cpu_scale"] >= 1
    # A workload of one node has no kswapd race to price.
    (host,) = to_scenario(parse_workload(MINIMAL), data, kthread_costs=costs)["hosts"]
    assert "kthread_costs" not in host
