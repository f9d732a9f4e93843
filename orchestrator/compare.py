"""``tiersim compare A.json B.json ...``: runs side by side, with the differences that matter.

A results document holds hundreds of counters; a comparison should lead with
the handful a tiering decision turns on: how much slower the workload ran
(slowdown), how much DRAM it needed (DRAM saved), how often it faulted, and
whether any device failed. Each run is set against a baseline (the first
run unless told otherwise), and every difference is marked better or worse.

`summarize` flattens one run into those metrics; `tiersim sweep` writes the
same fields as CSV columns, so a sweep and a comparison speak alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tiersim._units import format_ns, format_size

from ._resultsfile import Run

PAGE_SIZE = 4096


def _vm(doc: dict[str, Any], *names: str) -> int:
    return int(sum(h.get("vmstat", {}).get(n, 0) for h in doc["hosts"].values() for n in names))


def _zs(doc: dict[str, Any], name: str) -> int:
    return int(sum((h.get("zswap") or {}).get(name, 0) for h in doc["hosts"].values()))


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """The metrics of one run, flat (CSV-ready), in a stable order."""
    lat = doc["latency"]
    accesses = int(lat.get("count", 0))
    nodes = doc["nodes"]
    dram = sum(int(n.get("used_pages", 0)) for n in nodes.values() if n.get("kind") == "dram")
    offloaded = sum(
        int(n.get("used_pages", 0)) for n in nodes.values() if n.get("kind") in ("cxl", "cram")
    )
    swapped = sum(int(n.get("used_pages", 0)) for n in nodes.values() if n.get("kind") == "storage")
    cram_physical = sum(
        int((n.get("device") or {}).get("physical_used_bytes", 0))
        for n in nodes.values()
        if n.get("kind") == "cram"
    )
    f = doc["failures"]
    sim = int(doc["sim_time_ns"])
    # Time per access from the processes' own clocks: the run itself may go on
    # (kswapd, scanners) after the last process is done.
    work = doc.get("workloads") or {}
    proc_ns = sum(int(w.get("sim_time_ns", 0)) for w in work.values())
    proc_accesses = sum(int(w.get("accesses", 0)) for w in work.values())
    per_access = proc_ns / proc_accesses if proc_accesses else (sim / accesses if accesses else 0)
    return {
        "completed": bool(doc.get("completed", True)),
        "stopped": doc.get("stopped") or "",
        "accesses": accesses,
        "sim_time_ns": sim,
        "ns_per_access": float(per_access),
        "mean_ns": float(lat.get("mean_ns", 0.0)),
        "p50_ns": int(lat.get("p50_ns", 0)),
        "p90_ns": int(lat.get("p90_ns", 0)),
        "p99_ns": int(lat.get("p99_ns", 0)),
        "p99_9_ns": int(lat.get("p99_9_ns", 0)),
        "max_ns": int(lat.get("max_ns", 0)),
        "dram_used_bytes": int(
            sum(h.get("dram_used_bytes", 0) for h in doc["hosts"].values()) or dram * PAGE_SIZE
        ),
        "offloaded_bytes": (offloaded + swapped + _zs(doc, "stored_pages")) * PAGE_SIZE,
        "zswap_pool_bytes": _zs(doc, "pool_total_size"),
        "cram_physical_bytes": cram_physical,
        "minor_faults": _vm(doc, "pgfault") - _vm(doc, "pgmajfault"),
        "major_faults": _vm(doc, "pgmajfault"),
        "numa_hint_faults": _vm(doc, "numa_hint_faults"),
        "zswpout": _vm(doc, "zswpout"),
        "zswpin": _vm(doc, "zswpin"),
        "zswpwb": _vm(doc, "zswpwb"),
        "pswpout": _vm(doc, "pswpout"),
        "pswpin": _vm(doc, "pswpin"),
        "pgdemote": _vm(doc, "pgdemote_kswapd", "pgdemote_direct"),
        "pgpromote_success": _vm(doc, "pgpromote_success"),
        "cram_demote": _vm(doc, "cram_demote"),
        "cram_write_fault": _vm(doc, "cram_write_fault"),
        "compressed_bytes": int(doc.get("compression", {}).get("bytes_compressed", 0)),
        "device_write_failures": int(f.get("device_write_failures", 0)),
        "poisoned_pages": int(f.get("poisoned_pages", 0)),
        "machine_checks": int(f.get("machine_checks", 0)),
        "pages_lost": int(f.get("pages_lost", 0)),
        "sigbus": int(f.get("sigbus", 0)),
        "nodes_lost": len(f.get("nodes_lost", []) or []),
        "oom_kill": _vm(doc, "oom_kill"),
    }


# (label, metric, how to show it, which way is better: -1 lower, +1 higher, 0 neither)
@dataclass(frozen=True)
class Row:
    label: str
    metric: str
    fmt: str  # "ns", "bytes", "count", "ratio"
    better: int


ROWS: tuple[Row, ...] = (
    Row("slowdown (time per access)", "ns_per_access", "ratio", -1),
    Row("mean access latency", "mean_ns", "ns", -1),
    Row("p99 latency", "p99_ns", "ns", -1),
    Row("p99.9 latency", "p99_9_ns", "ns", -1),
    Row("DRAM used at end", "dram_used_bytes", "bytes", -1),
    Row("memory offloaded from DRAM", "offloaded_bytes", "bytes", 0),
    Row("minor faults", "minor_faults", "count", -1),
    Row("major faults", "major_faults", "count", -1),
    Row("NUMA hint faults", "numa_hint_faults", "count", 0),
    Row("zswpout", "zswpout", "count", 0),
    Row("pswpout", "pswpout", "count", -1),
    Row("demotions", "pgdemote", "count", 0),
    Row("promotions", "pgpromote_success", "count", 0),
    Row("cram write faults", "cram_write_fault", "count", -1),
    Row("device write failures", "device_write_failures", "count", -1),
    Row("pages poisoned", "poisoned_pages", "count", -1),
    Row("machine checks", "machine_checks", "count", -1),
    Row("pages lost", "pages_lost", "count", -1),
    Row("OOM kills", "oom_kill", "count", -1),
)


@dataclass(frozen=True)
class Comparison:
    runs: list[Run]
    baseline: int
    summaries: list[dict[str, Any]]

    def slowdown(self, i: int) -> float:
        base = self.summaries[self.baseline]["ns_per_access"]
        return self.summaries[i]["ns_per_access"] / base if base else float("nan")

    def dram_saved(self, i: int) -> int:
        """DRAM the run needed less than the baseline (bytes; negative: more)."""
        base = self.summaries[self.baseline]["dram_used_bytes"]
        return int(base - self.summaries[i]["dram_used_bytes"])

    def as_dict(self) -> dict[str, Any]:
        out = []
        for i, (run, s) in enumerate(zip(self.runs, self.summaries, strict=True)):
            out.append(
                {
                    "label": run.label,
                    "source": run.source,
                    "baseline": i == self.baseline,
                    "slowdown": self.slowdown(i),
                    "dram_saved_bytes": self.dram_saved(i),
                    **s,
                }
            )
        return {"baseline": self.runs[self.baseline].label, "runs": out}


def compare(runs: Sequence[Run], baseline: int | str = 0) -> Comparison:
    """Summaries of ``runs`` against the baseline (an index or a run label)."""
    runs = list(runs)
    if isinstance(baseline, str):
        labels = [r.label for r in runs]
        matches = [i for i, lab in enumerate(labels) if lab == baseline or lab.endswith(baseline)]
        if len(matches) != 1:
            from tiersim._errors import ConfigError

            raise ConfigError(
                f"baseline {baseline!r} matches {len(matches)} runs (runs: {', '.join(labels)})",
                key="--baseline",
            )
        index = matches[0]
    else:
        index = baseline
        if not 0 <= index < len(runs):
            from tiersim._errors import ConfigError

            raise ConfigError(f"baseline index {index} out of range 0..{len(runs) - 1}")
    return Comparison(runs, index, [summarize(r.doc) for r in runs])


def _fmt(value: float, fmt: str) -> str:
    if fmt == "ns":
        return format_ns(value)
    if fmt == "bytes":
        return format_size(value)
    if fmt == "ratio":
        return f"{value:.2f}x"
    return f"{int(value):,}"


def _delta(value: float, base: float, row: Row) -> tuple[str, int]:
    """Difference against the baseline as text, and its sign of goodness (-1, 0, +1)."""
    if value == base:
        return "=", 0
    good = 0 if row.better == 0 else (1 if (value - base) * row.better > 0 else -1)
    if base == 0:
        return f"+{_fmt(value, row.fmt)}" if value > 0 else _fmt(value, row.fmt), good
    rel = (value - base) / abs(base)
    return f"{rel:+.0%}", good


def render(cmp: Comparison) -> Any:
    """A rich table: one column per run, each cell its value and the change from the baseline."""
    from rich.table import Table

    base_label = cmp.runs[cmp.baseline].label
    table = Table(title=f"compared with {base_label!r}", show_lines=False)
    table.add_column("")
    for i, run in enumerate(cmp.runs):
        table.add_column(run.label + (" (baseline)" if i == cmp.baseline else ""), justify="right")
    base = cmp.summaries[cmp.baseline]
    head = ["slowdown"]
    for i in range(len(cmp.runs)):
        s = cmp.slowdown(i)
        style = "" if i == cmp.baseline or abs(s - 1) < 0.005 else ("red" if s > 1 else "green")
        head.append(f"[{style}]{s:.2f}x[/{style}]" if style else f"{s:.2f}x")
    table.add_row(*head)
    saved = ["DRAM saved"]
    for i in range(len(cmp.runs)):
        d = cmp.dram_saved(i)
        if i == cmp.baseline:
            saved.append("-")
        else:
            style = "green" if d > 0 else ("red" if d < 0 else "")
            pct = d / base["dram_used_bytes"] if base["dram_used_bytes"] else 0.0
            text = f"{format_size(d)} ({pct:+.0%})"
            saved.append(f"[{style}]{text}[/{style}]" if style else text)
    table.add_row(*saved)
    for row in ROWS:
        if row.metric == "ns_per_access":
            continue
        cells = [row.label]
        values = [summary[row.metric] for summary in cmp.summaries]
        if all(v == 0 for v in values) and row.better == 0:
            continue  # a row of zeros says nothing (failures are shown even when zero)
        for i, v in enumerate(values):
            text = _fmt(v, row.fmt)
            if i != cmp.baseline:
                delta, good = _delta(v, base[row.metric], row)
                style = {1: "green", -1: "red", 0: "dim"}[good]
                text = f"{text} [{style}]({delta})[/{style}]"
            cells.append(text)
        table.add_row(*cells)
    status = ["completed"]
    for summary in cmp.summaries:
        status.append(
            "yes" if summary["completed"] else f"[red]stopped: {summary['stopped']}[/red]"
        )
    table.add_row(*status)
    return table


def headline(cmp: Comparison) -> list[str]:
    """One sentence per non-baseline run: what changed, in the terms that matter."""
    lines = []
    base = cmp.runs[cmp.baseline].label
    for i, run in enumerate(cmp.runs):
        if i == cmp.baseline:
            continue
        s = cmp.summaries[i]
        b = cmp.summaries[cmp.baseline]
        parts = [f"{cmp.slowdown(i):.2f}x the time per access of {base!r}"]
        d = cmp.dram_saved(i)
        parts.append(
            f"{format_size(abs(d))} {'less' if d >= 0 else 'more'} DRAM" if d else "the same DRAM"
        )
        faults = s["major_faults"] - b["major_faults"]
        parts.append(f"{faults:+,} major faults")
        failures = s["device_write_failures"] + s["poisoned_pages"] + s["machine_checks"]
        if failures:
            parts.append(f"[red]{failures:,} device failures[/red]")
        lines.append(f"{run.label}: " + ", ".join(parts))
    return lines
