"""Valgrind lackey traces, parsed a block at a time with numpy.

``valgrind --tool=lackey --trace-mem=yes PROGRAM`` prints one line per
instruction fetch and data access::

    I  0401ab70,3          instruction fetch: address, size
     L 04222cc0,8          load
     S 1ffefffd68,8        store
     M 0421ee70,4          modify (load then store of the same bytes)

interleaved with Valgrind's own messages (``==PID== ...``, ``--PID-- ...``,
``valgrind: ...``). A small program emits millions of these lines, so a
line-by-line Python parser would be the bottleneck of every import. Here a
block of complete lines (megabytes) is parsed with a dozen numpy passes:
line starts from the newline positions, the kind from the first three
bytes, the hexadecimal address and decimal size from per-column digit
lookups. Python work is per block, not per line, and memory stays bounded
by the block size whatever the length of the trace.

Every line must be one of the forms above; anything else is reported with
its line number, because a trace that parses "mostly" would silently change
the access counts a study is built on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, NoReturn

import numpy as np
import numpy.typing as npt

from ._input import InputError

BLOCK_BYTES = 8 << 20
# A longer "line" means the input is not a lackey trace (or not text at all).
MAX_LINE_BYTES = 4096

PAGE_SHIFT = 12

# Access kinds, as stored in tiersim traces (see traces.py).
LOAD, STORE, MODIFY, IFETCH = 0, 1, 2, 3

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_DEC = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789"):
    _DEC[_c] = _i

_KIND_OF_BYTE = np.full(256, 255, dtype=np.uint8)
_KIND_OF_BYTE[ord("L")] = LOAD
_KIND_OF_BYTE[ord("S")] = STORE
_KIND_OF_BYTE[ord("M")] = MODIFY

# Valgrind's own output: its messages, debug lines and errors.
_MESSAGE_PREFIXES = (b"==", b"--", b"valgrind:", b"**")
_MAX_MESSAGES = 200


Arrays = tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.uint8]]


@dataclass
class LackeyParser:
    """Incremental parser: feed it blocks of whole lines, get (time, page, rw) arrays.

    ``time`` is the instruction count: the index of the instruction whose
    fetch line precedes the access (lackey prints an instruction's fetch,
    then its data accesses). It counts every instruction whether or not
    instruction fetches are kept, so it measures program progress either way.
    An access that straddles a page boundary yields one record per page.
    """

    source: str
    instructions: bool = False
    page_shift: int = PAGE_SHIFT
    lines: int = 0
    instruction_count: int = 0
    # Lines of each kind (before any page split): loads, stores, modifies, fetches.
    kinds: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    messages: list[str] = field(default_factory=list)

    def parse(self, stream: IO[bytes], tee: IO[bytes] | None = None) -> Iterator[Arrays]:
        """Parse a whole stream block by block; ``tee`` receives the raw bytes too."""
        rest = b""
        while True:
            chunk = stream.read(BLOCK_BYTES)
            if tee is not None and chunk:
                tee.write(chunk)
            if not chunk:
                break
            first = chunk.find(b"\n") + 1
            if first == 0:
                rest += chunk
                if len(rest) > MAX_LINE_BYTES:
                    self._fail(self.lines + 1, rest[:60], "line too long for a lackey trace")
                continue
            # The line cut by the previous block on its own, then the block's
            # whole lines without copying them.
            if rest:
                yield self.feed(rest + chunk[:first])
            else:
                first = 0
            cut = chunk.rfind(b"\n") + 1
            if cut > first:
                yield self.feed(memoryview(chunk)[first:cut])
            rest = chunk[cut:]
        if rest:
            # A last line without its newline: fine if whole, an error if cut short.
            yield self.feed(rest + b"\n")

    def feed(self, data: bytes | memoryview) -> Arrays:
        """Parse ``data``, which must end with a newline."""
        n_data = len(data)
        buf = np.empty(n_data + 16, dtype=np.uint8)  # padded: fields are read 16 bytes wide
        buf[:n_data] = np.frombuffer(data, dtype=np.uint8)
        buf[n_data:] = 0
        nl = np.flatnonzero(buf[:n_data] == 10)
        n = len(nl)
        first_line = self.lines + 1
        self.lines += n
        starts = np.empty(n, dtype=np.int64)
        starts[0] = 0
        starts[1:] = nl[:-1] + 1
        ends = nl.astype(np.int64)
        cr = buf[ends - 1] == 13  # CRLF line ends (a trace copied through Windows)
        if cr.any():
            cr &= ends > starts
            ends[cr] -= 1
        length = ends - starts
        c0 = buf[starts]
        c1 = buf[starts + 1]
        c2 = buf[starts + 2]
        is_instr = (c0 == ord("I")) & (c1 == 32) & (c2 == 32) & (length >= 6)
        kind_byte = _KIND_OF_BYTE[c1]
        is_data = (c0 == 32) & (kind_byte != 255) & (c2 == 32) & (length >= 6)
        other = ~(is_instr | is_data) & (length > 0)
        if other.any():
            self._classify_other(data, starts, ends, np.flatnonzero(other), first_line)

        icum = np.cumsum(is_instr, dtype=np.int64)
        before = self.instruction_count
        self.instruction_count += int(icum[-1]) if n else 0
        n_instr = int(icum[-1]) if n else 0
        self.kinds[IFETCH] += n_instr
        if self.instructions:
            acc = np.flatnonzero(is_instr | is_data)
        else:
            # Fetch lines only count instructions: check their shape (a comma
            # before a one- or two-digit size), parse nothing else of them.
            fetch = np.flatnonzero(is_instr)
            e = ends[fetch]
            shaped = (buf[e - 2] == 44) | (buf[e - 3] == 44)
            odd = fetch[~shaped]
            acc = np.flatnonzero(is_data)
            if len(odd):  # unusual but maybe valid: parse those fully
                acc = np.union1d(acc, odd)
        if acc.size == 0:
            empty_u = np.empty(0, dtype=np.uint64)
            return empty_u, empty_u.copy(), np.empty(0, dtype=np.uint8)

        s = starts[acc] + 3
        e = ends[acc]
        # The comma is a few bytes before the line's end (sizes have 1-2 digits).
        comma = np.full(len(e), -1, dtype=np.int64)
        todo = np.arange(len(e))
        for k in range(2, 13):
            pos = e[todo] - k
            hit = buf[np.maximum(pos, 0)] == 44
            comma[todo[hit]] = pos[hit]
            todo = todo[~hit & (pos > s[todo])]
            if not len(todo):
                break
        alen = comma - s
        slen = e - comma - 1
        valid = (comma > 0) & (alen >= 1) & (alen <= 16) & (slen >= 1) & (slen <= 10)
        addr, bad_a = _parse_digits(buf, s, np.where(valid, alen, 1), _HEX, 16)
        size, bad_s = _parse_decimal(buf, comma + 1, np.where(valid, slen, 1))
        valid &= ~(bad_a | bad_s)
        if not valid.all():
            i = int(acc[np.argmin(valid)])
            line = bytes(data[starts[i] : ends[i]])
            self._fail(first_line + i, line, "expected ADDRESS,SIZE (hexadecimal, decimal)")

        instr = is_instr[acc]
        rw = np.where(instr, np.uint8(IFETCH), kind_byte[acc]).astype(np.uint8)
        counts = np.bincount(rw, minlength=4)
        for k in (LOAD, STORE, MODIFY):
            self.kinds[k] += int(counts[k])
        time = np.maximum(before + icum[acc] - 1, 0).astype(np.uint64)
        if not self.instructions:
            keep = ~instr
            addr, size, rw, time = addr[keep], size[keep], rw[keep], time[keep]
        shift = np.uint64(self.page_shift)
        first = addr >> shift
        last = (addr + np.maximum(size, np.uint64(1)) - np.uint64(1)) >> shift
        span = (last - first + np.uint64(1)).astype(np.int64)
        if (span > 1).any():
            total = int(span.sum())
            offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(span) - span, span)
            first = np.repeat(first, span) + offsets.astype(np.uint64)
            time = np.repeat(time, span)
            rw = np.repeat(rw, span)
        return time, first, rw

    def _classify_other(
        self,
        data: bytes | memoryview,
        starts: npt.NDArray[np.int64],
        ends: npt.NDArray[np.int64],
        idx: npt.NDArray[np.intp],
        first_line: int,
    ) -> None:
        """Valgrind's own messages are kept (a few) for error reports; anything else is wrong."""
        for i in idx.tolist():
            line = bytes(data[starts[i] : ends[i]])
            if line.startswith(_MESSAGE_PREFIXES):
                if len(self.messages) < _MAX_MESSAGES:
                    self.messages.append(line.decode("utf-8", "replace"))
                continue
            self._fail(first_line + i, line, "unknown line format")

    def _fail(self, line_no: int, line: bytes, why: str) -> NoReturn:
        text = line[:60].decode("utf-8", "replace")
        raise InputError(
            f"{why}: {text!r} (a lackey trace has lines 'I  ADDR,SIZE', ' L ADDR,SIZE', "
            f"' S ADDR,SIZE', ' M ADDR,SIZE' and Valgrind's '==PID==' messages)",
            file=self.source,
            line=line_no,
        )


