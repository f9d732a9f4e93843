"""In-process NodeClient: direct calls into a device model.

The engine's tests and single-process runs use it. It never suspends while a
model call runs, so a sequence of requests gives the same results as the
same sequence sent to a node server through GrpcNodeClient: both split
batches at the node's max_batch_pages in the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

import grpc

from tiersim._errors import NodeError

from ._config import NodeConfig
from ._device import MemoryDevice
from ._factory import make_device
from ._types import AllocateResult, BatchResult, NodeInfo, NodeStats, OpResult, PressureEvent

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """Split a request into node-sized batches (a single empty chunk for an empty request,
    so the node answers it with its own INVALID_ARGUMENT)."""
    if len(items) <= size:
        return [items]
    return [items[i : i + size] for i in range(0, len(items), size)]


def merge_batches(parts: list[BatchResult]) -> BatchResult:
    """One result for a request that went out as several batches."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    merged = BatchResult(
        handles=list(first.handles),
        codes=list(first.codes),
        stored_bytes=list(first.stored_bytes),
        costs_ns=list(first.costs_ns),
        messages=list(first.messages),
        data=list(first.data),
        cost_ns=first.cost_ns,
        state=parts[-1].state,
    )
    for part in parts[1:]:
        merged.handles += part.handles
        merged.codes += part.codes
        merged.stored_bytes += part.stored_bytes
        merged.costs_ns += part.costs_ns
        merged.messages += part.messages
        merged.data += part.data
        merged.cost_ns += part.cost_ns
    return merged


def merge_ops(parts: list[OpResult]) -> OpResult:
    if len(parts) == 1:
        return parts[0]
    return OpResult(
        count=sum(p.count for p in parts),
        cost_ns=sum(p.cost_ns for p in parts),
        state=parts[-1].state,
    )


class LocalNodeClient:
    """NodeClient over a device model in this process."""

    def __init__(self, device: MemoryDevice) -> None:
        self.device = device
        self._max_batch = device.config.max_batch_pages
        self._closed = False

    @classmethod
    def from_config(cls, config: NodeConfig) -> LocalNodeClient:
        return cls(make_device(config))

    def _check_open(self) -> None:
        if self._closed:
            raise NodeError(grpc.StatusCode.CANCELLED, "client is closed")

    def _split(self, items: Sequence[T], call: Callable[[Sequence[T]], BatchResult]) -> BatchResult:
        return merge_batches([call(part) for part in chunks(items, self._max_batch)])

    async def describe(self) -> NodeInfo:
        self._check_open()
        return self.device.info()

    async def allocate(
        self, count: int, *, check: bool = False, size_hint: int = 0, now_ns: int = 0
    ) -> AllocateResult:
        self._check_open()
        return self.device.allocate(count, check=check, size_hint=size_hint, now_ns=now_ns)

    async def store(
        self, pages: Sequence[tuple[int, bytes]], *, check: bool = False, now_ns: int = 0
    ) -> BatchResult:
        self._check_open()
        return self._split(pages, lambda part: self.device.store(part, check=check, now_ns=now_ns))

    async def load(
        self, handles: Sequence[int], *, free_after: bool = False, now_ns: int = 0
    ) -> BatchResult:
        self._check_open()
        return self._split(
            handles, lambda part: self.device.load(part, free_after=free_after, now_ns=now_ns)
        )

    async def free(self, handles: Sequence[int], *, now_ns: int = 0) -> OpResult:
        self._check_open()
        parts = chunks(handles, self._max_batch)
        return merge_ops([self.device.free(part, now_ns=now_ns) for part in parts])

    async def zero(self, handles: Sequence[int], *, now_ns: int = 0) -> OpResult:
        self._check_open()
        parts = chunks(handles, self._max_batch)
        return merge_ops([self.device.zero(part, now_ns=now_ns) for part in parts])

    async def stats(self) -> NodeStats:
        self._check_open()
        return self.device.stats()

    async def reset(self, seed: int = 0) -> None:
        self._check_open()
        self.device.reset(seed)

    async def watch_pressure(self) -> AsyncIterator[PressureEvent]:
        self._check_open()
        sub = self.device.subscribe()
        try:
            while True:
                yield await sub.get()
        except EOFError:
            return
        finally:
            sub.close()

    async def close(self) -> None:
        self._closed = True
