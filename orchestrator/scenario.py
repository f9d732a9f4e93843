"""Scenario files: a TOML document in, validated `RunConfig`s out.

A scenario describes a cluster (hosts, memory nodes), the kernel's tunables,
memory cgroups, workloads, injected faults, and optionally *variants*: copies
of the base scenario with a few keys changed, run side by side to answer the
scenario's question. The format is documented key by key in
`docs/scenario-format.md`.

Everything is checked here, before any node is started or any simulated
nanosecond passes: a run that dies ten minutes in on a typo wastes more of a
user's time than any other failure. Every problem is reported as a
`ConfigError` naming the file, the line and the dotted key, so the CLI can
print one precise line (DESIGN principle 7). `tomllib` gives no source
positions, so `_Locator` re-scans the text for the line of each key.

Keys in error messages and override paths share one syntax: TOML dotted keys
in which entries of an array of tables (`[[nodes]]`, `[[workloads]]` ...) are
addressed by their `name`, e.g. `nodes.cram0.physical`. A key shown in an
error can be pasted into `--set` unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import importlib
import json
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn, cast

from tiersim._errors import ConfigError
from tiersim._units import PAGE_SIZE, format_ns, format_size, parse_duration_ns, parse_size
from tiersim.orchestrator._mm import CpuCosts
from tiersim.orchestrator.config import (
    CgroupConfig,
    ChargeMode,
    CramTunables,
    HostConfig,
    NodeConfig,
    NodeKindName,
    NumaTunables,
    OnNodeLoss,
    PolicyConfig,
    RunConfig,
    Scenario,
    Tunables,
    WorkloadConfig,
    ZoneConfig,
    ZswapTunables,
)
from tiersim.orchestrator.mmzone import PAGEBLOCK_NR_PAGES, ZONE_NAMES

__all__ = ["apply_overrides", "load_scenario", "loads_scenario", "parse_override"]

# Where a value sits in the parsed document: table keys, and list indices for
# entries of arrays of tables.
KeyPath = tuple[str | int, ...]

# The `file` of errors caused by overrides given outside the scenario file.
OVERRIDE_SOURCE = "--set"

_NO_OVERRIDES: Mapping[str, object] = MappingProxyType({})

NODE_KINDS = ("dram", "cxl", "cram", "storage")
# Kinds whose capacity is memory the kernel can allocate from (storage is swap).
MEMORY_KINDS = ("dram", "cxl", "cram")
PATTERN_KINDS = ("uniform", "zipf", "scan", "shifting")
FAULT_ACTIONS = ("kill",)
COMPRESSORS = ("lz4", "lz4hc")
CHARGE_MODES = ("page", "device", "fuzzy")
ON_NODE_LOSS = ("continue", "stop")
# SLIT distances are one byte; 10 means local and 255 unreachable.
LOCAL_DISTANCE = 10
MAX_DISTANCE = 254
U64_MAX = 2**64 - 1


# --------------------------------------------------------------------------
# The schema: which keys exist where. One table drives the unknown-key check,
# the "did you mean" suggestions and the resolution of override paths, so the
# three can never disagree.


class _Leaf:
    """A single value (which may itself be a string, number, array ...)."""


class _Free:
    """A table whose keys are not fixed here (pattern parameters, options)."""


LEAF = _Leaf()
FREE = _Free()


@dataclass(frozen=True)
class _ListOf:
    """An array of tables whose entries are addressed by their `name`."""

    entry: dict[str, Any]


# Keys of `nodes._config` (the node server's own configuration), which the
# engine passes embedded nodes unchanged. `latency` overrides fields of the
# node's LatencyProfile.
LATENCY_KEYS = (
    "read_base_ns",
    "write_base_ns",
    "per_cacheline_ns",
    "compress_ns_per_byte",
    "decompress_ns_per_byte",
    "bandwidth_bytes_per_sec",
    "jitter_sigma",
    "source",
)
_NODE_OPTIONS: dict[str, Any] = {
    **dict.fromkeys(
        (
            "overflow",
            "low_watermark",
            "high_watermark",
            "per_page_overhead",
            "max_batch_pages",
            "seed",
        ),
        LEAF,
    ),
    "latency": dict.fromkeys(LATENCY_KEYS, LEAF),
}


# Authentication towards a node at an address (see tiersim._security.ClientSecurity).
_NODE_SECURITY = (
    "token_file",
    "token_env",
    "tls",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "tls_server_name",
)


def _leaves(*names: str) -> dict[str, Any]:
    return dict.fromkeys(names, LEAF)


SCHEMA: dict[str, Any] = {
    "scenario": _leaves(
        "name",
        "description",
        "question",
        "seed",
        "duration",
        "on_node_loss",
        "node_timeout",
        "sample_interval",
        "policy",
        "exclusive",
    ),
    "policy": {"name": LEAF, "options": FREE},
    "hosts": _ListOf(
        {
            **_leaves("name", "cpus", "total_ram", "kernel_cpu_scale"),
            "kthread_costs": _leaves(*(f.name for f in fields(CpuCosts))),
        }
    ),
    "nodes": _ListOf(
        {
            **_leaves(
                "name",
                "kind",
                "host",
                "hosts",
                "capacity",
                "advertised",
                "physical",
                "address",
                "distance",
                *_NODE_SECURITY,
            ),
            "options": _NODE_OPTIONS,
            "zones": _ListOf(_leaves("zone", "size", "managed", "unmovable", "reclaimable")),
        }
    ),
    "tunables": {
        **_leaves(
            "demotion_enabled", "swappiness", "watermark_scale_factor", "page_cluster", "pcp_lists"
        ),
        "zswap": _leaves(*(f.name for f in fields(ZswapTunables))),
        "cram": _leaves(*(f.name for f in fields(CramTunables))),
        "numa": _leaves(*(f.name for f in fields(NumaTunables))),
    },
    "cgroups": _ListOf(
        _leaves("name", "memory_max", "memory_high", "zswap_max", "zswap_writeback")
    ),
    "workloads": _ListOf(
        {
            **_leaves("name", "host", "cgroup", "footprint", "accesses", "start"),
            "content": FREE,
            "pattern": FREE,
        }
    ),
    "faults": _ListOf(_leaves("at", "node", "action")),
    "variants": _ListOf({"name": LEAF, "set": FREE}),
}


# --------------------------------------------------------------------------
# Keys as people write them.

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _format_segment(segment: str) -> str:
    """A key segment as TOML spells it: bare when it can be, quoted otherwise."""
    if _BARE_KEY.fullmatch(segment):
        return segment
    return json.dumps(segment, ensure_ascii=False)


def _join_key(key: str, segment: str) -> str:
    return _format_segment(segment) if not key else f"{key}.{_format_segment(segment)}"


def _scan_basic_string(text: str, i: int) -> int:
    """Index just past the closing quote of the basic string opening at `i`."""
    i += 1
    while text[i] != '"':
        if text[i] == "\n":
            raise ValueError("unterminated string")
        i += 2 if text[i] == "\\" else 1
    return i + 1


def _scan_key(text: str, i: int) -> tuple[list[str], int]:
    """Parse a dotted key (`a."b.c".'d'`) starting at `i`.

    Returns its segments, decoded as tomllib decodes them, and the index just
    past it (and past trailing blanks). Raises ValueError on a malformed key.
    """
    segments: list[str] = []
    while True:
        while i < len(text) and text[i] in " \t":
            i += 1
        if i >= len(text):
            raise ValueError("expected a key")
        c = text[i]
        if c == '"':
            end = _scan_basic_string(text, i)
            segments.append(tomllib.loads(f"k = {text[i:end]}")["k"])
            i = end
        elif c == "'":
            end = text.index("'", i + 1)
            if "\n" in text[i:end]:
                raise ValueError("unterminated string")
            segments.append(text[i + 1 : end])
            i = end + 1
        else:
            m = _BARE_KEY.match(text, i)
            if not m:
                raise ValueError(f"unexpected {c!r} in a key")
            segments.append(m.group())
            i = m.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == ".":
            i += 1
            continue
        return segments, i


def split_key(text: str) -> list[str]:
    """Split a dotted key path ("nodes.cram0.physical") into its segments.

    Segments may be quoted as in TOML, for names that hold dots or spaces:
    `variants."classic zswap"` or `nodes."host0.dram".capacity`.
    """
    try:
        segments, end = _scan_key(text, 0)
    except (ValueError, IndexError, tomllib.TOMLDecodeError):
        end = -1
        segments = []
    if end != len(text) or not segments:
        raise ConfigError(
            f"not a key path: {text!r} (write dotted keys such as tunables.zswap.enabled)",
            key=text,
        )
    return segments


# --------------------------------------------------------------------------
# Source positions.


class _Locator:
    """Line numbers of the keys and tables of a TOML document.

    tomllib reports no positions, yet an error that names only a key leaves
    the user hunting through a long file. This scanner walks the (already
    valid) source the way a TOML parser does -- headers, dotted keys, strings
    spanning lines, arrays, inline tables -- and records the line where each
    path first appears. Entries of arrays of tables are numbered as tomllib
    numbers them, so a path from the parsed document finds its line.
    Positions are a convenience: should the scan ever get lost, errors simply
    carry fewer lines, never wrong data.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._i = 0
        self._line = 1
        self._table: KeyPath = ()
        self._arrays: dict[KeyPath, int] = {}
        self.lines: dict[KeyPath, int] = {}
        with contextlib.suppress(ValueError, IndexError, tomllib.TOMLDecodeError):
            self._document()

    def line(self, path: KeyPath) -> int | None:
        """Line of `path`, or of its nearest enclosing key or table."""
        for n in range(len(path), 0, -1):
            hit = self.lines.get(path[:n])
            if hit is not None:
                return hit
        return None

    def _record(self, path: KeyPath, line: int) -> None:
        for n in range(1, len(path) + 1):
            self.lines.setdefault(path[:n], line)

    def _skip_blank(self) -> None:
        """Skip spaces, newlines and comments."""
        t = self._text
        while self._i < len(t):
            c = t[self._i]
            if c in " \t\r":
                self._i += 1
            elif c == "\n":
                self._line += 1
                self._i += 1
            elif c == "#":
                end = t.find("\n", self._i)
                self._i = len(t) if end < 0 else end
            else:
                return

    def _skip_spaces(self) -> None:
        while self._i < len(self._text) and self._text[self._i] in " \t":
            self._i += 1

    def _key(self) -> list[str]:
        segments, self._i = _scan_key(self._text, self._i)
        return segments

    def _document(self) -> None:
        while True:
            self._skip_blank()
            if self._i >= len(self._text):
                return
            if self._text[self._i] == "[":
                self._header()
            else:
                self._keyval(self._table)

    def _header(self) -> None:
        t = self._text
        is_array = t.startswith("[[", self._i)
        self._i += 2 if is_array else 1
        line = self._line
        keys = self._key()
        self._i += 2 if is_array else 1
        path: KeyPath = ()
        for n, key in enumerate(keys):
            path = (*path, key)
            last = n == len(keys) - 1
            if path in self._arrays and not (is_array and last):
                path = (*path, self._arrays[path] - 1)
        if is_array:
            index = self._arrays.get(path, 0)
            self._arrays[path] = index + 1
            self._record(path, line)
            path = (*path, index)
        self._record(path, line)
        self.lines[path] = line
        self._table = path

    def _keyval(self, base: KeyPath) -> None:
        line = self._line
        path = (*base, *self._key())
        self._i += 1  # "="
        self._skip_spaces()
        self._record(path, line)
        self._value(path)

    def _value(self, path: KeyPath) -> None:
        t = self._text
        c = t[self._i]
        if t.startswith('"""', self._i):
            self._i += 3
            while not t.startswith('"""', self._i):
                if t[self._i] == "\\":
                    self._i += 1
                if t[self._i] == "\n":
                    self._line += 1
                self._i += 1
            self._i += 3
            while self._i < len(t) and t[self._i] == '"':  # quotes before the closing ones
                self._i += 1
        elif t.startswith("'''", self._i):
            end = t.index("'''", self._i + 3)
            self._line += t.count("\n", self._i, end)
            self._i = end + 3
            while self._i < len(t) and t[self._i] == "'":
                self._i += 1
        elif c == '"':
            self._i = _scan_basic_string(t, self._i)
        elif c == "'":
            self._i = t.index("'", self._i + 1) + 1
        elif c == "[":
            self._i += 1
            index = 0
            while True:
                self._skip_blank()
                if t[self._i] == "]":
                    self._i += 1
                    return
                self._record((*path, index), self._line)
                self._value((*path, index))
                self._skip_blank()
                if t[self._i] == ",":
                    self._i += 1
                    index += 1
        elif c == "{":
            self._i += 1
            while True:
                self._skip_blank()
                if t[self._i] == "}":
                    self._i += 1
                    return
                self._keyval(path)
                self._skip_blank()
                if t[self._i] == ",":
                    self._i += 1
        else:  # number, boolean, date
            while self._i < len(t) and t[self._i] not in ",]}\n\r#":
                self._i += 1


