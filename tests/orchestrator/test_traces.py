"""Traces: lackey import, the binary and CSV formats, trace info, replay, and bad input."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tiersim.cli import main
from tiersim.orchestrator import _lackey, traces
from tiersim.orchestrator._input import InputError
from tiersim.orchestrator.engine import run
from tiersim.orchestrator.scenario import loads_scenario
from tiersim.orchestrator.workloads import make_workload

LACKEY = """\
==123== Lackey, an example Valgrind tool
==123== Command: ./prog
I  0401ab70,3
 S 1ffefffd68,8
I  0401ab73,5
 L 04222cc0,8
 L 04222ffc,8
I  0401ab78,2
 M 0421ee70,4
 S 04222cc8,8
I  0401affe,4
==123==
==123== Exit code:       0
"""


def naive_lackey(text: str, instructions: bool) -> list[tuple[int, int, int]]:
    """An independent, line-by-line reading of lackey output: (time, page, rw) records."""
    out = []
    icount = -1
    for line in text.splitlines():
        if not line or line.startswith(("==", "--")):
            continue
        kind, rest = line[:2], line[3:]
        addr_s, size_s = rest.strip().split(",")
        addr, size = int(addr_s, 16), int(size_s)
        if kind == "I ":
            icount += 1
            if not instructions:
                continue
            rw = 3
        else:
            rw = {" L": 0, " S": 1, " M": 2}[kind]
        for page in range(addr >> 12, ((addr + max(size, 1) - 1) >> 12) + 1):
            out.append((max(icount, 0), page, rw))
    return out


def records(path: Path) -> list[tuple[int, int, int]]:
    recs = np.fromfile(path, dtype=traces.RECORD, offset=traces.HEADER_SIZE)
    return list(zip(recs["time"].tolist(), recs["page"].tolist(), recs["rw"].tolist(), strict=True))


def no_leftovers(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(".") and "tmp" in p.name]


@pytest.mark.parametrize("instructions", [False, True])
def test_lackey_conversion_matches_a_line_by_line_reading(
    tmp_path: Path, instructions: bool
) -> None:
    src = tmp_path / "t.lackey"
    src.write_text(LACKEY)
    out = tmp_path / "t.tstrace"
    summary = traces.convert(src, out, instructions=instructions)
    expected = naive_lackey(LACKEY, instructions)
    assert records(out) == expected
    h = summary.header
    assert h.records == len(expected)
    # 04222ffc,8 straddles two pages, as does the fetch at 0401affe,4.
    assert (h.loads, h.stores, h.modifies) == (3, 2, 1)
    assert h.ifetches == (5 if instructions else 0)
    assert h.pages_touched == len({p for _, p, _ in expected})
    assert summary.lines == LACKEY.count("\n")
    assert traces.read_header(out) == h


def test_binary_trace_reads_with_plain_numpy(tmp_path: Path) -> None:
    src = tmp_path / "t.lackey"
    src.write_text(LACKEY)
    out = tmp_path / "t.tstrace"
    traces.convert(src, out)
    header = np.fromfile(out, dtype=traces.HEADER, count=1)[0]
    assert header["magic"] == traces.MAGIC.rstrip(b"\0")
    assert int(header["records"]) == 6 and int(header["header_size"]) == 64
    recs = np.fromfile(out, dtype=traces.RECORD, offset=64)
    assert recs["page"].tolist() == [p for _, p, _ in naive_lackey(LACKEY, False)]


def test_streaming_in_small_blocks_gives_the_same_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    lines = ["==9== header"]
    for _ in range(5000):
        lines.append(f"I  {int(rng.integers(0x400000, 0x500000)):08x},{int(rng.integers(1, 16))}")
        for _ in range(int(rng.integers(0, 3))):
            kind = "LSM"[int(rng.integers(0, 3))]
            addr = int(rng.integers(0x1FFE000000, 0x1FFF000000))
            lines.append(f" {kind} {addr:010x},{int(rng.choice([1, 2, 4, 8, 16, 32]))}")
    text = "\n".join(lines)  # no final newline: the last line still counts
    src = tmp_path / "r.lackey"
    src.write_text(text)
    whole = tmp_path / "whole.tstrace"
    traces.convert(src, whole, instructions=True)
    monkeypatch.setattr(_lackey, "BLOCK_BYTES", 1000)  # cut lines everywhere
    pieces = tmp_path / "pieces.tstrace"
    traces.convert(src, pieces, instructions=True)
    assert whole.read_bytes() == pieces.read_bytes()
    assert records(whole) == naive_lackey(text, True)


def test_gzip_lackey_input(tmp_path: Path) -> None:
    src = tmp_path / "t.lackey.gz"
    with gzip.open(src, "wt") as f:
        f.write(LACKEY)
    out = tmp_path / "t.tstrace"
    assert traces.convert(src, out).header.records == 6


def test_csv_round_trip_and_other_tools_csv(tmp_path: Path) -> None:
    src = tmp_path / "t.lackey"
    src.write_text(LACKEY)
    binary = tmp_path / "a.tstrace"
    traces.convert(src, binary, instructions=True)
    csv_path = tmp_path / "a.csv"
    traces.convert(binary, csv_path)
    head = csv_path.read_text().splitlines()[:2]
    assert head[0] == "instructions,page,rw"
    again = tmp_path / "b.tstrace"
    traces.convert(csv_path, again)
    assert again.read_bytes() == binary.read_bytes()
    # A CSV by another tool: byte addresses with sizes, columns in any order.
    other = tmp_path / "pin.csv"
    other.write_text(
        "# from some tool\nrw,address,size,time_ns\nR,0x1000,8,5\nW,8188,8,7\nM,0x3000,4,7\n"
    )
    out = tmp_path / "pin.tstrace"
    h = traces.convert(other, out).header
    assert h.time_unit == "ns"
    assert records(out) == [(5, 1, 0), (7, 1, 1), (7, 2, 1), (7, 3, 2)]


def test_trace_info_counts_and_footprint_over_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n = 20_000
    pages = np.concatenate([rng.integers(0, 50, n // 2), rng.integers(50, 400, n // 2)])
    rw = rng.integers(0, 3, n).astype(np.uint8)
    path = tmp_path / "s.tstrace"
    with traces.TraceWriter(path, time_unit="index") as w:
        w.write(np.arange(n, dtype=np.uint64), pages.astype(np.uint64), rw)
    info = traces.trace_info(path, steps=4)
    assert info.records == n and info.pages_touched == len(np.unique(pages))
    assert info.reads == int((rw == 0).sum()) and info.writes == int((rw > 0).sum())
    assert [s.records for s in info.steps] == [5000] * 4
    foot = [s.footprint for s in info.steps]
    assert foot == sorted(foot) and foot[-1] == info.pages_touched
    assert info.steps[0].footprint <= 50 < info.steps[2].footprint
    assert sum(s.new_pages for s in info.steps) == info.pages_touched
    # Text formats are read the same way.
    assert traces.trace_info(tmp_path / "s.tstrace", fmt="binary").records == n


def test_trace_workload_replays_and_wraps(tmp_path: Path) -> None:
    path = tmp_path / "w.tstrace"
    pages = np.array([0x7F000, 0x7F001, 0x10, 0x7F000, 0x10, 0x55555], dtype=np.uint64)
    rw = np.array([0, 1, 2, 3, 0, 1], dtype=np.uint8)
    with traces.TraceWriter(path) as w:
        w.write(np.array([0, 3, 3, 10, 12, 20], dtype=np.uint64), pages, rw)
    wl = make_workload({"kind": "trace", "path": str(path)}, 4, seed=1)
    chunk = wl.next_chunk(12)
    # The fetch (rw 3) is skipped; pages are numbered densely in address order.
    assert chunk.pages.tolist() == [2, 3, 0, 0, 1] * 2 + [2, 3]
    assert chunk.writes.tolist() == [False, True, True, False, True] * 2 + [False, True]
    assert (chunk.gap_ns == 0).all()
    timed = make_workload(
        {"kind": "trace", "path": str(path), "time_unit_ns": 2.0, "instructions": True}, 4
    )
    c = timed.next_chunk(7)
    assert c.pages.tolist() == [2, 3, 0, 2, 0, 1, 2]
    assert c.gap_ns.tolist() == [0, 6, 0, 14, 4, 16, 0]
    with pytest.raises(ValueError, match=r"touches 4 distinct pages but the footprint is 3 pages"):
        make_workload({"kind": "trace", "path": str(path)}, 3)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) write_ratio"):
        make_workload({"kind": "trace", "path": str(path), "write_ratio": 0.5}, 4)


# -- bad input ------------------------------------------------------------------


def cli(*argv: str) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "tiersim", *argv], capture_output=True, text=True, check=False
    )
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (LACKEY.replace(" L 04222cc0,8", " X 04222cc0,8"), 6, "unknown line format"),
        (LACKEY.replace(" L 04222cc0,8", " L 04222cc0"), 6, "expected ADDRESS,SIZE"),
        (LACKEY.replace(" L 04222cc0,8", " L 0422zcc0,8"), 6, "expected ADDRESS,SIZE"),
        (LACKEY.replace("I  0401ab73,5", "I  0401ab73,"), 5, "expected ADDRESS,SIZE"),
        (LACKEY + " S 1ffefffd", 14, "expected ADDRESS,SIZE"),  # cut mid-line
        ("hello world\n", 1, "unknown line format"),
    ],
)
def test_garbled_lackey_names_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    src = tmp_path / "bad.lackey"
    src.write_text(text)
    out = tmp_path / "out.tstrace"
    with pytest.raises(InputError, match=message) as info:
        traces.convert(src, out)
    assert info.value.file == str(src) and info.value.line == line
    assert not out.exists() and no_leftovers(tmp_path)


def test_truncated_and_garbled_binary_traces(tmp_path: Path) -> None:
    src = tmp_path / "t.lackey"
    src.write_text(LACKEY)
    good = tmp_path / "good.tstrace"
    traces.convert(src, good)
    data = good.read_bytes()
    cut = tmp_path / "cut.tstrace"
    cut.write_bytes(data[:-20])
    with pytest.raises(InputError, match=r"truncated: .* record 4 is the first bad one") as e:
        traces.trace_info(cut)
    assert e.value.key == "records"
    garbled = bytearray(data)
    garbled[64 + 17 * 3 + 16] = 9  # rw of record 3
    bad = tmp_path / "garbled.tstrace"
    bad.write_bytes(bytes(garbled))
    with pytest.raises(InputError, match=r"rw = 9 is not an access kind") as e:
        traces.trace_info(bad)
    assert e.value.key == "record 3"
    old = bytearray(data)
    old[8] = 7
    (tmp_path / "v7.tstrace").write_bytes(bytes(old))
    with pytest.raises(InputError, match=r"version 7 is not supported"):
        traces.read_header(tmp_path / "v7.tstrace")
    with pytest.raises(InputError, match=r"convert this one first"):
        make_workload({"kind": "trace", "path": str(src)}, 100)


def test_bad_csv_lines_are_named(tmp_path: Path) -> None:
    cases = {
        "instructions,page,rw\n1,2,R\n2,3,X\n": (3, "rw 'X' is not R, W, M or I"),
        "instructions,page,rw\n5,2,R\n2,3,W\n": (3, "time goes backwards"),
        "instructions,page,rw\n1,two,R\n": (2, "not an integer"),
        "instructions,page,rw\n1,2\n": (2, "expected 3 fields"),
        "when,page,rw\n": (1, "needs exactly one time column"),
    }
    for i, (text, (line, message)) in enumerate(cases.items()):
        src = tmp_path / f"bad{i}.csv"
        src.write_text(text)
        with pytest.raises(InputError, match=message) as e:
            traces.convert(src, tmp_path / f"out{i}.tstrace", src_format="csv")
        assert e.value.line == line and e.value.file == str(src)
    assert not list(tmp_path.glob("out*")) and no_leftovers(tmp_path)


def test_cli_reports_bad_input_with_exit_2(tmp_path: Path) -> None:
    src = tmp_path / "bad.lackey"
    src.write_text(LACKEY.replace(" M 0421ee70,4", "garbage"))
    code, err = cli("trace", "convert", str(src), str(tmp_path / "o.tstrace"))
    assert code == 2
    assert f"{src}:9: unknown line format: 'garbage'" in err
    code, err = cli("trace", "info", str(tmp_path / "missing.tstrace"))
    assert code == 2 and "missing.tstrace: cannot read trace: No such file" in err


# -- acceptance: a real program under valgrind lackey ---------------------------------


TRACE_SCENARIO = """
[scenario]
name = "replay"
description = "a recorded program replayed"
question = "does the replay keep the program's accesses?"
seed = 1
duration = "10s"

