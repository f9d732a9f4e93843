"""Counter-by-counter comparison, on hand-made documents of both shapes."""

from __future__ import annotations

import math
from typing import Any

from tiersim.reference.compare import Row, compare, failures, render, tiersim_counters

RESULTS: dict[str, Any] = {
    "hosts": {
        "guest": {
            "vmstat": {"zswpout": 1000, "zswpin": 400, "zswpwb": 0, "pgdemote_kswapd": 0},
            "zswap": {"stored_pages": 600, "pool_total_size": 1_228_800, "pool_full": False},
        }
    },
    "cgroups": {
        "guest/ref": {
            "memory.current": 8_000_000,
            "memory.zswap.current": 1_100_000,
            "memory.events": {"oom_kill": 0},
            "memory.stat": {"zswpout": 1000},
        }
    },
    "workloads": {"ref": {"accesses": 5000, "killed": None}},
}


def _kernel(**counters: tuple[int, int]) -> dict[str, Any]:
    return {
        "counters": {
            k.replace("__", "."): {"min": lo, "max": hi, "values": [lo, hi]}
            for k, (lo, hi) in counters.items()
        }
    }


def test_flatten_results() -> None:
    c = tiersim_counters(RESULTS)
    assert c["vmstat.zswpout"] == 1000
    assert c["zswap.stored_pages"] == 600
    assert c["zswap.pool_total_size"] == 1_228_800
    assert "zswap.pool_full" not in c  # booleans are not counters
    assert c["cgroup.memory.zswap.current"] == 1_100_000
    assert c["memory.events.oom_kill"] == 0
    assert c["memory.stat.zswpout"] == 1000
    assert c["workload.completed"] == 1
    killed = {**RESULTS, "workloads": {"ref": {"accesses": 10, "killed": "memcg oom"}}}
    assert tiersim_counters(killed)["workload.completed"] == 0


def test_tolerance() -> None:
    r = Row("vmstat.zswpout", 1000, 1100, 1205, True)
    assert r.ok and r.position == "above"  # 1100 * 1.1 + 8 = 1218
    assert not Row("vmstat.zswpout", 1000, 1100, 1220, True).ok
    assert Row("vmstat.zswpout", 1000, 1100, 892, True).ok  # 900 - 8
    assert not Row("vmstat.zswpout", 1000, 1100, 891, True).ok
    # Small counts: a handful of pages either way.
    assert Row("vmstat.zswpwb", 0, 0, 8, True).ok
    assert not Row("vmstat.zswpwb", 0, 0, 9, True).ok
    # Bytes get the same slack in bytes.
    assert Row("zswap.pool_total_size", 0, 0, 8 * 4096, True).ok
    # Outcomes are exact.
    assert not Row("workload.completed", 0, 0, 1, True).ok
    assert Row("workload.completed", 1, 1, 1, True).ok


def test_ratio() -> None:
    assert Row("x", 90, 110, 150, True).ratio == 1.5
    assert Row("x", 0, 0, 0, True).ratio == 1.0
    assert math.isinf(Row("x", 0, 0, 3, True).ratio or 0)
    assert Row("x", 1, 1, None, True).ratio is None


def test_compare_and_render() -> None:
    kernel = _kernel(
        vmstat__zswpout=(990, 1010),
        vmstat__zswpin=(500, 520),
        zswap__stored_pages=(590, 610),
        vmstat__pswpout=(0, 0),
        vmstat__pgdemote_kswapd=(0, 0),
    )
    rows = compare(kernel, tiersim_counters(RESULTS))
    names = [r.counter for r in rows]
    assert names[:3] == ["vmstat.zswpout", "vmstat.zswpin", "zswap.stored_pages"]
    bad = failures(rows)
    assert [r.counter for r in bad] == ["vmstat.zswpin"]  # 400 < 500 * 0.9 - 8
    pswpout = next(r for r in rows if r.counter == "vmstat.pswpout")
    assert not pswpout.checked and pswpout.tiersim is None
    text = render(rows, "title")
    assert text.splitlines()[0] == "title"
    assert "OUT (below)" in text and "(info)" in text and "990" in text
