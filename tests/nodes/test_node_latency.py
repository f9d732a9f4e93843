"""The latency model: formula, seeded jitter, queueing, and the cited defaults."""

from __future__ import annotations

import math
import statistics

import pytest

from node_helpers import Pages
from tiersim.nodes import DEFAULT_LATENCY, LatencyModel, LatencyProfile, NodeKind, make_device
from tiersim.nodes import node_config as cfg

FLAT = LatencyProfile(
    read_base_ns=500,
    write_base_ns=700,
    per_cacheline_ns=2.0,
    compress_ns_per_byte=0.1,
    decompress_ns_per_byte=0.05,
    bandwidth_bytes_per_sec=1_000_000_000,  # one byte per ns
)


def test_cost_formula_without_jitter() -> None:
    m = LatencyModel(FLAT, seed=1)
    assert m.access_cost(write=False, nbytes=4096) == 500 + 64 * 2
    assert m.access_cost(write=True, nbytes=65) == 700 + 2 * 2  # a partial line is a line
    assert m.access_cost(write=False, nbytes=4096, decompress_out=4096) == round(
        500 + 128 + 0.05 * 4096
    )
    assert m.page_write_cost(4096) == round(700 + 128 + 0.1 * 4096)
    assert m.page_read_cost(0) == 628
    assert m.media_op_cost() == 700 and m.query_cost() == 500


def test_queueing_on_bandwidth() -> None:
    m = LatencyModel(FLAT, seed=1)
    assert m.queue(1000, 4096) == 0  # idle device
    assert m.busy_until_ns == 1000 + 4096
    assert m.queue(2000, 4096) == 3096  # waits for the first transfer
    assert m.busy_until_ns == 5096 + 4096
    assert m.queue(0, 100) == 0  # "when free": no wait, but occupies the device
    assert m.busy_until_ns == 9292
    assert m.queue(20_000, 4096) == 0
    unlimited = LatencyModel(LatencyProfile(1, 1, 0.0), seed=1)
    assert unlimited.queue(10, 10**9) == 0 and unlimited.queue(10, 10**9) == 0


def test_jitter_is_seeded_lognormal_with_median_one() -> None:
    prof = LatencyProfile(1000, 1000, 0.0, jitter_sigma=0.3)
    a = [LatencyModel(prof, seed=3).media_op_cost() for _ in range(3)]
    assert len(set(a)) == 1  # fresh model, same seed: same first draw
    m1, m2, m3 = LatencyModel(prof, 3), LatencyModel(prof, 3), LatencyModel(prof, 4)
    s1 = [m1.media_op_cost() for _ in range(5000)]
    s2 = [m2.media_op_cost() for _ in range(5000)]
    s3 = [m3.media_op_cost() for _ in range(5000)]
    assert s1 == s2 and s1 != s3
    logs = [math.log(c / 1000) for c in s1]
    assert abs(statistics.median(s1) / 1000 - 1) < 0.03
    assert abs(statistics.pstdev(logs) - 0.3) < 0.02
    assert all(type(c) is int and c > 0 for c in s1)
    # Reseeding restarts the sequence exactly.
    m1.reseed(3)
    assert [m1.media_op_cost() for _ in range(5000)] == s1


def test_device_queues_batches_that_arrive_while_busy(pages: Pages) -> None:
    d = make_device(
        cfg("cxl", "4MiB", latency={"jitter_sigma": 0, "bandwidth_bytes_per_sec": 10**9})
    )
    a = d.store([(0, pages.text()) for _ in range(4)], now_ns=1000)
    assert d.stats().queue_ns == 0
    # Issued 1 us later, while the first 16 KiB transfer still occupies the device.
    b = d.store([(0, pages.text())], now_ns=2000)
    wait = 1000 + 4 * 4096 - 2000
    service = round(170 + 64 * 2.0)
    assert b.costs_ns == [service + wait]
    assert d.stats().queue_ns == wait
    assert d.stats().busy_ns == a.cost_ns + b.cost_ns


@pytest.mark.parametrize("kind", list(NodeKind))
def test_defaults_cite_kernel_md(kind: NodeKind) -> None:
    prof = DEFAULT_LATENCY[kind]
    assert "KERNEL.md" in prof.source
    assert prof.jitter_sigma > 0 and prof.bandwidth_bytes_per_sec > 0


def test_defaults_fall_in_the_cited_ranges() -> None:
    dram, cxl = DEFAULT_LATENCY[NodeKind.DRAM], DEFAULT_LATENCY[NodeKind.CXL]
    cram, nvme = DEFAULT_LATENCY[NodeKind.CRAM], DEFAULT_LATENCY[NodeKind.STORAGE]
    assert 80 <= dram.read_base_ns <= 100  # local DRAM load ~80-100 ns
    assert 70 <= cxl.read_base_ns - dram.read_base_ns <= 90  # Pond: local + 70-90 ns
    assert cram.read_base_ns >= 500  # 500 ns + a cacheline ...
    page_read = cram.read_base_ns + 64 * cram.per_cacheline_ns + 4096 * cram.decompress_ns_per_byte
    assert 600 <= page_read <= 1000  # ... 600 ns - 1 us with compression
    assert 11_000 <= nvme.read_base_ns <= 100_000  # NVMe 4 KiB QD1: 11 us .. 100 us


def test_latency_overrides_from_config() -> None:
    c = cfg("dram", "1MiB", latency={"read_base_ns": "120ns", "jitter_sigma": 0})
    assert c.latency.read_base_ns == 120 and c.latency.jitter_sigma == 0
    assert c.latency.write_base_ns == DEFAULT_LATENCY[NodeKind.DRAM].write_base_ns
    assert "overridden" in c.latency.source
