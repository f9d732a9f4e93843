"""Results of a run: the JSON document, its schema version, and the terminal table.

Schema `tiersim.results/1` (documented in docs/results-schema.md):

    schema, scenario, variant, seed, completed, stopped, sim_time_ns,
    wall_time_s, hosts{name: {vmstat, zswap, tiers, demotion_targets,
    dram_used_bytes, ...}}, nodes{name: {...engine view..., device{NodeStats}}},
    cgroups{"host/name": {memory.* files}}, workloads{name: {accesses, latency}},
    latency{mean_ns, p50_ns, p90_ns, p99_ns, p99_9_ns, count}, failures{...},
    events[...], timeseries{...}

Only `wall_time_s` depends on the machine: everything else is a pure
function of the scenario and the seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SCHEMA = "tiersim.results/1"
# Sub-buckets per power of two: bucket width ~4.4 %, so percentiles read
# from the histogram are within ~2.2 % of the exact value.
_SUB = 16
_NBUCKETS = 64 * _SUB
WALL_CLOCK_FIELDS = ("wall_time_s",)


class LatencyHistogram:
    """Log-bucketed latency histogram (HDR-style) with an exact mean."""

    def __init__(self) -> None:
        self.counts = np.zeros(_NBUCKETS, dtype=np.int64)
        self.total = 0
        self.n = 0
        self.max = 0
        # Single values are buffered and binned in bulk: one numpy call per
        # few thousand values instead of one per value.
        self._pending: list[int] = []

    @staticmethod
    def _bucket(values: np.ndarray) -> np.ndarray:
        v = np.maximum(values, 1).astype(np.float64)
        return np.minimum((np.log2(v) * _SUB).astype(np.int64), _NBUCKETS - 1)

    def add_many(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        self.counts += np.bincount(self._bucket(values), minlength=_NBUCKETS)
        self.total += int(values.sum())
        self.n += int(values.size)
        self.max = max(self.max, int(values.max()))

    def add(self, value: int) -> None:
        pending = self._pending
        pending.append(value)
        if len(pending) >= 4096:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            values = np.array(self._pending, dtype=np.int64)
            self._pending = []
            self.add_many(values)

    def merge(self, other: LatencyHistogram) -> None:
        self._flush()
        other._flush()
        self.counts += other.counts
        self.total += other.total
        self.n += other.n
        self.max = max(self.max, other.max)

    def percentile(self, q: float) -> int:
        self._flush()
        if self.n == 0:
            return 0
        rank = q / 100 * self.n
        cum = np.cumsum(self.counts)
        b = int(np.searchsorted(cum, rank, side="left"))
        # Geometric middle of the bucket.
        return min(round(2 ** ((b + 0.5) / _SUB)), self.max)

    def summary(self) -> dict[str, int | float]:
        self._flush()
        return {
            "count": self.n,
            "mean_ns": round(self.total / self.n, 3) if self.n else 0.0,
            "p50_ns": self.percentile(50),
            "p90_ns": self.percentile(90),
            "p99_ns": self.percentile(99),
            "p99_9_ns": self.percentile(99.9),
            "max_ns": self.max,
        }

    def cdf(self) -> list[tuple[int, float]]:
        """(latency ns, cumulative fraction) at each non-empty bucket."""
        self._flush()
        out = []
        cum = 0
        for b in np.nonzero(self.counts)[0].tolist():
            cum += int(self.counts[b])
            out.append((round(2 ** ((b + 1) / _SUB)), cum / self.n))
        return out


def strip_wall_clock(doc: Any) -> Any:
    """The document without fields that depend on the machine (for comparisons)."""
    if isinstance(doc, dict):
        return {k: strip_wall_clock(v) for k, v in doc.items() if k not in WALL_CLOCK_FIELDS}
    if isinstance(doc, list):
        return [strip_wall_clock(v) for v in doc]
    return doc


# -- the terminal table -----------------------------------------------------


# (label, function of a result document) rows of the comparison table.
def _sum_vmstat(doc: dict[str, Any], *names: str) -> int:
    return sum(h["vmstat"].get(n, 0) for h in doc["hosts"].values() for n in names)


def _sum_zswap(doc: dict[str, Any], name: str) -> int:
    return sum((h["zswap"] or {}).get(name, 0) for h in doc["hosts"].values())


def _fmt_ns(ns: float) -> str:
    from tiersim._units import format_ns

    return format_ns(ns)


def _fmt_bytes(n: float) -> str:
    from tiersim._units import format_size

    return format_size(n)


TABLE_ROWS: list[tuple[str, Any]] = [
    ("accesses", lambda d: f"{d['latency']['count']:,}"),
    ("mean access latency", lambda d: _fmt_ns(d["latency"]["mean_ns"])),
    (
        "p50 / p99 latency",
        lambda d: f"{_fmt_ns(d['latency']['p50_ns'])} / {_fmt_ns(d['latency']['p99_ns'])}",
    ),
    ("p99.9 latency", lambda d: _fmt_ns(d["latency"]["p99_9_ns"])),
    ("simulated time", lambda d: _fmt_ns(d["sim_time_ns"])),
    (
        "DRAM used at end",
        lambda d: _fmt_bytes(sum(h["dram_used_bytes"] for h in d["hosts"].values())),
    ),
    (
        "minor / major faults",
        lambda d: (
            f"{_sum_vmstat(d, 'pgfault') - _sum_vmstat(d, 'pgmajfault'):,}"
            f" / {_sum_vmstat(d, 'pgmajfault'):,}"
        ),
    ),
    (
        "zswpout / zswpin / zswpwb",
        lambda d: (
            f"{_sum_vmstat(d, 'zswpout'):,} / "
            f"{_sum_vmstat(d, 'zswpin'):,} / {_sum_vmstat(d, 'zswpwb'):,}"
        ),
    ),
    ("pswpout / pswpin", lambda d: f"{_sum_vmstat(d, 'pswpout'):,} / {_sum_vmstat(d, 'pswpin'):,}"),
    (
        "pgdemote (kswapd+direct)",
        lambda d: f"{_sum_vmstat(d, 'pgdemote_kswapd', 'pgdemote_direct'):,}",
    ),
    ("pgpromote_success", lambda d: f"{_sum_vmstat(d, 'pgpromote_success'):,}"),
    ("cram write faults", lambda d: f"{_sum_vmstat(d, 'cram_write_fault'):,}"),
    ("compression work", lambda d: _fmt_bytes(d["compression"]["bytes_compressed"])),
    ("device write failures", lambda d: f"{d['failures']['device_write_failures']:,}"),
    (
        "pages poisoned / lost",
        lambda d: f"{d['failures']['poisoned_pages']:,} / {d['failures']['pages_lost']:,}",
    ),
    ("OOM kills", lambda d: f"{_sum_vmstat(d, 'oom_kill'):,}"),
]


def render_table(docs: list[dict[str, Any]], title: str = "") -> Any:
    """A rich Table comparing runs side by side."""
    from rich.table import Table

    table = Table(title=title or None, show_lines=False)
    table.add_column("")
    for d in docs:
        table.add_column(d["variant"], justify="right")
    for label, fn in TABLE_ROWS:
        cells = []
        for d in docs:
            try:
                cells.append(str(fn(d)))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("-")
        table.add_row(label, *cells)
    return table
