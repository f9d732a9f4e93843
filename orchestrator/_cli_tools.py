"""The tools around runs: ``trace``, ``capture``, ``calibrate``, ``report``, ``compare``, ``sweep``.

Each command is a thin layer over its module (traces, capture, calibrate,
report, compare, sweep): argument parsing, a progress bar where a command
takes time, and a table or a list of written files at the end. Bad input
raises ConfigError (the dispatcher prints it with its file, line and field
and exits 2); nothing here writes a file except through the modules' atomic
writers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tiersim._errors import ConfigError
from tiersim._units import format_size


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


# --------------------------------------------------------------------------
# tiersim trace record | convert | info


def _print_header(console: Any, header: Any, *, lines: int | None, seconds: float) -> None:
    from .traces import RW_NAMES

    kinds = (header.loads, header.stores, header.modifies, header.ifetches)
    mix = ", ".join(f"{n} {k:,}" for n, k in zip(RW_NAMES, kinds, strict=True) if k) or "none"
    rate = f", {lines / seconds:,.0f} lines/s" if lines and seconds > 0 else ""
    console.print(
        f"{header.records:,} records ({mix}), {header.pages_touched:,} distinct pages "
        f"({format_size(header.pages_touched * 4096)}); {seconds:.2f}s{rate}"
    )


def cmd_trace_record(args: argparse.Namespace) -> int:
    from .traces import record

    program = list(args.program)
    if program and program[0] == "--":
        program = program[1:]
    out = args.output or f"{Path(program[0]).name if program else 'trace'}.tstrace"
    summary = record(
        program, out, raw=args.raw, instructions=args.instructions, valgrind=args.valgrind
    )
    console = _console(stderr=True)
    console.print(f"trace written to {out} (program exited with status {summary.exit_code})")
    # The time is the program's under valgrind, not the conversion's: no rate.
    _print_header(console, summary.convert.header, lines=None, seconds=summary.convert.seconds)
    console.print(f"{summary.convert.lines:,} lackey lines")
    return 0


def cmd_trace_convert(args: argparse.Namespace) -> int:
    from .traces import convert

    summary = convert(
        args.input,
        args.output,
        instructions=args.instructions,
        src_format=args.input_format,
        dst_format=args.output_format,
    )
    console = _console()
    console.print(
        f"{args.input} ({summary.input_format}) -> {args.output} ({summary.output_format})"
    )
    _print_header(console, summary.header, lines=summary.lines, seconds=summary.seconds)
    return 0


def cmd_trace_info(args: argparse.Namespace) -> int:
    from .traces import trace_info

    info = trace_info(args.file, steps=args.steps, instructions=not args.no_instructions)
    if args.json:
        print(json.dumps(info.as_dict(), indent=2))
        return 0
    from rich.table import Table

    console = _console()
    console.width = max(console.width, 110)
    total = info.records or 1
    console.print(f"[bold]{info.path}[/bold]: {info.format} trace, time in {info.time_unit}")
    if info.lines is not None:
        console.print(f"  text lines        {info.lines:,}")
    console.print(f"  records           {info.records:,}")
    console.print(
        f"  pages touched     {info.pages_touched:,} "
        f"({format_size(info.pages_touched * 4096)} footprint)"
    )
    console.print(
        f"  read/write mix    {info.reads:,} reads ({info.reads / total:.1%}), "
        f"{info.writes:,} writes ({info.writes / total:.1%})"
    )
    console.print(
        f"  by kind           loads {info.kinds[0]:,}, stores {info.kinds[1]:,}, "
        f"modifies {info.kinds[2]:,}, instruction fetches {info.kinds[3]:,}"
    )
    console.print(f"  time              {info.first_time:,} .. {info.last_time:,} {info.time_unit}")
    table = Table(title="footprint over time", show_lines=False)
    for col in (
        "records",
        f"until ({info.time_unit})",
        "reads",
        "writes",
        "working set",
        "new pages",
        "footprint",
    ):
        table.add_column(col, justify="right")
    for s in info.steps:
        table.add_row(
            f"{s.first_record:,}..{s.first_record + s.records - 1:,}",
            f"{s.time_end:,}",
            f"{s.reads:,}",
            f"{s.writes:,}",
            f"{s.working_set:,}",
            f"{s.new_pages:,}",
            f"{s.footprint:,} ({format_size(s.footprint * 4096)})",
        )
    console.print(table)
    return 0


# --------------------------------------------------------------------------
# tiersim capture


def cmd_capture(args: argparse.Namespace) -> int:
    console = _console(stderr=True)
    if args.file:
        from .corpus import corpus_from_file

        summary = corpus_from_file(args.file, args.output, max_pages=args.max_pages)
        console.print(f"corpus written to {args.output} from {args.file}")
    else:
        from .capture import capture

        result = capture(
            args.pid,
            args.output,
            max_pages=args.max_pages,
            resident_only=not args.all_pages,
            seed=args.seed,
        )
        summary = result.corpus
        console.print(
            f"corpus written to {args.output}: {result.mappings} anonymous mappings of PID "
            f"{args.pid}, {result.candidate_pages:,} pages "
            f"{'resident or swapped' if not args.all_pages else 'mapped'}"
            + (f", {result.unreadable_pages:,} unreadable" if result.unreadable_pages else "")
            + f" ({result.seconds:.2f}s)"
        )
    n = summary.pages
    console.print(
        f"{n:,} pages: {summary.zero_pages:,} zero ({summary.zero_pages / n:.1%}), "
        f"{summary.same_filled_pages:,} same-filled ({summary.same_filled_pages / n:.1%}), "
        f"{summary.data_pages:,} data"
    )
    return 0


# --------------------------------------------------------------------------
# tiersim calibrate


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import (
        PUBLISHED_MEAN_RATIO,
        PUBLISHED_SAME_FILLED_SHARE,
        calibrate,
        check_published,
        render,
    )
    from .content import CONTENT_NAMES

    models: list[Any] = list(args.model or CONTENT_NAMES)
    for i, m in enumerate(models):
        if isinstance(m, str) and m.startswith("{"):
            try:
                models[i] = json.loads(m)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"not a JSON content spec: {exc.msg}", key="--model") from None
    try:
        rows = calibrate(models, args.corpus or [], pages=args.pages, seed=args.seed)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc), key="--model") from None
    if args.json:
        doc = {
            "pages": args.pages,
            "seed": args.seed,
            "published": {
                "mean_ratio": list(PUBLISHED_MEAN_RATIO),
                "same_filled_share_including_zero": list(PUBLISHED_SAME_FILLED_SHARE),
            },
            "rows": [r.as_dict() for r in rows],
        }
        print(json.dumps(doc, indent=2))
        return 0
    console = _console()
    console.width = max(console.width, 110)
    console.print(render(rows))
    lo, hi = PUBLISHED_MEAN_RATIO
    slo, shi = PUBLISHED_SAME_FILLED_SHARE
    for r in rows:
        if r.kind == "model" and r.name == "default":
            problems = check_published(r.stats)
            same = r.stats.zero_share + r.stats.same_filled_share
            verdict = "[green]within[/green]" if not problems else "[red]OUTSIDE[/red]"
            console.print(
                f"default mix: lz4 {r.stats.mean_ratio:.2f}:1, same-filled (zero included) "
                f"{same:.1%}: {verdict} the published ranges ({lo}..{hi}:1 for desktop memory; "
                f"{slo:.0%}..{shi:.0%} same-filled among swapped pages, KERNEL.md)"
            )
            for p in problems:
                console.print(f"  [red]{p}[/red]")
            return 1 if problems else 0
    return 0


# --------------------------------------------------------------------------
# tiersim report / compare


def cmd_report(args: argparse.Namespace) -> int:
    from ._resultsfile import load_runs
    from .report import missing_series, write_report

    runs = load_runs(args.results)
    out = args.output or str(Path(args.results[0]).with_suffix("")) + "-report"
    written = write_report(runs, out)
    console = _console()
    for p in written:
        console.print(f"wrote {p}")
    lacking = missing_series(runs)
    if lacking:
        console.print(
            f"[yellow]no time series in {', '.join(lacking)}: the time plots are empty; "
            "re-run with --set scenario.sample_interval=10ms (or a [scenario] sample_interval)"
            "[/yellow]"
        )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ._resultsfile import load_runs
    from .compare import compare, headline, render

    runs = load_runs(args.results)
    baseline: int | str = args.baseline
    if isinstance(baseline, str) and baseline.isdigit():
        baseline = int(baseline)
    cmp = compare(runs, baseline)
    if args.json:
        from ._cli import write_json_atomic

        write_json_atomic(args.json, cmp.as_dict())
    console = _console()
    console.width = max(console.width, 34 + 22 * len(runs))
    console.print(render(cmp))
    for line in headline(cmp):
        console.print(line)
    if args.json:
        console.print(f"comparison written to {args.json}")
    return 0


# --------------------------------------------------------------------------
# tiersim sweep


def cmd_sweep(args: argparse.Namespace) -> int:
    from ._cli import resolve
    from .sweep import sweep, write_csv

    scenario = str(resolve(args.scenario))
    show = not args.no_progress and sys.stderr.isatty()
    bar: Any = None
    task: Any = None
    if show:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            TextColumn("sweep"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("runs"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=_console(stderr=True),
            transient=True,
        )
        bar.start()
        task = bar.add_task("sweep", total=None)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update(task, completed=done, total=total)

    try:
        result = sweep(
            scenario,
            args.set or [],
            jobs=args.jobs,
            variant=args.variant,
            json_dir=args.json_dir,
            progress=progress,
        )
    finally:
        if bar is not None:
            bar.stop()
    out = args.output or f"{Path(scenario).stem}-sweep.csv"
    write_csv(result, out)
    console = _console(stderr=True)
    console.print(
        f"{len(result.rows)} runs, {result.failures} failed points; rows written to {out}"
    )
    for r in result.rows:
        if r.get("error"):
            console.print(f"[red]run {r['run']} ({r['variant']}): {r['error']}[/red]")
    return 1 if result.failures else 0


# --------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    t = subparsers.add_parser(
        "trace",
        help="record, convert and inspect memory access traces",
        description="Memory access traces: lackey import, tiersim's binary format, CSV.",
    )
    tsub = t.add_subparsers(dest="trace_command", metavar="SUBCOMMAND", required=True)

    r = tsub.add_parser(
        "record",
        help="run a program under valgrind lackey and write its trace",
        description="Run PROGRAM under `valgrind --tool=lackey --trace-mem=yes`, converting its "
        "output to a binary trace as it runs.",
    )
    r.add_argument("-o", "--output", help="trace file (default: PROGRAM.tstrace)")
    r.add_argument("--raw", metavar="PATH", help="also keep lackey's text output in PATH")
    r.add_argument("--instructions", action="store_true", help="keep instruction fetches")
    r.add_argument("--valgrind", metavar="PATH", help="valgrind executable (default: on PATH)")
    r.add_argument("program", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")
    r.set_defaults(func=cmd_trace_record)

    c = tsub.add_parser(
        "convert",
        help="convert a trace between lackey, CSV and binary",
        description="Convert INPUT (lackey text, CSV or binary, detected; .gz accepted) to "
        "OUTPUT: CSV when it ends in .csv, binary otherwise. Streams: any size converts.",
    )
    c.add_argument("input")
    c.add_argument("output")
    c.add_argument(
        "--instructions",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep (or drop) instruction fetches (default: drop from lackey, keep otherwise)",
    )
    c.add_argument("--input-format", choices=["lackey", "csv", "binary"])
    c.add_argument("--output-format", choices=["csv", "binary"])
    c.set_defaults(func=cmd_trace_convert)

    i = tsub.add_parser(
        "info",
        help="pages touched, read/write mix and footprint over time of a trace",
    )
    i.add_argument("file")
    i.add_argument("--steps", type=int, default=10, help="slices of the footprint table (10)")
    i.add_argument("--no-instructions", action="store_true", help="ignore instruction fetches")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_trace_info)

    cap = subparsers.add_parser(
        "capture",
        help="capture a process's anonymous memory into a page corpus",
        description="Read the anonymous memory of a running process through /proc/PID/maps and "
        "/proc/PID/mem into a page corpus (zero and same-filled pages counted), usable as "
        '`content = { corpus = "FILE" }` in a scenario.',
    )
    src = cap.add_mutually_exclusive_group(required=True)
    src.add_argument("--pid", type=int, help="process to capture")
    src.add_argument("--file", help="make the corpus from a file's pages instead")
    cap.add_argument("-o", "--output", required=True, help="corpus file to write")
    cap.add_argument("--max-pages", type=int, metavar="N", help="sample at most N pages")
    cap.add_argument(
        "--all-pages",
        action="store_true",
        help="include mapped pages never touched (default: resident or swapped only)",
    )
    cap.add_argument("--seed", type=int, default=0, help="seed of the --max-pages sample")
    cap.set_defaults(func=cmd_capture)

    cal = subparsers.add_parser(
        "calibrate",
        help="lz4 ratio distribution of content models and corpora",
        description="Print, per content model and page corpus, the lz4 ratio distribution and "
        "the shares of zero, same-filled and incompressible pages; check the default mix "
        "against KERNEL.md's published figures (exit 1 when outside).",
    )
    cal.add_argument(
        "--model",
        action="append",
        help="content model name or JSON spec (repeatable; default: every named model)",
    )
    cal.add_argument("--corpus", action="append", help="page corpus file (repeatable)")
    cal.add_argument("--pages", type=int, default=20_000, help="pages per model (20000)")
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--json", action="store_true", help="print JSON")
    cal.set_defaults(func=cmd_calibrate)

    rep = subparsers.add_parser(
        "report",
        help="PNG plots of a results file",
        description="Write PNG plots of RESULTS (from `tiersim run --json`): pages per tier, "
        "compressed-node usage and pressure, latency CDF, compression ratios, fault and "
        "migration rates.",
    )
    rep.add_argument("results", nargs="+", help="results JSON file(s)")
    rep.add_argument("-o", "--output", metavar="DIR", help="directory (default: RESULTS-report)")
    rep.set_defaults(func=cmd_report)

    cmp_ = subparsers.add_parser(
        "compare",
        help="runs side by side with the differences that matter",
        description="Compare the runs of one or more results files against a baseline: "
        "slowdown, DRAM saved, faults, device failures.",
    )
    cmp_.add_argument("results", nargs="+", help="results JSON files")
    cmp_.add_argument("--baseline", default="0", help="index or name of the baseline run (0)")
    cmp_.add_argument("--json", metavar="PATH", help="also write the comparison as JSON")
    cmp_.set_defaults(func=cmd_compare)

    sw = subparsers.add_parser(
        "sweep",
        help="run a parameter grid in parallel, one CSV row per run",
        description="Run SCENARIO over the grid of --set KEY=V1,V2,... values in parallel "
        "processes and write one CSV row per run.",
    )
    sw.add_argument("scenario", help="scenario file or catalog name")
    sw.add_argument(
        "--set",
        action="append",
        metavar="KEY=V1,V2",
        help="a swept key and its values (repeatable; the grid is their product)",
    )
    sw.add_argument("-j", "--jobs", type=int, help="parallel processes (default: CPUs)")
    sw.add_argument("--variant", help="run only this variant at each point")
    sw.add_argument("-o", "--output", help="CSV file (default: SCENARIO-sweep.csv)")
    sw.add_argument("--json-dir", metavar="DIR", help="also keep each point's results JSON")
    sw.add_argument("--no-progress", action="store_true", help="no progress bar")
    sw.set_defaults(func=cmd_sweep)
