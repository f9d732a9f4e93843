"""`tiersim reference ...`: exit codes and messages."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from reference_samples import MINIMAL

from tiersim.cli import main
from tiersim.reference import record as record_mod
from tiersim.reference.errors import KernelFetchError


def test_scenario_prints_a_loadable_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reference", "scenario", "zswap-text"]) == 0
    out = capsys.readouterr().out
    doc = tomllib.loads(out)
    assert doc["scenario"]["name"] == "reference-zswap-text"
    assert doc["workloads"][0]["content"] == "text"


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reference", "list"]) == 0
    assert "zswap-text" in capsys.readouterr().out


def test_bad_workload_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "w.toml"
    path.write_text(MINIMAL.replace('content = "text"', 'content = "nonsense"'))
    assert main(["reference", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:" in err and "workload.content" in err


def test_kernel_unavailable_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cache: Path
) -> None:
    path = tmp_path / "w.toml"
    path.write_text(MINIMAL)

    def no_kernel(*args: object, **kwargs: object) -> object:
        raise KernelFetchError(
            "cannot get a Linux 7.3 kernel from Debian trixie-backports: offline"
        )

    monkeypatch.setattr(record_mod, "ensure_tools", lambda **kw: None)
    monkeypatch.setattr(record_mod, "fetch_kernel", no_kernel)
    assert main(["reference", "run", str(path), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "tiersim: error: cannot get a Linux 7.3 kernel from Debian trixie-backports: offline"
    ]
    assert not list((cache / "work").glob("*")), "the work directory is cleaned up"


def test_compare_needs_a_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "w.toml"
    path.write_text(MINIMAL)
    assert main(["reference", "compare", str(path), "--data", str(tmp_path / "none.json")]) == 2
    assert "cannot read recorded data" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"something": 1}))
    assert main(["reference", "compare", str(path), "--data", str(bad)]) == 2
    assert "not a reference recording" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--trace", "vmscan:mm_vmscan_kswapd_wake"],
            "[--trace]: traces are written to the --keep",
        ),
        (["--keep", "DIR", "--trace", "kswapd wake"], "[--trace]: not a tracepoint name"),
        (["--keep", "DIR", "--ftrace", "a;b"], "[--ftrace]: not a kernel function name"),
        (
            ["--keep", "DIR", "--trace", "vmscan:x", "--ftrace", "a;b"],
            "[--ftrace]: not a kernel function name",
        ),
        (["--ftrace", "shrink_memcg"], "[--ftrace]: traces are written to the --keep"),
        (
            ["--keep", "DIR", "--trace", "vmscan:x", "--trace-buffer", "8"],
            "[--trace-buffer]: trace buffer must be at least 64 KiB",
        ),
    ],
)
def test_run_trace_options_are_checked_before_anything_boots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    args = [str(tmp_path / "keep") if a == "DIR" else a for a in args]
    assert main(["reference", "run", "zswap-text", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "keep").exists()


def test_compare_warns_about_a_recording_made_on_the_multi_gen_lru(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tiersim.reference.spec import data_dir

    doc = json.loads((data_dir() / "zswap-zero.json").read_text())
    doc["guest"]["lru_gen"] = "0x0007"
    data = tmp_path / "zero.json"
    data.write_text(json.dumps(doc))
    assert main(["reference", "compare", "zswap-zero", "--data", str(data)]) == 0
    assert "recorded with the multi-gen LRU on (lru_gen 0x0007)" in capsys.readouterr().err
    # The active/inactive LRU, a kernel without the multi-gen LRU, or a
    # recording that does not say: no warning.
    for value in ("0x0000", "absent", "?"):
        doc["guest"]["lru_gen"] = value
        data.write_text(json.dumps(doc))
        assert main(["reference", "compare", "zswap-zero", "--data", str(data)]) == 0
        assert "multi-gen" not in capsys.readouterr().err


def test_compare_sets_keys_of_the_translated_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp.json"
    args = ["reference", "compare", "zswap-text", "--json", str(out)]

    def zswpout() -> int:
        rows = {r["counter"]: r for r in json.loads(out.read_text())["rows"]}
        return int(rows["vmstat.zswpout"]["tiersim"])

    assert main(args) == 0
    assert zswpout() > 1000
    assert main([*args, "--set", "tunables.zswap.enabled=false"]) == 0
    assert zswpout() == 0
    capsys.readouterr()
    assert main([*args, "--set", "tunables.zswap.enable=false"]) == 2
    err = capsys.readouterr().err
    assert "tunables.zswap.enable" in err and "did you mean 'enabled'" in err
