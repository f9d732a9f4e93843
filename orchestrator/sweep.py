"""``tiersim sweep SCENARIO --set key=v1,v2 --set other=a,b``: a parameter grid, in parallel.

Each ``--set`` names one key and a comma-separated list of values; the grid
is their cartesian product, and every point runs every variant of the
scenario (or the one ``--variant`` picks). Points run in separate processes
(`concurrent.futures.ProcessPoolExecutor`, ``--jobs`` of them): the engine is
single-threaded Python, so processes are the way to use several cores. The
output is one CSV row per run: the point's values under their keys, then the
metrics of `compare.summarize`, ready for ``pandas.read_csv``.

Every point is loaded and validated before the first run starts, so a bad
value fails in a second, naming the key, not an hour into the sweep. The CSV
is written whole at the end (under a temporary name, then renamed); a run
that fails has its error in an ``error`` column and the sweep exits non-zero.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiersim._errors import ConfigError

from ._atomic import atomic_output

SWEEP_SOURCE = "--set"


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple[str, ...]  # as written; parsed like `tiersim run --set`


@dataclass(frozen=True)
class Point:
    index: int
    sets: tuple[str, ...]  # "key=value" overrides of this point
    values: tuple[tuple[str, str], ...]  # (key, value as written)


def split_values(text: str) -> list[str]:
    """Split ``v1,v2,...`` at commas outside brackets, braces and quotes.

    So ``direct_nodes=["a","b"],[]`` is two values, and a TOML array or
    inline table can be one point of a sweep.
    """
    out: list[str] = []
    depth = 0
    quote: str | None = None
    cur: list[str] = []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_axes(sets: Sequence[str]) -> list[Axis]:
    axes: list[Axis] = []
    seen: set[str] = set()
    for item in sets:
        key, sep, rest = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"expected key=v1,v2,..., got {item!r}", file=SWEEP_SOURCE)
        if key in seen:
            raise ConfigError("key given twice", file=SWEEP_SOURCE, key=key)
        seen.add(key)
        values = split_values(rest)
        if any(v == "" for v in values):
            raise ConfigError(f"empty value in {rest!r}", file=SWEEP_SOURCE, key=key)
        axes.append(Axis(key, tuple(values)))
    return axes


def grid(axes: Sequence[Axis]) -> list[Point]:
    """Every combination, the last axis varying fastest."""
    points = []
    for i, combo in enumerate(itertools.product(*(a.values for a in axes))):
        pairs = tuple((a.key, v) for a, v in zip(axes, combo, strict=True))
        points.append(Point(i, tuple(f"{k}={v}" for k, v in pairs), pairs))
    return points


def validate(scenario: str, points: Sequence[Point], variant: str | None) -> list[str]:
    """Load every point's scenario (errors name the point); the variant names that will run."""
    from ._cli import load

    names: list[str] = []
    for p in points:
        try:
            sc = load(scenario, list(p.sets))
        except ConfigError as exc:
            where = ", ".join(p.sets)
            raise ConfigError(
                f"at sweep point {where}: {exc.message}", file=exc.file, line=exc.line, key=exc.key
            ) from None
        runs = [v.name for v in sc.variants if variant is None or v.name.endswith(variant)]
        if not runs:
            raise ConfigError(
                f"no variant {variant!r} in scenario {sc.name!r} "
                f"(variants: {', '.join(v.name for v in sc.variants)})",
                key="--variant",
            )
        names = runs
    return names


def run_point(
    scenario: str, sets: tuple[str, ...], variant: str | None, json_dir: str | None, index: int
) -> list[dict[str, Any]]:
    """Run one grid point (all its variants) and summarize each run. Runs in a worker process."""
    from ._cli import load, run_scenario, write_json_atomic
    from .compare import summarize
    from .results import SCHEMA

    sc = load(scenario, list(sets))
    docs = asyncio.run(run_scenario(sc, only=variant))
    if json_dir:
        write_json_atomic(
            Path(json_dir) / f"point{index:04d}.json",
            {
                "schema": SCHEMA,
                "scenario": sc.name,
                "description": sc.description,
                "question": sc.question,
                "source": sc.path,
                "sweep_point": list(sets),
                "runs": docs,
            },
        )
    rows = []
    for d in docs:
        row = {"variant": d["variant"].split(" / ")[-1], **summarize(d)}
        row["wall_time_s"] = d.get("wall_time_s", 0.0)
        rows.append(row)
    return rows


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    failures: int
    columns: list[str]


ProgressFn = Callable[[int, int], None]


def sweep(
    scenario: str,
    sets: Sequence[str],
    *,
    jobs: int | None = None,
    variant: str | None = None,
    json_dir: str | None = None,
    progress: ProgressFn | None = None,
) -> SweepResult:
    """Run the grid of ``sets`` over ``scenario`` and return one row per run."""
    axes = parse_axes(sets)
    points = grid(axes) if axes else [Point(0, (), ())]
    variants = validate(scenario, points, variant)
    total = len(points) * len(variants)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(points)))
    keys = [a.key for a in axes]
    rows: list[dict[str, Any]] = []
    failures = 0
    done = 0
    if progress:
        progress(0, total)
    # forkserver: workers fork from a clean server process, not from this one,
    # whose progress-bar thread may hold a lock at the moment of a fork.
    ctx = multiprocessing.get_context(
        "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    )
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures: dict[Future[list[dict[str, Any]]], Point] = {
            pool.submit(run_point, scenario, p.sets, variant, json_dir, p.index): p for p in points
        }
        for fut in as_completed(futures):
            p = futures[fut]
            base = {"run": p.index, **dict(p.values)}
            try:
                results = fut.result()
            except Exception as exc:  # a failed run is a row, not the end of the sweep
                failures += 1
                results = [
                    {"variant": v.split(" / ")[-1], "error": _one_line(exc)} for v in variants
                ]
            for k, r in enumerate(results):
                rows.append({**base, "run": p.index * len(variants) + k, **r})
            done += len(results)
            if progress:
                progress(done, total)
    rows.sort(key=lambda r: r["run"])
    columns = ["run", *keys, "variant"]
    for r in rows:
        for c in r:
            if c not in columns:
                columns.append(c)
    if failures and "error" in columns:
        columns.remove("error")
        columns.append("error")
    return SweepResult(rows, failures, columns)


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def write_csv(result: SweepResult, path: str | Path) -> None:
    """The rows as CSV, written whole or not at all."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=result.columns, extrasaction="ignore", restval="")
    writer.writeheader()
    for r in result.rows:
        writer.writerow(r)
    with atomic_output(path, "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())
