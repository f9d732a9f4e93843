"""Reports and comparisons on catalog results: PNG plots, side-by-side tables, bad input."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from tiersim.cli import main
from tiersim.orchestrator._resultsfile import load_runs
from tiersim.orchestrator.compare import compare, summarize
from tiersim.orchestrator.report import PLOTS, ratio_histogram, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture(scope="module")
def catalog_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default catalog scenario, scaled down, with a time series."""
    path = tmp_path_factory.mktemp("results") / "default.json"
    argv = [
        "run",
        "default",
        "--json",
        str(path),
        "--quiet",
        "--no-progress",
        "--set",
        "workloads.kv.accesses=40000",
        "--set",
        "scenario.sample_interval=5ms",
    ]
    assert main(argv) == 0
    return path


def test_results_record_what_the_plots_need(catalog_results: Path) -> None:
    runs = load_runs([catalog_results])
    assert [r.label for r in runs] == ["swap only", "zswap", "cram tier", "zswap direct"]
    for run in runs:
        doc = run.doc
        series = doc["timeseries"]
        assert len(series) >= 5
        assert [s["time_ns"] for s in series] == sorted(s["time_ns"] for s in series)
        last = series[-1]
        assert set(last) >= {"pages", "nodes", "vmstat", "accesses", "hosts", "free_pages"}
        assert last["accesses"] <= doc["latency"]["count"]
        cram = doc["nodes"]["cram0"]
        assert cram["physical_bytes"] == 16 * 1024 * 1024
        assert 0 < cram["device_watermarks"]["low_free_bytes"] < cram["physical_bytes"]
    by = {r.label: r.doc for r in runs}
    zswap_hist = by["zswap"]["compression"]["stored_pages_by_size"]
    assert zswap_hist["bucket_bytes"] == 64 and len(zswap_hist["locations"]["zswap@host0"]) == 64
    _, total = ratio_histogram(by["zswap"])
    assert total == sum(zswap_hist["locations"]["zswap@host0"]) > 0
    assert ratio_histogram(by["cram tier"])[1] > 0  # pages held on the device
    assert ratio_histogram(by["swap only"])[1] == 0


def test_report_writes_every_plot(catalog_results: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main(["report", str(catalog_results), "-o", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{p}.png" for p in PLOTS)
    for name in names:
        path = out / name
        width, height = png_size(path)
        assert width >= 800 and height >= 400, (name, width, height)
        assert path.stat().st_size > 15_000, name  # drawn, not blank
    # Four runs: the per-run figures grow a row per two runs.
    assert png_size(out / "tiers.png")[1] >= 700


def test_report_without_time_series_still_draws(
    catalog_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(catalog_results.read_text())
    for run in doc["runs"]:
        run.pop("timeseries")
    path = tmp_path / "flat.json"
    path.write_text(json.dumps(doc))
    out = tmp_path / "flat-report"
    assert main(["report", str(path), "-o", str(out)]) == 0
    assert len(list(out.glob("*.png"))) == len(PLOTS)
    assert "sample_interval" in " ".join(capsys.readouterr().out.split())


def test_compare_shows_the_differences_that_matter(
    catalog_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = load_runs([catalog_results])
    cmp = compare(runs, "swap only")
    assert cmp.baseline == 0 and cmp.slowdown(0) == 1.0
    summaries = {r.label: s for r, s in zip(runs, cmp.summaries, strict=True)}
    # Overflow kept in compressed memory beats the swap device.
    assert cmp.slowdown(2) < 1.0 and summaries["cram tier"]["major_faults"] == 0
    assert summaries["swap only"]["pswpout"] > 0
    out_json = tmp_path / "cmp.json"
    other = tmp_path / "other.json"
    shifted = json.loads(catalog_results.read_text())
    shifted["runs"] = shifted["runs"][1:2]
    other.write_text(json.dumps(shifted))
    assert (
        main(
            [
                "compare",
                str(catalog_results),
                str(other),
                "--baseline",
                "swap only",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    text = " ".join(capsys.readouterr().out.split())
    for label in ("slowdown", "DRAM saved", "major faults", "device write failures"):
        assert label in text
    assert "default:zswap" in text and "other:zswap" in text  # names clash: file stems added
    doc = json.loads(out_json.read_text())
    assert doc["baseline"] == "default:swap only"
    assert doc["runs"][0]["slowdown"] == 1.0
    assert doc["runs"][4]["major_faults"] == summarize(runs[1].doc)["major_faults"]


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_bad_results_files_are_refused_precisely(
    catalog_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = json.loads(catalog_results.read_text())
    old = copy.deepcopy(good)
    old["schema"] = "tiersim.results/0"
    missing = copy.deepcopy(good)
    del missing["runs"][2]["latency"]["p99_ns"]
    cases = [
        (write(tmp_path / "old.json", old), "key 'schema': schema 'tiersim.results/0' is not"),
        (write(tmp_path / "missing.json", missing), "key 'runs[2].latency.p99_ns': missing field"),
        (write(tmp_path / "other.json", {"hello": 1}), "no 'schema' field"),
    ]
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema": "tiersim.results/1",\n "runs": [\n')
    cases.append((broken, f"{broken}:3: not valid JSON"))
    for path, message in cases:
        out = tmp_path / f"{path.stem}-report"
        assert main(["report", str(path), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and message in err, err
        assert not out.exists()
        assert main(["compare", str(path)]) == 2
        assert message in capsys.readouterr().err


def test_write_report_replaces_files_whole(catalog_results: Path, tmp_path: Path) -> None:
    runs = load_runs([catalog_results])[:1]
    first = write_report(runs, tmp_path)
    again = write_report(runs, tmp_path)
    assert first == again
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{p}.png" for p in PLOTS)
