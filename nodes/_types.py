"""Plain data types of the node API, shared by device models and both clients.

These mirror the messages of `protos/tiersim/v1/node.proto` one to one, so a
result obtained in-process and one obtained over gRPC compare equal. Batch
results are columnar (one list per field) rather than one object per page:
the engine moves hundreds of thousands of pages a second through them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import grpc

PAGE_SIZE = 4096
# Page data as a device accepts it: bytes, or a view of a received message.
PageData = bytes | bytearray | memoryview
CACHELINE = 64


class NodeKind(enum.IntEnum):
    """Device kinds; values equal the proto enum `tiersim.v1.NodeKind`."""

    DRAM = 1
    CXL = 2
    CRAM = 3
    STORAGE = 4

    @classmethod
    def parse(cls, name: str) -> NodeKind:
        try:
            return cls[name.upper()]
        except KeyError:
            kinds = ", ".join(k.name.lower() for k in cls)
            raise ValueError(f"unknown node kind {name!r} (expected one of: {kinds})") from None


class OverflowMode(enum.IntEnum):
    """What a compressed node does when a write finds no physical room."""

    POISON = 1
    MACHINE_CHECK = 2

    @classmethod
    def parse(cls, name: str) -> OverflowMode:
        key = name.upper().replace("-", "_")
        try:
            return cls[key]
        except KeyError:
            raise ValueError(
                f"unknown overflow mode {name!r} (expected poison or machine-check)"
            ) from None


# google.rpc.Code values used in per-page results.
OK = grpc.StatusCode.OK.value[0]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
DATA_LOSS = grpc.StatusCode.DATA_LOSS.value[0]


@dataclass(frozen=True, slots=True)
class LatencyProfile:
    read_base_ns: int
    write_base_ns: int
    per_cacheline_ns: float
    compress_ns_per_byte: float = 0.0
    decompress_ns_per_byte: float = 0.0
    bandwidth_bytes_per_sec: int = 0
    jitter_sigma: float = 0.0
    source: str = ""


@dataclass(frozen=True, slots=True)
class Watermarks:
    """Free-physical-bytes watermarks: at/below low -> pressure 1000, at/above high -> 0."""

    low_free_bytes: int
    high_free_bytes: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    kind: NodeKind
    advertised_bytes: int
    physical_bytes: int
    page_size: int
    latency: LatencyProfile
    watermarks: Watermarks
    overflow_mode: OverflowMode
    per_page_overhead_bytes: int
    max_batch_pages: int
    seed: int
    version: str

    @property
    def advertised_pages(self) -> int:
        return self.advertised_bytes // PAGE_SIZE


@dataclass(frozen=True, slots=True)
class NodeState:
    """Occupancy after an operation; returned with every mutating reply."""

    pressure: int
    physical_used_bytes: int
    free_bytes: int
    allocated_pages: int


@dataclass(slots=True)
class BatchResult:
    """Outcome of a batch of stores or loads, one list entry per page, in order.

    `codes` holds google.rpc.Code values (OK, RESOURCE_EXHAUSTED for a refused
    checked allocation, DATA_LOSS for a poisoned page ...). `data` is filled
    for loads only (empty bytes where the load failed).
    """

    handles: list[int]
    codes: list[int]
    stored_bytes: list[int]
    costs_ns: list[int]
    messages: list[str]
    data: list[bytes]
    cost_ns: int
    state: NodeState

    @property
    def ok(self) -> bool:
        return all(c == OK for c in self.codes)


@dataclass(frozen=True, slots=True)
class AllocateResult:
    handles: list[int]
    cost_ns: int
    state: NodeState


@dataclass(frozen=True, slots=True)
class OpResult:
    """Outcome of free or zero: how many pages, their device time, the state after."""

    count: int
    cost_ns: int
    state: NodeState


@dataclass(frozen=True, slots=True)
class PressureEvent:
    pressure: int
    free_bytes: int
    physical_used_bytes: int
    sequence: int
    time_ns: int


@dataclass(slots=True)
class NodeStats:
    """Counters of a node; field names equal those of `tiersim.v1.NodeStats`."""

    name: str
    kind: NodeKind
    allocated_pages: int = 0
    stored_pages: int = 0
    zero_pages: int = 0
    poisoned_pages: int = 0
    logical_bytes: int = 0
    stored_bytes: int = 0
    physical_used_bytes: int = 0
    physical_bytes: int = 0
    advertised_bytes: int = 0
    pressure: int = 0
    machine_check: bool = False
    stores: int = 0
    loads: int = 0
    frees: int = 0
    zeroes: int = 0
    alloc_refused: int = 0
    write_failures: int = 0
    machine_checks: int = 0
    data_loss_reads: int = 0
    compress_in_bytes: int = 0
    compress_out_bytes: int = 0
    decompress_out_bytes: int = 0
    busy_ns: int = 0
    queue_ns: int = 0
    rejected_requests: int = 0
