"""Swap device: slots on NVMe-like storage.

Handles are swap slots; pages are written uncompressed (compression, if any,
is zswap's business in the orchestrator, not the drive's). The latency
profile is NVMe's: tens of microseconds per 4 KiB access.
"""

from __future__ import annotations

from ._device import MemoryDevice
from ._types import NodeKind


class StorageDevice(MemoryDevice):
    """A swap device (KERNEL.md: NVMe 4 KiB read 11 us Optane to 40-100 us NAND)."""

    kind = NodeKind.STORAGE
