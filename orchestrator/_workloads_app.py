"""Workloads shaped like applications: a key-value store, GUPS, a graph walk.

Synthetic Zipf or uniform page streams miss what makes real programs hard to
tier: an operation touches several related pages (an index bucket, then a
value spread over pages), hotness belongs to objects rather than pages, and
some accesses are dependent loads that cannot be batched. These kinds model
that at page granularity, deterministically from the seed.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from .workloads import BufferedWorkload, Workload, WorkloadSpec

PAGE_SIZE = 4096
_OPS_PER_BLOCK = 4096
_WALK_ACCESSES = 8192  # per generated block of a graph walk

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK = (1 << 64) - 1
_GOLDEN_I, _MIX1_I, _MIX2_I = int(_GOLDEN), int(_MIX1), int(_MIX2)
# Below this many walkers the chase runs in Python ints rather than numpy.
_SCALAR_WALKERS = 8


def _mix(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser over an array (wrapping uint64 arithmetic)."""
    # Array-by-scalar uint64 products wrap silently (only scalar maths warns).
    z = z * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _unit(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.float64]:
    """The top 53 bits of a hash as a float in [0, 1)."""
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class KeyValueWorkload(BufferedWorkload):
    """A key-value store: a hash index, then the value, per operation.

    Layout: the index (16 bytes per key: a slot at load factor 1/2) fills
    the first pages; values follow, packed back to back in a random key
    order, as a slab allocator fills its slabs over time, so popular keys
    are scattered and a value may straddle pages. Each operation picks a key
    by Zipf popularity (``alpha``), reads the key's index page, then reads
    (get) or writes (set, with probability ``set_ratio``) every page of its
    value. Value sizes are ``value_size`` bytes, or log-uniform between
    ``value_size`` and ``value_size_max`` (many small values, a few large
    ones, as in memcached traces). ``keys`` defaults to as many as fit in
    the footprint.
    """

    def __init__(self, spec: WorkloadSpec, footprint_pages: int, seed: int) -> None:
        super().__init__(spec, footprint_pages, seed)
        rng = self._layout_rng
        lo = spec.value_size
        hi = spec.value_size_max or lo
        total_bytes = footprint_pages * PAGE_SIZE
        if spec.keys is not None:
            n = spec.keys
        else:
            mean = lo if hi == lo else (hi - lo) / math.log(hi / lo)
            n = max(1, int(total_bytes / (mean + 16) * 1.05) + 16)
        sizes = self._sizes(rng, n, lo, hi)
        index_pages = -(-n * 16 // PAGE_SIZE)
        ends = np.cumsum(sizes)
        if spec.keys is None:
            # As many keys as fit: the index grows with them, so cut where both fit.
            fits = ends + PAGE_SIZE * (-(-np.arange(1, n + 1) * 16 // PAGE_SIZE)) <= total_bytes
            n = int(np.count_nonzero(fits))
            if n == 0:
                raise ValueError(
                    f"workload 'kv': not one value of {lo} bytes fits in the footprint "
                    f"({footprint_pages} pages)"
                )
            sizes, ends = sizes[:n], ends[:n]
            index_pages = -(-n * 16 // PAGE_SIZE)
        need = index_pages + -(-int(ends[-1]) // PAGE_SIZE)
        if need > footprint_pages:
            raise ValueError(
                f"workload 'kv': {n} keys need {need} pages (index {index_pages}, values "
                f"{need - index_pages}) but the footprint is {footprint_pages} pages"
            )
        self.keys = n
        self.index_pages = index_pages
        # Values in slab order: a random permutation of the keys.
        order = rng.permutation(n)
        offset = np.empty(n, dtype=np.int64)
        offset[order] = np.cumsum(sizes[order]) - sizes[order]
        first = index_pages * PAGE_SIZE + offset
        self._first_page = first // PAGE_SIZE
        self._npages = (first + sizes - 1) // PAGE_SIZE - self._first_page + 1
        salt = np.uint64(int(rng.integers(0, 1 << 63)))
        bucket = _mix(np.arange(n, dtype=np.uint64) ^ salt) % np.uint64(index_pages)
        self._index_page = bucket.astype(np.int64)
        weights = np.arange(1, n + 1, dtype=np.float64) ** -spec.alpha
        cdf = np.cumsum(weights)
        self._cdf = cdf / cdf[-1]
        self._rank_to_key = rng.permutation(n).astype(np.int64)
        self.value_bytes = int(sizes.sum())

    @staticmethod
    def _sizes(rng: np.random.Generator, n: int, lo: int, hi: int) -> npt.NDArray[np.int64]:
        if hi == lo:
            return np.full(n, lo, dtype=np.int64)
        u = rng.random(n)
        return np.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))).astype(np.int64)

    def _describe(self) -> str:
        size = f"{self.spec.value_size}"
        if self.spec.value_size_max:
            size += f"..{self.spec.value_size_max}"
        return f"kv(keys={self.keys}, alpha={self.spec.alpha:g}, value_size={size})"

    def _generate(
        self,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], None]:
        rng = self._pages_rng
        u = rng.random(_OPS_PER_BLOCK)
        ranks = np.minimum(np.searchsorted(self._cdf, u, side="right"), self.keys - 1)
        keys = self._rank_to_key[ranks]
        is_set = rng.random(_OPS_PER_BLOCK) < self.spec.set_ratio
        npages = self._npages[keys]
        per_op = 1 + npages
        total = int(per_op.sum())
        op_start = np.cumsum(per_op) - per_op
        within = np.arange(total, dtype=np.int64) - np.repeat(op_start, per_op)
        op = np.repeat(np.arange(_OPS_PER_BLOCK), per_op)
        value_page = self._first_page[keys][op] + within - 1
        pages = np.where(within == 0, self._index_page[keys][op], value_page)
        writes = (within > 0) & is_set[op]
        return pages.astype(np.int64), writes, None


class GupsWorkload(Workload):
    """GUPS: random read-modify-write updates of 8-byte words of a table.

    Every access is an update, hence a write, of a uniformly random page; or,
    with ``hot_pages``, ``hot_fraction`` of the updates go to a hot region
    of that many pages at a seeded offset (the hot-set GUPS variant used to
    evaluate tiering systems such as HeMem). One uniform draw per access
    decides both hot or cold and where.
    """

    def __init__(self, spec: WorkloadSpec, footprint_pages: int, seed: int) -> None:
        hot = spec.hot_pages
        if hot is not None and hot > footprint_pages:
            raise ValueError(
                f"workload 'gups': hot_pages ({hot}) must not exceed the footprint "
                f"({footprint_pages} pages)"
            )
        self.hot_pages = hot
        super().__init__(spec, footprint_pages, seed)
        self.hot_start = (
            int(self._layout_rng.integers(0, footprint_pages - hot + 1)) if hot is not None else 0
        )

    def _describe(self) -> str:
        if self.hot_pages is None:
            return "gups"
        return f"gups(hot_pages={self.hot_pages}, hot_fraction={self.spec.hot_fraction:g})"

    def _next_accesses(self, n: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], None]:
        return self._next_pages(n), np.ones(n, dtype=np.bool_), None

    def _next_pages(self, n: int) -> npt.NDArray[np.int64]:
        u = self._pages_rng.random(n)
        if self.hot_pages is None:
            return self._uniform(u, self.footprint_pages)
        hf = self.spec.hot_fraction
        hot = u < hf
        pages = np.empty(n, dtype=np.int64)
        if hf > 0:
            pages[hot] = self.hot_start + self._uniform(u[hot] / hf, self.hot_pages)
        if hf < 1:
            pages[~hot] = self._uniform((u[~hot] - hf) / (1.0 - hf), self.footprint_pages)
        return pages


