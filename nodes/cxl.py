"""CXL Type-3 memory expander: uncompressed, byte-addressable, DRAM + 70-90 ns.

The kernel onlines it as a CPU-less NUMA node in a lower memory tier
(mm/memory-tiers.c); reclaim demotes into it and NUMA balancing promotes out.
"""

from __future__ import annotations

from ._device import MemoryDevice
from ._types import NodeKind


class CxlDevice(MemoryDevice):
    """Uncompressed expander memory (KERNEL.md: local + 70-90 ns, Pond ASPLOS'23)."""

    kind = NodeKind.CXL
