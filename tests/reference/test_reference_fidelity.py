"""tiersim against the kernel's recorded counters, without booting anything.

For every library workload with a recording (``reference/data/<name>.json``,
or ``$TIERSIM_REFERENCE_DATA``), tiersim runs the translated scenario and
each checked counter must lie in the kernel's observed range widened by
10 % (or within a handful of pages). Rows listed in
`tiersim.reference.fidelity.KNOWN_GAPS` are expected failures carrying the
reason; ``TIERSIM_FIDELITY_STRICT=1`` makes them plain assertions.

Skipped, with the reason, while tiersim's engine cannot run a scenario.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tiersim.reference.compare import CHECKED, Row, compare, relevant, run_tiersim, tiersim_counters
from tiersim.reference.fidelity import known_gap, load_recording
from tiersim.reference.spec import data_dir, library, load_workload

pytestmark = pytest.mark.slow

DATA = Path(os.environ.get("TIERSIM_REFERENCE_DATA") or data_dir())
STRICT = os.environ.get("TIERSIM_FIDELITY_STRICT") == "1"
RECORDED = [name for name in sorted(library()) if (DATA / f"{name}.json").exists()]
_results: dict[str, dict[str, int] | Exception] = {}


def _tiersim(name: str) -> dict[str, int]:
    """tiersim's counters for a workload, run once per session."""
    if name not in _results:
        try:
            w = load_workload(name)
            _results[name] = tiersim_counters(run_tiersim(w, load_recording(name, DATA)))
        except (ImportError, NotImplementedError) as exc:
            _results[name] = exc
    got = _results[name]
    if isinstance(got, Exception):
        pytest.skip(f"tiersim's engine cannot run the scenario yet: {got!r}")
    return got


def test_every_library_workload_is_recorded() -> None:
    missing = sorted(set(library()) - set(RECORDED))
    assert not missing, f"no recording in {DATA} for: {', '.join(missing)}"


@pytest.mark.parametrize("name", RECORDED)
def test_recording_matches_workload_file(name: str) -> None:
    data = load_recording(name, DATA)
    assert data is not None
    assert data["workload_sha256"] == load_workload(name).digest, (
        f"{name}: the workload file changed since it was recorded; re-record it "
        f"(tiersim reference run {name} --out reference/data/{name}.json)"
    )
    assert data["runs"] >= 3


def _cases() -> list[Any]:
    cases = []
    for name in RECORDED:
        w = load_workload(name)
        data = load_recording(name, DATA) or {}
        for counter in CHECKED:
            if counter not in data.get("counters", {}) or not relevant(counter, w):
                continue
            gap = known_gap(name, counter)
            marks = [] if (gap is None or STRICT) else [pytest.mark.xfail(reason=gap, strict=False)]
            cases.append(pytest.param(name, counter, marks=marks, id=f"{name}:{counter}"))
    return cases


@pytest.mark.parametrize(("name", "counter"), _cases())
def test_tiersim_within_kernel_range(name: str, counter: str) -> None:
    data = load_recording(name, DATA)
    assert data is not None
    (row,) = compare(data, _tiersim(name), workload=load_workload(name), counters=[counter])
    assert isinstance(row, Row)
    assert row.tiersim is not None, f"tiersim does not report {counter}"
    assert row.ok, (
        f"{name}: {counter} = {row.tiersim:,} in tiersim, "
        f"kernel {row.kernel_min:,}..{row.kernel_max:,} "
        f"(accepted {row.low:,.0f}..{row.high:,.0f}; ratio {row.ratio:.2f})"
    )