class GraphWorkload(BufferedWorkload):
    """Random walks over a static power-law graph: a pointer chase.

    The graph has V vertices of ``vertex_bytes`` each, then an edge array of
    ``degree`` 8-byte neighbour ids per vertex (CSR), V chosen to fill the
    footprint. Neighbour j of vertex v is a fixed function of (seed, v, j):
    a Zipf-like draw (``alpha``) over popularity ranks, mapped to vertices
    by a fixed permutation, so a few vertices are reached from everywhere.
    ``walkers`` independent walks advance in lockstep (the memory-level
    parallelism of a multithreaded traversal); each step reads the current
    vertex's record and one slot of its edge list, then moves to that
    neighbour, or with probability ``restart`` to a random vertex (the
    teleport of PageRank-style walks). Writes follow ``write_ratio``.
    """

    def __init__(self, spec: WorkloadSpec, footprint_pages: int, seed: int) -> None:
        per_vertex = spec.vertex_bytes + spec.degree * 8
        total = footprint_pages * PAGE_SIZE
        v = total // per_vertex
        # The edge array starts on a page boundary: give back what that costs.
        while (
            v > 0
            and -(-v * spec.vertex_bytes // PAGE_SIZE) * PAGE_SIZE + v * spec.degree * 8 > total
        ):
            v -= 1
        if v < 2:
            raise ValueError(
                f"workload 'graph': the footprint ({footprint_pages} pages) holds fewer than two "
                f"vertices of {per_vertex} bytes (vertex_bytes + 8 * degree)"
            )
        self.vertices = v
        super().__init__(spec, footprint_pages, seed)
        self._salt_int = int(self._layout_rng.integers(0, 1 << 63))
        self._salt = np.uint64(self._salt_int)
        mult = int(self._layout_rng.integers(v // 3, max(v // 3 + 1, v))) | 1
        while math.gcd(mult, v) != 1:
            mult += 2
        self._perm_mult = mult
        self._perm_add = int(self._layout_rng.integers(0, v))
        self._edge_base = -(-v * spec.vertex_bytes // PAGE_SIZE) * PAGE_SIZE

    def _describe(self) -> str:
        return (
            f"graph(vertices={self.vertices}, degree={self.spec.degree}, alpha={self.spec.alpha:g})"
        )

    def _restart(self) -> None:
        self._cur: npt.NDArray[np.int64] | None = None

    def neighbour(
        self, v: npt.NDArray[np.int64], j: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        """Neighbour ``j`` of each vertex ``v``: fixed by the seed, skewed by ``alpha``."""
        deg = self.spec.degree
        z = _mix((v.astype(np.uint64) * np.uint64(deg) + j.astype(np.uint64)) ^ self._salt)
        u = _unit(z)
        n = float(self.vertices)
        a = self.spec.alpha
        # Inverse CDF of a continuous power law on [1, n + 1): rank 0 most popular.
        if abs(a - 1.0) < 1e-9:
            x = np.power(n + 1.0, u)
        else:
            x = np.power(((n + 1.0) ** (1.0 - a) - 1.0) * u + 1.0, 1.0 / (1.0 - a))
        rank = np.minimum(x.astype(np.int64) - 1, self.vertices - 1)
        rank = np.maximum(rank, 0)
        return (rank * self._perm_mult + self._perm_add) % self.vertices

    def neighbour_of(self, v: int, j: int) -> int:
        """`neighbour` for one vertex, in Python ints (bit-identical)."""
        z = ((v * self.spec.degree + j) ^ self._salt_int) & _MASK
        z = (z * _GOLDEN_I) & _MASK
        z = ((z ^ (z >> 30)) * _MIX1_I) & _MASK
        z = ((z ^ (z >> 27)) * _MIX2_I) & _MASK
        z ^= z >> 31
        u = (z >> 11) * (1.0 / (1 << 53))
        n = float(self.vertices)
        a = self.spec.alpha
        if abs(a - 1.0) < 1e-9:
            x = (n + 1.0) ** u
        else:
            x = (((n + 1.0) ** (1.0 - a) - 1.0) * u + 1.0) ** (1.0 / (1.0 - a))
        rank = max(min(int(x) - 1, self.vertices - 1), 0)
        return (rank * self._perm_mult + self._perm_add) % self.vertices

    def _generate(self) -> tuple[npt.NDArray[np.int64], None, None]:
        rng = self._pages_rng
        spec = self.spec
        w = spec.walkers
        steps = max(1, _WALK_ACCESSES // (2 * w))
        if self._cur is None:
            self._cur = rng.integers(0, self.vertices, size=w, dtype=np.int64)
        # All randomness of the block up front; only the chase itself is a loop.
        slots = rng.integers(0, spec.degree, size=(steps, w), dtype=np.int64)
        jump = rng.random((steps, w)) < spec.restart
        targets = rng.integers(0, self.vertices, size=(steps, w), dtype=np.int64)
        visited = np.empty((steps, w), dtype=np.int64)
        cur = self._cur
        if w < _SCALAR_WALKERS:
            # Few walkers: numpy's per-call cost dominates; chase in plain ints.
            cur_l = cur.tolist()
            slots_l, jump_l, targets_l = slots.tolist(), jump.tolist(), targets.tolist()
            hop = self.neighbour_of
            for step in range(steps):
                visited[step] = cur_l
                cur_l = [
                    targets_l[step][k] if jump_l[step][k] else hop(v, slots_l[step][k])
                    for k, v in enumerate(cur_l)
                ]
            cur = np.array(cur_l, dtype=np.int64)
        else:
            for step in range(steps):
                visited[step] = cur
                nxt = self.neighbour(cur, slots[step])
                cur = np.where(jump[step], targets[step], nxt)
        self._cur = cur
        out = np.empty((steps, w, 2), dtype=np.int64)
        out[:, :, 0] = visited * spec.vertex_bytes // PAGE_SIZE
        out[:, :, 1] = (self._edge_base + (visited * spec.degree + slots) * 8) // PAGE_SIZE
        return out.reshape(-1), None, None
