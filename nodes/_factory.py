"""Build the device model a NodeConfig describes."""

from __future__ import annotations

from ._config import NodeConfig
from ._device import MemoryDevice
from ._types import NodeKind
from .cram import CramDevice
from .cxl import CxlDevice
from .dram import DramDevice
from .storage import StorageDevice

DEVICE_CLASSES: dict[NodeKind, type[MemoryDevice]] = {
    NodeKind.DRAM: DramDevice,
    NodeKind.CXL: CxlDevice,
    NodeKind.CRAM: CramDevice,
    NodeKind.STORAGE: StorageDevice,
}


def make_device(config: NodeConfig) -> MemoryDevice:
    """The device model for `config` (a DramDevice, CxlDevice, CramDevice or StorageDevice)."""
    return DEVICE_CLASSES[config.kind](config)