def _parse_digits(
    buf: npt.NDArray[np.uint8],
    start: npt.NDArray[np.int64],
    length: npt.NDArray[np.int64],
    table: npt.NDArray[np.uint8],
    base: int,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
    """Numbers of ``length[i]`` digits (base 16 or 10) at ``start[i]``.

    A trace has few distinct field widths (lackey prints addresses with 8 to
    12 hex digits, sizes with 1 or 2), so fields are parsed one width at a
    time: copied out through a strided view of the buffer (a row of bytes per
    field, no index matrix), mapped to digit values, and combined. Hex
    digits are packed two to a byte, right-aligned in 8 bytes and read as
    one big-endian 64-bit word; decimal ones are weighted by powers of ten.
    ``buf`` must extend at least 16 bytes past the last field. Returns the
    values and which fields had a non-digit.
    """
    n = len(start)
    value = np.zeros(n, dtype=np.uint64)
    bad = np.zeros(n, dtype=np.bool_)
    if n == 0:
        return value, bad
    widths = np.flatnonzero(np.bincount(length)).tolist()
    top = max(widths)
    view = np.lib.stride_tricks.as_strided(buf, shape=(len(buf) - top + 1, top), strides=(1, 1))
    for width in widths:
        sel = np.flatnonzero(length == width) if len(widths) > 1 else None
        rows = view[start if sel is None else start[sel], :width]
        digits = table[rows]
        wrong = (digits == 255).any(axis=1)
        if base == 16:
            if width % 2:
                digits = np.concatenate([np.zeros((len(digits), 1), np.uint8), digits], axis=1)
            nbytes = digits.shape[1] // 2
            packed = np.zeros((len(digits), 8), dtype=np.uint8)
            packed[:, 8 - nbytes :] = (digits[:, 0::2] << 4) | digits[:, 1::2]
            got = packed.view(">u8").ravel().astype(np.uint64)
        else:
            place = np.array([10 ** (width - 1 - j) for j in range(width)], dtype=np.uint64)
            got = (digits.astype(np.uint64) * place).sum(axis=1, dtype=np.uint64)
        if sel is None:
            value, bad = got, wrong
        else:
            value[sel] = got
            bad[sel] = wrong
    return value, bad


def _parse_decimal(
    buf: npt.NDArray[np.uint8], start: npt.NDArray[np.int64], length: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
    """Short decimal fields (access sizes: one or two digits), a digit column at a time."""
    value = np.zeros(len(start), dtype=np.uint64)
    bad = np.zeros(len(start), dtype=np.bool_)
    width = int(length.max()) if len(length) else 0
    for j in range(width):
        d = _DEC[buf[start + j]]
        more = length > j
        bad |= more & (d == 255)
        step = value * np.uint64(10) + d.astype(np.uint64)
        value = step if j == 0 else np.where(more, step, value)
    return value, bad
