"""Host-local DRAM: pages held as they are, at DRAM latency.

The fastest tier and the usual source of demotion. Media equals the
advertised capacity; an all-zero page takes no payload, like every kind.
"""

from __future__ import annotations

from ._device import MemoryDevice
from ._types import NodeKind


class DramDevice(MemoryDevice):
    """Uncompressed memory at local DRAM latency (KERNEL.md: ~80-100 ns load)."""

    kind = NodeKind.DRAM
