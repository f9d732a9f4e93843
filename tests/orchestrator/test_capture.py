"""Capturing a live process's memory into a page corpus, and corpora as content."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tiersim.orchestrator import capture as capture_mod
from tiersim.orchestrator._input import InputError
from tiersim.orchestrator.capture import capture
from tiersim.orchestrator.content import make_content, measure
from tiersim.orchestrator.corpus import (
    DATA,
    SAME_FILLED,
    ZERO,
    CorpusWriter,
    corpus_from_file,
    load_corpus,
)
from tiersim.orchestrator.engine import run
from tiersim.orchestrator.scenario import loads_scenario

N = 32  # pages per region of the child

CHILD = f"""
import ctypes, mmap, os, sys
n = {N}
m = mmap.mmap(-1, 4 * n * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(n):                      # region 0: zero pages, made resident
    m[i * 4096] = 0
m[n * 4096 : 2 * n * 4096] = b"\\x42" * (n * 4096)        # region 1: same-filled
m[2 * n * 4096 : 3 * n * 4096] = os.urandom(n * 4096)     # region 2: random
line = b"2026-01-02T03:04:05Z INFO request served in 12 ms\\n"
m[3 * n * 4096 : 4 * n * 4096] = (line * (n * 4096 // len(line) + 1))[: n * 4096]
print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)
sys.stdin.read()
"""


def _wait_until_blocked(pid: int, timeout_s: float = 10.0) -> None:
    """Wait until the child sleeps in its read of stdin.

    It prints its address before it gets there, and the interpreter's work
    in between (allocations, reference counts) still writes its heap: a
    capture taken meanwhile would differ from a later read of the same page.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] == "S":
            return
        time.sleep(0.01)
    raise AssertionError(f"child {pid} never blocked on stdin")


@pytest.fixture
def child() -> Iterator[tuple[int, int]]:
    """A process holding four known regions; yields (pid, region base address)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    base = int(proc.stdout.readline())
    _wait_until_blocked(proc.pid)
    try:
        yield proc.pid, base
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


def test_capture_matches_proc_mem_read_directly(child: tuple[int, int], tmp_path: Path) -> None:
    pid, base = child
    out = tmp_path / "child.corpus"
    result = capture(pid, out)
    corpus = load_corpus(out)
    assert len(corpus) == result.corpus.pages > 4 * N
    assert corpus.meta["pid"] == pid and corpus.meta["resident_only"] is True
    # Every captured page is what /proc/PID/mem holds (the child is idle).
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        for i in range(len(corpus)):
            assert corpus.page(i) == os.pread(fd, 4096, corpus.address(i)), hex(corpus.address(i))
    finally:
        os.close(fd)
    # The known regions are classified as what they are.
    by_addr = {corpus.address(i): i for i in range(len(corpus))}
    kinds = corpus.records["kind"]
    fills = corpus.records["fill"]
    for region, kind in enumerate((ZERO, SAME_FILLED, DATA, DATA)):
        for p in range(N):
            i = by_addr[base + (region * N + p) * 4096]
            assert kinds[i] == kind
            if kind == SAME_FILLED:
                assert int(fills[i]) == 0x4242424242424242
    assert result.corpus.zero_pages >= N and result.corpus.same_filled_pages >= N
    assert corpus.zero_pages == result.corpus.zero_pages


def test_capture_samples_at_most_max_pages(child: tuple[int, int], tmp_path: Path) -> None:
    pid, _ = child
    out = tmp_path / "s.corpus"
    result = capture(pid, out, max_pages=50, seed=3)
    assert result.corpus.pages == 50 < result.candidate_pages
    addrs = [load_corpus(out).address(i) for i in range(50)]
    assert addrs == sorted(addrs)


def test_missing_pid_and_permission_are_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "x.corpus"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(InputError, match=rf"no process with PID {gone.pid}") as e:
        capture(gone.pid, out)
    assert e.value.key == "pid" and e.value.file == f"/proc/{gone.pid}/maps"
    with pytest.raises(InputError, match="PID must be a positive integer"):
        capture(0, out)

    real_open = os.open

    def deny(path: str, *args: object, **kwargs: object) -> int:
        if str(path).endswith("/mem"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(capture_mod.os, "open", deny)
    with pytest.raises(InputError, match=r"permission denied: .*ptrace") as e:
        capture(os.getpid(), out)
    assert e.value.file == f"/proc/{os.getpid()}/mem"
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
def test_unprivileged_capture_of_another_users_process_is_refused(
    child: tuple[int, int], tmp_path: Path
) -> None:
    pid, _ = child
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "tiersim",
            "capture",
            "--pid",
            str(pid),
            "-o",
            "/dev/null/x",
        ],
        capture_output=True,
        text=True,
        cwd="/",
        check=False,
    )
    if "No module named" in proc.stderr or "Permission denied: '/" in proc.stderr:
        pytest.skip("the unprivileged user cannot import tiersim here")
    assert proc.returncode == 2, proc.stderr
    assert f"/proc/{pid}/maps" in proc.stderr and "permission denied" in proc.stderr


def test_corpus_file_problems_are_named(tmp_path: Path) -> None:
    src = tmp_path / "data.bin"
    rng = np.random.default_rng(0)
    src.write_bytes(bytes(8192) + b"\x07" * 4096 + rng.bytes(4096 * 3 + 100))
    good = tmp_path / "good.corpus"
    summary = corpus_from_file(src, good)
    assert (summary.pages, summary.zero_pages, summary.same_filled_pages) == (7, 2, 1)
    data = good.read_bytes()
    cases = {
        "cut": data[:-30],
        "magic": b"XXXXXXXX" + data[8:],
        "garbled": data[:-40] + bytes([data[-40] ^ 0xFF]) + data[-39:],
    }
    expect = {"cut": "truncated", "magic": "bad magic", "garbled": "CRC mismatch"}
    for name, blob in cases.items():
        p = tmp_path / f"{name}.corpus"
        p.write_bytes(blob)
        with pytest.raises(InputError, match=expect[name]) as e:
            load_corpus(p)
        assert e.value.file == str(p)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="the file is empty"):
        corpus_from_file(empty, tmp_path / "e.corpus")
    w = CorpusWriter(tmp_path / "none.corpus")
    with pytest.raises(InputError, match="would hold no pages"):
        w.close()
    assert not (tmp_path / "e.corpus").exists() and not (tmp_path / "none.corpus").exists()
    # A scenario naming a broken corpus is refused at its content key.
    with pytest.raises(ValueError, match="truncated"):
        make_content({"corpus": str(tmp_path / "cut.corpus")})


SCENARIO = """
[scenario]
name = "corpus"
description = "d"
question = "q"
seed = 1
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
[tunables.zswap]
enabled = true
[[cgroups]]
name = "app"
[[workloads]]
name = "w"
host = "h0"
cgroup = "app"
footprint = "8MiB"
content = {{ corpus = "{corpus}" }}
accesses = 20000
[workloads.pattern]
kind = "uniform"
write_ratio = 0.2
"""


def test_corpus_is_a_content_model_in_a_scenario(child: tuple[int, int], tmp_path: Path) -> None:
    pid, _ = child
    out = tmp_path / "c.corpus"
    capture(pid, out)
    corpus = load_corpus(out)
    model = make_content({"corpus": str(out)}, seed=1)
    stats = measure(model, 4000)
    zero_share = corpus.zero_pages / len(corpus)
    assert abs(stats.zero_share - zero_share) < 0.03
    # Every page served is one of the corpus's pages, as captured.
    pages = {corpus.page(i) for i in range(len(corpus))}
    assert all(model.page(i, v) in pages for i in range(200) for v in (0, 3))
    assert model.page(5, 0) == model.page(5, 0)
    assert set(model.classes(np.arange(1000)).tolist()) <= {0, 1, 9}
    (doc,) = [asyncio.run(run(v)) for v in loads_scenario(SCENARIO.format(corpus=out)).variants]
    assert doc["hosts"]["h0"]["vmstat"]["zswpout"] > 0
    assert doc["compression"]["stored_pages_by_size"]["locations"]["zswap@h0"]
    with pytest.raises(ValueError, match=r"unexpected key\(s\) seed beside 'corpus'"):
        make_content({"corpus": str(out), "seed": 1})