# --------------------------------------------------------------------------
# Overrides: `[variants.set]` tables and `--set key=value`.


@dataclass(frozen=True)
class _Override:
    """One resolved override: where it goes and where it was written."""

    path: KeyPath
    key: str
    value: Any
    file: str | None
    line: int | None


# Maps the keys of an override as written (the top-level key of a set table,
# then any nested keys) to the file and line it came from.
_Origin = Callable[[tuple[str, ...]], tuple[str | None, int | None]]


def _no_origin(keys: tuple[str, ...]) -> tuple[str | None, int | None]:
    return None, None


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A hint like ` (did you mean 'x'?)` when a choice is close to `word`, else ""."""
    close = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _suggest(word: str, choices: Iterable[str]) -> str:
    """The closest choice, or all valid ones when none is close: a typo is
    fixed at a glance, and a wrong guess shows what exists."""
    options = sorted(set(choices))
    hint = _did_you_mean(word, options)
    if hint or not options:
        return hint
    return f" (expected one of: {', '.join(options)})"


@dataclass(frozen=True)
class _At:
    """A position in the document: its path for the locator (entries of arrays
    of tables by index) and its key as shown to people (entries by name)."""

    path: KeyPath
    key: str

    def __truediv__(self, segment: str) -> _At:
        return _At((*self.path, segment), _join_key(self.key, segment))

    def entry(self, index: int, name: object) -> _At:
        if isinstance(name, str) and name.strip():
            return _At((*self.path, index), _join_key(self.key, name))
        return self.indexed(index)

    def indexed(self, index: int) -> _At:
        return _At((*self.path, index), f"{self.key}[{index}]")


ROOT = _At((), "")


def _resolve_overrides(
    raw: Mapping[str, Any], overrides: Mapping[str, object], origin: _Origin
) -> list[_Override]:
    """Turn {dotted key: value} into overrides with resolved paths.

    A key is checked against the schema (unknown keys are refused with a
    suggestion) and its list entries are looked up by name in `raw`. A table
    value for a structured table (a section, a node ...) is spread over its
    keys, so `"tunables.zswap" = { enabled = true }`, `[variants.set.tunables.zswap]`
    and `"tunables.zswap.enabled" = true` all mean the same; a table value for
    a free-form table (a pattern, a content spec) replaces it whole.
    """
    out: list[_Override] = []
    for text, value in overrides.items():
        file, line = origin((text,))
        try:
            segments = split_key(text)
        except ConfigError as exc:
            raise ConfigError(exc.message, file=file, line=line, key=text) from None
        _walk_override(raw, SCHEMA, ROOT, segments, value, (text,), origin, out)
    return out


def _walk_override(
    node: Any,
    spec: Any,
    at: _At,
    segments: Sequence[str],
    value: Any,
    written: tuple[str, ...],
    origin: _Origin,
    out: list[_Override],
) -> None:
    def fail(message: str, key: str) -> NoReturn:
        file, line = origin(written)
        raise ConfigError(message, file=file, line=line, key=key)

    for segment in segments:
        if isinstance(spec, dict):
            if segment not in spec:
                fail(f"unknown key {segment!r}{_suggest(segment, spec)}", (at / segment).key)
            if at.path == () and segment == "variants":
                fail("variants cannot be overridden", "variants")
            node = node.get(segment) if isinstance(node, dict) else None
            spec = spec[segment]
            at = at / segment
        elif isinstance(spec, _ListOf):
            entries = node if isinstance(node, list) else []
            names = [e.get("name") for e in entries if isinstance(e, dict)]
            index = next(
                (
                    n
                    for n, e in enumerate(entries)
                    if isinstance(e, dict) and e.get("name") == segment
                ),
                None,
            )
            if index is None:
                known = [n for n in names if isinstance(n, str)]
                fail(
                    f"no entry named {segment!r} in {at.key}{_suggest(segment, known)}",
                    (at / segment).key,
                )
            node = entries[index]
            spec = spec.entry
            at = at.entry(index, segment)
        elif spec is FREE:
            node = node.get(segment) if isinstance(node, dict) else None
            at = at / segment
        else:
            fail(f"{at.key} is a single value, not a table", (at / segment).key)

    if isinstance(spec, dict | _ListOf):
        if not isinstance(value, dict):
            if isinstance(spec, _ListOf):
                hint = f"address one entry by name, e.g. {at.key}.<name>.<key>"
                fail(f"{at.key} is an array of tables: {hint}", at.key)
            fail(f"{at.key} is a table: set one of its keys ({', '.join(spec)})", at.key)
        for key, sub in value.items():
            _walk_override(node, spec, at, [key], sub, (*written, key), origin, out)
        return
    file, line = origin(written)
    out.append(_Override(at.path, at.key, copy.deepcopy(value), file, line))


def _apply(raw: Mapping[str, Any], overrides: Sequence[_Override]) -> dict[str, Any]:
    """A deep copy of `raw` with the overrides written in, creating tables as needed."""
    result: dict[str, Any] = copy.deepcopy(dict(raw))
    for ov in overrides:
        node: Any = result
        for segment in ov.path[:-1]:
            if isinstance(segment, int):
                node = node[segment]
                continue
            child = node.get(segment)
            if child is None:
                child = node[segment] = {}
            elif not isinstance(child, dict | list):
                raise ConfigError(
                    f"cannot set {ov.key}: {segment!r} holds {_describe(child)}, not a table",
                    file=ov.file,
                    line=ov.line,
                    key=ov.key,
                )
            node = child
        node[ov.path[-1]] = copy.deepcopy(ov.value)
    return result


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, object]) -> dict[str, Any]:
    """Return a copy of a parsed scenario document with `overrides` applied.

    Keys are dotted paths with entries of arrays of tables addressed by name
    (`nodes.cram0.physical`); values are used as given (see `parse_override`
    for strings from a command line). Raises ConfigError naming the key when
    a path does not exist in the scenario format or names an unknown entry.
    The result is not validated: `loads_scenario` does that.
    """
    return _apply(raw, _resolve_overrides(raw, overrides, _no_origin))


def parse_override(text: str) -> tuple[str, object]:
    """Parse one `--set key=value` argument into (key, value).

    The value is read as a TOML value when it is one (`true`, `1.2`, `"x"`,
    `["cram0"]`, `{ kind = "scan" }`) and kept as a plain string otherwise,
    so `physical=64MiB` needs no shell-quoted TOML quotes.
    """
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"expected key=value, got {text!r}", file=OVERRIDE_SOURCE)
    split_key(key)
    value_text = value_text.strip()
    value: object = value_text
    try:
        parsed = tomllib.loads(f"v = {value_text}")
    except tomllib.TOMLDecodeError:
        pass
    else:
        if list(parsed) == ["v"]:  # refuse text that smuggles in further keys
            value = parsed["v"]
    return key, value


# --------------------------------------------------------------------------
# Validation and conversion into the config dataclasses.

_REQUIRED: Any = object()
_DURATION_RE = re.compile(r"^\s*\d+(?:\.\d+)?\s*(ns|us|µs|ms|s)\s*$")


def _describe(value: object) -> str:
    """A value as the user wrote it, for "got ..." in messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, int | float):
        return repr(value)
    return f"a date/time ({value})"


