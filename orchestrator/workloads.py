"""Synthetic access generators: which page a workload touches next, and how.

A workload addresses its own footprint, pages ``0 .. footprint_pages - 1``;
the engine maps those to its per-page state. Accesses come in chunks (arrays
of page indices, write flags and think-time gaps) so that the engine handles
thousands of accesses per numpy operation rather than one Python call each.

Determinism: a workload is a pure function of its spec, footprint and seed.
Pages, write flags and gaps are drawn from three independent PCG64 streams
spawned from the seed, each consuming exactly one draw per access, so the
sequence does not depend on how it is cut into chunks: ``next_chunk(8192)``
gives the same accesses as two ``next_chunk(4096)``. ``reset`` replays it.

Kinds:

- ``uniform``: every page equally likely.
- ``zipf``: page popularity follows a Zipf law with skew ``alpha`` over the
  whole footprint (the rank-r page is drawn with probability proportional to
  ``1 / r**alpha``), ranks permuted over the footprint so hot pages are
  scattered as in a real heap. Sampled by inverse CDF over a precomputed
  table (``np.random.zipf`` is unbounded and only defined for alpha > 1).
- ``scan``: sequential passes over pages ``0, stride, 2*stride, ...``, over
  and over (pages between the strides are never touched).
- ``shifting``: a hot set of ``hot_pages`` contiguous pages receives
  ``hot_fraction`` of the accesses (uniformly within it), the rest go
  uniformly anywhere; the hot set moves forward by ``shift_pages`` every
  ``shift_every`` accesses, wrapping around the footprint. This is the
  pattern that exercises promotion and demotion: yesterday's hot pages go
  cold.

Every kind takes ``write_ratio`` (the share of accesses that write) and
``think_ns`` (the mean simulated time between accesses, also accepted as
``think = "2us"``); ``think_distribution`` makes the gaps exponential (the
default: accesses arrive as a Poisson process) or fixed.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
from tiersim._units import parse_duration_ns

DEFAULT_CHUNK = 4096

WORKLOAD_KINDS: tuple[str, ...] = ("uniform", "zipf", "scan", "shifting")
THINK_DISTRIBUTIONS: tuple[str, ...] = ("exponential", "fixed")

_COMMON_KEYS = frozenset({"kind", "name", "write_ratio", "think_ns", "think_distribution"})
# Accepted in tables only: `think` is a duration that becomes think_ns.
_ALIASES = frozenset({"think"})
_KIND_KEYS: dict[str, frozenset[str]] = {
    "uniform": frozenset(),
    "zipf": frozenset({"alpha"}),
    "scan": frozenset({"stride"}),
    "shifting": frozenset({"hot_pages", "shift_pages", "shift_every", "hot_fraction"}),
}


@dataclass(frozen=True, slots=True)
class AccessChunk:
    """A run of accesses: ``pages[i]`` is touched ``gap_ns[i]`` after access ``i - 1``.

    ``pages`` are indices into the workload's footprint (int64), ``writes``
    flags the accesses that write (bool), ``gap_ns`` is simulated think time
    in nanoseconds (int64). All three have the same length.
    """

    pages: npt.NDArray[np.int64]
    writes: npt.NDArray[np.bool_]
    gap_ns: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.pages)


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """Parameters of a synthetic workload, validated on construction.

    Fields that do not apply to ``kind`` are ignored here; `from_dict`
    rejects them, so a scenario file cannot set them by mistake. ``None``
    for the shifting hot-set sizes means a default relative to the
    footprint, resolved when the workload is built: ``hot_pages`` a tenth of
    the footprint, ``shift_pages`` a quarter of the hot set.
    """

    kind: str
    write_ratio: float = 0.0
    think_ns: int = 0
    think_distribution: str = "exponential"
    alpha: float = 1.0
    stride: int = 1
    hot_pages: int | None = None
    shift_pages: int | None = None
    shift_every: int = 100_000
    hot_fraction: float = 0.9
    name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in WORKLOAD_KINDS:
            kinds = ", ".join(WORKLOAD_KINDS)
            raise ValueError(f"workload: unknown kind {self.kind!r} (expected one of: {kinds})")
        where = f"workload {self.kind!r}"
        _check_unit(where, "write_ratio", self.write_ratio)
        _check_int(where, "think_ns", self.think_ns, minimum=0)
        if self.think_distribution not in THINK_DISTRIBUTIONS:
            choices = ", ".join(THINK_DISTRIBUTIONS)
            raise ValueError(
                f"{where}: think_distribution must be one of {choices}, "
                f"got {self.think_distribution!r}"
            )
        _check_number(where, "alpha", self.alpha)
        if not self.alpha > 0:
            raise ValueError(f"{where}: alpha must be > 0, got {self.alpha!r}")
        _check_int(where, "stride", self.stride, minimum=1)
        if self.hot_pages is not None:
            _check_int(where, "hot_pages", self.hot_pages, minimum=1)
        if self.shift_pages is not None:
            _check_int(where, "shift_pages", self.shift_pages, minimum=0)
        _check_int(where, "shift_every", self.shift_every, minimum=1)
        _check_unit(where, "hot_fraction", self.hot_fraction)
        if self.name is not None and not isinstance(self.name, str):
            raise ValueError(f"{where}: name must be a string, got {self.name!r}")

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> WorkloadSpec:
        """Build from a scenario table, rejecting keys the kind does not take.

        ``think_ns`` may be written as a duration string ("2us", "150ns").
        """
        if not isinstance(spec, Mapping):
            raise ValueError(f"workload must be a table, got {spec!r}")
        if "kind" not in spec:
            raise ValueError(
                f"workload: missing 'kind' (expected one of: {', '.join(WORKLOAD_KINDS)})"
            )
        kind = spec["kind"]
        if kind not in WORKLOAD_KINDS:
            raise ValueError(
                f"workload: unknown kind {kind!r} (expected one of: {', '.join(WORKLOAD_KINDS)})"
            )
        allowed = _COMMON_KEYS | _KIND_KEYS[kind]
        unknown = sorted(str(k) for k in spec if k not in allowed | _ALIASES)
        if unknown:
            raise ValueError(
                f"workload {kind!r}: unknown parameter(s) {', '.join(unknown)} "
                f"(accepted: {', '.join(sorted(allowed | _ALIASES))})"
            )
        values = dict(spec)
        if "think" in values:
            if "think_ns" in values:
                raise ValueError(f"workload {kind!r}: think and think_ns both given")
            values["think_ns"] = values.pop("think")
        if isinstance(values.get("think_ns"), str):
            try:
                values["think_ns"] = parse_duration_ns(values["think_ns"])
            except ValueError as e:
                raise ValueError(f"workload {kind!r}: think_ns: {e}") from None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a table holding only the keys its kind takes."""
        keep = _COMMON_KEYS | _KIND_KEYS[self.kind]
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name in keep and getattr(self, f.name) is not None
        }


