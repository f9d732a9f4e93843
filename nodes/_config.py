"""Configuration of a memory node: validated from keywords, a TOML file and CLI flags.

Every value goes through one builder, so a bad value is answered the same way
wherever it came from: a `ConfigError` naming the file and line (TOML) or the
flag (CLI) and the key. `tomllib` reports no positions for keys, so the line
of a key is found in the file's text.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tiersim._errors import ConfigError
from tiersim._units import parse_duration_ns, parse_size

from ._latency import DEFAULT_LATENCY
from ._types import PAGE_SIZE, LatencyProfile, NodeKind, OverflowMode, Watermarks

DEFAULT_MAX_BATCH_PAGES = 256
# A batch message must stay far below gRPC's 2 GiB limit and fit comfortably in memory.
MAX_MAX_BATCH_PAGES = 4096
# Translation-table entry + alignment per stored page on the compressed device (estimate).
DEFAULT_CRAM_OVERHEAD = 64
# Watermarks on free physical bytes, as fractions of the media.
DEFAULT_LOW_WATERMARK = "2%"
DEFAULT_HIGH_WATERMARK = "5%"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything that defines a device model. Build with `node_config()`."""

    kind: NodeKind
    name: str
    advertised_bytes: int
    physical_bytes: int
    watermarks: Watermarks
    per_page_overhead_bytes: int
    overflow_mode: OverflowMode
    max_batch_pages: int
    seed: int
    latency: LatencyProfile

    @property
    def advertised_pages(self) -> int:
        return self.advertised_bytes // PAGE_SIZE


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """How a node server is exposed; not part of the device model."""

    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int | None = None
    address_file: str | None = None
    realtime_dilation: float = 0.0
    # Where a compressing node runs lz4 for the batches it reads ahead: "process"
    # (an lz4 worker process), "thread" (a thread of the server), or "auto"
    # (the process where the server may use a second core). See nodes/_encoder.py.
    compress_in: str = "auto"


# Keys of the TOML file; CLI flags are the same names with dashes.
_DEVICE_KEYS = (
    "kind",
    "name",
    "advertised",
    "physical",
    "overflow",
    "low_watermark",
    "high_watermark",
    "per_page_overhead",
    "max_batch_pages",
    "seed",
    "latency",
)
_SERVER_KEYS = (
    "host",
    "port",
    "metrics_port",
    "address_file",
    "realtime_dilation",
    "compress_in",
)
COMPRESS_IN = ("auto", "process", "thread")
TOML_KEYS = frozenset(_DEVICE_KEYS + _SERVER_KEYS)
LATENCY_KEYS = frozenset(f.name for f in fields(LatencyProfile))

ErrorFactory = Callable[[str, str], ConfigError]


def _plain_error(key: str, message: str) -> ConfigError:
    return ConfigError(message, key=key)


