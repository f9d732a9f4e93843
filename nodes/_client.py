"""The one seam between the orchestrator and memory nodes.

`NodeClient` is what engine code talks to. Two implementations exist:
`LocalNodeClient` (nodes/_local.py) calls a device model in the same process,
and `GrpcNodeClient` (nodes/_grpc_client.py) speaks the wire contract to a
node server. Both return the same plain data types and raise the same
`NodeError`, so a scenario gives identical results through either.

All methods are coroutines: in-process calls never actually suspend, which
keeps the engine deterministic, while the gRPC client overlaps I/O.
Batches larger than the node's `max_batch_pages` are split by the client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable

from ._types import AllocateResult, BatchResult, NodeInfo, NodeStats, OpResult, PressureEvent


@runtime_checkable
class NodeClient(Protocol):
    """Asynchronous access to one memory node."""

    async def describe(self) -> NodeInfo:
        """Kind, capacities and latency profile of the node."""
        ...

    async def allocate(
        self, count: int, *, check: bool = False, size_hint: int = 0, now_ns: int = 0
    ) -> AllocateResult:
        """Reserve `count` handles; with `check`, ask node_private_allocated first.

        Raises NodeError(RESOURCE_EXHAUSTED) when refused (nothing reserved).
        """
        ...

    async def store(
        self, pages: Sequence[tuple[int, bytes]], *, check: bool = False, now_ns: int = 0
    ) -> BatchResult:
        """Write (handle, 4096 bytes) pairs; handle 0 allocates on the node first."""
        ...

    async def load(
        self, handles: Sequence[int], *, free_after: bool = False, now_ns: int = 0
    ) -> BatchResult:
        """Read pages; poisoned pages come back with code DATA_LOSS and empty data."""
        ...

    async def free(self, handles: Sequence[int], *, now_ns: int = 0) -> OpResult:
        """Zero and release pages (node_private_freed)."""
        ...

    async def zero(self, handles: Sequence[int], *, now_ns: int = 0) -> OpResult:
        """Zero pages in place, keeping them allocated."""
        ...

    async def stats(self) -> NodeStats: ...

    async def reset(self, seed: int = 0) -> None: ...

    def watch_pressure(self) -> AsyncIterator[PressureEvent]:
        """Pressure changes as they happen; the first event is the current state."""
        ...

    async def close(self) -> None: ...
