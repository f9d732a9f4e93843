"""Memory access traces: tiersim's compact binary format, CSV, lackey import, trace info.

A trace is a sequence of records ``(time, page, rw)``: when (an instruction
count, nanoseconds, or just the access index), which 4 KiB virtual page, and
what kind of access. The simulator works on pages, so byte addresses are
mapped to pages when a trace is imported (an access that straddles a page
boundary becomes one record per page), and every tool reads traces in
bounded blocks, so a trace larger than memory still converts and replays.

The binary format (``.tstrace``, documented in docs/traces.md) is a 64-byte
little-endian header followed by packed 17-byte records, so that numpy reads
it without tiersim::

    header = np.fromfile(path, dtype=HEADER, count=1)[0]
    records = np.fromfile(path, dtype=RECORD, offset=64)

The header also carries the record count (truncation is detected from the
file size), the number of distinct pages and the count of each access kind,
so ``trace info`` and the replay workload can check a trace before trusting
it. The CSV form (``time_unit,page,rw`` header, rw as R/W/M/I) exists for
people who produce traces with other tools (Pin, DynamoRIO, perf mem ...).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
import struct
import subprocess
import time as _time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from ._atomic import atomic_output
from ._input import InputError
from ._lackey import IFETCH, LOAD, MODIFY, PAGE_SHIFT, STORE, LackeyParser
from ._tracecsv import CSV_TIME_NAME, RW_LETTERS, Block, csv_blocks

MAGIC = b"TSTRACE\0"
VERSION = 1
HEADER_SIZE = 64
# magic, version, header size, record size, time unit, page shift,
# records, distinct pages, loads, stores, modifies, instruction fetches.
_HEADER = struct.Struct("<8sHHHBBQQQQQQ")
assert _HEADER.size == HEADER_SIZE

HEADER = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u2"),
        ("header_size", "<u2"),
        ("record_size", "<u2"),
        ("time_unit", "u1"),
        ("page_shift", "u1"),
        ("records", "<u8"),
        ("pages_touched", "<u8"),
        ("loads", "<u8"),
        ("stores", "<u8"),
        ("modifies", "<u8"),
        ("ifetches", "<u8"),
    ]
)
RECORD = np.dtype([("time", "<u8"), ("page", "<u8"), ("rw", "u1")])
assert HEADER.itemsize == HEADER_SIZE and RECORD.itemsize == 17

RW_NAMES = ("load", "store", "modify", "ifetch")
TIME_UNITS = ("instructions", "ns", "index")
FORMATS = ("binary", "csv", "lackey")
READ_RECORDS = 1 << 20  # records per block when reading a binary trace


# --------------------------------------------------------------------------
# The binary format.


@dataclass(frozen=True)
class TraceHeader:
    """What a binary trace says about itself."""

    version: int
    time_unit: str
    page_shift: int
    records: int
    pages_touched: int
    loads: int
    stores: int
    modifies: int
    ifetches: int

    @property
    def reads(self) -> int:
        """Accesses the simulator treats as reads: loads and instruction fetches."""
        return self.loads + self.ifetches

    @property
    def writes(self) -> int:
        """Accesses that write: stores and modifies (a modify is a write fault)."""
        return self.stores + self.modifies

    def pack(self) -> bytes:
        return _HEADER.pack(
            MAGIC,
            self.version,
            HEADER_SIZE,
            RECORD.itemsize,
            TIME_UNITS.index(self.time_unit),
            self.page_shift,
            self.records,
            self.pages_touched,
            self.loads,
            self.stores,
            self.modifies,
            self.ifetches,
        )


def read_header(path: str | Path) -> TraceHeader:
    """Read and check a binary trace's header against the file's size."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise InputError(f"cannot read trace: {exc.strerror or exc}", file=source) from None
    if raw[:8] != MAGIC:
        raise InputError(
            "not a tiersim binary trace (bad magic); convert it with `tiersim trace convert`",
            file=source,
            key="magic",
        )
    if len(raw) < HEADER_SIZE:
        raise InputError(
            f"header cut short: {len(raw)} of {HEADER_SIZE} bytes", file=source, key="header"
        )
    (_, version, hsize, rsize, unit, shift, records, pages, *counts) = _HEADER.unpack(raw)
    if version != VERSION:
        raise InputError(
            f"trace format version {version} is not supported (this tiersim reads {VERSION})",
            file=source,
            key="version",
        )
    if hsize != HEADER_SIZE or rsize != RECORD.itemsize:
        raise InputError(
            f"header_size {hsize} / record_size {rsize} do not match version {VERSION} "
            f"({HEADER_SIZE} / {RECORD.itemsize}): the header is garbled",
            file=source,
            key="header_size",
        )
    if unit >= len(TIME_UNITS):
        raise InputError(f"unknown time unit code {unit}", file=source, key="time_unit")
    if not 9 <= shift <= 30:
        raise InputError(f"page_shift {shift} is not a page size", file=source, key="page_shift")
    if sum(counts) != records:
        raise InputError(
            f"the header's per-kind counts ({sum(counts)}) do not add up to its record count "
            f"({records}): the header is garbled",
            file=source,
            key="records",
        )
    expected = HEADER_SIZE + records * RECORD.itemsize
    if size != expected:
        whole = (size - HEADER_SIZE) // RECORD.itemsize
        what = "truncated" if size < expected else "has trailing bytes"
        raise InputError(
            f"{what}: the header promises {records:,} records ({expected:,} bytes), "
            f"the file has {size:,} bytes ({max(whole, 0):,} whole records); "
            f"record {max(whole, 0):,} is the first bad one",
            file=source,
            key="records",
        )
    return TraceHeader(version, TIME_UNITS[unit], shift, records, pages, *counts)


