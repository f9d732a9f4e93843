"""Summaries of the kernel traces a reference run keeps (``--trace``, ``--ftrace``).

A trace is the guest's ``/sys/kernel/tracing/trace``: one line per function
call (``task-pid [cpu] flags time: function <-caller``) or tracepoint
(``task-pid [cpu] flags time: event: fields``). What a difference between
tiersim and the kernel usually needs from it is not the lines but their
shape: how often each task called each function, and, for a function that
drives others (``shrink_worker`` walking entries with ``shrink_memcg_cb``),
what each of its runs did and how long it took in guest time, and for
begin/end tracepoint pairs (``vmscan:mm_vmscan_memcg_reclaim_begin`` and
``_end``), the guest time between them and the pages reclaimed in it. Times
are seconds from the trace's first line.
"""

from __future__ import annotations

import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tiersim._errors import ConfigError

_LINE = re.compile(
    r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+(?P<ts>\d+\.\d+):\s+(?P<rest>.*)$"
)


@dataclass(frozen=True)
class TraceLine:
    """One traced call or event."""

    task: str  # the command name, without its pid
    pid: int
    time: float  # seconds, as the guest's trace clock gives them
    name: str  # the function called or the tracepoint hit
    fields: str = ""  # a tracepoint's fields ("nr_reclaimed=49 pid=165 ...")


_HEADER = re.compile(r"entries-in-buffer/entries-written:\s*(\d+)/(\d+)")


@dataclass
class Trace:
    """The lines of a trace, and what the file says about them."""

    lines: list[TraceLine]
    not_understood: int = 0  # lines neither comment nor call nor event
    lost: int = 0  # entries the ring buffer overwrote before the trace was read

    def notes(self) -> list[str]:
        out = []
        if self.lost:
            out.append(
                f"the kernel's trace buffer overwrote its oldest {self.lost:,} entries: counts "
                "and first times cover only the end of the run (a bigger buffer_size_kb helps)"
            )
        if self.not_understood:
            out.append(f"{self.not_understood:,} lines not understood and left out")
        return out


def _line(line: str) -> TraceLine | None:
    m = _LINE.match(line)
    if m is None:
        return None
    # "function <-caller" or "event: fields": the first word, less an event's colon.
    words = m.group("rest").split(None, 1)
    name = words[0].rstrip(":") if words else ""
    if not name:
        return None
    event = words[0].endswith(":")
    return TraceLine(
        sys.intern(m.group("task")),
        int(m.group("pid")),
        float(m.group("ts")),
        sys.intern(name),
        words[1] if event and len(words) > 1 else "",
    )


def read(lines: Iterable[str]) -> Trace:
    """The calls and events of a trace, in order, line by line."""
    out = Trace([])
    for raw in lines:
        line = raw.rstrip("\r\n")
        if line.startswith("#"):
            h = _HEADER.search(line)
            if h:
                out.lost = max(0, int(h.group(2)) - int(h.group(1)))
            continue
        if not line.strip():
            continue
        ln = _line(line)
        if ln is None:
            out.not_understood += 1
        else:
            out.lines.append(ln)
    return out


def parse(text: str) -> list[TraceLine]:
    """The calls and events of a trace held in a string."""
    return read(text.splitlines()).lines


def load(path: Path) -> Trace:
    try:
        with path.open(errors="replace") as f:
            trace = read(f)
    except OSError as exc:
        raise ConfigError(f"cannot read the trace: {exc.strerror or exc}", file=str(path)) from None
    if not trace.lines:
        raise ConfigError(
            "no traced calls or events in this file (is it a --keep trace-N.txt?)",
            file=str(path),
        )
    return trace


@dataclass
class Count:
    calls: int = 0
    first: float = 0.0
    last: float = 0.0


def counts(lines: list[TraceLine]) -> dict[tuple[str, str], Count]:
    """(task, function or event) -> calls and the first and last time, from the trace's start."""
    t0 = lines[0].time
    out: dict[tuple[str, str], Count] = {}
    for ln in lines:
        c = out.get((ln.task, ln.name))
        if c is None:
            c = out[(ln.task, ln.name)] = Count(first=ln.time - t0)
        c.calls += 1
        c.last = ln.time - t0
    return out


@dataclass
class Run:
    """One call of a driving function and what its task traced until its next call."""

    task: str
    pid: int
    start: float
    end: float
    calls: dict[str, int] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.end - self.start


def runs_of(lines: list[TraceLine], function: str) -> list[Run]:
    """Each call of `function`, with the other calls its task (the same pid) made
    before `function` was called again, in any task, and the time of the last of them.

    The function tracer records entries, not returns: a run is taken to last until
    its task's last traced call before the next run began, and a work item's runs
    never overlap (the next may come on another worker thread).
    """
    t0 = lines[0].time if lines else 0.0
    current: Run | None = None
    out: list[Run] = []
    for ln in lines:
        if ln.name == function:
            current = Run(ln.task, ln.pid, ln.time - t0, ln.time - t0)
            out.append(current)
        elif current is not None and ln.pid == current.pid:
            current.calls[ln.name] = current.calls.get(ln.name, 0) + 1
            current.end = ln.time - t0
    return out


