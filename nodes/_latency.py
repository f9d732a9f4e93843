"""Latency model of a memory device, in integer simulated nanoseconds.

One page access of `n` bytes costs

    base(read|write) + ceil(n / 64) * per_cacheline
        + compress_ns_per_byte * bytes_in + decompress_ns_per_byte * bytes_out

multiplied by a seeded log-normal jitter factor (median 1), so tails exist but
the same seed and the same request sequence always give the same costs. On
top of that, each request queues behind the device: the node keeps
`busy_until`, a request issued at `issue_ns` starts at max(issue, busy_until)
and its transfer occupies the device for bytes / bandwidth. The wait is added
to the request's cost.

The per-kind defaults below follow the table "Latency" in KERNEL.md; each
names its source. They are starting points, overridable from configuration.
"""

from __future__ import annotations

import math
import random

import numpy as np

from ._types import CACHELINE, PAGE_SIZE, LatencyProfile, NodeKind

_LINES_PER_PAGE = PAGE_SIZE // CACHELINE

# Local DRAM: a load costs ~80-100 ns ("main memory reference" 100 ns; sub-100 ns measured,
# KERNEL.md "Latency"). 90 ns is the middle of that range. A DDR5-3200 channel moves
# 25.6 GB/s, i.e. ~2.5 ns per 64-byte line; a 4 KiB copy then adds ~160 ns.
DRAM_LATENCY = LatencyProfile(
    read_base_ns=90,
    write_base_ns=90,
    per_cacheline_ns=2.5,
    bandwidth_bytes_per_sec=25_600_000_000,
    jitter_sigma=0.05,
    source="KERNEL.md Latency: local DRAM load ~80-100 ns; DDR5-3200 channel 25.6 GB/s",
)

# CXL Type-3 expander: local + 70-90 ns, ~170-250 ns (Pond, ASPLOS'23; KERNEL.md "Latency").
# 90 + 80 = 170 ns. An x8 PCIe 5.0 link carries ~32 GB/s per direction (~2 ns per line).
CXL_LATENCY = LatencyProfile(
    read_base_ns=170,
    write_base_ns=170,
    per_cacheline_ns=2.0,
    bandwidth_bytes_per_sec=32_000_000_000,
    jitter_sigma=0.1,
    source="KERNEL.md Latency: CXL expander local + 70-90 ns (Pond, ASPLOS'23); x8 PCIe 5.0",
)

# Compressed CXL: a read costs 500 ns + a cacheline, 600 ns-1 us with compression (Price's
# yardstick, an estimate; KERNEL.md "Latency"). With the link cost of CXL above, a 4 KiB page
# read is 500 + 64 * 2 + 4096 * 0.05 = ~833 ns and a compressed write 500 + 128 + 410 = ~1 us,
# both inside that range. Hardware (de)compression engines are assumed ~20 GB/s and ~10 GB/s.
CRAM_LATENCY = LatencyProfile(
    read_base_ns=500,
    write_base_ns=500,
    per_cacheline_ns=2.0,
    compress_ns_per_byte=0.1,
    decompress_ns_per_byte=0.05,
    bandwidth_bytes_per_sec=32_000_000_000,
    jitter_sigma=0.15,
    source="KERNEL.md Latency: compressed CXL read 500 ns + a cacheline, "
    "600 ns-1 us with compression (Price's yardstick, estimate)",
)

# Swap device: NVMe 4 KiB read at QD1 is 11 us (Optane) to ~40-100 us (NAND), public
# benchmarks (KERNEL.md "Latency"). The default is NAND at the fast end of its range; writes
# land in the drive's write buffer and are taken as half a read (estimate). A PCIe 4.0 x4
# drive moves ~3.2 GB/s (20 ns per line); flash has heavy tails, hence the larger sigma.
STORAGE_LATENCY = LatencyProfile(
    read_base_ns=40_000,
    write_base_ns=20_000,
    per_cacheline_ns=20.0,
    bandwidth_bytes_per_sec=3_200_000_000,
    jitter_sigma=0.3,
    source="KERNEL.md Latency: NVMe 4 KiB read QD1 11 us (Optane) to 40-100 us (NAND)",
)

DEFAULT_LATENCY: dict[NodeKind, LatencyProfile] = {
    NodeKind.DRAM: DRAM_LATENCY,
    NodeKind.CXL: CXL_LATENCY,
    NodeKind.CRAM: CRAM_LATENCY,
    NodeKind.STORAGE: STORAGE_LATENCY,
}


# Jitter factors are drawn this many at a time (see LatencyModel._refill).
_JITTER_BLOCK = 1024


