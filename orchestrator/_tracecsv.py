"""The CSV form of a trace, for traces produced by other tools.

A header line names the columns (any order, case-insensitive): one time
column whose name is its unit (``instructions``, ``time_ns`` or ``index``),
``page`` or ``address`` (decimal or 0x-hex; with an optional ``size`` an
access may straddle pages), and ``rw``. For example::

    instructions,address,size,rw
    1200,0x7ffd3c1a2f08,8,W
    1201,0x55d0c2a41000,4,R

It reads with ``pandas.read_csv`` as it is, and ``tiersim trace convert``
turns it into the binary form. Parsing is plain Python, about half a million rows
a second: CSV is for interchange, the binary form is for volume.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

import numpy as np
import numpy.typing as npt

from ._input import InputError
from ._lackey import IFETCH, LOAD, MODIFY, PAGE_SHIFT, STORE

Block = tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.uint8]]
_CSV_ROWS = 1 << 16
RW_LETTERS = "RWMI"

_RW_OF_TEXT = {
    "r": LOAD, "l": LOAD, "load": LOAD, "read": LOAD, "0": LOAD,
    "w": STORE, "s": STORE, "store": STORE, "write": STORE, "1": STORE,
    "m": MODIFY, "modify": MODIFY, "rw": MODIFY, "2": MODIFY,
    "i": IFETCH, "ifetch": IFETCH, "instruction": IFETCH, "3": IFETCH,
}  # fmt: skip
_CSV_TIME_COLUMNS = {
    "instructions": "instructions",
    "time_ns": "ns",
    "ns": "ns",
    "index": "index",
    "time": "index",
}
CSV_TIME_NAME = {"instructions": "instructions", "ns": "time_ns", "index": "index"}


def csv_blocks(stream: IO[str], source: str) -> tuple[str, Iterator[Block]]:
    """The time unit named by the header, and record blocks of a CSV trace.

    Columns (any order, matched by name, case-insensitive): a time column
    (``instructions``, ``time_ns`` or ``index``), ``page`` or ``address``
    (decimal or 0x-hex; with an optional ``size`` an access may straddle
    pages), and ``rw`` (R, W, M, I or load/store/modify/ifetch). Lines
    starting with ``#`` and blank lines are skipped.
    """
    line_no = 0
    header: list[str] | None = None
    for raw in stream:
        line_no += 1
        text = raw.strip()
        if text and not text.startswith("#"):
            header = [c.strip().lower() for c in text.split(",")]
            break
    if header is None:
        raise InputError("empty CSV trace: no header line", file=source, line=line_no or None)
    cols = {name: i for i, name in enumerate(header)}
    time_cols = [c for c in header if c in _CSV_TIME_COLUMNS]
    if len(time_cols) != 1:
        raise InputError(
            f"the header {','.join(header)!r} needs exactly one time column "
            f"({', '.join(_CSV_TIME_COLUMNS)})",
            file=source,
            line=line_no,
            key="header",
        )
    if ("page" in cols) == ("address" in cols):
        raise InputError(
            "the header needs a 'page' or an 'address' column",
            file=source,
            line=line_no,
            key="header",
        )
    if "rw" not in cols:
        raise InputError("the header needs an 'rw' column", file=source, line=line_no, key="header")
    unit = _CSV_TIME_COLUMNS[time_cols[0]]
    ti, ri = cols[time_cols[0]], cols["rw"]
    by_address = "address" in cols
    ai = cols["address" if by_address else "page"]
    si = cols.get("size")
    ncols = len(header)
    first_data_line = line_no

    def blocks() -> Iterator[Block]:
        nonlocal line_no
        times: list[int] = []
        pages: list[int] = []
        kinds: list[int] = []
        last = 0
        line_no = first_data_line
        for raw in stream:
            line_no += 1
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split(",")
            if len(parts) != ncols:
                raise InputError(
                    f"expected {ncols} fields ({','.join(header)}), "
                    f"got {len(parts)}: {text[:60]!r}",
                    file=source,
                    line=line_no,
                )
            field_name = header[ti]
            try:
                t = int(parts[ti], 0)
                field_name = header[ai]
                a = int(parts[ai], 0)
                field_name = "size"
                size = int(parts[si], 0) if si is not None else 1
            except ValueError:
                raise InputError(
                    f"not an integer: {text[:60]!r}", file=source, line=line_no, key=field_name
                ) from None
            kind = _RW_OF_TEXT.get(parts[ri].strip().lower())
            if kind is None:
                raise InputError(
                    f"rw {parts[ri].strip()!r} is not R, W, M or I",
                    file=source,
                    line=line_no,
                    key="rw",
                )
            if t < 0 or a < 0 or size < 0:
                raise InputError("negative value", file=source, line=line_no)
            if t < last:
                raise InputError(
                    f"time goes backwards ({t} after {last})", file=source, line=line_no, key="time"
                )
            last = t
            if by_address:
                first = a >> PAGE_SHIFT
                end = (a + max(size, 1) - 1) >> PAGE_SHIFT
            else:
                first = end = a
            if first >= 1 << 64 or end >= 1 << 64:
                raise InputError("page number beyond 64 bits", file=source, line=line_no)
            for p in range(first, end + 1):
                times.append(t)
                pages.append(p)
                kinds.append(kind)
            if len(pages) >= _CSV_ROWS:
                yield _arrays(times, pages, kinds)
                times, pages, kinds = [], [], []
        if pages:
            yield _arrays(times, pages, kinds)

    return unit, blocks()


def _arrays(times: list[int], pages: list[int], kinds: list[int]) -> Block:
    return (
        np.array(times, dtype=np.uint64),
        np.array(pages, dtype=np.uint64),
        np.array(kinds, dtype=np.uint8),
    )
