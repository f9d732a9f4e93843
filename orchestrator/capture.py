"""``tiersim capture --pid PID``: the anonymous memory of a running process, into a page corpus.

What zswap and a compressed tier see is anonymous memory: heaps, stacks,
anonymous mappings (and shared anonymous memory, which is swap-backed too),
not file pages, which are reclaimed by writeback or dropping. So capture
reads ``/proc/PID/maps``, keeps the readable anonymous mappings, asks
``/proc/PID/pagemap`` which of their pages are resident or swapped (pages
never touched read as zeros and would inflate the zero share with memory
the process does not have; ``resident_only=False`` keeps them), and reads
the bytes through ``/proc/PID/mem``. The result is a corpus (corpus.py)
whose zero and same-filled pages are counted, not stored.

Reading another process's memory needs ptrace access: the same user with
``kernel.yama.ptrace_scope`` 0 (or 1 for one's own children), or
CAP_SYS_PTRACE. Capture says so when it is refused, naming the file.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ._input import InputError
from .corpus import PAGE_SIZE, CorpusSummary, CorpusWriter

_READ_PAGES = 256  # pages per pread of /proc/PID/mem
_PM_PRESENT = np.uint64(1 << 63)
_PM_SWAPPED = np.uint64(1 << 62)
# Names of anonymous mappings in /proc/PID/maps ("" is a plain anonymous mapping).
_ANON_NAMES = ("[heap]", "[stack]", "/dev/zero (deleted)")
_ANON_PREFIXES = ("[anon:", "[anon_shmem", "[stack:", "/SYSV")
_PERMISSION_HINT = (
    "reading another process's memory needs ptrace access: run as the same user "
    "(with kernel.yama.ptrace_scope allowing it) or with CAP_SYS_PTRACE (e.g. as root)"
)

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    name: str

    @property
    def pages(self) -> int:
        return (self.end - self.start) // PAGE_SIZE


@dataclass(frozen=True)
class CaptureSummary:
    pid: int
    mappings: int
    candidate_pages: int  # pages of the anonymous mappings considered
    unreadable_pages: int  # vanished or unreadable between listing and reading
    corpus: CorpusSummary
    seconds: float


def _proc_error(exc: OSError, pid: int, path: str) -> InputError:
    if isinstance(exc, FileNotFoundError | ProcessLookupError) or exc.errno == errno.ESRCH:
        return InputError(f"no process with PID {pid} (it may have exited)", file=path, key="pid")
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return InputError(f"permission denied: {_PERMISSION_HINT}", file=path, key="pid")
    return InputError(f"cannot read: {exc.strerror or exc}", file=path, key="pid")


def anonymous_mappings(pid: int) -> list[Mapping]:
    """The readable anonymous mappings of ``pid``, from /proc/PID/maps."""
    path = f"/proc/{pid}/maps"
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise _proc_error(exc, pid, path) from None
    out = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) < 5:
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        perms = parts[1]
        name = parts[5] if len(parts) > 5 else ""
        if not perms.startswith("r"):
            continue
        if name == "" or name in _ANON_NAMES or name.startswith(_ANON_PREFIXES):
            out.append(Mapping(lo, hi, perms, name))
    return out


def _present(pid: int, m: Mapping, pagemap: int | None) -> npt.NDArray[np.bool_]:
    """Which pages of ``m`` are resident or swapped (all, when pagemap is unavailable)."""
    if pagemap is None:
        return np.ones(m.pages, dtype=np.bool_)
    try:
        raw = os.pread(pagemap, m.pages * 8, (m.start // PAGE_SIZE) * 8)
    except OSError:
        return np.ones(m.pages, dtype=np.bool_)
    entries = np.frombuffer(raw, dtype=np.uint64)
    present = (entries & (_PM_PRESENT | _PM_SWAPPED)) != 0
    if len(present) < m.pages:  # the mapping shrank meanwhile
        present = np.concatenate([present, np.zeros(m.pages - len(present), dtype=np.bool_)])
    return present


def _runs(addrs: npt.NDArray[np.uint64]) -> Iterator[tuple[int, int]]:
    """(first address, page count) of runs of consecutive pages, at most _READ_PAGES long."""
    if len(addrs) == 0:
        return
    breaks = np.flatnonzero(np.diff(addrs) != PAGE_SIZE) + 1
    for run in np.split(addrs, breaks):
        for i in range(0, len(run), _READ_PAGES):
            yield int(run[i]), min(_READ_PAGES, len(run) - i)


def capture(
    pid: int,
    out: str | Path,
    *,
    max_pages: int | None = None,
    resident_only: bool = True,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> CaptureSummary:
    """Capture the anonymous memory of ``pid`` into the corpus file ``out``.

    With ``max_pages``, a seeded uniform sample of that many pages is taken
    (sorted by address, so reads stay sequential). Pages that disappear
    between listing and reading (the process unmapped them) are counted and
    skipped. Nothing is written unless at least one page was read.
    """
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise InputError(f"PID must be a positive integer, got {pid!r}", key="pid")
    start = time.perf_counter()
    mappings = anonymous_mappings(pid)
    mem_path = f"/proc/{pid}/mem"
    try:
        mem = os.open(mem_path, os.O_RDONLY)
    except OSError as exc:
        raise _proc_error(exc, pid, mem_path) from None
    try:
        pagemap: int | None = None
        if resident_only:
            try:
                pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
            except OSError:
                pagemap = None
        try:
            chosen = [
                np.uint64(m.start)
                + np.flatnonzero(_present(pid, m, pagemap)).astype(np.uint64) * np.uint64(PAGE_SIZE)
                for m in mappings
            ]
        finally:
            if pagemap is not None:
                os.close(pagemap)
        addrs = np.concatenate(chosen) if chosen else np.empty(0, dtype=np.uint64)
        candidates = len(addrs)
        if max_pages is not None and candidates > max_pages:
            rng = np.random.default_rng(seed)
            addrs = np.sort(rng.choice(addrs, size=max_pages, replace=False))
        meta = {
            "source": "process",
            "pid": pid,
            "comm": _read_text(f"/proc/{pid}/comm"),
            "captured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "mappings": len(mappings),
            "candidate_pages": candidates,
            "resident_only": resident_only and pagemap is not None,
        }
        writer = CorpusWriter(out, meta)
        try:
            unreadable = _read_pages(mem, mem_path, pid, addrs, writer, progress)
            if writer.pages == 0:
                why = (
                    "no anonymous pages to capture"
                    if candidates == 0
                    else f"none of its {candidates} anonymous pages could be read"
                )
                raise InputError(f"process {pid}: {why}", file=mem_path, key="pid")
            summary = writer.close()
        except BaseException as exc:
            writer.abort(exc)
            raise
    finally:
        os.close(mem)
    return CaptureSummary(
        pid, len(mappings), candidates, unreadable, summary, time.perf_counter() - start
    )


def _read_pages(
    mem: int,
    mem_path: str,
    pid: int,
    addrs: npt.NDArray[np.uint64],
    writer: CorpusWriter,
    progress: ProgressFn | None,
) -> int:
    unreadable = 0
    done = 0
    for first, count in _runs(addrs):
        try:
            data = os.pread(mem, count * PAGE_SIZE, first)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise _proc_error(exc, pid, mem_path) from None
            if exc.errno == errno.ESRCH:
                raise _proc_error(exc, pid, mem_path) from None
            data = b""
        if len(data) == count * PAGE_SIZE:
            writer.add(first + np.arange(count, dtype=np.uint64) * np.uint64(PAGE_SIZE), data)
        else:
            # Part of the run vanished: read page by page, keep what is there.
            for i in range(count):
                addr = first + i * PAGE_SIZE
                try:
                    page = os.pread(mem, PAGE_SIZE, addr)
                except OSError:
                    page = b""
                if len(page) == PAGE_SIZE:
                    writer.add(np.array([addr], dtype=np.uint64), page)
                else:
                    unreadable += 1
        done += count
        if progress is not None:
            progress(done, len(addrs))
    return unreadable


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""
