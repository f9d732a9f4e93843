"""Page corpora: real memory contents in a file, and a content model that serves them.

A corpus holds pages captured from a running process (``tiersim capture``)
or cut from any file. Zero pages and same-filled pages (one 8-byte word
repeated, what zswap and the swap layer detect) are stored as a kind and a
word, every other page as its 4096 bytes; so a corpus of a mostly idle heap
stays small, and the shares of zero and same-filled pages stay exact.

File layout (little-endian; documented in docs/traces.md)::

    offset 0      header, 64 bytes (`_HEADER`)
    offset 4096   data pages, data_pages x 4096 bytes, page-aligned
    then          records, pages x 17 bytes: address u64, kind u8, fill u64
    then          metadata, meta_length bytes of UTF-8 JSON (source, pid ...)

``kind`` is 0 (zero page), 1 (same-filled: ``fill`` is the word) or 2 (data:
``fill`` is the index of its data page). The header carries the counts and a
CRC-32 of the records, so a truncated or garbled corpus is refused with the
field that is wrong. Data come first so a capture streams them to disk as it
reads them; the records and metadata, known only at the end, follow.
"""

from __future__ import annotations

import bisect
import json
import mmap
import os
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ._atomic import atomic_output
from ._input import InputError

PAGE_SIZE = 4096
MAGIC = b"TSCORPUS"
VERSION = 1
HEADER_SIZE = 64
DATA_OFFSET = 4096
# magic, version, header size, page size, pages, data pages, zero pages,
# same-filled pages, data offset, metadata length, CRC-32 of the records.
_HEADER = struct.Struct("<8sHHIQQQQQII")
assert _HEADER.size == HEADER_SIZE
RECORD = np.dtype([("address", "<u8"), ("kind", "u1"), ("fill", "<u8")])
ZERO, SAME_FILLED, DATA = 0, 1, 2
KIND_NAMES = ("zero", "same-filled", "data")
_WORDS = PAGE_SIZE // 8


def classify(pages: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint64]]:
    """Kind and fill word of each row of an (n, 4096) byte array.

    Same-filled means every 8-byte word equal, as zswap's
    ``zswap_is_page_same_filled`` tests (the kernel's unsigned long); a zero
    page is its own kind, since the swap layer handles it before zswap.
    """
    words = np.ascontiguousarray(pages).view(np.uint64).reshape(len(pages), _WORDS)
    first = words[:, 0]
    same = (words == first[:, None]).all(axis=1)
    kinds = np.full(len(pages), DATA, dtype=np.uint8)
    kinds[same] = SAME_FILLED
    kinds[same & (first == 0)] = ZERO
    return kinds, first.copy()


@dataclass(frozen=True)
class CorpusSummary:
    pages: int
    zero_pages: int
    same_filled_pages: int
    data_pages: int

    @property
    def bytes_on_disk_saved(self) -> int:
        return (self.zero_pages + self.same_filled_pages) * PAGE_SIZE


