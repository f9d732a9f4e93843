"""Reading results documents back: `tiersim report` and `tiersim compare` inputs.

A results file is what ``tiersim run --json`` writes (a scenario document
holding ``runs``) or a single run document. Everything here is checked before
a plot or a table is made of it: a file from another schema version, or one
missing a field a plot needs, is refused with the file and the dotted field,
rather than failing halfway through drawing with a KeyError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._input import InputError
from .results import SCHEMA

# Fields every run document must have for report and compare (dotted paths).
REQUIRED_FIELDS = (
    "variant",
    "sim_time_ns",
    "hosts",
    "nodes",
    "workloads",
    "latency.count",
    "latency.mean_ns",
    "latency.p99_ns",
    "latency_cdf",
    "failures.device_write_failures",
    "failures.poisoned_pages",
    "failures.pages_lost",
)


@dataclass(frozen=True)
class Run:
    """One run of a results file, with a label unique among the files loaded."""

    label: str
    source: str
    doc: dict[str, Any]


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """The run documents of a results file, checked against the schema."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read results: {exc.strerror or exc}", file=source) from None
    except UnicodeDecodeError:
        raise InputError("not a JSON results document (not UTF-8 text)", file=source) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg}", file=source, line=exc.lineno) from None
    if not isinstance(doc, dict):
        raise InputError("not a tiersim results document (not a JSON object)", file=source)
    _check_schema(doc, source, "schema")
    if "runs" in doc:
        runs = doc["runs"]
        if not isinstance(runs, list) or not runs:
            raise InputError("'runs' must be a non-empty list", file=source, key="runs")
        prefix = "runs[{}]."
    else:
        runs = [doc]
        prefix = ""
    for i, run in enumerate(runs):
        where = prefix.format(i)
        if not isinstance(run, dict):
            raise InputError("a run must be a JSON object", file=source, key=where.rstrip("."))
        if "schema" in run:
            _check_schema(run, source, f"{where}schema")
        for field in REQUIRED_FIELDS:
            node: Any = run
            for part in field.split("."):
                if not isinstance(node, dict) or part not in node:
                    raise InputError(
                        f"missing field (needed by report and compare; written by schema {SCHEMA})",
                        file=source,
                        key=f"{where}{field}",
                    )
                node = node[part]
    return runs


def _check_schema(doc: dict[str, Any], source: str, key: str) -> None:
    schema = doc.get("schema")
    if schema is None:
        raise InputError(
            f"not a tiersim results document: no 'schema' field (expected {SCHEMA!r})",
            file=source,
            key=key,
        )
    if schema != SCHEMA:
        family = str(schema).rsplit("/", 1)[0]
        why = (
            "written by another version of tiersim; re-run the scenario to get this version's"
            if family == SCHEMA.rsplit("/", 1)[0]
            else "not a tiersim results document"
        )
        raise InputError(
            f"schema {schema!r} is not supported (this tiersim reads {SCHEMA!r}): {why}",
            file=source,
            key=key,
        )


def load_runs(paths: list[str] | list[Path]) -> list[Run]:
    """Runs of several files, labelled by variant, or file:variant when names collide."""
    loaded = [(str(p), load_results(p)) for p in paths]
    names = [r["variant"] for _, runs in loaded for r in runs]
    clash = len(set(names)) < len(names)
    out = []
    for src, runs in loaded:
        for r in runs:
            label = f"{Path(src).stem}:{r['variant']}" if clash else str(r["variant"])
            out.append(Run(label, src, r))
    labels = [r.label for r in out]
    if len(set(labels)) < len(labels):
        out = [Run(f"{i}:{r.label}", r.source, r.doc) for i, r in enumerate(out)]
    return out
