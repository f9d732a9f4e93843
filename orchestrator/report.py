"""``tiersim report RESULTS.json``: the plots a tiering study is read from.

Five PNG files, each comparing every run of the results side by side:

- ``tiers.png``: pages per memory tier over simulated time (and in zswap and
  swap), one panel per run: where the working set lives as the run goes on;
- ``cram.png``: physical usage of each compressed node against its media and
  its watermarks, with the pressure it reports: how close the device came to
  dropping writes;
- ``latency-cdf.png``: the access-latency CDF of every run, log scale: the
  tail that averages hide;
- ``compression-ratio.png``: lz4 ratios of the pages held compressed at the
  end, per run: what the device or the pool actually got;
- ``rates.png``: fault, swap and migration rates over simulated time.

The time series come from the run's ``timeseries`` (scenario key
``sample_interval``); without them the time plots say so in place of lines.
matplotlib draws with the Agg backend (no display needed), and each file is
written under a temporary name and renamed, so a failed report leaves no
truncated PNG behind.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import atomic_path
from ._resultsfile import Run

PAGE_SIZE = 4096
PLOTS = ("tiers", "cram", "latency-cdf", "compression-ratio", "rates")
_DPI = 100
_RATIO_EDGES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 16.0, 1e9)
_NO_SERIES = (
    "no time series in this run\n"
    "(set [scenario] sample_interval, e.g. --set scenario.sample_interval=10ms)"
)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(n: int) -> list[Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 2)
    return -(-n // cols), cols


def _times_ms(series: list[dict[str, Any]]) -> np.ndarray:
    return np.array([s["time_ns"] for s in series], dtype=np.float64) / 1e6


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=_DPI, format="png")
    _plt().close(fig)
    return path


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_tiers(runs: Sequence[Run], path: Path) -> Path:
    """Stacked pages per tier (per host), plus zswap and swap, over simulated time."""
    plt = _plt()
    rows, cols = _grid(len(runs))
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(6.5 * cols, 9.0), 4.2 * rows), squeeze=False, layout="constrained"
    )
    for ax, run in zip(axes.flat, runs, strict=False):
        ax.set_title(run.label, fontsize=10)
        series = run.doc.get("timeseries") or []
        if not series:
            _empty(ax, _NO_SERIES)
            continue
        t = _times_ms(series)
        layers: list[tuple[str, np.ndarray]] = []
        multi = len(run.doc["hosts"]) > 1
        shown: set[str] = set()
        for host, h in run.doc["hosts"].items():
            for tier, names in sorted(h.get("tiers", {}).items(), key=lambda kv: _tier_id(kv[0])):
                names = [n for n in names if n not in shown]
                if not names:
                    continue
                shown.update(names)
                pages = np.array(
                    [sum(s["nodes"].get(n, {}).get("used_pages", 0) for n in names) for s in series]
                )
                label = f"{tier} ({', '.join(names)})"
                layers.append((f"{host}: {label}" if multi else label, pages))
        for state, label in (
            ("zswap", "zswap pool"),
            ("zswap_direct", "zswap direct"),
            ("swap", "swap"),
            ("poisoned", "poisoned (data lost)"),
            ("lost", "lost with a node"),
        ):
            pages = np.array([s["pages"].get(state, 0) for s in series])
            if pages.any():
                layers.append((label, pages))
        if layers:
            ax.stackplot(t, *[p for _, p in layers], labels=[lab for lab, _ in layers], alpha=0.85)
            ax.legend(fontsize=7, loc="upper left")
        ax.set_xlabel("simulated time (ms)")
        ax.set_ylabel("pages")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(runs) :]:
        ax.set_visible(False)
    fig.suptitle("Pages per memory tier over time")
    return _save(fig, path)


def _tier_id(name: str) -> int:
    digits = "".join(c for c in name if c.isdigit())
    return int(digits) if digits else 0


def plot_cram(runs: Sequence[Run], path: Path) -> Path:
    """Physical usage of every compressed node, its media, watermarks and pressure."""
    plt = _plt()
    panels = [
        (run, name, node)
        for run in runs
        for name, node in run.doc["nodes"].items()
        if node.get("kind") == "cram"
    ]
    # A run that never stored a page on the node has nothing to show; keep the
    # panels that do, unless none does.
    active = [p for p in panels if _node_was_used(p[0], p[1])]
    panels = active or panels
    rows, cols = _grid(max(len(panels), 1))
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(6.5 * cols, 9.0), 4.2 * rows), squeeze=False, layout="constrained"
    )
    if not panels:
        _empty(axes.flat[0], "no compressed (cram) node in these runs")
    for ax, (run, name, node) in zip(axes.flat, panels, strict=False):
        ax.set_title(f"{run.label}: {name}", fontsize=10)
        series = run.doc.get("timeseries") or []
        media = node.get("physical_bytes") or (node.get("device") or {}).get("physical_bytes", 0)
        if not series:
            _empty(ax, _NO_SERIES)
            continue
        t = _times_ms(series)
        used = np.array([s["nodes"].get(name, {}).get("physical_used_bytes", 0) for s in series])
        mib = 1024 * 1024
        ax.plot(t, used / mib, color="tab:blue", label="physical used")
        if media:
            ax.axhline(media / mib, color="black", lw=1, label="media")
            wm = node.get("device_watermarks") or {}
            if "low_free_bytes" in wm:
                ax.axhline(
                    (media - wm["low_free_bytes"]) / mib,
                    color="tab:red",
                    ls="--",
                    lw=1,
                    label="low watermark (pressure 1000)",
                )
                ax.axhline(
                    (media - wm["high_free_bytes"]) / mib,
                    color="tab:orange",
                    ls=":",
                    lw=1,
                    label="high watermark (pressure 0)",
                )
        ax.set_xlabel("simulated time (ms)")
        ax.set_ylabel("MiB")
        ax.grid(alpha=0.3)
        pressure = np.array([s["nodes"].get(name, {}).get("pressure", 0) for s in series])
        ax2 = ax.twinx()
        ax2.step(t, pressure, where="post", color="tab:purple", alpha=0.6, label="pressure")
        ax2.set_ylim(-20, 1050)
        ax2.set_ylabel("pressure (0..1000)")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="center left")
    for ax in list(axes.flat)[max(len(panels), 1) :]:
        ax.set_visible(False)
    fig.suptitle("Compressed-node physical usage, watermarks and pressure")
    return _save(fig, path)


def _node_was_used(run: Run, name: str) -> bool:
    series = run.doc.get("timeseries") or []
    if any(s["nodes"].get(name, {}).get("physical_used_bytes", 0) for s in series):
        return True
    device = run.doc["nodes"][name].get("device") or {}
    return bool(device.get("stores", 0))


def plot_latency_cdf(runs: Sequence[Run], path: Path) -> Path:
    """Access-latency CDF of every run on one log-scale axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    for color, run in zip(_colors(len(runs)), runs, strict=True):
        cdf = run.doc.get("latency_cdf") or []
        if not cdf:
            continue
        x = [p[0] for p in cdf]
        y = [p[1] for p in cdf]
        ax.step(x, y, where="post", color=color, label=run.label)
    if not any(run.doc.get("latency_cdf") for run in runs):
        _empty(ax, "no accesses recorded")
    else:
        ax.set_xscale("log")
        ax.set_xlabel("access latency (ns)")
        ax.set_ylabel("fraction of accesses")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Access-latency CDF")
    return _save(fig, path)


