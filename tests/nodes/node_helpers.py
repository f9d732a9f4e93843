"""Helpers shared by the memory-node tests (a unique module name: conftest is per directory)."""

from __future__ import annotations

import lz4.block
import numpy as np

from tiersim.nodes import PAGE_SIZE
from tiersim.nodes.testing import ZERO, heap_page, random_page, text_corpus, text_page


def lz4_payload(page: bytes) -> int:
    """Media a cram node spends on `page`: 0 if zero, else its lz4 size, or 4096 if not smaller."""
    if page == ZERO:
        return 0
    n = len(lz4.block.compress(page, store_size=False))
    return PAGE_SIZE if n >= PAGE_SIZE else n


class Pages:
    """Seeded page contents of each kind."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        self.corpus = text_corpus(self.rng, 1 << 18)

    def text(self) -> bytes:
        return text_page(self.rng, self.corpus)

    def heap(self) -> bytes:
        return heap_page(self.rng)

    def random(self) -> bytes:
        return random_page(self.rng)

    def zero(self) -> bytes:
        return ZERO

    def mixed(self, n: int) -> list[bytes]:
        makers = (self.text, self.heap, self.zero, self.random)
        return [makers[i % 4]() for i in range(n)]
