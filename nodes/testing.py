"""Helpers for tests: real node servers on loopback, in this process.

    from tiersim.nodes import node_config
    from tiersim.nodes.testing import running_node

    async with running_node(node_config("cram", "64MiB", "8MiB")) as client:
        result = await client.store([(0, page)])

The server runs on the test's own event loop, so the test can also inspect
the device model directly (`running_server(...)` yields the NodeServer).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np

from ._config import NodeConfig, ServerOptions, node_config
from ._grpc_client import GrpcNodeClient
from ._server import NodeServer
from ._types import PAGE_SIZE


def _config(config: NodeConfig | None, settings: dict[str, Any]) -> NodeConfig:
    if config is not None:
        if settings:
            raise TypeError("give either a NodeConfig or settings, not both")
        return config
    settings.setdefault("kind", "cram")
    settings.setdefault("advertised", "64MiB")
    if settings["kind"] == "cram":
        settings.setdefault("physical", "16MiB")
    return node_config(**settings)


@asynccontextmanager
async def running_server(
    config: NodeConfig | None = None,
    *,
    options: ServerOptions | None = None,
    **settings: Any,
) -> AsyncIterator[NodeServer]:
    """A started NodeServer on 127.0.0.1 (a free port), stopped on exit.

    Give a NodeConfig, or settings as for `node_config` (default: a cram node
    advertising 64 MiB over 16 MiB of media).
    """
    server = NodeServer(_config(config, settings), options or ServerOptions())
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0.5)


@asynccontextmanager
async def running_node(
    config: NodeConfig | None = None,
    *,
    options: ServerOptions | None = None,
    timeout: float = 5.0,
    **settings: Any,
) -> AsyncIterator[GrpcNodeClient]:
    """A node server on loopback and a GrpcNodeClient connected to it."""
    async with running_server(config, options=options, **settings) as server:
        client = await GrpcNodeClient.connect(server.address, timeout)
        try:
            yield client
        finally:
            await client.close()


# ---------------------------------------------------------------- page contents
#
# Small seeded content models for tests and benchmarks. Real bytes, so lz4
# finds whatever ratio these contents really have; nothing here sets a ratio.

_SYLLABLES = (
    "the",
    "an",
    "of",
    "to",
    "in",
    "is",
    "it",
    "as",
    "on",
    "at",
    "be",
    "by",
    "or",
    "we",
    "re",
    "de",
    "ing",
    "ion",
    "ent",
    "ter",
    "con",
    "pro",
    "mem",
    "ory",
    "page",
    "node",
    "swap",
    "cache",
    "list",
    "free",
    "kern",
    "map",
    "fault",
    "tier",
    "zone",
    "slab",
    "lru",
)


def text_corpus(rng: np.random.Generator, size: int) -> bytes:
    """English-like text: Zipf-distributed words, punctuation and line breaks."""
    words = [
        "".join(rng.choice(_SYLLABLES, size=int(rng.integers(1, 4))).tolist()) for _ in range(2000)
    ]
    ranks = np.minimum(rng.zipf(1.3, size=size // 4), len(words)) - 1
    out: list[str] = []
    total = 0
    for i, r in enumerate(ranks.tolist()):
        w = words[r]
        sep = ".\n" if i % 97 == 96 else (", " if i % 13 == 12 else " ")
        out.append(w + sep)
        total += len(w) + len(sep)
        if total >= size:
            break
    return "".join(out).encode()[:size]


def text_page(rng: np.random.Generator, corpus: bytes) -> bytes:
    start = int(rng.integers(0, len(corpus) - PAGE_SIZE))
    return corpus[start : start + PAGE_SIZE]


def heap_page(rng: np.random.Generator) -> bytes:
    """A page of 64-bit words as a heap holds them: pointers into a few arenas,
    small integers, zeros, and some doubles."""
    n = PAGE_SIZE // 8
    kind = rng.choice(4, size=n, p=[0.35, 0.3, 0.25, 0.1])
    arenas = np.array([0x7F3A_1000_0000, 0x5555_5600_0000, 0x7FFC_D000_0000], dtype=np.uint64)
    ptr = arenas[rng.integers(0, 3, size=n)] + (rng.integers(0, 1 << 20, size=n) * 16).astype(
        np.uint64
    )
    small = rng.integers(0, 256, size=n).astype(np.uint64)
    dbl = rng.normal(100.0, 30.0, size=n).astype(np.float64).view(np.uint64)
    words = np.where(kind == 0, ptr, np.where(kind == 1, small, np.where(kind == 2, 0, dbl)))
    return words.astype("<u8").tobytes()


def random_page(rng: np.random.Generator) -> bytes:
    return rng.bytes(PAGE_SIZE)


ZERO = bytes(PAGE_SIZE)


def mixed_pages(
    n: int,
    seed: int = 0,
    *,
    text: float = 0.35,
    heap: float = 0.35,
    zero: float = 0.15,
    random: float = 0.15,
) -> list[bytes]:
    """`n` pages drawn from the content models in the given proportions."""
    rng = np.random.default_rng(seed)
    corpus = text_corpus(rng, 1 << 20) if text else b""
    weights = np.array([text, heap, zero, random], dtype=float)
    kinds = rng.choice(4, size=n, p=weights / weights.sum()).tolist()
    pages: list[bytes] = []
    for k in kinds:
        if k == 0:
            pages.append(text_page(rng, corpus))
        elif k == 1:
            pages.append(heap_page(rng))
        elif k == 2:
            pages.append(ZERO)
        else:
            pages.append(random_page(rng))
    return pages
