"""tiersim: a gRPC-distributed simulator of Linux memory tiering.

Memory nodes (`tiersim.nodes`) model DRAM, CXL, compressed CXL ("cram") and
swap devices that store real page bytes; the orchestrator
(`tiersim.orchestrator`) runs the kernel's reclaim, zswap, demotion and
promotion logic over them in simulated time.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._errors import ConfigError, NodeError
from ._units import PAGE_SIZE, format_ns, format_size, parse_duration_ns, parse_size

try:
    __version__ = version("tiersim")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = [
    "PAGE_SIZE",
    "ConfigError",
    "NodeError",
    "__version__",
    "format_ns",
    "format_size",
    "parse_duration_ns",
    "parse_size",
]
