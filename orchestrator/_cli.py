"""`tiersim run` and `tiersim scenarios`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from tiersim._errors import ConfigError

from .config import Scenario

DEFAULT_SCENARIO = "default"


def catalog() -> dict[str, Path]:
    """The scenarios shipped with tiersim, by name."""
    root = resources.files("tiersim.orchestrator") / "scenarios"
    out = {}
    for entry in root.iterdir():
        if entry.name.endswith(".toml"):
            out[entry.name.removesuffix(".toml")] = Path(str(entry))
    return dict(sorted(out.items()))


def resolve(name_or_path: str | None) -> Path:
    if not name_or_path:
        return catalog()[DEFAULT_SCENARIO]
    path = Path(name_or_path)
    if path.exists():
        return path
    cat = catalog()
    if name_or_path in cat:
        return cat[name_or_path]
    raise ConfigError(
        f"no scenario file or catalog entry named {name_or_path!r} (catalog: {', '.join(cat)})"
    )


def load(name_or_path: str | None, sets: list[str] | None = None) -> Scenario:
    from .scenario import load_scenario, parse_override

    overrides: dict[str, object] = {}
    for item in sets or []:
        key, value = parse_override(item)
        overrides[key] = value
    return load_scenario(resolve(name_or_path), overrides)


def write_json_atomic(path: str | Path, doc: Any) -> None:
    """Write to a temporary file beside the target, then rename: never half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def run_scenario(
    scenario: Scenario, *, show_progress: bool = False, only: str | None = None
) -> list[dict[str, Any]]:
    from .engine import run

    variants = [v for v in scenario.variants if only is None or v.name.endswith(only)]
    if only is not None and not variants:
        names = ", ".join(v.name for v in scenario.variants)
        raise ConfigError(f"no variant {only!r} in scenario {scenario.name!r} (variants: {names})")
    docs = []
    if not show_progress:
        for v in variants:
            docs.append(await run(v))
        return docs
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}% of simulated time"),
        TimeElapsedColumn(),
        transient=True,
        console=_console(stderr=True),
    ) as bar:
        for v in variants:
            task = bar.add_task(v.name, total=v.duration_ns)

            def update(now: int, total: int, task: Any = task) -> None:
                bar.update(task, completed=min(now, total))

            docs.append(await run(v, progress=update))
            bar.update(task, completed=v.duration_ns)
    return docs


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from .results import SCHEMA, render_table

    scenario = load(args.scenario, args.set)
    console = _console()
    if not args.quiet:
        console.print(f"[bold]{scenario.name}[/bold]: {scenario.question}")
    show = not args.no_progress and sys.stderr.isatty()
    docs = asyncio.run(run_scenario(scenario, show_progress=show, only=args.variant))
    if args.json:
        write_json_atomic(
            args.json,
            {
                "schema": SCHEMA,
                "scenario": scenario.name,
                "description": scenario.description,
                "question": scenario.question,
                "source": scenario.path,
                "runs": docs,
            },
        )
    if not args.quiet:
        # Wide enough for every variant's column; a terminal wraps what it must.
        console.width = max(console.width, 30 + 18 * len(docs))
        console.print(render_table(docs, title=scenario.name))
        for d in docs:
            if d["stopped"]:
                console.print(f"[red]{d['variant']}: stopped: {d['stopped']}[/red]")
        if args.json:
            console.print(f"results written to {args.json}")
    return 0


def cmd_scenarios(args: argparse.Namespace) -> int:
    from .scenario import load_scenario

    console = _console()
    for name, path in catalog().items():
        sc = load_scenario(path)
        variants = ", ".join(v.name.split(" / ")[-1] for v in sc.variants)
        console.print(f"[bold]{name}[/bold]  ({len(sc.variants)} runs: {variants})")
        console.print(f"    {sc.question}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a scenario (default: the built-in comparison, embedded)",
        description="Run a scenario file or catalog entry and print a comparison of its variants.",
    )
    p.add_argument(
        "scenario", nargs="?", help="scenario file or catalog name (see `tiersim scenarios`)"
    )
    p.add_argument("--json", metavar="PATH", help="write the results document to PATH")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a scenario key, e.g. tunables.zswap.enabled=true (repeatable)",
    )
    p.add_argument("--variant", help="run only the variant with this name")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    s = subparsers.add_parser("scenarios", help="list the scenario catalog")
    s.set_defaults(func=cmd_scenarios)
