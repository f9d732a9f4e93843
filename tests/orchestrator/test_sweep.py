"""Parameter sweeps: grid parsing, parallel runs, one CSV row per run, early errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tiersim._errors import ConfigError
from tiersim.cli import main
from tiersim.orchestrator.sweep import grid, parse_axes, split_values, sweep, write_csv

SCENARIO = """
[scenario]
name = "tiny"
description = "a small host that overflows"
question = "how do pool size and skew change zswap?"
seed = 3
duration = "1s"

[[hosts]]
name = "h0"

[[nodes]]
name = "dram0"
kind = "dram"
host = "h0"
capacity = "4MiB"

[[nodes]]
name = "swap0"
kind = "storage"
host = "h0"
capacity = "64MiB"

[[cgroups]]
name = "app"

[[workloads]]
name = "kv"
host = "h0"
cgroup = "app"
footprint = "6MiB"
accesses = 8000
[workloads.pattern]
kind = "zipf"
alpha = 0.9
write_ratio = 0.2

[[variants]]
name = "swap"

[[variants]]
name = "zswap"
[variants.set]
"tunables.zswap.enabled" = true
"""


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(SCENARIO)
    return path


def test_values_split_outside_brackets_and_quotes() -> None:
    assert split_values("1,2, 3") == ["1", "2", "3"]
    assert split_values('["a","b"],[]') == ['["a","b"]', "[]"]
    assert split_values("{ x = 1, y = 2 },'a,b'") == ["{ x = 1, y = 2 }", "'a,b'"]
    axes = parse_axes(["a=1,2", "b=x,y,z"])
    points = grid(axes)
    assert len(points) == 6
    assert points[1].sets == ("a=1", "b=y") and points[3].values == (("a", "2"), ("b", "x"))
    with pytest.raises(ConfigError, match="expected key=v1,v2"):
        parse_axes(["novalue"])
    with pytest.raises(ConfigError, match="key given twice"):
        parse_axes(["a=1", "a=2"])
    with pytest.raises(ConfigError, match="empty value"):
        parse_axes(["a=1,,2"])


def test_sweep_runs_the_grid_in_parallel(scenario: Path, tmp_path: Path) -> None:
    json_dir = tmp_path / "json"
    result = sweep(
        str(scenario),
        ["tunables.zswap.max_pool_percent=5,40", "workloads.kv.pattern.alpha=0.6,1.2"],
        jobs=2,
        json_dir=str(json_dir),
    )
    assert result.failures == 0
    assert len(result.rows) == 4 * 2  # points x variants
    assert [r["run"] for r in result.rows] == list(range(8))
    assert result.columns[:4] == [
        "run",
        "tunables.zswap.max_pool_percent",
        "workloads.kv.pattern.alpha",
        "variant",
    ]
    out = tmp_path / "grid.csv"
    write_csv(result, out)
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    assert {r["variant"] for r in rows} == {"swap", "zswap"}
    assert all(int(r["accesses"]) == 8000 for r in rows)
    # The swept values reach the runs: a bigger pool stores more in zswap, skew shifts faults.
    zs = {
        (r["tunables.zswap.max_pool_percent"], r["workloads.kv.pattern.alpha"]): r
        for r in rows
        if r["variant"] == "zswap"
    }
    assert int(zs[("40", "0.6")]["zswpout"]) > int(zs[("5", "0.6")]["zswpout"])
    assert int(zs[("40", "1.2")]["major_faults"]) <= int(zs[("40", "0.6")]["major_faults"])
    docs = sorted(json_dir.glob("point*.json"))
    assert len(docs) == 4
    assert json.loads(docs[3].read_text())["sweep_point"] == [
        "tunables.zswap.max_pool_percent=40",
        "workloads.kv.pattern.alpha=1.2",
    ]


def test_bad_points_fail_before_anything_runs(scenario: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"at sweep point .*max_pool_percent=500") as e:
        sweep(str(scenario), ["tunables.zswap.max_pool_percent=10,500"], jobs=1)
    assert e.value.key == "tunables.zswap.max_pool_percent"
    with pytest.raises(ConfigError, match="no variant 'nope'"):
        sweep(str(scenario), [], variant="nope")


def test_sweep_command(scenario: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.csv"
    argv = [
        "sweep",
        str(scenario),
        "--set",
        "workloads.kv.accesses=2000,3000",
        "--variant",
        "zswap",
        "-j",
        "2",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["workloads.kv.accesses"], r["variant"], r["accesses"]) for r in rows] == [
        ("2000", "zswap", "2000"),
        ("3000", "zswap", "3000"),
    ]
    assert "2 runs, 0 failed points" in capsys.readouterr().err
    assert main(["sweep", str(scenario), "--set", "nodes.nope.capacity=1MiB"]) == 2
    assert "nodes.nope" in capsys.readouterr().err