def _spec_validators() -> tuple[Callable[..., Any] | None, Callable[..., Any] | None]:
    """`make_workload` and `make_content`, where those modules exist.

    Patterns and content specs are validated by the code that interprets
    them, so the two can never disagree about what is valid. Until those
    modules are importable, only the shape of a spec is checked here.
    """
    found: list[Callable[..., Any] | None] = []
    for module_name, attr in (("workloads", "make_workload"), ("content", "make_content")):
        try:
            module = importlib.import_module(f"tiersim.orchestrator.{module_name}")
        except ImportError:
            found.append(None)
            continue
        found.append(getattr(module, attr, None))
    return found[0], found[1]


def _device_validator() -> Callable[[Mapping[str, Any], Any], Any] | None:
    """The node server's configuration builder, if the nodes package imports."""
    try:
        module = importlib.import_module("tiersim.nodes._config")
    except ImportError:
        return None
    return getattr(module, "build_node_config", None)


class _RunBuilder:
    """Validates one effective document (base plus overrides) into a RunConfig.

    Errors point at the override that set the offending key when there is
    one, otherwise at the key's line in the scenario file.
    """

    def __init__(
        self,
        raw: Mapping[str, Any],
        *,
        source: str,
        locator: _Locator,
        overrides: Sequence[_Override] = (),
        variant: str | None = None,
        checked: dict[str, str | None] | None = None,
    ) -> None:
        self.raw = raw
        # Outcomes of spec checks, shared by the runs of one scenario.
        self.checked: dict[str, str | None] = {} if checked is None else checked
        self.source = source
        self.locator = locator
        self.overrides = overrides
        self.variant = variant

    # -- errors --------------------------------------------------------------

    def _override_of(self, at: _At, within: bool) -> _Override | None:
        """The override that set `at` (or, with `within`, anything inside it)."""
        path = at.path
        for ov in reversed(self.overrides):
            if path[: len(ov.path)] == ov.path or (within and ov.path[: len(path)] == path):
                return ov
        return None

    def fail(self, at: _At | Sequence[_At], message: str, *, within: bool = False) -> NoReturn:
        """Raise a ConfigError for `at`.

        A check that compares several keys (physical against advertised, a
        start time against the duration) passes them all, the key it is about
        first: the error then points at whichever of them an override changed,
        because that is the line the user has to look at.
        """
        candidates = [at] if isinstance(at, _At) else list(at)
        chosen, ov = candidates[0], None
        for candidate in candidates:
            ov = self._override_of(candidate, within)
            if ov is not None:
                chosen = candidate
                break
        if ov is not None:
            file, line = ov.file, ov.line
        else:
            file, line = self.source, self.locator.line(chosen.path)
        if self.variant is not None:
            message = f"variant {self.variant!r}: {message}"
        raise ConfigError(message, file=file, line=line, key=chosen.key or None)

    # -- typed access ----------------------------------------------------------

    def _get(self, table: Mapping[str, Any], at: _At, key: str, default: Any) -> Any:
        if key in table:
            return table[key]
        if default is _REQUIRED:
            self.fail(at / key, f"missing required key {key!r}")
        return default

    def string(
        self,
        table: Mapping[str, Any],
        at: _At,
        key: str,
        default: Any = _REQUIRED,
        choices: Sequence[str] | None = None,
    ) -> str:
        value = self._get(table, at, key, default)
        if not isinstance(value, str):
            self.fail(at / key, f"{key} must be a string, got {_describe(value)}")
        if choices is not None and value not in choices:
            self.fail(
                at / key,
                f"{key} must be one of {', '.join(choices)}, got {_describe(value)}"
                + _did_you_mean(value, choices),
            )
        return value

    def name(self, table: Mapping[str, Any], at: _At, key: str = "name") -> str:
        value = self.string(table, at, key)
        if not value.strip():
            self.fail(at / key, f"{key} must not be empty")
        return value

    def integer(
        self,
        table: Mapping[str, Any],
        at: _At,
        key: str,
        default: Any = _REQUIRED,
        lo: int | None = None,
        hi: int | None = None,
    ) -> int:
        value = self._get(table, at, key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(at / key, f"{key} must be an integer, got {_describe(value)}")
        self._range(at / key, key, value, lo, hi)
        return value

    def number(
        self, table: Mapping[str, Any], at: _At, key: str, default: Any = _REQUIRED, lo: float = 0
    ) -> float:
        value = self._get(table, at, key, default)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            self.fail(at / key, f"{key} must be a number, got {_describe(value)}")
        if value < lo:
            self.fail(at / key, f"{key} must be at least {lo}, got {_describe(value)}")
        return float(value)

    def _range(self, at: _At, key: str, value: int, lo: int | None, hi: int | None) -> None:
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if hi is None:
                bound = f"at least {lo}"
            elif lo is None:
                bound = f"at most {hi}"
            else:
                bound = f"between {lo} and {hi}"
            self.fail(at, f"{key} must be {bound}, got {value}")

    def boolean(
        self, table: Mapping[str, Any], at: _At, key: str, default: Any = _REQUIRED
    ) -> bool:
        value = self._get(table, at, key, default)
        if not isinstance(value, bool):
            self.fail(at / key, f"{key} must be true or false, got {_describe(value)}")
        return value

    def size(
        self,
        table: Mapping[str, Any],
        at: _At,
        key: str,
        default: Any = _REQUIRED,
        *,
        allow_max: bool = False,
        positive: bool = False,
    ) -> int | None:
        """Bytes from "64MiB" or an integer; None for "max" where allowed."""
        value = self._get(table, at, key, default)
        if value is None or (allow_max and value == "max"):
            return None
        like = 'a size like 64MiB or "max"' if allow_max else "a size like 64MiB"
        if not isinstance(value, str | int) or isinstance(value, bool):
            self.fail(at / key, f"{key} must be {like}, got {_describe(value)}")
        try:
            size = parse_size(value)
        except ValueError as exc:
            if str(exc).startswith("size too large"):
                self.fail(at / key, f"{key} is too large (at most 1 EiB)")
            self.fail(at / key, f"{key} must be {like}, got {_describe(value)}")
        if positive and size == 0:
            self.fail(at / key, f"{key} must be larger than zero")
        return size

    def duration(
        self,
        table: Mapping[str, Any],
        at: _At,
        key: str,
        default: Any = _REQUIRED,
        *,
        positive: bool = False,
    ) -> int:
        value = self._get(table, at, key, default)
        like = "a duration like 350ns, 2us, 100ms or 5s"
        if not isinstance(value, str | int) or isinstance(value, bool):
            self.fail(at / key, f"{key} must be {like}, got {_describe(value)}")
        try:
            ns = parse_duration_ns(value)
        except ValueError:
            self.fail(at / key, f"{key} must be {like}, got {_describe(value)}")
        if positive and ns == 0:
            self.fail(at / key, f"{key} must be longer than zero")
        return ns

    def table(self, parent: Mapping[str, Any], at: _At, key: str) -> dict[str, Any]:
        value = parent.get(key, {})
        if not isinstance(value, dict):
            self.fail(at / key, f"{key} must be a table, got {_describe(value)}")
        return value

    def entries(self, key: str) -> list[tuple[_At, dict[str, Any]]]:
        """The entries of a top-level array of tables, with their positions."""
        value = self.raw.get(key, [])
        at = ROOT / key
        return [(at.entry(n, e.get("name")), e) for n, e in enumerate(value)]

    def unique_names(self, key: str, kind: str) -> dict[str, int]:
        """Names of an array of tables, refusing empty and duplicate ones."""
        seen: dict[str, int] = {}
        for n, (at, entry) in enumerate(self.entries(key)):
            name = self.name(entry, at)
            if name in seen:
                first = self.locator.line((key, seen[name], "name"))
                also = f" (first defined at line {first})" if first else ""
                self.fail((ROOT / key).indexed(n) / "name", f"duplicate {kind} name {name!r}{also}")
            seen[name] = n
        return seen

    def reference(self, at: _At, key: str, name: object, known: Iterable[str], kind: str) -> str:
        known = list(known)
        if not isinstance(name, str):
            self.fail(at, f"{key} must be the name of a {kind}, got {_describe(name)}")
        if name not in known:
            self.fail(at, f"unknown {kind} {name!r}{_suggest(name, known)}")
        return name

    # -- structure ---------------------------------------------------------------

    def check_structure(self, node: Mapping[str, Any], spec: Mapping[str, Any], at: _At) -> None:
        """Refuse unknown keys and tables written where arrays of tables belong."""
        for key, value in node.items():
            if key not in spec:
                self.fail(at / key, f"unknown key {key!r}{_suggest(key, spec)}")
            sub = spec[key]
            if isinstance(sub, dict):
                if not isinstance(value, dict):
                    self.fail(at / key, f"{key} must be a table, got {_describe(value)}")
                self.check_structure(value, sub, at / key)
            elif isinstance(sub, _ListOf):
                if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
                    self.fail(
                        at / key,
                        f"{key} must be an array of tables (write [[{key}]]), "
                        f"got {_describe(value)}",
                    )
                for n, entry in enumerate(value):
                    self.check_structure(entry, sub.entry, (at / key).entry(n, entry.get("name")))

    # -- sections ------------------------------------------------------------------

    def build(self, run_name: str | None = None) -> tuple[RunConfig, str, str, str]:
        """The run, and the scenario's name, description and question."""
        self.check_structure(self.raw, SCHEMA, ROOT)
        if "scenario" not in self.raw:
            self.fail(ROOT / "scenario", "missing required table [scenario]")
        sc_at = ROOT / "scenario"
        sc = self.raw["scenario"]
        name = self.name(sc, sc_at)
        description = self.string(sc, sc_at, "description", "")
        question = self.string(sc, sc_at, "question", "")
        seed = self.integer(sc, sc_at, "seed", 0, lo=0, hi=U64_MAX)
        duration = self.duration(sc, sc_at, "duration", positive=True)
        on_node_loss = self.string(sc, sc_at, "on_node_loss", "continue", ON_NODE_LOSS)
        node_timeout = self.duration(sc, sc_at, "node_timeout", "5s", positive=True)
        sample_interval = self.duration(sc, sc_at, "sample_interval", 0)
        if sample_interval > duration:
            self.fail(
                [sc_at / "sample_interval", sc_at / "duration"],
                f"sample_interval ({format_ns(sample_interval)}) is longer than the duration "
                f"({format_ns(duration)}): no sample would be taken",
            )
        policy = self.policy(sc, sc_at)
        exclusive = self.boolean(sc, sc_at, "exclusive", True)

        hosts = self.hosts()
        nodes = self.nodes(hosts)
        tunables = self.tunables(nodes)
        cgroups = self.cgroups(nodes)
        workloads = self.workloads(hosts, cgroups, seed, duration)
        faults = self.faults(nodes, duration)

        run = RunConfig(
            name=run_name if run_name is not None else name,
            seed=seed,
            duration_ns=duration,
            hosts=hosts,
            nodes=nodes,
            cgroups=cgroups,
            workloads=workloads,
            tunables=tunables,
            policy=policy,
            on_node_loss=cast(OnNodeLoss, on_node_loss),  # checked against ON_NODE_LOSS
            node_timeout_s=node_timeout / 1e9,
            sample_interval_ns=sample_interval,
            faults=faults,
            overrides=tuple((ov.key, ov.value) for ov in self.overrides),
            exclusive=exclusive,
        )
        return run, name, description, question

    def policy(self, sc: Mapping[str, Any], sc_at: _At) -> PolicyConfig:
        if isinstance(sc.get("policy"), dict):
            self.fail(
                sc_at / "policy",
                'policy in [scenario] is a name (policy = "kernel"); '
                "write a policy with options as a top-level [policy] table",
            )
        short = self.string(sc, sc_at, "policy", None) if "policy" in sc else None
        at = ROOT / "policy"
        table = self.table(self.raw, ROOT, "policy")
        if short is not None and "name" in table:
            self.fail(
                at / "name",
                "the policy is named twice: in [scenario] policy and in [policy] name",
            )
        name = short if short is not None else self.string(table, at, "name", "kernel")
        if not name.strip():
            self.fail(
                sc_at / "policy" if short is not None else at / "name", "policy must not be empty"
            )
        options = self.table(table, at, "options")
        return PolicyConfig(name=name, options=copy.deepcopy(options))

    def hosts(self) -> tuple[HostConfig, ...]:
        if not self.raw.get("hosts"):
            self.fail(ROOT / "hosts", "no hosts: add at least one [[hosts]] table")
        self.unique_names("hosts", "host")
        return tuple(
            HostConfig(
                name=entry["name"],
                cpus=self.integer(entry, at, "cpus", 4, lo=1),
                total_ram=self.size(entry, at, "total_ram", None, positive=True),
                kernel_cpu_scale=self.number(entry, at, "kernel_cpu_scale", 1.0, lo=1.0),
                kthread_costs=self.kthread_costs(entry, at),
            )
            for at, entry in self.entries("hosts")
        )

    def kthread_costs(self, entry: Mapping[str, Any], at: _At) -> tuple[tuple[str, float], ...]:
        """A host's kernel-thread costs: CpuCosts fields, non-negative numbers."""
        table = self.table(entry, at, "kthread_costs")
        where = at / "kthread_costs"
        return tuple((key, self.number(table, where, key)) for key in sorted(table))

    def nodes(self, hosts: Sequence[HostConfig]) -> tuple[NodeConfig, ...]:
        self.unique_names("nodes", "node")
        host_names = [h.name for h in hosts]
        nodes = tuple(self.node(at, entry, host_names) for at, entry in self.entries("nodes"))
        for (at, _), node in zip(self.entries("nodes"), nodes, strict=True):
            if node.kind == "dram" and len(node.hosts) > 1:
                self.fail(
                    at / "hosts",
                    f"DRAM node {node.name!r} is shared by hosts {', '.join(node.hosts)}: "
                    "DRAM belongs to one host (share a cxl or cram node instead)",
                )
        for host, (at, _) in zip(hosts, self.entries("hosts"), strict=True):
            if not any(n.kind == "dram" and host.name in n.hosts for n in nodes):
                placement = [
                    nat / k for nat, _ in self.entries("nodes") for k in ("kind", "host", "hosts")
                ]
                self.fail(
                    [at, *placement], f"impossible topology: host {host.name!r} has no DRAM node"
                )
            mine = [
                (nat, n)
                for (nat, _), n in zip(self.entries("nodes"), nodes, strict=True)
                if n.kind in ("dram", "cxl") and host.name in n.hosts
            ]
            ram = sum(n.physical_bytes for _, n in mine)
            if host.total_ram is not None and host.total_ram < ram:
                have, need = format_size(host.total_ram), format_size(ram)
                if have == need:
                    have, need = f"{host.total_ram} bytes", f"{ram} bytes"
                self.fail(
                    [at / "total_ram", *(nat / "capacity" for nat, _ in mine)],
                    f"total_ram ({have}) is less than the {need} in the DRAM and CXL nodes "
                    f"of host {host.name!r}",
                )
        return nodes

    def node(self, at: _At, entry: Mapping[str, Any], host_names: Sequence[str]) -> NodeConfig:
        name = entry["name"]
        kind = self.string(entry, at, "kind", choices=NODE_KINDS)

        if "host" in entry and "hosts" in entry:
            self.fail(at / "hosts", "give either host or hosts, not both")
        if "host" in entry:
            attached = [self.reference(at / "host", "host", entry["host"], host_names, "host")]
        elif "hosts" in entry:
            listed = entry["hosts"]
            if not isinstance(listed, list) or not listed:
                self.fail(
                    at / "hosts",
                    f"hosts must be a non-empty array of host names, got {_describe(listed)}",
                )
            attached = []
            for h in listed:
                attached.append(self.reference(at / "hosts", "hosts", h, host_names, "host"))
                if attached.count(h) > 1:
                    self.fail(at / "hosts", f"host {h!r} is listed twice")
        else:
            self.fail(at / "host", "missing required key 'host' (or 'hosts' for a shared node)")

        if kind == "cram":
            if "capacity" in entry:
                self.fail(
                    at / "capacity",
                    "a cram node takes advertised and physical, not capacity",
                )
            advertised = self.size(entry, at, "advertised", positive=True)
            physical = self.size(entry, at, "physical", positive=True)
            assert advertised is not None and physical is not None
            if physical > advertised:
                self.fail(
                    [at / "physical", at / "advertised"],
                    f"physical ({format_size(physical)}) is larger than advertised "
                    f"({format_size(advertised)}): a cram device advertises at least its media",
                )
        else:
            for key in ("advertised", "physical"):
                if key in entry:
                    self.fail(
                        at / key, f"{key} applies to cram nodes only; a {kind} node takes capacity"
                    )
            capacity = self.size(entry, at, "capacity", positive=True)
            assert capacity is not None
            advertised = physical = capacity
        size_key = "advertised" if kind == "cram" else "capacity"
        if advertised % PAGE_SIZE:
            # Nodes hand out whole pages; a ragged end would be capacity nobody can use.
            self.fail(
                at / size_key,
                f"{size_key} ({advertised} bytes) must be a whole number of {PAGE_SIZE}-byte pages",
            )

        address = None
        if "address" in entry:
            address = self.string(entry, at, "address")
            if not address or any(c.isspace() for c in address):
                self.fail(
                    at / "address", f"address must look like host:port, got {_describe(address)}"
                )
        distance = None
        if "distance" in entry:
            distance = self.integer(entry, at, "distance", lo=LOCAL_DISTANCE, hi=MAX_DISTANCE)

        options: dict[str, Any] = {}
        if "options" in entry:
            if address is not None:
                self.fail(
                    at / "options",
                    "options configure embedded nodes; a node at an address runs with its own",
                )
            options = copy.deepcopy(entry["options"])
        if address is None:
            self.check_device(at, kind, name, advertised, physical, options)
        security: dict[str, Any] = {}
        for key in _NODE_SECURITY:
            if key not in entry:
                continue
            if address is None:
                self.fail(at / key, f"{key} applies to a node at an address; this one is embedded")
            if key == "tls":
                security[key] = self.boolean(entry, at, key)
            else:
                value = self.string(entry, at, key)
                if not value.strip():
                    self.fail(at / key, f"{key} must not be empty")
                security[key] = value
        if "token_file" in security and "token_env" in security:
            self.fail(
                at / "token_env", "give the token by file or by environment variable, not both"
            )
        zones = self.zones(entry, at, kind, advertised)
        return NodeConfig(
            name=name,
            kind=cast(NodeKindName, kind),  # checked against NODE_KINDS
            hosts=tuple(attached),
            advertised_bytes=advertised,
            physical_bytes=physical,
            address=address,
            distance=distance,
            options=options,
            zones=zones,
            **security,
        )

    def zones(
        self, entry: Mapping[str, Any], at: _At, kind: str, capacity: int
    ) -> tuple[ZoneConfig, ...]:
        """A node's [[nodes.zones]]: ascending, whole pages, summing to its capacity."""
        if "zones" not in entry:
            return ()
        listed = entry["zones"]
        zat = at / "zones"
        if kind not in ("dram", "cxl"):
            self.fail(zat, f"zones apply to dram and cxl nodes; this one is {kind}")
        if (
            not isinstance(listed, list)
            or not listed
            or not all(isinstance(z, dict) for z in listed)
        ):
            self.fail(zat, f"zones must be a non-empty array of tables, got {_describe(listed)}")
        out: list[ZoneConfig] = []
        for n, z in enumerate(listed):
            zone_at = zat.indexed(n)
            name = self.string(z, zone_at, "zone", choices=ZONE_NAMES)
            if any(prev.zone == name for prev in out):
                self.fail(zone_at / "zone", f"zone {name} is listed twice")
            if out and ZONE_NAMES.index(name) < ZONE_NAMES.index(out[-1].zone):
                self.fail(
                    zone_at / "zone",
                    f"zones must be listed in address order ({', '.join(ZONE_NAMES)}); "
                    f"{name} comes after {out[-1].zone}",
                )
            size = self.size(z, zone_at, "size", positive=True)
            managed = self.size(z, zone_at, "managed", None, positive=True)
            assert size is not None
            for key, value in (("size", size), ("managed", managed)):
                if value is not None and value % PAGE_SIZE:
                    self.fail(
                        zone_at / key,
                        f"{key} ({value} bytes) must be a whole number of {PAGE_SIZE}-byte pages",
                    )
            if managed is not None and managed < size:
                self.fail(
                    [zone_at / "managed", zone_at / "size"],
                    f"managed ({format_size(managed)}) is less than size ({format_size(size)}): "
                    "a zone hands out only pages it manages",
                )
            blocks: dict[str, tuple[int, ...]] = {}
            for key in ("unmovable", "reclaimable"):
                value = z.get(key, [])
                if not isinstance(value, list) or not all(
                    isinstance(v, int) and not isinstance(v, bool) and 0 < v <= PAGEBLOCK_NR_PAGES
                    for v in value
                ):
                    self.fail(
                        zone_at / key,
                        f"{key} must be an array of free page counts per pageblock, each "
                        f"1 to {PAGEBLOCK_NR_PAGES}, got {_describe(value)}",
                    )
                blocks[key] = tuple(value)
            foreign = sum(blocks["unmovable"]) + sum(blocks["reclaimable"])
            if foreign > size // PAGE_SIZE:
                self.fail(
                    [zone_at / "unmovable", zone_at / "reclaimable"],
                    f"the pageblocks hold {foreign} free pages, more than the zone's "
                    f"{size // PAGE_SIZE}",
                )
            out.append(ZoneConfig(name, size, managed, blocks["unmovable"], blocks["reclaimable"]))
        total = sum(z.size for z in out)
        if total != capacity:
            size_key = "advertised" if kind == "cram" else "capacity"
            self.fail(
                [zat, at / size_key],
                f"the zones' sizes add up to {format_size(total)}, not the node's "
                f"{size_key} ({format_size(capacity)})",
            )
        return tuple(out)

    def check_device(
        self, at: _At, kind: str, name: str, advertised: int, physical: int, options: dict[str, Any]
    ) -> None:
        """Have the node's own configuration builder check an embedded node.

        The engine hands `options` to that builder unchanged when it starts
        the node, so asking it now is the only way to be sure the run will
        not fail later (whole pages, watermarks, per-page overhead ...).
        """
        build = _device_validator()
        if build is None:
            return
        values: dict[str, Any] = {"kind": kind, "name": name, "advertised": advertised, **options}
        if kind == "cram":
            values["physical"] = physical

        def error(key: str, message: str) -> NoReturn:
            head = key.split(".", 1)[0]
            if head == "advertised":
                self.fail(at / ("advertised" if kind == "cram" else "capacity"), message)
            if head in ("kind", "name", "physical"):
                self.fail(at / head, message)
            where = at / "options"
            for segment in key.split("."):
                where = where / segment
            self.fail(where, message)

        build(values, error)

    def tunables(self, nodes: Sequence[NodeConfig]) -> Tunables:
        at = ROOT / "tunables"
        t = self.table(self.raw, ROOT, "tunables")
        base = Tunables()

        z_at, z = at / "zswap", self.table(t, at, "zswap")
        zd = ZswapTunables()
        direct = self._direct_nodes(z_at, z, nodes)
        zswap = ZswapTunables(
            enabled=self.boolean(z, z_at, "enabled", zd.enabled),
            compressor=self.string(z, z_at, "compressor", zd.compressor, COMPRESSORS),
            max_pool_percent=self.integer(z, z_at, "max_pool_percent", zd.max_pool_percent, 0, 100),
            accept_threshold_percent=self.integer(
                z, z_at, "accept_threshold_percent", zd.accept_threshold_percent, 0, 100
            ),
            shrinker_enabled=self.boolean(z, z_at, "shrinker_enabled", zd.shrinker_enabled),
            direct_nodes=direct,
            direct_charge=cast(
                ChargeMode, self.string(z, z_at, "direct_charge", zd.direct_charge, CHARGE_MODES)
            ),
        )

        c_at, c = at / "cram", self.table(t, at, "cram")
        cd = CramTunables()
        cram = CramTunables(
            tier_enabled=self.boolean(c, c_at, "tier_enabled", cd.tier_enabled),
            safety_check=self.boolean(c, c_at, "safety_check", cd.safety_check),
            reclaim=self.boolean(c, c_at, "reclaim", cd.reclaim),
        )

        n_at, n = at / "numa", self.table(t, at, "numa")
        nd = NumaTunables()
        numa = NumaTunables(
            numa_balancing=self.integer(n, n_at, "numa_balancing", nd.numa_balancing, 0, 3),
            hot_threshold_ms=self.integer(n, n_at, "hot_threshold_ms", nd.hot_threshold_ms, lo=1),
            promote_rate_limit_MBps=self.integer(
                n, n_at, "promote_rate_limit_MBps", nd.promote_rate_limit_MBps, lo=0
            ),
            scan_delay_ms=self.integer(n, n_at, "scan_delay_ms", nd.scan_delay_ms, lo=0),
            scan_period_min_ms=self.integer(
                n, n_at, "scan_period_min_ms", nd.scan_period_min_ms, lo=1
            ),
            scan_period_max_ms=self.integer(
                n, n_at, "scan_period_max_ms", nd.scan_period_max_ms, lo=1
            ),
            scan_size_mb=self.integer(n, n_at, "scan_size_mb", nd.scan_size_mb, lo=1),
            threshold_adjust_period_ms=self.integer(
                n, n_at, "threshold_adjust_period_ms", nd.threshold_adjust_period_ms, lo=1
            ),
            promote_batch=self.integer(n, n_at, "promote_batch", nd.promote_batch, lo=1),
            promote_batch_delay_ms=self.integer(
                n, n_at, "promote_batch_delay_ms", nd.promote_batch_delay_ms, lo=0
            ),
        )
        if numa.scan_period_min_ms > numa.scan_period_max_ms:
            self.fail(
                [n_at / "scan_period_min_ms", n_at / "scan_period_max_ms"],
                f"scan_period_min_ms ({numa.scan_period_min_ms}) is above scan_period_max_ms "
                f"({numa.scan_period_max_ms})",
            )

        return Tunables(
            demotion_enabled=self.boolean(t, at, "demotion_enabled", base.demotion_enabled),
            # vm.swappiness accepts 0..200 since Linux 5.8.
            swappiness=self.integer(t, at, "swappiness", base.swappiness, 0, 200),
            # vm.watermark_scale_factor accepts 1..3000 (mm/page_alloc.c).
            watermark_scale_factor=self.integer(
                t, at, "watermark_scale_factor", base.watermark_scale_factor, 1, 3000
            ),
            # vm.page-cluster accepts 0..31; readahead caps the window at 2**5.
            page_cluster=self.integer(t, at, "page_cluster", base.page_cluster, 0, 31),
            pcp_lists=self.boolean(t, at, "pcp_lists", base.pcp_lists),
            zswap=zswap,
            cram=cram,
            numa=numa,
        )

    def _direct_nodes(
        self, at: _At, z: Mapping[str, Any], nodes: Sequence[NodeConfig]
    ) -> tuple[str, ...]:
        listed = z.get("direct_nodes", [])
        key_at = at / "direct_nodes"
        if not isinstance(listed, list):
            self.fail(
                key_at, f"direct_nodes must be an array of cram node names, got {_describe(listed)}"
            )
        kinds = {n.name: n.kind for n in nodes}
        out: list[str] = []
        for name in listed:
            self.reference(key_at, "direct_nodes", name, kinds, "node")
            if kinds[name] != "cram":
                self.fail(
                    key_at,
                    f"{name!r} is a {kinds[name]} node: "
                    "zswap stores pages directly on cram nodes only",
                )
            if name in out:
                self.fail(key_at, f"{name!r} is listed twice")
            out.append(name)
        return tuple(out)

    def cgroups(self, nodes: Sequence[NodeConfig]) -> tuple[CgroupConfig, ...]:
        self.unique_names("cgroups", "cgroup")
        total = sum(n.advertised_bytes for n in nodes if n.kind in MEMORY_KINDS)
        out = []
        for at, entry in self.entries("cgroups"):
            memory_max = self.size(entry, at, "memory_max", "max", allow_max=True, positive=True)
            if memory_max is not None and memory_max > total:
                capacities = [
                    nat / ("advertised" if n.kind == "cram" else "capacity")
                    for (nat, _), n in zip(self.entries("nodes"), nodes, strict=True)
                ]
                self.fail(
                    [at / "memory_max", *capacities],
                    f"memory_max ({format_size(memory_max)}) is larger than the total memory "
                    f"of the cluster ({format_size(total)})",
                )
            out.append(
                CgroupConfig(
                    name=entry["name"],
                    memory_max=memory_max,
                    memory_high=self.size(entry, at, "memory_high", "max", allow_max=True),
                    zswap_max=self.size(entry, at, "zswap_max", "max", allow_max=True),
                    zswap_writeback=self.boolean(entry, at, "zswap_writeback", True),
                )
            )
        return tuple(out)

    def workloads(
        self,
        hosts: Sequence[HostConfig],
        cgroups: Sequence[CgroupConfig],
        seed: int,
        duration: int,
    ) -> tuple[WorkloadConfig, ...]:
        if not self.raw.get("workloads"):
            self.fail(ROOT / "workloads", "no workloads: add at least one [[workloads]] table")
        self.unique_names("workloads", "workload")
        make_workload, make_content = _spec_validators()
        out = []
        for at, entry in self.entries("workloads"):
            host = self.reference(
                at / "host",
                "host",
                self._get(entry, at, "host", _REQUIRED),
                [h.name for h in hosts],
                "host",
            )
            cgroup = self.reference(
                at / "cgroup",
                "cgroup",
                self._get(entry, at, "cgroup", _REQUIRED),
                [c.name for c in cgroups],
                "cgroup",
            )
            footprint = self.size(entry, at, "footprint", positive=True)
            assert footprint is not None
            accesses = None
            if "accesses" in entry:
                accesses = self.integer(entry, at, "accesses", lo=1)
            start = self.duration(entry, at, "start", 0)
            if start >= duration:
                self.fail(
                    [at / "start", ROOT / "scenario" / "duration"],
                    f"start ({format_ns(start)}) is not before the end of the run "
                    f"({format_ns(duration)})",
                )
            pattern = self.pattern(at / "pattern", self._get(entry, at, "pattern", _REQUIRED))
            content = copy.deepcopy(entry.get("content", "default"))
            if not isinstance(content, str | dict):
                self.fail(
                    at / "content",
                    f"content must be a content name or a table, got {_describe(content)}",
                )
            pages = -(-footprint // PAGE_SIZE)
            if make_workload is not None:
                problem = self.spec_problem(make_workload, pattern, pages, seed)
                if problem is not None:
                    self.fail(at / "pattern", problem, within=True)
            elif (kind := pattern["kind"]) not in PATTERN_KINDS:
                self.fail(
                    at / "pattern" / "kind",
                    f"unknown pattern kind {kind!r}{_suggest(kind, PATTERN_KINDS)}",
                )
            if make_content is not None:
                problem = self.spec_problem(make_content, content)
                if problem is not None:
                    self.fail(at / "content", problem, within=True)
            out.append(
                WorkloadConfig(
                    name=entry["name"],
                    host=host,
                    cgroup=cgroup,
                    footprint_bytes=footprint,
                    pattern=pattern,
                    content=content,
                    accesses=accesses,
                    start_ns=start,
                )
            )
        return tuple(out)

    def spec_problem(self, build: Callable[..., Any], *args: Any) -> str | None:
        """What `build(*args)` objects to (its ValueError), or None.

        Building a workload can be costly (a Zipf pattern holds 16 bytes per
        page), and variants mostly share their specs, so each distinct call
        is made once per scenario.
        """
        key = json.dumps([build.__qualname__, *args], sort_keys=True, default=str)
        if key not in self.checked:
            try:
                build(*copy.deepcopy(args))
            except ValueError as exc:
                self.checked[key] = str(exc)
            else:
                self.checked[key] = None
        return self.checked[key]

    def pattern(self, at: _At, spec: object) -> dict[str, Any]:
        """The pattern spec with its kind checked and durations in ns.

        A parameter written as a duration ("2us") becomes an integer count of
        nanoseconds under its name + "_ns" (think -> think_ns), so pattern
        code deals in the simulator's one time unit only.
        """
        if isinstance(spec, str):
            spec = {"kind": spec}
        if not isinstance(spec, dict):
            self.fail(at, f"pattern must be a table with a kind, got {_describe(spec)}")
        kind = self.string(spec, at, "kind")
        out: dict[str, Any] = {"kind": kind}
        for key, value in spec.items():
            if key == "kind":
                continue
            if isinstance(value, str) and _DURATION_RE.match(value):
                ns_key = key if key.endswith("_ns") else f"{key}_ns"
                if ns_key != key and ns_key in spec:
                    self.fail(at / key, f"{key} and {ns_key} both given")
                out[ns_key] = parse_duration_ns(value)
            else:
                out[key] = copy.deepcopy(value)
        return out

    def faults(
        self, nodes: Sequence[NodeConfig], duration: int
    ) -> tuple[tuple[int, str, str], ...]:
        out = []
        names = [n.name for n in nodes]
        for at, entry in self.entries("faults"):
            when = self.duration(entry, at, "at")
            if when >= duration:
                self.fail(
                    [at / "at", ROOT / "scenario" / "duration"],
                    f"the fault at {format_ns(when)} is not before the end of the run "
                    f"({format_ns(duration)})",
                )
            node = self.reference(
                at / "node", "node", self._get(entry, at, "node", _REQUIRED), names, "node"
            )
            action = self.string(entry, at, "action", choices=FAULT_ACTIONS)
            out.append((when, node, action))
        return tuple(sorted(out, key=lambda f: f[0]))


# --------------------------------------------------------------------------
# Entry points.


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        line: int | None = getattr(exc, "lineno", None)
        m = re.search(r"\(at line (\d+), column (\d+)\)", message)
        if m:
            line = line or int(m.group(1))
            message = message[: m.start()].rstrip() + f" (column {m.group(2)})"
        elif "(at end of document)" in message:
            line = line or text.count("\n") + 1
            message = message.replace("(at end of document)", "(at end of file)")
        raise ConfigError(f"invalid TOML: {message}", file=source, line=line) from None


def loads_scenario(
    text: str, *, source: str = "<string>", overrides: Mapping[str, object] = _NO_OVERRIDES
) -> Scenario:
    """Parse and validate a scenario from TOML text.

    `source` names the text in error messages. `overrides` ({dotted key:
    value}, e.g. from `--set`) are applied to the base before the variants;
    each variant is then the base with its own `set` table applied. The base
    is validated on its own, then every variant, so an error in a variant
    names the variant and points at the override that caused it.
    """
    raw = _parse_toml(text, source)
    locator = _Locator(text)
    checked: dict[str, str | None] = {}

    def builder(
        doc: Mapping[str, Any], overrides: Sequence[_Override] = (), variant: str | None = None
    ) -> _RunBuilder:
        return _RunBuilder(
            doc,
            source=source,
            locator=locator,
            overrides=overrides,
            variant=variant,
            checked=checked,
        )

    # The shape must be right before override paths can be resolved in it.
    builder(raw).check_structure(raw, SCHEMA, ROOT)
    cli = _resolve_overrides(raw, overrides, lambda keys: (OVERRIDE_SOURCE, None))
    base_raw = _apply(raw, cli)
    base_builder = builder(base_raw, cli)
    base, name, description, question = base_builder.build()

    variant_entries = base_builder.entries("variants")
    runs: list[RunConfig] = []
    if variant_entries:
        base_builder.unique_names("variants", "variant")
    else:
        runs.append(base)
    for at, entry in variant_entries:
        sets = entry.get("set", {})
        if not isinstance(sets, dict):
            base_builder.fail(
                at / "set", f"set must be a table of overrides, got {_describe(sets)}"
            )
        set_path: KeyPath = (*at.path, "set")

        def origin(
            keys: tuple[str, ...], set_path: KeyPath = set_path
        ) -> tuple[str | None, int | None]:
            return source, locator.line((*set_path, *keys))

        own = _resolve_overrides(base_raw, sets, origin)
        variant = builder(_apply(base_raw, own), [*cli, *own], entry["name"])
        runs.append(variant.build(run_name=entry["name"])[0])
    return Scenario(
        name=name, description=description, question=question, path=None, variants=tuple(runs)
    )


def load_scenario(path: str | Path, overrides: Mapping[str, object] = _NO_OVERRIDES) -> Scenario:
    """Read, parse and validate the scenario file at `path` (see `loads_scenario`)."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read scenario: {exc.strerror or exc}", file=source) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError("not UTF-8 text", file=source, line=line) from None
    scenario = loads_scenario(text, source=source, overrides=overrides)
    return Scenario(
        name=scenario.name,
        description=scenario.description,
        question=scenario.question,
        path=source,
        variants=scenario.variants,
    )
