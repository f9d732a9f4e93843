"""Parsing and printing of sizes and durations as people write them."""

from __future__ import annotations

import re

PAGE_SIZE = 4096
PAGE_SHIFT = 12
# Sizes beyond this are typing mistakes; they would overflow the 64-bit fields of results
# and of the wire (and float("1e400") is infinite).
MAX_SIZE = 1 << 60

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")

_TIME_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_TIME_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s)\s*$")


def parse_size(value: str | int) -> int:
    """Parse "8GiB", "512M", "4096" into bytes. Raises ValueError on nonsense."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative: {value}")
        if value > MAX_SIZE:
            raise ValueError(f"size too large: {value} (at most 1 EiB)")
        return value
    m = _SIZE_RE.match(value)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {value!r} (write e.g. 4096, 512MiB, 8GiB)")
    number = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if number > MAX_SIZE:
        raise ValueError(f"size too large: {value!r} (at most 1 EiB)")
    return int(number)


def parse_duration_ns(value: str | int) -> int:
    """Parse "100ms", "2s", "350ns" into integer nanoseconds; a bare int is ns."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"duration must not be negative: {value}")
        return value
    m = _TIME_RE.match(value)
    if not m:
        raise ValueError(f"not a duration: {value!r} (write e.g. 350ns, 2us, 100ms, 5s)")
    return int(float(m.group(1)) * _TIME_UNITS[m.group(2)])


def format_size(n: float) -> str:
    """1536 -> "1.5KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_ns(ns: float) -> str:
    """1500 -> "1.50us"."""
    if ns < 1_000:
        return f"{ns:.0f}ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.2f}us"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.2f}ms"
    return f"{ns / 1_000_000_000:.3f}s"
