"""Compressed CXL memory ("cram"): advertises more than its media holds.

Every page written is compressed with lz4 on its real bytes. The media
spends the compressed size plus a per-page overhead (translation entry,
alignment); an all-zero page spends only the overhead, and a page lz4 cannot
shrink below a page is kept raw. "Says 8 GB, has 1 GB": when the data
compresses worse than the device hoped, a write finds no room and the page is
poisoned or a machine check is raised (see MemoryDevice.store). Reference:
Gregory Price's N_PRIVATE / mm/cram.c series (KERNEL.md, "Private / compressed
memory nodes").
"""

from __future__ import annotations

import lz4.block

from ._device import ZERO_ENCODED, Encoded, MemoryDevice
from ._types import PAGE_SIZE, NodeKind, PageData

_compress = lz4.block.compress
_decompress = lz4.block.decompress
_PACKED_ZERO_PAGE = _compress(bytes(PAGE_SIZE), store_size=False)


def lay_out_packed(data: PageData, n: int, packed: bytes) -> Encoded:
    """How a page lies on the media, given lz4's output for it (`n` bytes long).

    `packed` is only read when it is shorter than a page; a non-zero page
    whose output is 0 bytes long does not exist, so the lz4 worker reports a
    page of zeros as length 0 (see _lz4_worker.py).
    """
    if n >= PAGE_SIZE:
        # Incompressible: keep the page as-is (zswap does the same since ~6.18).
        return bytes(data), PAGE_SIZE, PAGE_SIZE, n
    if n == 0:
        return ZERO_ENCODED
    return packed, n, PAGE_SIZE, n


def _lay_out(data: PageData, packed: bytes) -> Encoded:
    return lay_out_packed(data, len(packed), packed)


class CramDevice(MemoryDevice):
    """Compressed memory node."""

    kind = NodeKind.CRAM
    compresses = True

    def _encode(self, data: PageData) -> Encoded:
        return _lay_out(data, _compress(data, store_size=False))

    def _encode_page(self, data: PageData) -> Encoded:
        if type(data) is bytes:
            return super()._encode_page(data)
        # A view of a received message: compress it in place rather than copy it to
        # test for zeros. lz4 output determines its input, so only a page of zeros
        # compresses to what a page of zeros does.
        packed = _compress(data, store_size=False)
        return ZERO_ENCODED if packed == _PACKED_ZERO_PAGE else _lay_out(data, packed)

    def _decode(self, blob: bytes, size: int) -> tuple[bytes, int]:
        if size == PAGE_SIZE:
            return blob, 0
        return _decompress(blob, uncompressed_size=PAGE_SIZE), PAGE_SIZE