def iter_binary(path: str | Path, *, block: int = READ_RECORDS) -> Iterator[npt.NDArray[Any]]:
    """Record arrays of a binary trace, checked as they are read.

    Checks that every ``rw`` is a known kind and that time never goes
    backwards, naming the first bad record; at the end, that the per-kind
    counts agree with the header.
    """
    source = str(path)
    header = read_header(path)
    counts = np.zeros(4, dtype=np.int64)
    last_time = 0
    records = np.memmap(path, dtype=RECORD, mode="r", offset=HEADER_SIZE, shape=(header.records,))
    for start in range(0, header.records, block):
        recs = np.asarray(records[start : start + block])
        rw = recs["rw"]
        if (rw > IFETCH).any():
            i = int(np.argmax(rw > IFETCH))
            raise InputError(
                f"rw = {int(rw[i])} is not an access kind (0-3): the trace is garbled",
                file=source,
                key=f"record {start + i}",
            )
        t = recs["time"]
        if t.size and (int(t[0]) < last_time or (t[1:] < t[:-1]).any()):
            i = 0 if int(t[0]) < last_time else int(np.argmax(t[1:] < t[:-1])) + 1
            raise InputError(
                f"time goes backwards ({int(t[i])} after "
                f"{last_time if i == 0 else int(t[i - 1])}): the trace is garbled",
                file=source,
                key=f"record {start + i}",
            )
        if t.size:
            last_time = int(t[-1])
        counts += np.bincount(rw, minlength=4)
        yield recs
    del records
    expected = [header.loads, header.stores, header.modifies, header.ifetches]
    if counts.tolist() != expected:
        raise InputError(
            f"the records hold {counts.tolist()} loads/stores/modifies/fetches, "
            f"the header says {expected}: the trace is garbled",
            file=source,
            key="records",
        )


