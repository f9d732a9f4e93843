"""Workloads that change over time: masim-style phases, and replay of recorded traces.

masim (the memory access simulator that DAMON's demonstrations use) describes
a program as named memory regions and a sequence of phases; in each phase a
few access patterns run over regions, each sequential with a stride or
random, chosen in proportion to their weights. Its ``stairs`` configuration
walks the regions one phase after another, ``zigzag`` walks them forward and
back: the shapes that show whether a tiering system follows a moving working
set. Here a phase lasts a number of accesses, not milliseconds: a workload
does not see the simulated latency of its accesses, and counting accesses
keeps the same sequence in every variant of a scenario, so variants differ
only in how the system treats it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tiersim._units import parse_size

from ._lackey import IFETCH, MODIFY, STORE
from .workloads import BufferedWorkload, WorkloadSpec

PAGE_SIZE = 4096
_BLOCK = 1 << 16
DEFAULT_SHAPE_REGIONS = 8


@dataclass(frozen=True)
class Region:
    name: str
    start: int  # first page
    pages: int


@dataclass(frozen=True)
class Pattern:
    region: int  # index into the regions
    random: bool
    stride_bytes: int
    weight: float


@dataclass(frozen=True)
class Phase:
    name: str
    accesses: int
    patterns: tuple[Pattern, ...]


class PhasesWorkload(BufferedWorkload):
    """masim-style phases over regions; the phase sequence repeats.

    A sequential pattern walks its region from the start of each phase,
    ``stride_bytes`` at a time (64 makes 64 accesses per page, as a program
    streaming through cachelines would), wrapping at the region's end; a
    random one picks a uniform page of the region. One uniform draw per
    access chooses the pattern and, for random ones, the page.
    """

    def __init__(self, spec: WorkloadSpec, footprint_pages: int, seed: int) -> None:
        self.regions, self.phase_list = _layout(spec, footprint_pages)
        super().__init__(spec, footprint_pages, seed)

    def _describe(self) -> str:
        if self.spec.shape:
            return f"phases({self.spec.shape}, regions={len(self.regions)})"
        return f"phases(regions={len(self.regions)}, phases={len(self.phase_list)})"

    def _restart(self) -> None:
        self._phase = 0
        self._pos = 0
        self._counters = [0] * max(len(p.patterns) for p in self.phase_list)

    def phase_at(self, access: int) -> int:
        """Index of the phase that access number ``access`` (from reset) belongs to."""
        cycle = sum(p.accesses for p in self.phase_list)
        a = access % cycle
        for i, p in enumerate(self.phase_list):
            if a < p.accesses:
                return i
            a -= p.accesses
        raise AssertionError("unreachable")

    def _generate(self) -> tuple[npt.NDArray[np.int64], None, None]:
        phase = self.phase_list[self._phase]
        m = min(phase.accesses - self._pos, _BLOCK)
        u = self._pages_rng.random(m)
        weights = np.array([p.weight for p in phase.patterns], dtype=np.float64)
        edges = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
        which = np.minimum(np.searchsorted(edges, u, side="right") - 1, len(weights) - 1)
        pages = np.empty(m, dtype=np.int64)
        for k, pat in enumerate(phase.patterns):
            sel = which == k
            count = int(np.count_nonzero(sel))
            if not count:
                continue
            region = self.regions[pat.region]
            if pat.random:
                lo, hi = edges[k], edges[k + 1]
                pages[sel] = region.start + self._uniform((u[sel] - lo) / (hi - lo), region.pages)
            else:
                idx = self._counters[k] + np.arange(count, dtype=np.int64)
                offset = (idx * pat.stride_bytes) % (region.pages * PAGE_SIZE)
                pages[sel] = region.start + offset // PAGE_SIZE
                self._counters[k] += count
        self._pos += m
        if self._pos >= phase.accesses:
            self._phase = (self._phase + 1) % len(self.phase_list)
            self._pos = 0
            self._counters = [0] * len(self._counters)
        return pages, None, None


def _layout(spec: WorkloadSpec, footprint: int) -> tuple[list[Region], list[Phase]]:
    where = "workload 'phases'"
    regions_spec = spec.regions
    if spec.shape is None and spec.phases is None:
        raise ValueError(f"{where}: give a shape (stairs, zigzag) or a list of phases")
    if spec.shape is not None and spec.phases is not None:
        raise ValueError(f"{where}: shape and phases both given; a shape makes its own phases")
    if regions_spec is None or isinstance(regions_spec, int):
        if spec.shape is None:
            raise ValueError(f"{where}: explicit phases need a list of regions")
        n = DEFAULT_SHAPE_REGIONS if regions_spec is None else regions_spec
        if isinstance(n, bool) or not 1 <= n <= footprint:
            raise ValueError(
                f"{where}: regions must be between 1 and the footprint ({footprint} pages), "
                f"got {regions_spec!r}"
            )
        bounds = [footprint * i // n for i in range(n + 1)]
        regions = [Region(f"r{i}", bounds[i], bounds[i + 1] - bounds[i]) for i in range(n)]
    else:
        regions = _regions(where, regions_spec, footprint)
    if spec.shape is not None:
        order = list(range(len(regions)))
        if spec.shape == "zigzag":
            order += list(range(len(regions) - 2, 0, -1))
        phases = [
            Phase(
                f"{spec.shape}{i}",
                spec.phase_accesses,
                (Pattern(r, spec.random, spec.stride_bytes, 1.0),),
            )
            for i, r in enumerate(order)
        ]
    else:
        assert spec.phases is not None
        phases = _phases(where, spec.phases, regions, spec)
    return regions, phases


def _regions(where: str, spec: Any, footprint: int) -> list[Region]:
    if not isinstance(spec, Sequence) or isinstance(spec, str) or not spec:
        raise ValueError(f"{where}: regions must be a count or a non-empty list of tables")
    out: list[Region] = []
    start = 0
    names: set[str] = set()
    for i, entry in enumerate(spec):
        at = f"{where}: regions[{i}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{at} must be a table {{ name = ..., size = ... }}")
        unknown = sorted(set(map(str, entry)) - {"name", "size"})
        if unknown:
            raise ValueError(f"{at}: unknown key(s) {', '.join(unknown)} (accepted: name, size)")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{at}: name must be a non-empty string")
        if name in names:
            raise ValueError(f"{at}: duplicate region name {name!r}")
        names.add(name)
        size = _size(f"{at}.size", entry.get("size"))
        pages = -(-size // PAGE_SIZE)
        out.append(Region(name, start, pages))
        start += pages
    if start > footprint:
        raise ValueError(
            f"{where}: the regions need {start} pages but the footprint is {footprint} pages"
        )
    return out


def _phases(
    where: str, spec: Sequence[Any], regions: list[Region], ws: WorkloadSpec
) -> list[Phase]:
    if isinstance(spec, str) or not spec:
        raise ValueError(f"{where}: phases must be a non-empty list of tables")
    index = {r.name: i for i, r in enumerate(regions)}
    out: list[Phase] = []
    for i, entry in enumerate(spec):
        at = f"{where}: phases[{i}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{at} must be a table {{ accesses = ..., access = [...] }}")
        unknown = sorted(set(map(str, entry)) - {"name", "accesses", "access"})
        if unknown:
            raise ValueError(
                f"{at}: unknown key(s) {', '.join(unknown)} (accepted: name, accesses, access)"
            )
        accesses = entry.get("accesses", ws.phase_accesses)
        if isinstance(accesses, bool) or not isinstance(accesses, int) or accesses < 1:
            raise ValueError(f"{at}.accesses must be an integer >= 1, got {accesses!r}")
        pats = entry.get("access")
        if not isinstance(pats, Sequence) or isinstance(pats, str) or not pats:
            raise ValueError(f"{at}.access must be a non-empty list of access patterns")
        patterns = []
        for j, p in enumerate(pats):
            pat_at = f"{at}.access[{j}]"
            if not isinstance(p, Mapping):
                raise ValueError(f"{pat_at} must be a table {{ region = ..., random = ... }}")
            bad = sorted(set(map(str, p)) - {"region", "random", "stride_bytes", "weight"})
            if bad:
                raise ValueError(
                    f"{pat_at}: unknown key(s) {', '.join(bad)} "
                    "(accepted: region, random, stride_bytes, weight)"
                )
            region = p.get("region")
            if region not in index:
                raise ValueError(
                    f"{pat_at}.region: unknown region {region!r} (regions: {', '.join(index)})"
                )
            random = p.get("random", ws.random)
            if not isinstance(random, bool):
                raise ValueError(f"{pat_at}.random must be true or false, got {random!r}")
            stride = _size(f"{pat_at}.stride_bytes", p.get("stride_bytes", ws.stride_bytes))
            weight = p.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
                raise ValueError(f"{pat_at}.weight must be a number > 0, got {weight!r}")
            patterns.append(Pattern(index[str(region)], random, stride, float(weight)))
        name = entry.get("name", f"phase{i}")
        out.append(Phase(str(name), accesses, tuple(patterns)))
    return out


def _size(at: str, value: object) -> int:
    if isinstance(value, str):
        try:
            value = parse_size(value)
        except ValueError as exc:
            raise ValueError(f"{at}: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{at} must be a size >= 1 byte, got {value!r}")
    return value


class TraceWorkload(BufferedWorkload):
    """Replay of a recorded trace (a tiersim binary trace), wrapping at its end.

    The trace's distinct pages are numbered densely in address order (see
    `traces.ReplayIndex`), so the footprint must hold at least that many
    pages; ``tiersim trace info`` prints the number. Loads (and instruction
    fetches, when ``instructions`` is true) read, stores and modifies write.
    With ``time_unit_ns`` > 0 the trace's own clock adds to the think time:
    each access comes ``time_unit_ns`` times the trace-time step after the
    previous one (0.3 with an instruction-count trace models ~3 instructions
    per nanosecond). The replay wraps around at the end; to replay once, set
    the workload's ``accesses`` to the trace's record count. A relative
    ``path`` is relative to the current directory.
    """

    def __init__(self, spec: WorkloadSpec, footprint_pages: int, seed: int) -> None:
        from .traces import HEADER_SIZE, RECORD, replay_index

        assert spec.path is not None
        self.index = replay_index(spec.path, instructions=spec.instructions)
        touched = len(self.index.pages)
        if touched > footprint_pages:
            raise ValueError(
                f"workload 'trace': {spec.path} touches {touched} distinct pages but the "
                f"footprint is {footprint_pages} pages; set footprint to at least "
                f"{touched * PAGE_SIZE} bytes"
            )
        self._records = np.memmap(
            spec.path,
            dtype=RECORD,
            mode="r",
            offset=HEADER_SIZE,
            shape=(self.index.header.records,),
        )
        super().__init__(spec, footprint_pages, seed)

    @property
    def records(self) -> int:
        """Accesses in one pass over the trace."""
        return self.index.records

    def _describe(self) -> str:
        return f"trace({self.spec.path})"

    def _restart(self) -> None:
        self._cursor = 0
        self._last_time: int | None = None

    def _generate(
        self,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], npt.NDArray[np.int64] | None]:
        total = len(self._records)
        while True:
            if self._cursor >= total:
                self._cursor = 0
                self._last_time = None  # the clock restarts with the replay
            recs = np.asarray(self._records[self._cursor : self._cursor + _BLOCK])
            self._cursor += len(recs)
            if not self.spec.instructions:
                recs = recs[recs["rw"] != IFETCH]
            if len(recs):
                break
        pages = np.searchsorted(self.index.pages, recs["page"]).astype(np.int64)
        rw = recs["rw"]
        writes = (rw == STORE) | (rw == MODIFY)
        gaps = None
        if self.spec.time_unit_ns > 0:
            t = recs["time"].astype(np.int64)
            prev = np.empty_like(t)
            prev[0] = t[0] if self._last_time is None else self._last_time
            prev[1:] = t[:-1]
            gaps = np.rint((t - prev) * self.spec.time_unit_ns).astype(np.int64)
            self._last_time = int(t[-1])
        return pages, writes, gaps