def _check_number(where: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: {key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{where}: {key} must be finite, got {value!r}")
    return float(value)


def _check_unit(where: str, key: str, value: object) -> float:
    v = _check_number(where, key, value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{where}: {key} must be in [0, 1], got {value!r}")
    return v


def _check_int(where: str, key: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: {key} must be an integer, got {value!r}")
    if value < minimum:
        bound = "must not be negative" if minimum == 0 else f"must be >= {minimum}"
        raise ValueError(f"{where}: {key} {bound}, got {value}")
    return value


class Workload(ABC):
    """A deterministic stream of accesses over ``footprint_pages`` pages."""

    def __init__(self, spec: WorkloadSpec, footprint_pages: int, seed: int) -> None:
        where = f"workload {spec.kind!r}"
        _check_int(where, "footprint_pages", footprint_pages, minimum=1)
        _check_int(where, "seed", seed, minimum=0)
        self.spec = spec
        self.footprint_pages = footprint_pages
        self.seed = seed
        # Four independent streams: layout (fixed at build), pages, writes, gaps.
        self._seeds = np.random.SeedSequence(seed).spawn(4)
        self._layout_rng = np.random.Generator(np.random.PCG64(self._seeds[0]))
        self._issued = 0
        self.reset()

    @property
    def name(self) -> str:
        return self.spec.name or self._describe()

    def _describe(self) -> str:
        return self.spec.kind

    @property
    def accesses_issued(self) -> int:
        """How many accesses `next_chunk` has produced since the last reset."""
        return self._issued

    def reset(self) -> None:
        """Rewind to the first access; the same sequence follows."""
        self._pages_rng = np.random.Generator(np.random.PCG64(self._seeds[1]))
        self._writes_rng = np.random.Generator(np.random.PCG64(self._seeds[2]))
        self._gaps_rng = np.random.Generator(np.random.PCG64(self._seeds[3]))
        self._issued = 0

    def next_chunk(self, n: int = DEFAULT_CHUNK) -> AccessChunk:
        """The next ``n`` accesses."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"next_chunk: n must be a non-negative integer, got {n!r}")
        pages = self._next_pages(n)
        spec = self.spec
        if spec.write_ratio >= 1.0:
            writes = np.ones(n, dtype=np.bool_)
        elif spec.write_ratio <= 0.0:
            writes = np.zeros(n, dtype=np.bool_)
        else:
            writes = self._writes_rng.random(n) < spec.write_ratio
        if spec.think_ns == 0:
            gaps = np.zeros(n, dtype=np.int64)
        elif spec.think_distribution == "fixed":
            gaps = np.full(n, spec.think_ns, dtype=np.int64)
        else:
            gaps = np.rint(self._gaps_rng.exponential(spec.think_ns, n)).astype(np.int64)
        self._issued += n
        return AccessChunk(pages, writes, gaps)

    def _uniform(self, u: npt.NDArray[np.float64], span: int) -> npt.NDArray[np.int64]:
        """Map uniforms in [0, 1) to integers in [0, span)."""
        out = (u * span).astype(np.int64)
        np.minimum(out, span - 1, out=out)  # u * span can round up to span
        return out

    @abstractmethod
    def _next_pages(self, n: int) -> npt.NDArray[np.int64]:
        """The next ``n`` page indices; advances the page stream."""

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name} footprint={self.footprint_pages} seed={self.seed}>"
        )


class UniformWorkload(Workload):
    """Every page of the footprint equally likely: the worst case for any cache."""

    def _next_pages(self, n: int) -> npt.NDArray[np.int64]:
        return self._uniform(self._pages_rng.random(n), self.footprint_pages)


class ZipfWorkload(Workload):
    """Zipf-skewed popularity, ranks scattered over the footprint.

    Holds the CDF over ranks (8 bytes a page) and the rank-to-page
    permutation (8 bytes a page); each access is one uniform draw and a
    binary search.
    """

    def __init__(self, spec: WorkloadSpec, footprint_pages: int, seed: int) -> None:
        super().__init__(spec, footprint_pages, seed)
        weights = np.arange(1, footprint_pages + 1, dtype=np.float64) ** -spec.alpha
        cdf = np.cumsum(weights)
        self._cdf = cdf / cdf[-1]
        self._rank_to_page = self._layout_rng.permutation(footprint_pages).astype(np.int64)

    def _describe(self) -> str:
        return f"zipf(alpha={self.spec.alpha:g})"

    def _next_pages(self, n: int) -> npt.NDArray[np.int64]:
        ranks = np.searchsorted(self._cdf, self._pages_rng.random(n), side="right")
        np.minimum(ranks, self.footprint_pages - 1, out=ranks)
        return self._rank_to_page[ranks]

    def top_share(self, k: int) -> float:
        """Expected share of accesses that go to the ``k`` most popular pages."""
        if k <= 0:
            return 0.0
        return float(self._cdf[min(k, self.footprint_pages) - 1])

    def most_popular(self, k: int) -> npt.NDArray[np.int64]:
        """The ``k`` most popular pages, most popular first."""
        return self._rank_to_page[: max(k, 0)].copy()


class ScanWorkload(Workload):
    """Sequential passes over every ``stride``-th page, wrapping forever.

    No randomness in the order: access ``i`` touches page
    ``(i mod ceil(footprint / stride)) * stride``.
    """

    def __init__(self, spec: WorkloadSpec, footprint_pages: int, seed: int) -> None:
        if spec.stride > footprint_pages:
            raise ValueError(
                f"workload 'scan': stride ({spec.stride}) must not exceed the footprint "
                f"({footprint_pages} pages)"
            )
        super().__init__(spec, footprint_pages, seed)
        self._pass_len = -(-footprint_pages // spec.stride)

    def _describe(self) -> str:
        return "scan" if self.spec.stride == 1 else f"scan(stride={self.spec.stride})"

    def _next_pages(self, n: int) -> npt.NDArray[np.int64]:
        idx = (np.arange(n, dtype=np.int64) + self._issued % self._pass_len) % self._pass_len
        return idx * self.spec.stride


class ShiftingHotSetWorkload(Workload):
    """A moving hot set: ``hot_fraction`` of accesses go to ``hot_pages``
    contiguous pages starting at `hot_start`, which advances by
    ``shift_pages`` every ``shift_every`` accesses; the others are uniform
    over the footprint.

    One uniform draw per access decides both hot or cold and where, so the
    page stream stays independent of chunking.
    """

    def __init__(self, spec: WorkloadSpec, footprint_pages: int, seed: int) -> None:
        hot = spec.hot_pages if spec.hot_pages is not None else max(1, footprint_pages // 10)
        if hot > footprint_pages:
            raise ValueError(
                f"workload 'shifting': hot_pages ({hot}) must not exceed the footprint "
                f"({footprint_pages} pages)"
            )
        self.hot_pages = hot
        self.shift_pages = spec.shift_pages if spec.shift_pages is not None else max(1, hot // 4)
        super().__init__(spec, footprint_pages, seed)

    def _describe(self) -> str:
        return (
            f"shifting(hot_pages={self.hot_pages}, shift_pages={self.shift_pages}, "
            f"shift_every={self.spec.shift_every})"
        )

    def hot_start(self, access: int) -> int:
        """First page of the hot set at access number ``access`` (counted from reset)."""
        return (access // self.spec.shift_every) * self.shift_pages % self.footprint_pages

    def _next_pages(self, n: int) -> npt.NDArray[np.int64]:
        spec = self.spec
        footprint = self.footprint_pages
        u = self._pages_rng.random(n)
        a = np.arange(self._issued, self._issued + n, dtype=np.int64)
        # Python ints first: shift_pages * epochs could overflow int64 for long runs.
        start = (self._issued // spec.shift_every) * self.shift_pages % footprint
        epochs = a // spec.shift_every - self._issued // spec.shift_every
        base = (start + (epochs * (self.shift_pages % footprint)) % footprint) % footprint
        hf = spec.hot_fraction
        hot = u < hf
        pages = np.empty(n, dtype=np.int64)
        if hf > 0:
            off = self._uniform(u[hot] / hf, self.hot_pages)
            pages[hot] = (base[hot] + off) % footprint
        if hf < 1:
            pages[~hot] = self._uniform((u[~hot] - hf) / (1.0 - hf), footprint)
        return pages


_KINDS: dict[str, type[Workload]] = {
    "uniform": UniformWorkload,
    "zipf": ZipfWorkload,
    "scan": ScanWorkload,
    "shifting": ShiftingHotSetWorkload,
}


def build_workload(spec: WorkloadSpec, footprint_pages: int, seed: int = 0) -> Workload:
    """The workload for a validated spec."""
    return _KINDS[spec.kind](spec, footprint_pages, seed)


def make_workload(
    spec: Mapping[str, Any] | WorkloadSpec, footprint_pages: int, seed: int = 0
) -> Workload:
    """Build a workload from a scenario table such as
    ``{kind = "zipf", alpha = 1.1, write_ratio = 0.2, think_ns = "500ns"}``.

    Raises ValueError naming the kind and the offending parameter.
    """
    ws = spec if isinstance(spec, WorkloadSpec) else WorkloadSpec.from_dict(spec)
    return build_workload(ws, footprint_pages, seed)