def _int(value: object, key: str, err: ErrorFactory, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise err(key, f"expected an integer, got {type(value).__name__} {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise err(key, f"must be {bound}, got {value}")
    return value


def _size(value: object, key: str, err: ErrorFactory) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise err(key, f"expected a size such as 8GiB or 4096, got {type(value).__name__}")
    try:
        return parse_size(value)
    except ValueError as exc:
        raise err(key, str(exc)) from None


def _watermark(value: object, key: str, physical: int, err: ErrorFactory) -> int:
    """Bytes, a size string, or a percentage of the physical media ("2%")."""
    if isinstance(value, str) and value.strip().endswith("%"):
        text = value.strip()[:-1].strip()
        try:
            pct = float(text)
        except ValueError:
            raise err(key, f"not a percentage: {value!r}") from None
        if not 0 <= pct <= 100 or math.isnan(pct):
            raise err(key, f"percentage must be 0..100, got {value!r}")
        return int(physical * pct / 100)
    return _size(value, key, err)


def _latency(kind: NodeKind, overrides: object, key: str, err: ErrorFactory) -> LatencyProfile:
    base = DEFAULT_LATENCY[kind]
    if overrides is None:
        return base
    if isinstance(overrides, LatencyProfile):
        return overrides
    if not isinstance(overrides, Mapping):
        raise err(key, f"expected a table of latency settings, got {type(overrides).__name__}")
    changes: dict[str, Any] = {}
    for name, value in overrides.items():
        sub = f"{key}.{name}"
        if name not in LATENCY_KEYS:
            raise err(sub, f"unknown latency setting (known: {', '.join(sorted(LATENCY_KEYS))})")
        if name in ("read_base_ns", "write_base_ns"):
            if isinstance(value, str):
                try:
                    value = parse_duration_ns(value)
                except ValueError as exc:
                    raise err(sub, str(exc)) from None
            changes[name] = _int(value, sub, err, 0)
        elif name == "bandwidth_bytes_per_sec":
            changes[name] = _size(value, sub, err)
        elif name == "source":
            if not isinstance(value, str):
                raise err(sub, f"expected a string, got {type(value).__name__}")
            changes[name] = value
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise err(sub, f"expected a number, got {type(value).__name__} {value!r}")
            if not math.isfinite(value) or value < 0:
                raise err(sub, f"must be a finite number >= 0, got {value!r}")
            changes[name] = float(value)
    if "source" not in changes and changes:
        changes["source"] = f"{base.source} (overridden: {', '.join(sorted(changes))})"
    return replace(base, **changes)


def build_node_config(values: Mapping[str, Any], err: ErrorFactory = _plain_error) -> NodeConfig:
    """Validate raw values (TOML/CLI spelling) into a NodeConfig.

    `err(key, message)` makes the ConfigError, so the caller decides how the
    key is located (file and line, or flag name).
    """
    unknown = set(values) - set(_DEVICE_KEYS)
    if unknown:
        key = sorted(unknown)[0]
        raise err(key, f"unknown setting (known: {', '.join(_DEVICE_KEYS)})")

    kind_raw = values.get("kind")
    if kind_raw is None:
        raise err("kind", "missing: give the device kind (dram, cxl, cram or storage)")
    if isinstance(kind_raw, NodeKind):
        kind = kind_raw
    elif isinstance(kind_raw, str):
        try:
            kind = NodeKind.parse(kind_raw)
        except ValueError as exc:
            raise err("kind", str(exc)) from None
    else:
        raise err("kind", f"expected a string, got {type(kind_raw).__name__}")

    if values.get("advertised") is None:
        raise err("advertised", "missing: give the capacity the node advertises, e.g. 8GiB")
    advertised = _size(values["advertised"], "advertised", err)
    if advertised <= 0:
        raise err("advertised", "must be positive")
    if advertised % PAGE_SIZE:
        raise err("advertised", f"must be a whole number of {PAGE_SIZE}-byte pages")

    physical_raw = values.get("physical")
    physical = advertised if physical_raw is None else _size(physical_raw, "physical", err)
    if physical <= 0:
        raise err("physical", "must be positive")
    if kind is NodeKind.CRAM:
        if physical > advertised:
            raise err(
                "physical",
                f"a compressed node cannot have more media ({physical}) than it advertises "
                f"({advertised})",
            )
    elif physical != advertised:
        raise err(
            "physical",
            f"a {kind.name.lower()} node holds exactly what it advertises; physical "
            f"({physical}) must equal advertised ({advertised}) or be left out",
        )

    name_raw = values.get("name")
    if name_raw is None:
        name = kind.name.lower()
    elif not isinstance(name_raw, str) or not name_raw.strip():
        raise err("name", "expected a non-empty string")
    else:
        name = name_raw.strip()

    overflow_raw = values.get("overflow", OverflowMode.POISON)
    if isinstance(overflow_raw, OverflowMode):
        overflow = overflow_raw
    elif isinstance(overflow_raw, str):
        try:
            overflow = OverflowMode.parse(overflow_raw)
        except ValueError as exc:
            raise err("overflow", str(exc)) from None
    else:
        raise err("overflow", f"expected poison or machine-check, got {overflow_raw!r}")

    overhead_default = DEFAULT_CRAM_OVERHEAD if kind is NodeKind.CRAM else 0
    overhead_raw = values.get("per_page_overhead")
    overhead = (
        overhead_default if overhead_raw is None else _size(overhead_raw, "per_page_overhead", err)
    )
    if overhead and kind is not NodeKind.CRAM:
        raise err(
            "per_page_overhead",
            "only a compressed (cram) node spends media on per-page metadata; must be 0",
        )
    if overhead >= PAGE_SIZE:
        raise err("per_page_overhead", f"must be below the page size ({PAGE_SIZE})")

    low = _watermark(
        values.get("low_watermark", DEFAULT_LOW_WATERMARK), "low_watermark", physical, err
    )
    high = _watermark(
        values.get("high_watermark", DEFAULT_HIGH_WATERMARK), "high_watermark", physical, err
    )
    if low > physical:
        raise err("low_watermark", f"{low} bytes exceeds the physical media ({physical})")
    if high > physical:
        raise err("high_watermark", f"{high} bytes exceeds the physical media ({physical})")
    if low > high:
        key = "low_watermark" if "low_watermark" in values else "high_watermark"
        raise err(key, f"low watermark ({low}) must not exceed high watermark ({high})")

    max_batch = _int(
        values.get("max_batch_pages", DEFAULT_MAX_BATCH_PAGES),
        "max_batch_pages",
        err,
        1,
        MAX_MAX_BATCH_PAGES,
    )
    seed = _int(values.get("seed", 0), "seed", err, 0, 2**64 - 1)
    latency = _latency(kind, values.get("latency"), "latency", err)

    return NodeConfig(
        kind=kind,
        name=name,
        advertised_bytes=advertised,
        physical_bytes=physical,
        watermarks=Watermarks(low_free_bytes=low, high_free_bytes=high),
        per_page_overhead_bytes=overhead,
        overflow_mode=overflow,
        max_batch_pages=max_batch,
        seed=seed,
        latency=latency,
    )


def node_config(
    kind: NodeKind | str,
    advertised: int | str,
    physical: int | str | None = None,
    **settings: Any,
) -> NodeConfig:
    """Build a NodeConfig from keywords spelled as in the TOML file.

    >>> cfg = node_config("cram", "8GiB", "1GiB", overflow="machine-check")
    """
    values: dict[str, Any] = {"kind": kind, "advertised": advertised, **settings}
    if physical is not None:
        values["physical"] = physical
    return build_node_config(values)


def build_server_options(
    values: Mapping[str, Any], err: ErrorFactory = _plain_error
) -> ServerOptions:
    unknown = set(values) - set(_SERVER_KEYS)
    if unknown:
        raise err(sorted(unknown)[0], "unknown setting")
    opts = ServerOptions()
    host = values.get("host", opts.host)
    if not isinstance(host, str) or not host:
        raise err("host", "expected a host name or address")
    port = _int(values.get("port", 0), "port", err, 0, 65535)
    metrics_raw = values.get("metrics_port")
    metrics = None if metrics_raw is None else _int(metrics_raw, "metrics_port", err, 0, 65535)
    address_file = values.get("address_file")
    if address_file is not None and (not isinstance(address_file, str) or not address_file):
        raise err("address_file", "expected a file path")
    dilation = values.get("realtime_dilation", 0.0)
    if isinstance(dilation, bool) or not isinstance(dilation, int | float):
        raise err("realtime_dilation", f"expected a number, got {type(dilation).__name__}")
    if not math.isfinite(dilation) or dilation < 0:
        raise err("realtime_dilation", f"must be a finite number >= 0, got {dilation!r}")
    compress_in = values.get("compress_in", opts.compress_in)
    if isinstance(compress_in, str):
        compress_in = compress_in.strip().lower()
    if compress_in not in COMPRESS_IN:
        raise err("compress_in", f"expected one of {', '.join(COMPRESS_IN)}, got {compress_in!r}")
    return ServerOptions(
        host=host,
        port=port,
        metrics_port=metrics,
        address_file=address_file,
        realtime_dilation=float(dilation),
        compress_in=compress_in,
    )


# ------------------------------------------------------------------ TOML

_HEADER_RE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]")
_KEY_RE = re.compile(r"""^\s*([A-Za-z0-9_\-."' ]+?)\s*=""")


def _split_key(text: str) -> list[str]:
    return [part.strip().strip("\"'") for part in text.split(".")]


def find_key_line(text: str, dotted_key: str) -> int | None:
    """Line (1-based) where `dotted_key` is set in TOML `text`, or its table header.

    A small scanner rather than a parser: it follows `[table]` headers and
    dotted keys, which is all a node file uses. Multi-line strings could fool
    it; then the caller simply gets a wrong or no line, never an exception.
    """
    want = _split_key(dotted_key)
    table: list[str] = []
    header_line = None
    for number, raw in enumerate(text.splitlines(), 1):
        m = _HEADER_RE.match(raw)
        if m:
            table = _split_key(m.group(1))
            if table == want:
                header_line = number
            continue
        m = _KEY_RE.match(raw)
        if m and table + _split_key(m.group(1)) == want:
            return number
    return header_line


@dataclass(slots=True)
class _Source:
    """Where each raw value came from, to make errors point at it."""

    file: str | None = None
    text: str = ""
    cli_keys: set[str] = field(default_factory=set)

    def error(self, key: str, message: str) -> ConfigError:
        top = key.split(".", 1)[0]
        if top in self.cli_keys or self.file is None:
            return ConfigError(message, key="--" + top.replace("_", "-"))
        return ConfigError(message, file=self.file, line=find_key_line(self.text, key), key=key)


def read_toml(path: str | Path) -> tuple[dict[str, Any], str]:
    """Parse a node TOML file; return its table and text. Errors name file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc.reason}", file=str(path)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.14 gives exc.lineno; before, the position is only in the message.
        line = getattr(exc, "lineno", None)
        msg = str(exc)
        m = re.search(r"\s*\(at line (\d+), column \d+\)$", msg)
        if m:
            line = line or int(m.group(1))
            msg = msg[: m.start()]
        raise ConfigError(f"malformed TOML: {msg}", file=str(path), line=line) from None
    return data, text


def load_settings(
    toml_path: str | Path | None, cli: Mapping[str, Any]
) -> tuple[NodeConfig, ServerOptions]:
    """Merge a TOML file (optional) and CLI values (None = not given); CLI wins."""
    source = _Source()
    raw: dict[str, Any] = {}
    if toml_path is not None:
        data, text = read_toml(toml_path)
        source.file, source.text = str(toml_path), text
        for key in data:
            if key not in TOML_KEYS:
                raise source.error(key, f"unknown setting (known: {', '.join(sorted(TOML_KEYS))})")
        raw.update(data)
    for key, value in cli.items():
        if key not in TOML_KEYS:
            raise ConfigError("unknown setting", key="--" + key.replace("_", "-"))
        if value is not None:
            raw[key] = value
            source.cli_keys.add(key)
    device = {k: v for k, v in raw.items() if k in _DEVICE_KEYS}
    server = {k: v for k, v in raw.items() if k in _SERVER_KEYS}
    return build_node_config(device, source.error), build_server_options(server, source.error)
