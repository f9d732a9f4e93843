"""The fidelity table: every reference workload, every checked counter, kernel against tiersim.

`KNOWN_GAPS` records where tiersim is known not to match the kernel yet and
why. The fidelity test turns those rows into expected failures (so the
ordinary suite stays green while the engine catches up, and an unexpected
pass shows when a gap closes); everything else must agree. The same reasons
fill the "why" column of the table in ``docs/fidelity.md``, which
``tiersim reference table`` regenerates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .compare import Row, compare, run_tiersim, tiersim_counters
from .kthread_costs import library_kthread_costs
from .spec import data_dir, library, load_workload

# (workload, counter) -> why tiersim does not match; "*" as workload means every workload.
KNOWN_GAPS: dict[tuple[str, str], str] = {}


def known_gap(workload: str, counter: str) -> str | None:
    return KNOWN_GAPS.get((workload, counter)) or KNOWN_GAPS.get(("*", counter))


def gap_labels() -> dict[str, str]:
    """A short label (G1, G2 ...) per distinct reason, in the order of `KNOWN_GAPS`."""
    labels: dict[str, str] = {}
    for reason in KNOWN_GAPS.values():
        labels.setdefault(reason, f"G{len(labels) + 1}")
    return labels


def load_recording(name: str, directory: Path | None = None) -> dict[str, Any] | None:
    path = (directory or data_dir()) / f"{name}.json"
    if not path.exists():
        return None
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def fidelity_rows(
    names: Iterable[str] | None = None, directory: Path | None = None
) -> list[tuple[str, dict[str, Any], list[Row]]]:
    """Run tiersim on each recorded library workload; (name, recording, rows)."""
    out = []
    costs = library_kthread_costs(directory)
    for name in names or sorted(library()):
        data = load_recording(name, directory)
        if data is None:
            continue
        w = load_workload(name)
        results = run_tiersim(w, data, kthread_costs=costs)
        rows = compare(data, tiersim_counters(results), workload=w)
        out.append((name, data, rows))
    return out


def _num(n: float | None) -> str:
    if n is None:
        return "–"
    return f"{n:,.0f}"


def _ratio(r: Row) -> str:
    if r.ratio is None:
        return "–"
    if math.isinf(r.ratio):
        return "∞"
    return f"{r.ratio:.2f}"


def markdown(
    table: Sequence[tuple[str, Mapping[str, Any], Sequence[Row]]], *, checked_only: bool = True
) -> str:
    """The fidelity table as Markdown, one block of rows per workload."""
    lines = [
        "| workload | counter | kernel range | tiersim | ratio | where | agrees | why not |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for name, data, rows in table:
        runs = data.get("runs", "?")
        first = True
        for r in rows:
            if checked_only and not r.checked:
                continue
            if r.kernel_min == r.kernel_max:
                rng = _num(r.kernel_min)
            else:
                rng = f"{_num(r.kernel_min)} – {_num(r.kernel_max)}"
            verdict = "yes" if r.ok else ("no" if r.ok is False else "–")
            reason = known_gap(name, r.counter)
            why = gap_labels()[reason] if reason else ""
            if r.ok and why:
                why += " (closed?)"
            label = f"`{name}` ({runs} runs)" if first else ""
            first = False
            lines.append(
                f"| {label} | `{r.counter}` | {rng} | {_num(r.tiersim)} | {_ratio(r)} | "
                f"{r.position} | {verdict} | {why} |"
            )
    return "\n".join(lines) + "\n"


def markdown_gaps() -> str:
    """One paragraph per reason of `KNOWN_GAPS`, naming the rows it covers."""
    by_reason: dict[str, list[tuple[str, str]]] = {}
    for (workload, counter), reason in KNOWN_GAPS.items():
        by_reason.setdefault(reason, []).append((workload, counter))
    labels = gap_labels()
    if not by_reason:
        return "None known: every checked counter agrees with the kernel's range.\n"
    out = []
    for reason, rows in by_reason.items():
        workloads = ", ".join(f"`{w}`" for w in sorted({w for w, _ in rows}))
        counters = ", ".join(f"`{c.split('.', 1)[1]}`" for _, c in rows)
        out.append(f"- **{labels[reason]}** — {workloads} ({counters}): {reason}")
    return "\n".join(out) + "\n"


def replace_between(text: str, name: str, body: str) -> str:
    """Replace what lies between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"markers {start} ... {end} not found")
    return text[: i + len(start)] + "\n" + body + text[j:]


def summary(table: Sequence[tuple[str, Mapping[str, Any], Sequence[Row]]]) -> str:
    checked = [r for _, _, rows in table for r in rows if r.checked and r.ok is not None]
    ok = sum(1 for r in checked if r.ok)
    return f"{ok} of {len(checked)} checked counters agree across {len(table)} workloads"