[[hosts]]
name = "h0"

[[nodes]]
name = "dram0"
kind = "dram"
host = "h0"
capacity = "64MiB"

[[cgroups]]
name = "app"

[[workloads]]
name = "prog"
host = "h0"
cgroup = "app"
footprint = "{footprint}"
accesses = {accesses}
[workloads.pattern]
kind = "trace"
path = "{path}"
"""


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_recorded_program_replays_with_lackey_counts(tmp_path: Path) -> None:
    out = tmp_path / "true.tstrace"
    raw = tmp_path / "true.lackey"
    assert main(["trace", "record", "-o", str(out), "--raw", str(raw), "--", "/bin/true"]) == 0
    text = raw.read_text()
    expected = naive_lackey(text, instructions=False)
    loads = sum(1 for _, _, k in expected if k == 0)
    writes = len(expected) - loads
    pages = {p for _, p, _ in expected}
    assert records(out) == expected
    # Converting the raw output afterwards gives the same trace.
    again = tmp_path / "again.tstrace"
    assert main(["trace", "convert", str(raw), str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()
    info = traces.trace_info(out)
    assert info.pages_touched == len(pages)
    assert (info.reads, info.writes) == (loads, writes)
    # Run once through a scenario: every access replayed, every page touched once.
    text_toml = TRACE_SCENARIO.format(
        footprint=len(pages) * 4096, accesses=len(expected), path=out.as_posix()
    )
    (doc,) = [asyncio.run(run(v)) for v in loads_scenario(text_toml).variants]
    w: dict[str, Any] = doc["workloads"]["prog"]
    assert (w["accesses"], w["reads"], w["writes"]) == (len(expected), loads, writes)
    assert doc["hosts"]["h0"]["vmstat"]["pgalloc"] == len(pages)  # distinct pages faulted in


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_record_of_a_missing_program_leaves_nothing(tmp_path: Path) -> None:
    out, raw = tmp_path / "x.tstrace", tmp_path / "x.lackey"
    with pytest.raises(InputError, match=r"valgrind exited with status \d+ and no trace"):
        traces.record([str(tmp_path / "no-such-program")], out, raw=raw)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="no program given"):
        traces.record([], out)