def ratio_histogram(doc: dict[str, Any]) -> tuple[np.ndarray, int]:
    """Stored pages per lz4-ratio bin (`_RATIO_EDGES`), over all locations, and their total."""
    hist = doc.get("compression", {}).get("stored_pages_by_size") or {}
    width = int(hist.get("bucket_bytes", 64))
    counts = np.zeros(len(_RATIO_EDGES) - 1, dtype=np.int64)
    for buckets in (hist.get("locations") or {}).values():
        for i, c in enumerate(buckets):
            if c:
                size = min((i + 0.5) * width, PAGE_SIZE)
                ratio = PAGE_SIZE / size
                b = int(np.searchsorted(_RATIO_EDGES, ratio, side="right")) - 1
                counts[min(max(b, 0), len(counts) - 1)] += c
    return counts, int(counts.sum())


def plot_compression(runs: Sequence[Run], path: Path) -> Path:
    """Share of compressed-held pages per lz4-ratio bin, grouped bars per run."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    labels = [f"{a:g}-{b:g}" if b < 1e8 else f"{a:g}+" for a, b in itertools.pairwise(_RATIO_EDGES)]
    x = np.arange(len(labels))
    width = 0.8 / max(len(runs), 1)
    any_pages = False
    for k, (color, run) in enumerate(zip(_colors(len(runs)), runs, strict=True)):
        counts, total = ratio_histogram(run.doc)
        if total == 0:
            ax.bar([], [], color=color, label=f"{run.label} (no pages held compressed)")
            continue
        any_pages = True
        ax.bar(
            x + (k - (len(runs) - 1) / 2) * width,
            counts / total,
            width=width,
            color=color,
            label=f"{run.label} ({total:,} pages)",
        )
    ax.set_xticks(x, labels)
    ax.set_xlabel("lz4 compression ratio (4096 / compressed size)")
    ax.set_ylabel("share of pages held compressed")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    title = "Compression ratio of pages held compressed at the end of the run"
    if not any_pages:
        title += " (none)"
    ax.set_title(title)
    return _save(fig, path)


# (panel title, [(series label, vmstat counters summed)])
_RATE_PANELS: tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...] = (
    ("page faults", (("major", ("pgmajfault",)), ("all", ("pgfault",)))),
    (
        "swap and zswap",
        (
            ("zswpout", ("zswpout",)),
            ("zswpin", ("zswpin",)),
            ("pswpout", ("pswpout",)),
            ("pswpin", ("pswpin",)),
        ),
    ),
    (
        "migration",
        (
            ("demote", ("pgdemote_kswapd", "pgdemote_direct")),
            ("promote", ("pgpromote_success",)),
            ("cram write fault", ("cram_write_fault",)),
        ),
    ),
    ("reclaim", (("pgsteal", ("pgsteal_kswapd", "pgsteal_direct")), ("zswpwb", ("zswpwb",)))),
)
_STYLES = ("-", "--", ":", "-.")


def plot_rates(runs: Sequence[Run], path: Path) -> Path:
    """Per-second rates of faults, swap traffic, migration and reclaim over simulated time."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), squeeze=False, layout="constrained")
    colors = _colors(len(runs))
    have_series = any(run.doc.get("timeseries") for run in runs)
    for ax, (title, lines) in zip(axes.flat, _RATE_PANELS, strict=True):
        ax.set_title(title, fontsize=10)
        if not have_series:
            _empty(ax, _NO_SERIES)
            continue
        drew = False
        for color, run in zip(colors, runs, strict=True):
            series = run.doc.get("timeseries") or []
            if len(series) < 2:
                continue
            t = _times_ms(series)
            dt = np.diff(t) / 1000.0
            dt[dt <= 0] = np.nan
            for style, (label, names) in zip(_STYLES, lines, strict=False):
                v = np.array([sum(s["vmstat"].get(n, 0) for n in names) for s in series])
                if not v.any():
                    continue
                rate = np.diff(v) / dt
                ax.plot(t[1:], rate, ls=style, color=color, label=f"{run.label}: {label}")
                drew = True
        if drew:
            ax.legend(fontsize=6, loc="upper right")
            ax.set_ylabel("per simulated second")
        else:
            ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("simulated time (ms)")
        ax.grid(alpha=0.3)
    fig.suptitle("Fault, swap, migration and reclaim rates")
    return _save(fig, path)


def write_report(runs: Sequence[Run], out_dir: str | Path) -> list[Path]:
    """Write every plot of `PLOTS` into ``out_dir``; returns the files written."""
    if not runs:
        raise ValueError("no runs to report on")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        plot_tiers(runs, out / "tiers.png"),
        plot_cram(runs, out / "cram.png"),
        plot_latency_cdf(runs, out / "latency-cdf.png"),
        plot_compression(runs, out / "compression-ratio.png"),
        plot_rates(runs, out / "rates.png"),
    ]


def missing_series(runs: Sequence[Run]) -> list[str]:
    """Labels of runs without a time series (their time plots are empty)."""
    return [r.label for r in runs if not r.doc.get("timeseries")]
