"""Memory nodes: device models, their gRPC server, and the client seam.

The public API:

- data types mirroring tiersim.v1: `NodeKind`, `OverflowMode`, `LatencyProfile`,
  `Watermarks`, `NodeInfo`, `NodeState`, `NodeStats`, `BatchResult`,
  `AllocateResult`, `OpResult`, `PressureEvent`, `PAGE_SIZE`;
- configuration: `NodeConfig`, `node_config(...)`, `ServerOptions`, `load_settings`;
- device models: `make_device(config)` and the classes `MemoryDevice`, `DramDevice`,
  `CxlDevice`, `CramDevice`, `StorageDevice`;
- the engine/node seam: `NodeClient` (Protocol), `LocalNodeClient`, `GrpcNodeClient`;
- serving: `NodeServer`, `serve(config, options)`.

`tiersim.nodes.testing` starts real node servers on loopback for tests.
"""

from __future__ import annotations

from ._client import NodeClient
from ._config import NodeConfig, ServerOptions, load_settings, node_config
from ._device import MemoryDevice, PressureSubscriber
from ._factory import make_device
from ._grpc_client import GrpcNodeClient
from ._latency import DEFAULT_LATENCY, LatencyModel
from ._local import LocalNodeClient
from ._server import NodeServer, serve
from ._types import (
    PAGE_SIZE,
    AllocateResult,
    BatchResult,
    LatencyProfile,
    NodeInfo,
    NodeKind,
    NodeState,
    NodeStats,
    OpResult,
    OverflowMode,
    PressureEvent,
    Watermarks,
)
from .cram import CramDevice
from .cxl import CxlDevice
from .dram import DramDevice
from .storage import StorageDevice

__all__ = [
    "DEFAULT_LATENCY",
    "PAGE_SIZE",
    "AllocateResult",
    "BatchResult",
    "CramDevice",
    "CxlDevice",
    "DramDevice",
    "GrpcNodeClient",
    "LatencyModel",
    "LatencyProfile",
    "LocalNodeClient",
    "MemoryDevice",
    "NodeClient",
    "NodeConfig",
    "NodeInfo",
    "NodeKind",
    "NodeServer",
    "NodeState",
    "NodeStats",
    "OpResult",
    "OverflowMode",
    "PressureEvent",
    "PressureSubscriber",
    "ServerOptions",
    "StorageDevice",
    "Watermarks",
    "load_settings",
    "make_device",
    "node_config",
    "serve",
]
