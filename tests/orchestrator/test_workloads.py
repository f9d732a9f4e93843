"""Synthetic workloads: deterministic, chunk-invariant, and shaped as specified."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tiersim.orchestrator.workloads import (
    AccessChunk,
    ScanWorkload,
    ShiftingHotSetWorkload,
    Workload,
    WorkloadSpec,
    ZipfWorkload,
    make_workload,
)

SPECS: dict[str, dict[str, Any]] = {
    "uniform": {"kind": "uniform", "write_ratio": 0.25, "think_ns": 1000},
    "zipf": {"kind": "zipf", "alpha": 0.9, "write_ratio": 0.2, "think": "2us"},
    "scan": {"kind": "scan", "stride": 3, "write_ratio": 0.5, "think_ns": 300},
    "shifting": {
        "kind": "shifting",
        "hot_pages": 500,
        "shift_pages": 100,
        "shift_every": 3000,
        "write_ratio": 0.1,
        "think_ns": 700,
        "think_distribution": "fixed",
    },
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
    return (
        np.array_equal(a.pages, b.pages)
        and np.array_equal(a.writes, b.writes)
        and np.array_equal(a.gap_ns, b.gap_ns)
    )


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_chunks_are_typed_and_in_range(kind: str) -> None:
    w = make_workload(SPECS[kind], FOOTPRINT, seed=1)
    assert w.footprint_pages == FOOTPRINT
    chunk = w.next_chunk(4096)
    assert len(chunk) == len(chunk.pages) == len(chunk.writes) == len(chunk.gap_ns) == 4096
    assert chunk.pages.dtype == np.int64
    assert chunk.writes.dtype == np.bool_
    assert chunk.gap_ns.dtype == np.int64
    assert chunk.pages.min() >= 0 and chunk.pages.max() < FOOTPRINT
    assert chunk.gap_ns.min() >= 0
    assert w.accesses_issued == 4096
    empty = w.next_chunk(0)
    assert len(empty) == 0 and empty.pages.dtype == np.int64


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_same_seed_same_accesses(kind: str) -> None:
    a = drain(make_workload(SPECS[kind], FOOTPRINT, seed=42), [4096] * 3)
    b = drain(make_workload(SPECS[kind], FOOTPRINT, seed=42), [4096] * 3)
    assert same(a, b)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_different_seed_different_accesses(kind: str) -> None:
    a = drain(make_workload(SPECS[kind], FOOTPRINT, seed=1), [4096])
    b = drain(make_workload(SPECS[kind], FOOTPRINT, seed=2), [4096])
    assert not np.array_equal(a.writes, b.writes)
    if SPECS[kind].get("think_distribution") == "fixed":
        assert np.array_equal(a.gap_ns, b.gap_ns)
    else:
        assert not np.array_equal(a.gap_ns, b.gap_ns)
    if kind == "scan":  # the order of a scan does not depend on the seed
        assert np.array_equal(a.pages, b.pages)
    else:
        assert np.mean(a.pages == b.pages) < 0.2


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_chunking_does_not_change_the_sequence(kind: str) -> None:
    whole = drain(make_workload(SPECS[kind], FOOTPRINT, seed=3), [12_000])
    pieces = drain(make_workload(SPECS[kind], FOOTPRINT, seed=3), [1, 999, 4096, 0, 3000, 3904])
    assert same(whole, pieces)


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_reset_replays_the_sequence(kind: str) -> None:
    w = make_workload(SPECS[kind], FOOTPRINT, seed=5)
    first = drain(w, [5000, 5000])
    w.reset()
    assert w.accesses_issued == 0
    assert same(first, drain(w, [10_000]))


def test_uniform_covers_the_footprint_evenly() -> None:
    w = make_workload({"kind": "uniform"}, 1000, seed=1)
    counts = np.bincount(w.next_chunk(200_000).pages, minlength=1000)
    assert counts.min() > 130 and counts.max() < 280  # mean 200, sd ~14
    deciles = counts.reshape(10, 100).sum(axis=1) / 200_000
    assert np.allclose(deciles, 0.1, atol=0.005)


def zipf_share(alpha: float, k: int, n: int) -> float:
    ranks = np.arange(1, n + 1, dtype=np.float64)
    weights = ranks**-alpha
    return float(weights[:k].sum() / weights.sum())


@pytest.mark.parametrize("alpha", [0.6, 0.9, 1.2])
def test_zipf_top_tenth_receives_the_expected_share(alpha: float) -> None:
    n = 2000
    w = make_workload({"kind": "zipf", "alpha": alpha}, n, seed=7)
    assert isinstance(w, ZipfWorkload)
    pages = w.next_chunk(300_000).pages
    expected = zipf_share(alpha, n // 10, n)
    assert w.top_share(n // 10) == pytest.approx(expected)
    hot = w.most_popular(n // 10)
    assert np.isin(pages, hot).mean() == pytest.approx(expected, abs=0.005)
    # The same concentration seen blind: the 10 % most-hit pages.
    counts = np.sort(np.bincount(pages, minlength=n))[::-1]
    assert counts[: n // 10].sum() / len(pages) == pytest.approx(expected, abs=0.01)


def test_zipf_ranks_are_scattered_and_ordered() -> None:
    w = make_workload({"kind": "zipf", "alpha": 1.0}, 5000, seed=2)
    assert isinstance(w, ZipfWorkload)
    top = w.most_popular(50)
    assert not np.array_equal(np.sort(top), np.arange(50))  # not the first pages
    counts = np.bincount(w.next_chunk(400_000).pages, minlength=5000)
    # Rank 1 is drawn about twice as often as rank 2 (alpha = 1).
    assert counts[top[0]] / counts[top[1]] == pytest.approx(2.0, rel=0.1)
    assert counts[top[0]] == counts.max()


def test_scan_visits_pages_in_order_and_wraps() -> None:
    w = make_workload({"kind": "scan"}, 10, seed=0)
    assert np.array_equal(w.next_chunk(7).pages, np.arange(7))
    assert np.array_equal(w.next_chunk(7).pages, [7, 8, 9, 0, 1, 2, 3])
    assert np.array_equal(w.next_chunk(25).pages, np.arange(4, 29) % 10)


def test_scan_with_stride_touches_every_stride_th_page() -> None:
    w = make_workload({"kind": "scan", "stride": 3}, 10, seed=0)
    assert isinstance(w, ScanWorkload)
    assert np.array_equal(w.next_chunk(9).pages, [0, 3, 6, 9, 0, 3, 6, 9, 0])
    pages = make_workload({"kind": "scan", "stride": 4}, 1000, seed=0).next_chunk(5000).pages
    assert set(np.unique(pages).tolist()) == set(range(0, 1000, 4))
    assert w.name == "scan(stride=3)"


def test_shifting_hot_set_moves() -> None:
    spec = {
        "kind": "shifting",
        "hot_pages": 300,
        "shift_pages": 400,
        "shift_every": 10_000,
        "hot_fraction": 0.9,
    }
    w = make_workload(spec, 1000, seed=4)
    assert isinstance(w, ShiftingHotSetWorkload)
    assert [w.hot_start(a) for a in (0, 9_999, 10_000, 20_000, 30_000)] == [0, 0, 400, 800, 200]
    epochs = [w.next_chunk(10_000).pages for _ in range(3)]
    windows = [
        np.arange(0, 300),
        np.arange(400, 700),
        np.arange(800, 1100) % 1000,  # wraps around the footprint
    ]
    for pages, window in zip(epochs, windows, strict=True):
        # 90 % hot, plus the cold accesses that happen to land in the window.
        assert np.isin(pages, window).mean() == pytest.approx(0.9 + 0.1 * 0.3, abs=0.01)
        counts = np.bincount(pages, minlength=1000)
        # The whole window is hot (~30 hits a page), nothing outside it (~1).
        assert counts[window].min() > 10
        assert np.delete(counts, window).max() < 10
    # Last epoch's hot set went cold.
    assert np.isin(epochs[1], windows[0]).mean() == pytest.approx(0.1 * 0.3, abs=0.01)


def test_shifting_defaults_and_extremes() -> None:
    w = make_workload({"kind": "shifting"}, 1000, seed=1)
    assert isinstance(w, ShiftingHotSetWorkload)
    assert (w.hot_pages, w.shift_pages) == (100, 25)
    all_hot = make_workload({"kind": "shifting", "hot_pages": 10, "hot_fraction": 1.0}, 1000, 1)
    assert set(np.unique(all_hot.next_chunk(5000).pages).tolist()) == set(range(10))
    no_hot = make_workload({"kind": "shifting", "hot_pages": 10, "hot_fraction": 0.0}, 1000, 1)
    assert np.isin(no_hot.next_chunk(50_000).pages, range(10)).mean() < 0.02
    still = make_workload({"kind": "shifting", "hot_pages": 10, "shift_pages": 0}, 1000, 1)
    assert isinstance(still, ShiftingHotSetWorkload)
    assert still.hot_start(10**12) == 0


@pytest.mark.parametrize("ratio", [0.0, 0.05, 0.3, 0.8, 1.0])
def test_write_ratio_is_honoured(ratio: float) -> None:
    for kind in SPECS:
        spec = {**SPECS[kind], "write_ratio": ratio}
        writes = make_workload(spec, FOOTPRINT, seed=6).next_chunk(100_000).writes
        assert writes.mean() == pytest.approx(ratio, abs=0.006)


def test_think_time() -> None:
    exp = make_workload({"kind": "uniform", "think_ns": 2000}, 100, seed=1).next_chunk(100_000)
    assert exp.gap_ns.mean() == pytest.approx(2000, rel=0.02)
    assert exp.gap_ns.std() == pytest.approx(2000, rel=0.03)  # exponential: sd = mean
    fixed = make_workload(
        {"kind": "uniform", "think_ns": "1.5us", "think_distribution": "fixed"}, 100, seed=1
    ).next_chunk(1000)
    assert (fixed.gap_ns == 1500).all()
    none = make_workload({"kind": "zipf"}, 100, seed=1).next_chunk(1000)
    assert (none.gap_ns == 0).all()


def test_think_schedule_changes_the_pace_at_the_given_accesses() -> None:
    spec = {
        "kind": "uniform",
        "think_ns": 50,
        "think_schedule": [[1000, "2us"], [2500, 300]],
        "think_distribution": "fixed",
    }
    w = make_workload(spec, 100, seed=1)
    # Chunk boundaries that fall inside the schedule's steps.
    gaps = np.concatenate([w.next_chunk(700).gap_ns, w.next_chunk(2300).gap_ns])
    assert (gaps[:1000] == 50).all()
    assert (gaps[1000:2500] == 2000).all()
    assert (gaps[2500:] == 300).all()
    exp = make_workload({**spec, "think_distribution": "exponential"}, 100, seed=1)
    g = exp.next_chunk(200_000).gap_ns
    assert g[2500:].mean() == pytest.approx(300, rel=0.02)
    assert g[1000:2500].mean() == pytest.approx(2000, rel=0.1)
    parsed = WorkloadSpec.from_dict(spec)
    assert parsed.think_schedule == ((1000, 2000), (2500, 300))
    assert WorkloadSpec.from_dict(parsed.to_dict()) == parsed


def test_spec_dataclass_round_trips() -> None:
    spec = WorkloadSpec.from_dict({"kind": "zipf", "alpha": 1.3, "think": "1us", "name": "kv"})
    assert spec == WorkloadSpec(kind="zipf", alpha=1.3, think_ns=1000, name="kv")
    assert WorkloadSpec.from_dict(spec.to_dict()) == spec
    assert "stride" not in spec.to_dict()
    w = make_workload(spec, 100, seed=1)
    assert w.name == "kv"
    assert make_workload({"kind": "zipf", "alpha": 1.3}, 100).name == "zipf(alpha=1.3)"
    with pytest.raises(AttributeError):
        spec.alpha = 2.0


@pytest.mark.parametrize(
    ("spec", "footprint", "message"),
    [
        ({"kind": "zipfian"}, 10, r"unknown kind 'zipfian' \(expected one of: uniform, zipf, scan"),
        ({"alpha": 1.0}, 10, r"workload: missing 'kind'"),
        ([1, 2], 10, r"workload must be a table"),
        ({"kind": "scan", "alpha": 1.0}, 10, r"workload 'scan': unknown parameter\(s\) alpha"),
        ({"kind": "uniform", "write_ratio": 1.5}, 10, r"write_ratio must be in \[0, 1\], got 1.5"),
        (
            {"kind": "uniform", "write_ratio": -0.1},
            10,
            r"write_ratio must be in \[0, 1\], got -0.1",
        ),
        ({"kind": "uniform", "write_ratio": True}, 10, r"write_ratio must be a number, got True"),
        ({"kind": "zipf", "alpha": 0}, 10, r"workload 'zipf': alpha must be > 0, got 0"),
        ({"kind": "zipf", "alpha": -1.5}, 10, r"alpha must be > 0, got -1.5"),
        ({"kind": "zipf", "alpha": float("inf")}, 10, r"alpha must be finite, got inf"),
        ({"kind": "uniform", "think_ns": -5}, 10, r"think_ns must not be negative, got -5"),
        ({"kind": "uniform", "think_ns": "soon"}, 10, r"think_ns: not a duration: 'soon'"),
        ({"kind": "uniform", "think": "1us", "think_ns": 5}, 10, r"think and think_ns both"),
        (
            {"kind": "uniform", "think_distribution": "pareto"},
            10,
            r"think_distribution must be one of exponential, fixed, got 'pareto'",
        ),
        (
            {"kind": "uniform", "think_schedule": [[0, "1us"], [0, "2us"]]},
            10,
            r"think_schedule\[1\] starts at access 0, not after the previous entry's 0",
        ),
        ({"kind": "uniform", "think_schedule": [[5]]}, 10, r"think_schedule\[0\] must be a "),
        ({"kind": "uniform", "think_schedule": [[5, "x"]]}, 10, r"think_schedule\[0\]: not a"),
        ({"kind": "uniform", "think_schedule": [[-1, 5]]}, 10, r"from_access must not be neg"),
        ({"kind": "uniform", "think_schedule": 3}, 10, r"think_schedule must be a list of"),
        ({"kind": "scan", "stride": 0}, 10, r"workload 'scan': stride must be >= 1, got 0"),
        ({"kind": "scan", "stride": 11}, 10, r"stride \(11\) must not exceed the footprint \(10"),
        (
            {"kind": "shifting", "hot_pages": 11},
            10,
            r"workload 'shifting': hot_pages \(11\) must not exceed the footprint \(10 pages\)",
        ),
        ({"kind": "shifting", "hot_pages": 0}, 10, r"hot_pages must be >= 1, got 0"),
        ({"kind": "shifting", "shift_pages": -1}, 10, r"shift_pages must not be negative, got -1"),
        ({"kind": "shifting", "shift_every": 0}, 10, r"shift_every must be >= 1, got 0"),
        ({"kind": "shifting", "hot_fraction": 2}, 10, r"hot_fraction must be in \[0, 1\], got 2"),
        ({"kind": "shifting", "hot_pages": 2.5}, 10, r"hot_pages must be an integer, got 2.5"),
        ({"kind": "uniform"}, 0, r"footprint_pages must be >= 1, got 0"),
    ],
)
def test_bad_specs_are_refused_precisely(spec: Any, footprint: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_workload(spec, footprint, seed=1)


def test_bad_seed_and_chunk_size() -> None:
    with pytest.raises(ValueError, match=r"seed must not be negative, got -1"):
        make_workload({"kind": "uniform"}, 10, seed=-1)
    w = make_workload({"kind": "uniform"}, 10, seed=1)
    with pytest.raises(ValueError, match=r"n must be a non-negative integer, got -1"):
        w.next_chunk(-1)