class CorpusWriter:
    """Streams pages into a corpus file, which appears only when `close` succeeds."""

    def __init__(self, path: str | Path, meta: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.meta = dict(meta or {})
        self._records: list[npt.NDArray[Any]] = []
        self.counts = [0, 0, 0]
        self._out = atomic_output(self.path, "wb")
        self._file = self._out.__enter__()
        self._file.write(b"\0" * DATA_OFFSET)

    def add(self, addresses: npt.NDArray[np.uint64], data: bytes | bytearray | memoryview) -> None:
        """Add ``len(addresses)`` pages whose bytes are ``data``, in order."""
        n = len(addresses)
        if len(data) != n * PAGE_SIZE:
            raise ValueError(f"{n} addresses need {n * PAGE_SIZE} bytes, got {len(data)}")
        if n == 0:
            return
        pages = np.frombuffer(data, dtype=np.uint8).reshape(n, PAGE_SIZE)
        kinds, fill = classify(pages)
        recs = np.empty(n, dtype=RECORD)
        recs["address"] = addresses
        recs["kind"] = kinds
        is_data = kinds == DATA
        nd = int(is_data.sum())
        fill[is_data] = np.arange(self.counts[DATA], self.counts[DATA] + nd, dtype=np.uint64)
        recs["fill"] = fill
        if nd:
            self._file.write(pages[is_data].tobytes())
        for k in (ZERO, SAME_FILLED, DATA):
            self.counts[k] += int(np.count_nonzero(kinds == k))
        self._records.append(recs)

    @property
    def pages(self) -> int:
        return sum(self.counts)

    def close(self) -> CorpusSummary:
        if self.pages == 0:
            exc = InputError(
                "nothing to write: the corpus would hold no pages", file=str(self.path)
            )
            self.abort(exc)
            raise exc
        records = np.concatenate(self._records).tobytes()
        meta = json.dumps(self.meta, sort_keys=True).encode()
        self._file.write(records)
        self._file.write(meta)
        self._file.seek(0)
        self._file.write(
            _HEADER.pack(
                MAGIC,
                VERSION,
                HEADER_SIZE,
                PAGE_SIZE,
                self.pages,
                self.counts[DATA],
                self.counts[ZERO],
                self.counts[SAME_FILLED],
                DATA_OFFSET,
                len(meta),
                zlib.crc32(records),
            )
        )
        self._out.__exit__(None, None, None)
        return CorpusSummary(
            self.pages, self.counts[ZERO], self.counts[SAME_FILLED], self.counts[DATA]
        )

    def abort(self, exc: BaseException) -> None:
        self._out.__exit__(type(exc), exc, exc.__traceback__)


class Corpus:
    """A corpus file, checked and mapped read-only."""

    def __init__(
        self, path: str, records: npt.NDArray[Any], data: mmap.mmap | bytes, meta: dict[str, Any]
    ) -> None:
        self.path = path
        self.records = records
        self._data = data
        self.meta = meta
        kinds = records["kind"]
        self.zero_pages = int(np.count_nonzero(kinds == ZERO))
        self.same_filled_pages = int(np.count_nonzero(kinds == SAME_FILLED))
        self.data_pages = int(np.count_nonzero(kinds == DATA))

    def __len__(self) -> int:
        return len(self.records)

    def page(self, i: int) -> bytes:
        """The bytes of record ``i``."""
        kind = int(self.records["kind"][i])
        fill = int(self.records["fill"][i])
        return self._render(kind, fill)

    def _render(self, kind: int, fill: int) -> bytes:
        if kind == DATA:
            off = DATA_OFFSET + fill * PAGE_SIZE
            return bytes(self._data[off : off + PAGE_SIZE])
        return fill.to_bytes(8, "little") * _WORDS

    def address(self, i: int) -> int:
        return int(self.records["address"][i])


def load_corpus(path: str | Path) -> Corpus:
    """Open and check a corpus file; raises InputError naming the bad field."""
    source = str(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - kept open by the mapping
    except OSError as exc:
        raise InputError(f"cannot read corpus: {exc.strerror or exc}", file=source) from None
    with f:
        raw = f.read(HEADER_SIZE)
        size = os.fstat(f.fileno()).st_size
        if raw[:8] != MAGIC:
            raise InputError(
                "not a tiersim page corpus (bad magic); make one with `tiersim capture`",
                file=source,
                key="magic",
            )
        if len(raw) < HEADER_SIZE:
            raise InputError("header cut short", file=source, key="header")
        (_, version, hsize, psize, pages, ndata, nzero, nsame, doff, mlen, crc) = _HEADER.unpack(
            raw
        )
        if version != VERSION:
            raise InputError(
                f"corpus format version {version} is not supported (this tiersim reads {VERSION})",
                file=source,
                key="version",
            )
        if hsize != HEADER_SIZE or doff != DATA_OFFSET:
            raise InputError("header_size / data_offset garbled", file=source, key="header_size")
        if psize != PAGE_SIZE:
            raise InputError(
                f"pages of {psize} bytes; tiersim simulates {PAGE_SIZE}-byte pages",
                file=source,
                key="page_size",
            )
        if pages == 0:
            raise InputError("empty corpus: it holds no pages", file=source, key="pages")
        if nzero + nsame + ndata != pages:
            raise InputError(
                f"counts do not add up: {nzero} zero + {nsame} same-filled + {ndata} data "
                f"!= {pages} pages",
                file=source,
                key="pages",
            )
        rec_off = DATA_OFFSET + ndata * PAGE_SIZE
        expected = rec_off + pages * RECORD.itemsize + mlen
        if size != expected:
            what = "truncated" if size < expected else "has trailing bytes"
            raise InputError(
                f"{what}: the header describes {expected:,} bytes, the file has {size:,}",
                file=source,
                key="pages",
            )
        f.seek(rec_off)
        rec_bytes = f.read(pages * RECORD.itemsize)
        if zlib.crc32(rec_bytes) != crc:
            raise InputError("records garbled (CRC mismatch)", file=source, key="records")
        records = np.frombuffer(rec_bytes, dtype=RECORD)
        _check_records(records, ndata, nzero, nsame, source)
        try:
            meta = json.loads(f.read(mlen).decode()) if mlen else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"metadata is not JSON: {exc}", file=source, key="meta") from None
        data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    return Corpus(source, records, data, meta if isinstance(meta, dict) else {})


def _check_records(
    records: npt.NDArray[Any], ndata: int, nzero: int, nsame: int, source: str
) -> None:
    kinds = records["kind"]
    if (kinds > DATA).any():
        i = int(np.argmax(kinds > DATA))
        raise InputError(f"kind {int(kinds[i])} is not 0-2", file=source, key=f"records[{i}]")
    counts = np.bincount(kinds, minlength=3).tolist()
    if counts != [nzero, nsame, ndata]:
        raise InputError(
            f"records hold {counts} zero/same-filled/data pages, the header says "
            f"{[nzero, nsame, ndata]}",
            file=source,
            key="records",
        )
    fills = records["fill"][kinds == DATA]
    if not np.array_equal(fills, np.arange(ndata, dtype=np.uint64)):
        raise InputError("data page indexes garbled", file=source, key="records")
    same = records["fill"][kinds == SAME_FILLED]
    if (same == 0).any():
        raise InputError("a same-filled record has a zero word", file=source, key="records")


def corpus_from_file(
    src: str | Path, out: str | Path, *, max_pages: int | None = None
) -> CorpusSummary:
    """A corpus of a file's pages (a memory dump, a core file, any data).

    The last partial page is zero-padded; addresses are file offsets.
    """
    source = str(src)
    try:
        f = open(src, "rb")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", file=source) from None
    writer = CorpusWriter(out, {"source": "file", "file": Path(src).name})
    try:
        with f:
            offset = 0
            while max_pages is None or writer.pages < max_pages:
                want = 256 if max_pages is None else min(256, max_pages - writer.pages)
                block = f.read(want * PAGE_SIZE)
                if not block:
                    break
                if len(block) % PAGE_SIZE:
                    block += bytes(PAGE_SIZE - len(block) % PAGE_SIZE)
                n = len(block) // PAGE_SIZE
                addrs = offset + np.arange(n, dtype=np.uint64) * np.uint64(PAGE_SIZE)
                writer.add(addrs, block)
                offset += n * PAGE_SIZE
    except BaseException as exc:
        writer.abort(exc)
        raise
    if writer.pages == 0:
        empty = InputError("the file is empty: no pages to put in a corpus", file=source)
        writer.abort(empty)
        raise empty
    return writer.close()


# --------------------------------------------------------------------------
# The content model.


class CorpusContent:
    """Pages drawn from a corpus: the simulated devices compress what a real program held.

    A page's kind (zero, same-filled or data) is fixed by a hash of its id,
    in the corpus's proportions, so the shares of zero and same-filled pages
    are the captured ones and a write never turns a zero page into data.
    Within its kind, the corpus page is chosen by a hash of (page id,
    version): a write gives the page other real contents. Pages are served
    as captured, unstamped: their compressed sizes are exactly the corpus's.
    """

    def __init__(self, corpus: Corpus, seed: int = 0) -> None:
        from .content import _derive_seed

        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"content seed must be an integer, got {seed!r}")
        self.corpus = corpus
        self.seed = seed
        self._salt = _derive_seed(seed, "corpus")
        kinds = corpus.records["kind"]
        self._by_kind = [np.flatnonzero(kinds == k) for k in (ZERO, SAME_FILLED, DATA)]
        self._fills = [corpus.records["fill"][ix].tolist() for ix in self._by_kind]
        counts = [len(ix) for ix in self._by_kind]
        total = sum(counts)
        self._present = [k for k in (ZERO, SAME_FILLED, DATA) if counts[k]]
        acc = 0
        self._thresholds: list[int] = []
        for k in self._present[:-1]:
            acc += counts[k]
            self._thresholds.append(acc * (1 << 53) // total)
        self._name = f"corpus({Path(corpus.path).name})"

    @property
    def name(self) -> str:
        return self._name

    def _kind(self, z: int) -> int:
        return self._present[bisect.bisect_right(self._thresholds, z >> 11)]

    def page(self, page_id: int, version: int = 0) -> bytes:
        from .content import _VERSION_MUL, _page_hash

        z = _page_hash(int(page_id), self._salt)
        kind = self._kind(z)
        fills = self._fills[kind]
        w = ((z + int(version) * _VERSION_MUL) * 0x94D049BB133111EB) & ((1 << 64) - 1)
        return self.corpus._render(kind, fills[(w >> 11) % len(fills)])

    def page_class(self, page_id: int) -> int:
        from .content import PageClass, _page_hash

        kind = self._kind(_page_hash(int(page_id), self._salt))
        return int((PageClass.ZERO, PageClass.SAME_FILLED, PageClass.CORPUS)[kind])

    def classes(self, page_ids: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.int8]:
        from .content import PageClass, _page_hash_array

        z = _page_hash_array(page_ids, self._salt)
        klass = np.array(
            [
                int((PageClass.ZERO, PageClass.SAME_FILLED, PageClass.CORPUS)[k])
                for k in self._present
            ],
            dtype=np.int8,
        )
        th = np.asarray(self._thresholds, dtype=np.uint64)
        return klass[np.searchsorted(th, z >> np.uint64(11), side="right")]

    def __repr__(self) -> str:
        return f"<CorpusContent {self.corpus.path} seed={self.seed}>"


_CACHE: dict[tuple[str, int, int], Corpus] = {}


def corpus_content(path: object, seed: int = 0) -> CorpusContent:
    """The content model of ``content = { corpus = "PATH" }`` (path relative to the current
    directory). Corpora are cached per file state, so the variants of a scenario share one."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"content corpus must be a file path, got {path!r}")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f"cannot read corpus: {exc.strerror or exc}", file=path) from None
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    corpus = _CACHE.get(key)
    if corpus is None:
        corpus = load_corpus(path)
        if len(_CACHE) > 8:
            _CACHE.clear()
        _CACHE[key] = corpus
    return CorpusContent(corpus, seed)