class LatencyModel:
    """Costs of page operations on one device, with jitter and queueing.

    Synchronous and deterministic: jitter comes from `random.Random(seed)`,
    one factor per page operation (none when sigma is 0), so a fixed request
    sequence gives a fixed cost sequence whatever the batch boundaries.
    """

    __slots__ = (
        "_bw",
        "_compress",
        "_decompress",
        "_factors",
        "_page_read",
        "_page_write",
        "_pos",
        "_rng",
        "_sigma",
        "busy_until_ns",
        "profile",
    )

    def __init__(self, profile: LatencyProfile, seed: int) -> None:
        self.profile = profile
        self._sigma = profile.jitter_sigma
        self._bw = profile.bandwidth_bytes_per_sec
        self._compress = profile.compress_ns_per_byte
        self._decompress = profile.decompress_ns_per_byte
        # Every page access moves a whole page over the link; precompute its fixed part.
        self._page_read = profile.read_base_ns + _LINES_PER_PAGE * profile.per_cacheline_ns
        self._page_write = profile.write_base_ns + _LINES_PER_PAGE * profile.per_cacheline_ns
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the jitter sequence and forget queued work (a device reset)."""
        self._rng = random.Random(seed)
        self._factors: list[float] = []
        self._pos = 0
        self.busy_until_ns = 0

    def _refill(self) -> None:
        # A block of log-normal factors exp(sigma * z), z standard normal by Box-Muller
        # from the seeded generator's bits. One Python-level draw per page
        # (random.lognormvariate) would cost more than the rest of a page's bookkeeping.
        half = _JITTER_BLOCK // 2
        bits = np.frombuffer(self._rng.randbytes(8 * _JITTER_BLOCK), dtype="<u8")
        uniform = (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        radius = np.sqrt(-2.0 * np.log1p(-uniform[:half]))  # 1 - u lies in (0, 1]
        angle = (2.0 * math.pi) * uniform[half:]
        z = np.concatenate((radius * np.cos(angle), radius * np.sin(angle)))
        self._factors = np.exp(self._sigma * z).tolist()
        self._pos = 0

    def _jitter(self, cost: float) -> int:
        if self._sigma:
            if self._pos == len(self._factors):
                self._refill()
            cost *= self._factors[self._pos]
            self._pos += 1
        return round(cost)

    @property
    def page_write_base(self) -> float:
        """Unjittered cost of writing one page, before compression."""
        return self._page_write

    @property
    def page_read_base(self) -> float:
        """Unjittered cost of reading one page, before decompression."""
        return self._page_read

    @property
    def query_base(self) -> int:
        return self.profile.read_base_ns

    @property
    def compress_ns_per_byte(self) -> float:
        return self._compress

    @property
    def decompress_ns_per_byte(self) -> float:
        return self._decompress

    def jitter_many(self, bases: list[float]) -> list[int]:
        """Jitter a run of costs, in order: the same draws `len(bases)` single calls make."""
        if not self._sigma:
            return [round(b) for b in bases]
        n = len(bases)
        factors = self._factors
        pos = self._pos
        if pos + n <= len(factors):
            self._pos = pos + n
            return [round(b * f) for b, f in zip(bases, factors[pos : pos + n], strict=True)]
        return [self._jitter(b) for b in bases]

    def access_cost(
        self, *, write: bool, nbytes: int, compress_in: int = 0, decompress_out: int = 0
    ) -> int:
        """Service time of one access of `nbytes`, jittered, before queueing."""
        p = self.profile
        cost = (p.write_base_ns if write else p.read_base_ns) + math.ceil(
            nbytes / CACHELINE
        ) * p.per_cacheline_ns
        cost += self._compress * compress_in + self._decompress * decompress_out
        return self._jitter(cost)

    def page_write_cost(self, compress_in: int) -> int:
        """Store of one whole page; `compress_in` bytes went through the compressor."""
        return self._jitter(self._page_write + self._compress * compress_in)

    def page_read_cost(self, decompress_out: int) -> int:
        """Load of one whole page; `decompress_out` bytes came out of the decompressor."""
        return self._jitter(self._page_read + self._decompress * decompress_out)

    def media_op_cost(self) -> int:
        """A media command without data transfer (free's zeroing, zero in place)."""
        return self._jitter(self.profile.write_base_ns)

    def query_cost(self) -> int:
        """A register read: the driver's safety question before a checked allocation."""
        return self._jitter(self.profile.read_base_ns)

    def queue(self, issue_ns: int, nbytes: int) -> int:
        """Queue a request of `nbytes` transfer; return its wait in ns.

        `issue_ns` 0 means "as soon as the device is free": such a request does
        not wait, but it still occupies the device for its transfer.
        """
        start = self.busy_until_ns if issue_ns <= 0 else max(issue_ns, self.busy_until_ns)
        wait = 0 if issue_ns <= 0 else start - issue_ns
        if self._bw:
            # Ceil in integers: any partial nanosecond still occupies the device.
            start += -(-nbytes * 1_000_000_000 // self._bw)
        self.busy_until_ns = start
        return wait