@dataclass
class Span:
    """A task's ``X_begin``/``X_end`` tracepoint pairs (``mm_vmscan_memcg_reclaim``):
    how many, the guest time between each begin and its end, and the pages
    the ends report reclaimed."""

    task: str
    event: str  # the pair's common name, without _begin/_end
    calls: int = 0
    seconds: float = 0.0
    reclaimed: int = 0

    @property
    def us_per_page(self) -> float | None:
        return self.seconds * 1e6 / self.reclaimed if self.reclaimed else None


_RECLAIMED = re.compile(r"\bnr_reclaimed=(\d+)")


def spans(lines: list[TraceLine]) -> list[Span]:
    """Every begin/end tracepoint pair, matched within a pid, summed per task
    and event (vmscan's direct, memcg and node reclaim spans, for instance):
    the guest's time spent in reclaim and what it reclaimed for it."""
    opened: dict[tuple[int, str], float] = {}
    out: dict[tuple[str, str], Span] = {}
    for ln in lines:
        if ln.name.endswith("_begin"):
            opened[(ln.pid, ln.name[: -len("_begin")])] = ln.time
        elif ln.name.endswith("_end"):
            event = ln.name[: -len("_end")]
            start = opened.pop((ln.pid, event), None)
            if start is None:
                continue
            sp = out.get((ln.task, event))
            if sp is None:
                sp = out[(ln.task, event)] = Span(ln.task, event)
            sp.calls += 1
            sp.seconds += ln.time - start
            m = _RECLAIMED.search(ln.fields)
            if m:
                sp.reclaimed += int(m.group(1))
    return sorted(out.values(), key=lambda sp: (-sp.seconds, sp.task, sp.event))


def format_spans(lines: list[TraceLine]) -> str | None:
    """The spans of begin/end pairs, or None when the trace has none."""
    found = spans(lines)
    if not found:
        return None
    width = max(len(f"{sp.task} {sp.event}") for sp in found) + 2
    out = [
        f"{'task span':<{width}}{'calls':>9}{'guest s':>10}{'ms/call':>10}"
        f"{'reclaimed':>11}{'us/page':>10}"
    ]
    for sp in found:
        per_page = sp.us_per_page
        out.append(
            f"{f'{sp.task} {sp.event}':<{width}}{sp.calls:>9,}{sp.seconds:>10.3f}"
            f"{sp.seconds * 1000 / sp.calls:>10.2f}{sp.reclaimed:>11,}"
            f"{'-' if per_page is None else f'{per_page:.1f}':>10}"
        )
    return "\n".join(out)


def _spread(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{lo:{fmt}} / {mid:{fmt}} / {hi:{fmt}}"


def format_counts(lines: list[TraceLine]) -> str:
    table = counts(lines)
    rows = sorted(table.items(), key=lambda kv: (-kv[1].calls, kv[0]))
    width = max(len(f"{t} {n}") for t, n in table) + 2
    out = [f"{'task function':<{width}}{'calls':>9}{'first s':>11}{'last s':>11}"]
    for (task, name), c in rows:
        out.append(f"{f'{task} {name}':<{width}}{c.calls:>9,}{c.first:>11.3f}{c.last:>11.3f}")
    span = lines[-1].time - lines[0].time
    out.append(f"{len(lines):,} lines over {span:.3f} s")
    return "\n".join(out)


def format_runs(lines: list[TraceLine], function: str, *, each: bool) -> str:
    runs = runs_of(lines, function)
    if not runs:
        return f"no call of {function} in the trace"
    callees = sorted({name for r in runs for name in r.calls})
    out = [f"{len(runs)} calls of {function}"]
    if each:
        widths = [max(12, len(c)) for c in callees]
        head = f"{'start s':>10}{'ms':>10}  " + "  ".join(
            f"{c:>{w}}" for c, w in zip(callees, widths, strict=True)
        )
        out.append(head)
        for r in runs:
            cells = "  ".join(
                f"{r.calls.get(c, 0):>{w},}" for c, w in zip(callees, widths, strict=True)
            )
            out.append(f"{r.start:>10.3f}{r.duration * 1000:>10.1f}  {cells}")
    else:
        out.append("min / median / max per call:")
        out.append(f"  duration ms: {_spread([r.duration * 1000 for r in runs], '.1f')}")
        for c in callees:
            out.append(f"  {c}: {_spread([float(r.calls.get(c, 0)) for r in runs], '.0f')}")
        per: defaultdict[str, int] = defaultdict(int)
        for r in runs:
            for c, n in r.calls.items():
                per[c] += n
        for c in callees:
            out.append(f"  {c} in all: {per[c]:,}")
    return "\n".join(out)


__all__ = [
    "Run",
    "Span",
    "Trace",
    "TraceLine",
    "counts",
    "format_counts",
    "format_runs",
    "format_spans",
    "load",
    "parse",
    "read",
    "runs_of",
    "spans",
]