class TraceWriter:
    """Writes a trace, binary or CSV, block by block; the file appears only when closed.

    Counts the access kinds and the distinct pages on the way, so the binary
    header can be written last (the records go to a temporary file first,
    then the header is patched in and the file renamed into place).
    """

    def __init__(
        self, path: str | Path, *, time_unit: str = "instructions", fmt: str | None = None
    ) -> None:
        if time_unit not in TIME_UNITS:
            raise ValueError(f"time unit must be one of {', '.join(TIME_UNITS)}")
        self.path = Path(path)
        self.format = fmt or ("csv" if self.path.suffix.lower() == ".csv" else "binary")
        if self.format not in ("binary", "csv"):
            raise ValueError(f"can write binary or csv traces, not {self.format!r}")
        self.time_unit = time_unit
        self.records = 0
        self.counts = np.zeros(4, dtype=np.int64)
        self._pages = np.empty(0, dtype=np.uint64)
        self._pending: list[npt.NDArray[np.uint64]] = []
        self._pending_n = 0
        self._out = atomic_output(self.path, "wb")
        self._file = self._out.__enter__()
        if self.format == "binary":
            self._file.write(b"\0" * HEADER_SIZE)
        else:
            self._file.write(f"{CSV_TIME_NAME[time_unit]},page,rw\n".encode())

    def write(self, time: npt.NDArray[Any], page: npt.NDArray[Any], rw: npt.NDArray[Any]) -> None:
        n = len(page)
        if n == 0:
            return
        self.records += n
        self.counts += np.bincount(rw, minlength=4)[:4]
        self._pending.append(np.unique(page).astype(np.uint64))
        self._pending_n += len(self._pending[-1])
        if self._pending_n > 1 << 20:
            self._merge_pages()
        if self.format == "binary":
            recs = np.empty(n, dtype=RECORD)
            recs["time"] = time
            recs["page"] = page
            recs["rw"] = rw
            self._file.write(recs.tobytes())
        else:
            letters = np.array(list(RW_LETTERS))[rw]
            lines = "\n".join(
                f"{t},{p},{c}"
                for t, p, c in zip(time.tolist(), page.tolist(), letters.tolist(), strict=True)
            )
            self._file.write(lines.encode() + b"\n")

    def _merge_pages(self) -> None:
        if self._pending:
            self._pages = np.unique(np.concatenate([self._pages, *self._pending]))
            self._pending = []
            self._pending_n = 0

    @property
    def pages_touched(self) -> int:
        self._merge_pages()
        return len(self._pages)

    def header(self) -> TraceHeader:
        c = self.counts.tolist()
        return TraceHeader(
            VERSION, self.time_unit, PAGE_SHIFT, self.records, self.pages_touched, *c
        )

    def close(self) -> TraceHeader:
        """Finish the file and rename it into place."""
        header = self.header()
        if self.format == "binary":
            self._file.seek(0)
            self._file.write(header.pack())
        self._out.__exit__(None, None, None)
        return header

    def abort(self, exc: BaseException) -> None:
        """Drop the temporary file; nothing is left behind."""
        self._out.__exit__(type(exc), exc, exc.__traceback__)

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


# --------------------------------------------------------------------------
# Reading any format.


def _open_text(path: Path) -> IO[bytes]:
    f: IO[bytes] = open(path, "rb")  # noqa: SIM115 - returned to the caller
    if f.read(2) == b"\x1f\x8b":
        f.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]
    f.seek(0)
    return f


