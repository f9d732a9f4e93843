"""``tiersim reference``: record the real kernel under QEMU, and compare tiersim against it.

Subcommands:

* ``run WORKLOAD [--runs N] [--out FILE]`` boots Linux and records counters;
* ``compare WORKLOAD [--data FILE]`` runs tiersim on the same workload and
  prints both counter sets side by side;
* ``scenario WORKLOAD`` prints the tiersim scenario the workload becomes;
* ``list`` shows the library of reference workloads and their recordings;
* ``table`` prints the fidelity table of every recorded workload (Markdown);
* ``trace FILE [--runs-of FUNCTION]`` summarises a kernel trace kept by
  ``run --keep DIR --trace/--ftrace``: calls per task and function, the
  guest time and pages reclaimed between begin/end tracepoint pairs, and what
  each call of a driving function (``shrink_worker``) did and how long it took.

WORKLOAD is a file or the name of a library workload (``zswap-text``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tiersim._errors import ConfigError

from .errors import HarnessError


def _progress(quiet: bool) -> Any:
    def say(message: str) -> None:
        if not quiet:
            print(f"reference: {message}", file=sys.stderr, flush=True)

    return say


def load_data(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(
            f"cannot read recorded data: {exc.strerror or exc}", file=str(path)
        ) from None
    except ValueError as exc:
        raise ConfigError(f"not JSON: {exc}", file=str(path)) from None
    if not isinstance(doc, dict) or "counters" not in doc:
        raise ConfigError("not a reference recording (no 'counters')", file=str(path))
    return doc


def default_data_path(name: str) -> Path:
    from .spec import data_dir

    return data_dir() / f"{name}.json"


def cmd_run(args: argparse.Namespace) -> int:
    from .guest import GuestTrace
    from .record import record, write_json
    from .spec import load_workload

    w = load_workload(args.workload)
    if args.runs is not None and args.runs < 1:
        raise ConfigError("must be at least 1", key="--runs")
    if args.append and not args.out:
        raise ConfigError("adds the runs to the recording at --out; give one", key="--append")
    previous = None
    if args.append and Path(args.out).exists():
        # Checked before any boot, so that a mismatch costs no runs.
        try:
            previous = json.loads(Path(args.out).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{args.out} is not a recording: {exc}", key="--append") from None
        if not isinstance(previous, dict) or previous.get("workload_sha256") != w.digest:
            raise ConfigError(
                f"{args.out} records another workload (or another version of its file)",
                key="--append",
            )
    trace = None
    if args.trace or args.ftrace:
        option = "--trace" if args.trace else "--ftrace"
        if not args.keep:
            raise ConfigError("traces are written to the --keep directory; give one", key=option)
        try:
            GuestTrace(events=tuple(args.trace))
        except ValueError as exc:
            raise ConfigError(str(exc), key="--trace") from None
        try:
            trace = GuestTrace(events=tuple(args.trace), functions=tuple(args.ftrace))
        except ValueError as exc:
            raise ConfigError(str(exc), key="--ftrace") from None
        try:
            trace = GuestTrace(trace.events, trace.functions, buffer_kb=args.trace_buffer)
        except ValueError as exc:
            raise ConfigError(str(exc), key="--trace-buffer") from None
    try:
        doc = record(
            w,
            runs=args.runs,
            timeout_s=args.timeout,
            install=not args.no_install,
            keep=Path(args.keep) if args.keep else None,
            progress=_progress(args.quiet),
            trace=trace,
        )
    except HarnessError as exc:
        print(f"tiersim: error: {exc}", file=sys.stderr)
        return 1
    if previous is not None:
        from .record import merge

        try:
            doc = merge(previous, doc)
        except HarnessError as exc:
            # The runs are kept beside it rather than lost.
            aside = Path(f"{args.out}.new")
            write_json(aside, doc)
            print(f"tiersim: error: {args.out}: {exc}; these runs are in {aside}", file=sys.stderr)
            return 1
    if args.out:
        write_json(Path(args.out), doc)
        if not args.quiet:
            print(f"reference: wrote {args.out}", file=sys.stderr)
    else:
        json.dump(doc, sys.stdout, indent=1)
        print()
    return 0


def _overrides(sets: list[str] | None) -> dict[str, object]:
    """`--set KEY=VALUE` items as scenario overrides (as `tiersim run --set`)."""
    from tiersim.orchestrator.scenario import parse_override

    return dict(parse_override(item) for item in sets or [])


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare, failures, render, run_tiersim, tiersim_counters
    from .spec import load_workload

    w = load_workload(args.workload)
    data_path = Path(args.data) if args.data else default_data_path(w.name)
    data = load_data(data_path)
    if data.get("workload_sha256") and data["workload_sha256"] != w.digest and not args.quiet:
        print(
            f"reference: warning: {data_path} was recorded from a different version of the "
            "workload file; re-record it",
            file=sys.stderr,
        )
    lru_gen = data.get("guest", {}).get("lru_gen")
    mglru = isinstance(lru_gen, str) and lru_gen.startswith("0x") and int(lru_gen, 16) != 0
    if not args.quiet and not w.tunables.lru_gen and mglru:
        print(
            f"reference: warning: {data_path} was recorded with the multi-gen LRU on "
            f"(lru_gen {lru_gen}); tiersim models the active/inactive LRU: re-record it",
            file=sys.stderr,
        )
    results = run_tiersim(w, data, guest_time=args.guest_time, overrides=_overrides(args.set))
    ts = tiersim_counters(results)
    rows = compare(data, ts, workload=w)
    kernel = data.get("kernel", {}).get("release", "?")
    title = f"{w.name}: Linux {kernel} ({data.get('runs', '?')} runs) vs tiersim"
    print(render(rows, title))
    if args.json:
        from .record import write_json

        write_json(
            Path(args.json),
            {
                "workload": w.name,
                "kernel": data.get("kernel"),
                "rows": [
                    {
                        "counter": r.counter,
                        "kernel_min": r.kernel_min,
                        "kernel_max": r.kernel_max,
                        "tiersim": r.tiersim,
                        "ratio": r.ratio,
                        "ok": r.ok,
                        "checked": r.checked,
                    }
                    for r in rows
                ],
                "tiersim": results,
            },
        )
    bad = failures(rows)
    if bad and args.strict:
        return 1
    return 0


def cmd_scenario(args: argparse.Namespace) -> int:
    from .spec import load_workload
    from .translate import scenario_toml

    w = load_workload(args.workload)
    data = None
    if args.data or default_data_path(w.name).exists():
        data = load_data(Path(args.data) if args.data else default_data_path(w.name))
    sys.stdout.write(scenario_toml(w, data, guest_time=args.guest_time))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .spec import library, load_workload

    for name, path in library().items():
        w = load_workload(path)
        data = default_data_path(name)
        state = "recorded" if data.exists() else "not recorded"
        if data.exists():
            doc = load_data(data)
            if doc.get("workload_sha256") != w.digest:
                state = "recorded (stale: workload changed since)"
        print(f"{name:28s} {state:12s}  {w.description.splitlines()[0] if w.description else ''}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from .fidelity import fidelity_rows, markdown, markdown_gaps, replace_between, summary

    directory = Path(args.data_dir) if args.data_dir else None
    table = fidelity_rows(args.workloads or None, directory)
    text = markdown(table, checked_only=not args.all) + "\n" + summary(table) + "\n"
    if args.update_doc:
        doc = Path(args.update_doc)
        try:
            body = replace_between(doc.read_text(), "fidelity-table", text)
            body = replace_between(body, "fidelity-gaps", markdown_gaps())
        except (OSError, ValueError) as exc:
            raise ConfigError(str(exc), file=str(doc)) from None
        doc.write_text(body)
        return 0
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from .kernel_trace import format_counts, format_runs, format_spans, load

    if args.each and not args.runs_of:
        raise ConfigError("--each lists the calls of a --runs-of FUNCTION; give one", key="--each")
    trace = load(Path(args.file))
    for note in trace.notes():
        print(f"tiersim: note: {args.file}: {note}", file=sys.stderr)
    print(format_counts(trace.lines))
    spans = format_spans(trace.lines)
    if spans is not None:
        print()
        print(spans)
    for function in args.runs_of:
        print()
        print(format_runs(trace.lines, function, each=args.each))
    return 0


def register(subparsers: Any) -> None:
    from .guest import GUEST_TRACE_BUFFER_KB

    parser = subparsers.add_parser(
        "reference",
        help="record the real kernel under QEMU and compare tiersim with it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="reference_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    run = sub.add_parser("run", help="boot Linux under QEMU and record a workload's counters")
    run.add_argument("workload", help="reference workload file or library name")
    run.add_argument(
        "--runs", type=int, default=None, help="boots to record (default: the file's, 3)"
    )
    run.add_argument("--out", help="write the recording here (default: print it)")
    run.add_argument("--timeout", type=float, default=None, help="seconds allowed per boot")
    run.add_argument("--keep", metavar="DIR", help="keep images and console logs in DIR")
    run.add_argument(
        "--trace",
        metavar="EVENT",
        action="append",
        default=[],
        help="enable a kernel tracepoint (vmscan:mm_vmscan_memcg_reclaim_end) during the "
        "workload; each boot's trace goes to DIR/trace-N.txt (needs --keep)",
    )
    run.add_argument(
        "--ftrace",
        metavar="FUNCTION",
        action="append",
        default=[],
        help="trace calls of a kernel function (shrink_memcg) likewise",
    )
    run.add_argument(
        "--trace-buffer",
        metavar="KIB",
        type=int,
        default=GUEST_TRACE_BUFFER_KB,
        help="the kernel's trace buffer, KiB (default %(default)s); it is the guest's memory, "
        "so a big one changes what the workload meets",
    )
    run.add_argument(
        "--no-install", action="store_true", help="never apt-get install missing tools"
    )
    run.add_argument(
        "--append",
        action="store_true",
        help="add the runs to the recording at --out (same workload and kernel) instead of "
        "replacing it",
    )
    run.add_argument("--quiet", action="store_true", help="no progress messages")
    run.set_defaults(func=cmd_run)

    cmp_ = sub.add_parser("compare", help="run tiersim on a workload and compare with the kernel")
    cmp_.add_argument("workload", help="reference workload file or library name")
    cmp_.add_argument("--data", help="recorded kernel counters (default: the library's)")
    cmp_.add_argument("--json", metavar="PATH", help="also write the comparison as JSON")
    cmp_.add_argument(
        "--guest-time",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pace tiersim's accesses at the guest's measured rate "
        "(default: for two-node workloads, NUMA balancing and the zswap shrinker)",
    )
    cmp_.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a key of the translated scenario, e.g. tunables.pcp_lists=true (repeatable)",
    )
    cmp_.add_argument("--strict", action="store_true", help="exit 1 when a checked counter is out")
    cmp_.add_argument("--quiet", action="store_true", help="no warnings")
    cmp_.set_defaults(func=cmd_compare)

    scen = sub.add_parser("scenario", help="print the tiersim scenario of a reference workload")
    scen.add_argument("workload", help="reference workload file or library name")
    scen.add_argument("--data", help="recording to calibrate node sizes from")
    scen.add_argument("--guest-time", action=argparse.BooleanOptionalAction, default=None)
    scen.set_defaults(func=cmd_scenario)

    lst = sub.add_parser("list", help="list the library's reference workloads")
    lst.set_defaults(func=cmd_list)

    tab = sub.add_parser(
        "table", help="run tiersim on every recorded workload and print the fidelity table"
    )
    tab.add_argument("workloads", nargs="*", help="library workloads (default: all recorded)")
    tab.add_argument("--data-dir", help="directory of recordings (default: the library's)")
    tab.add_argument("--all", action="store_true", help="include the informative counters")
    tab.add_argument("--out", help="write the Markdown table here")
    tab.add_argument(
        "--update-doc",
        metavar="PATH",
        help="rewrite the table and the gaps between their markers in PATH (docs/fidelity.md)",
    )
    tab.set_defaults(func=cmd_table)

    trc = sub.add_parser(
        "trace", help="summarise a kernel trace kept by run --keep DIR --trace/--ftrace"
    )
    trc.add_argument("file", help="a DIR/trace-N.txt written by run --keep")
    trc.add_argument(
        "--runs-of",
        metavar="FUNCTION",
        action="append",
        default=[],
        help="per call of FUNCTION (shrink_worker), what its task traced until the next call",
    )
    trc.add_argument("--each", action="store_true", help="one line per call, not the spread")
    trc.set_defaults(func=cmd_trace)