def detect_format(path: str | Path) -> str:
    """``binary`` (by magic), ``csv`` (a header naming known columns) or ``lackey``."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            if f.read(8) == MAGIC:
                return "binary"
        with _open_text(p) as f:
            head = f.read(4096)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"cannot read trace: {_why(exc)}", file=str(path)) from None
    for raw in head.splitlines():
        text = raw.strip()
        if not text or text.startswith(b"#"):
            continue
        cols = {c.strip().lower() for c in text.decode("utf-8", "replace").split(",")}
        if "rw" in cols and ({"page", "address"} & cols):
            return "csv"
        break
    return "lackey"


def _why(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(
        exc
    ).__name__


@dataclass
class TraceSource:
    """Blocks of (time, page, rw) from a trace in any format, with what is known about it."""

    path: Path
    format: str
    time_unit: str
    blocks: Iterator[Block]
    lackey: LackeyParser | None = None
    _close: list[IO[Any]] = field(default_factory=list)

    def close(self) -> None:
        for f in self._close:
            f.close()


def open_source(
    path: str | Path, *, fmt: str | None = None, instructions: bool = True
) -> TraceSource:
    """Open a trace of any format for streaming.

    ``instructions`` False drops instruction fetches (lackey ``I`` lines, or
    records of kind I in the other formats).
    """
    p = Path(path)
    source = str(path)
    if not p.exists():
        raise InputError("no such trace file", file=source)
    fmt = fmt or detect_format(p)
    if fmt not in FORMATS:
        raise InputError(f"unknown trace format {fmt!r} (expected one of: {', '.join(FORMATS)})")

    def keep_instructions(blocks: Iterator[Block]) -> Iterator[Block]:
        for t, pg, rw in blocks:
            if not instructions:
                keep = rw != IFETCH
                t, pg, rw = t[keep], pg[keep], rw[keep]
            yield t, pg, rw

    if fmt == "binary":
        header = read_header(p)

        def binary_blocks() -> Iterator[Block]:
            for recs in iter_binary(p):
                yield recs["time"], recs["page"], recs["rw"]

        return TraceSource(p, fmt, header.time_unit, keep_instructions(binary_blocks()))
    f = _open_text(p)
    if fmt == "csv":
        text = io.TextIOWrapper(f, encoding="utf-8", errors="replace", newline="")
        unit, blocks = csv_blocks(text, source)
        return TraceSource(p, fmt, unit, keep_instructions(blocks), _close=[text])
    parser = LackeyParser(source, instructions=instructions)
    return TraceSource(p, fmt, "instructions", parser.parse(f), lackey=parser, _close=[f])


# --------------------------------------------------------------------------
# Conversion.


@dataclass(frozen=True)
class ConvertSummary:
    """What a conversion read and wrote."""

    input_format: str
    output_format: str
    lines: int | None  # text lines read (lackey input only)
    header: TraceHeader
    seconds: float


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    instructions: bool | None = None,
    src_format: str | None = None,
    dst_format: str | None = None,
) -> ConvertSummary:
    """Convert a trace between formats, streaming; ``dst`` appears only when complete.

    Output is CSV when ``dst`` ends in ``.csv`` (or ``dst_format="csv"``),
    binary otherwise. ``instructions`` keeps (True) or drops (False)
    instruction fetches; by default a lackey import drops them (they are
    three quarters of its lines and rarely what a tiering study needs),
    and a conversion between tiersim's own formats keeps what is there.
    """
    start = _time.perf_counter()
    fmt = src_format or detect_format(src)
    keep = instructions if instructions is not None else fmt != "lackey"
    source = open_source(src, fmt=fmt, instructions=keep)
    try:
        with TraceWriter(dst, time_unit=source.time_unit, fmt=dst_format) as writer:
            for t, pg, rw in source.blocks:
                writer.write(t, pg, rw)
            header = writer.header()
    finally:
        source.close()
    return ConvertSummary(
        source.format,
        writer.format,
        source.lackey.lines if source.lackey else None,
        header,
        _time.perf_counter() - start,
    )


# --------------------------------------------------------------------------
# Recording a program under lackey.


@dataclass(frozen=True)
class RecordSummary:
    exit_code: int
    convert: ConvertSummary
    messages: tuple[str, ...]


def record(
    program: Sequence[str],
    out: str | Path,
    *,
    raw: str | Path | None = None,
    instructions: bool = False,
    valgrind: str | None = None,
) -> RecordSummary:
    """Run ``program`` under ``valgrind --tool=lackey --trace-mem=yes``, converting as it runs.

    Lackey's output goes through a pipe straight into the converter, so the
    (large) text trace never touches the disk unless ``raw`` asks for a copy.
    The program keeps the terminal's stdin, stdout and stderr.
    """
    if not program:
        raise InputError("no program given: write `tiersim trace record -- PROGRAM ARGS`")
    exe = valgrind or shutil.which("valgrind")
    if not exe:
        raise InputError("valgrind is not installed (it provides the lackey tool)", key="valgrind")
    start = _time.perf_counter()
    rfd, wfd = os.pipe()
    cmd = [exe, "--tool=lackey", "--trace-mem=yes", f"--log-fd={wfd}", *program]
    try:
        proc = subprocess.Popen(cmd, pass_fds=(wfd,))
    except OSError as exc:
        os.close(rfd)
        os.close(wfd)
        raise InputError(f"cannot run valgrind: {_why(exc)}", file=exe) from None
    os.close(wfd)
    parser = LackeyParser(f"lackey output of {program[0]}", instructions=instructions)
    try:
        # Unwound in reverse: the pipe is closed, then the raw copy is renamed
        # into place (or removed, on an error).
        with contextlib.ExitStack() as stack:
            tee = stack.enter_context(atomic_output(raw, "wb")) if raw else None
            stream = stack.enter_context(os.fdopen(rfd, "rb"))
            with TraceWriter(out, time_unit="instructions") as writer:
                for t, pg, rw in parser.parse(stream, tee=tee):
                    writer.write(t, pg, rw)
                code = proc.wait()
                if writer.records == 0 and code != 0:
                    said = "; ".join(m for m in parser.messages if "valgrind:" in m) or (
                        "see valgrind's message above"
                    )
                    raise InputError(
                        f"valgrind exited with status {code} and no trace ({said})",
                        file=program[0],
                    )
                header = writer.header()
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    summary = ConvertSummary(
        "lackey", writer.format, parser.lines, header, _time.perf_counter() - start
    )
    return RecordSummary(code, summary, tuple(parser.messages))


# --------------------------------------------------------------------------
# Trace info.


@dataclass(frozen=True)
class FootprintStep:
    """One slice of a trace (equal shares of its records)."""

    first_record: int
    records: int
    time_end: int
    reads: int
    writes: int
    working_set: int  # distinct pages touched in the slice
    new_pages: int  # pages touched for the first time
    footprint: int  # distinct pages touched so far


@dataclass(frozen=True)
class TraceInfo:
    path: str
    format: str
    time_unit: str
    records: int
    kinds: tuple[int, int, int, int]  # loads, stores, modifies, ifetches
    pages_touched: int
    first_time: int
    last_time: int
    lines: int | None
    steps: tuple[FootprintStep, ...]

    @property
    def reads(self) -> int:
        return self.kinds[LOAD] + self.kinds[IFETCH]

    @property
    def writes(self) -> int:
        return self.kinds[STORE] + self.kinds[MODIFY]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "time_unit": self.time_unit,
            "records": self.records,
            "loads": self.kinds[LOAD],
            "stores": self.kinds[STORE],
            "modifies": self.kinds[MODIFY],
            "ifetches": self.kinds[IFETCH],
            "reads": self.reads,
            "writes": self.writes,
            "pages_touched": self.pages_touched,
            "footprint_bytes": self.pages_touched << PAGE_SHIFT,
            "first_time": self.first_time,
            "last_time": self.last_time,
            "lines": self.lines,
            "footprint_over_time": [s.__dict__ for s in self.steps],
        }


def trace_info(
    path: str | Path, *, steps: int = 10, instructions: bool = True, fmt: str | None = None
) -> TraceInfo:
    """Scan a trace (any format) once: counts, distinct pages, footprint over time.

    Slices are equal shares of the records; the record count of a binary
    trace is in its header, other formats are counted in a first pass.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    fmt = fmt or detect_format(path)
    if fmt == "binary":
        header = read_header(path)
        total = header.records - (0 if instructions else header.ifetches)
    else:
        total = _count_records(path, fmt, instructions)
    # Slice i ends at record bounds[i]; the last slice takes whatever remains.
    bounds = [total * (i + 1) // steps for i in range(steps - 1)]
    src = open_source(path, fmt=fmt, instructions=instructions)
    acc = _Slices()
    pos = 0
    first_time = last_time = 0
    try:
        for t, pg, rw in src.blocks:
            if pos == 0 and len(t):
                first_time = int(t[0])
            i = 0
            while i < len(pg):
                n = len(acc.done)
                end = bounds[n] if n < len(bounds) else pos + len(pg)
                take = min(len(pg) - i, end - pos)
                if take <= 0:
                    acc.close()
                    continue
                acc.add(t[i : i + take], pg[i : i + take], rw[i : i + take])
                pos += take
                i += take
            if len(t):
                last_time = int(t[-1])
        acc.close()
    finally:
        src.close()
    k = tuple(int(x) for x in acc.kinds)
    return TraceInfo(
        str(path),
        fmt,
        src.time_unit,
        pos,
        (k[0], k[1], k[2], k[3]),
        len(acc.seen),
        first_time,
        last_time,
        src.lackey.lines if src.lackey else None,
        tuple(s for s in acc.done if s.records),
    )


def _count_records(path: str | Path, fmt: str, instructions: bool) -> int:
    src = open_source(path, fmt=fmt, instructions=instructions)
    try:
        return sum(len(pg) for _, pg, _ in src.blocks)
    finally:
        src.close()


class _Slices:
    """Accumulates the footprint-over-time slices of `trace_info`."""

    def __init__(self) -> None:
        self.done: list[FootprintStep] = []
        self.seen = np.empty(0, dtype=np.uint64)
        self.kinds = np.zeros(4, dtype=np.int64)
        self._reset(0)

    def _reset(self, first: int) -> None:
        self.first = first
        self.n = self.reads = self.writes = self.time_end = 0
        self.pages: list[npt.NDArray[np.uint64]] = []

    def add(self, t: npt.NDArray[Any], pg: npt.NDArray[Any], rw: npt.NDArray[Any]) -> None:
        c = np.bincount(rw, minlength=4)[:4]
        self.kinds += c
        self.n += len(pg)
        self.reads += int(c[LOAD] + c[IFETCH])
        self.writes += int(c[STORE] + c[MODIFY])
        self.pages.append(np.unique(pg))
        if len(t):
            self.time_end = int(t[-1])

    def close(self) -> None:
        ws = np.unique(np.concatenate(self.pages)) if self.pages else np.empty(0, np.uint64)
        new = np.setdiff1d(ws, self.seen, assume_unique=True)
        if len(new):
            self.seen = np.union1d(self.seen, new)
        self.done.append(
            FootprintStep(
                self.first,
                self.n,
                self.time_end,
                self.reads,
                self.writes,
                len(ws),
                len(new),
                len(self.seen),
            )
        )
        self._reset(self.first + self.n)


# --------------------------------------------------------------------------
# Replay support: the dense page numbering of a trace.


@dataclass(frozen=True)
class ReplayIndex:
    """A binary trace prepared for replay: its distinct pages, sorted.

    Replay maps each page to its rank among the distinct pages, so a trace's
    sparse virtual pages (heap, stack and libraries gigabytes apart) become a
    dense footprint ``0 .. pages_touched - 1`` in address order, which keeps
    neighbours neighbours.
    """

    path: str
    header: TraceHeader
    pages: npt.NDArray[np.uint64]
    records: int  # records replayed (instruction fetches excluded unless kept)


_REPLAY_CACHE: dict[tuple[str, int, int, bool], ReplayIndex] = {}


def replay_index(path: str | Path, *, instructions: bool = False) -> ReplayIndex:
    """Check a binary trace from end to end and index its pages (cached per file state)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise InputError(f"cannot read trace: {_why(exc)}", file=str(path)) from None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, instructions)
    hit = _REPLAY_CACHE.get(key)
    if hit is not None:
        return hit
    if detect_format(p) != "binary":
        raise InputError(
            "a trace workload replays tiersim binary traces; convert this one first with "
            "`tiersim trace convert FILE OUT.tstrace`",
            file=str(path),
        )
    header = read_header(p)
    parts: list[npt.NDArray[np.uint64]] = []
    pages = np.empty(0, dtype=np.uint64)
    n = 0
    for recs in iter_binary(p):
        pg = recs["page"] if instructions else recs["page"][recs["rw"] != IFETCH]
        n += len(pg)
        parts.append(np.unique(pg))
        if sum(len(x) for x in parts) > 1 << 22:
            pages = np.unique(np.concatenate([pages, *parts]))
            parts = []
    pages = np.unique(np.concatenate([pages, *parts])) if parts else pages
    if n == 0:
        only_fetches = header.ifetches > 0 and not instructions
        raise InputError(
            "the trace holds no accesses to replay"
            + (" (only instruction fetches; set instructions = true)" if only_fetches else ""),
            file=str(path),
        )
    index = ReplayIndex(str(path), header, pages, n)
    if len(_REPLAY_CACHE) > 8:
        _REPLAY_CACHE.clear()
    _REPLAY_CACHE[key] = index
    return index
