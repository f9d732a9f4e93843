"""Reference workload files: one small machine, one process, its memory and its accesses.

A reference workload is described once, in TOML, and both sides run it: the
harness boots Linux under QEMU with that machine and replays the accesses
there, and the translation (`translate.py`) gives tiersim a scenario of the
same machine. The format is documented in ``docs/fidelity.md``; in short::

    [reference]
    name = "zswap-text"
    seed = 1
    [memory.node0]
    size = "384MiB"
    [swap]
    size = "256MiB"
    [zswap]
    enabled = true
    [cgroup]
    memory_max = "32MiB"
    [workload]
    footprint = "48MiB"
    content = "text"
    order = "sequential"
    passes = 2
    op = "read"

Mistakes are `ConfigError`s naming the file, the line and the key.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tiersim._errors import ConfigError
from tiersim._units import parse_duration_ns, parse_size

PAGE_SIZE = 4096
ORDERS = ("sequential", "random")
OPS = ("read", "write")
COMPRESSORS = ("lz4", "lz4hc")
# tiersim pattern kinds the guest can replay (every kind: the trace comes
# from tiersim's own generator).
PATTERN_KINDS = ("scan", "uniform", "zipf", "shifting")

_SCHEMA: dict[str, Any] = {
    "reference": {"name", "description", "seed", "runs", "timeout"},
    "machine": {"cpus"},
    "memory": {"node0", "node1"},
    "memory.node": {"size", "latency_ns", "bandwidth"},
    "swap": {"size"},
    "zswap": {
        "enabled",
        "compressor",
        "max_pool_percent",
        "accept_threshold_percent",
        "shrinker_enabled",
    },
    "tunables": {
        "demotion_enabled",
        "numa_balancing",
        "swappiness",
        "watermark_scale_factor",
        "lru_gen",
    },
    "cgroup": {"memory_max", "memory_high", "zswap_max", "zswap_writeback"},
    "workload": {"footprint", "content", "order", "passes", "op", "pattern", "accesses"},
}


@dataclass(frozen=True)
class NodeSpec:
    """A NUMA node of the guest. Latency and bandwidth go into its HMAT entry."""

    size: int
    latency_ns: int
    bandwidth: int  # bytes per second


@dataclass(frozen=True)
class ZswapSpec:
    enabled: bool = False
    compressor: str = "lz4"
    max_pool_percent: int = 20
    accept_threshold_percent: int = 90
    shrinker_enabled: bool = False


@dataclass(frozen=True)
class CgroupSpec:
    """The cgroup the workload runs in. None means "max"."""

    memory_max: int | None = None
    memory_high: int | None = None
    zswap_max: int | None = None
    zswap_writeback: bool = True


@dataclass(frozen=True)
class TunableSpec:
    demotion_enabled: bool = False
    numa_balancing: int = 0
    swappiness: int = 60
    watermark_scale_factor: int = 10
    # The multi-gen LRU. Debian's kernel turns it on; tiersim reclaims from
    # the active/inactive lists, so the guest is recorded with it off.
    lru_gen: bool = False


@dataclass(frozen=True)
class AccessSpec:
    """What the process does: a tiersim access pattern and how many accesses.

    ``order = "sequential"`` is tiersim's ``scan``: the first pass is the
    fill, then ``passes`` more. ``order = "random"`` is tiersim's seeded
    ``uniform`` stream of the same length, where a page's first touch is its
    fill. ``op`` makes every access a write or a read (the fill always puts
    the page's content in place). ``pattern`` replaces ``order``/``op`` with
    any tiersim pattern table.
    """

    order: str
    passes: int
    op: str
    pattern: dict[str, Any]
    accesses: int


@dataclass(frozen=True)
class ReferenceWorkload:
    name: str
    description: str
    seed: int
    runs: int
    timeout_s: float
    cpus: int
    nodes: tuple[NodeSpec, ...]
    swap_bytes: int
    zswap: ZswapSpec
    cgroup: CgroupSpec
    tunables: TunableSpec
    footprint_bytes: int
    content: Any
    access: AccessSpec
    path: str | None = None
    digest: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def npages(self) -> int:
        return -(-self.footprint_bytes // PAGE_SIZE)

    @property
    def tiered(self) -> bool:
        return len(self.nodes) > 1

    @property
    def memory_bytes(self) -> int:
        return sum(n.size for n in self.nodes)


# --------------------------------------------------------------------------
# Source positions (tomllib reports none).

_HEADER_RE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\- \"']+?)\s*\]\s*(?:#.*)?$")
_KEY_RE = re.compile(r"""^\s*([A-Za-z0-9_\-."' ]+?)\s*=""")


def _split(key: str) -> list[str]:
    return [p.strip().strip("\"'") for p in key.split(".")]


def find_line(text: str, dotted: str) -> int | None:
    """Line of `dotted` in `text` (or of its nearest enclosing table)."""
    want = _split(dotted)
    table: list[str] = []
    best: tuple[int, int] | None = None  # (matched segments, line)
    for number, raw in enumerate(text.splitlines(), 1):
        m = _HEADER_RE.match(raw)
        if m:
            table = _split(m.group(1))
            path = table
        else:
            k = _KEY_RE.match(raw)
            if not k:
                continue
            path = table + _split(k.group(1))
        n = 0
        while n < min(len(path), len(want)) and path[n] == want[n]:
            n += 1
        if n == len(path) and (best is None or n > best[0]):
            best = (n, number)
            if n == len(want):
                return number
    return best[1] if best else None


class _Reader:
    """Typed access to the raw table, with errors that point at the line."""

    def __init__(self, raw: Mapping[str, Any], text: str, source: str | None) -> None:
        self.raw = raw
        self.text = text
        self.source = source

    def fail(self, key: str, message: str) -> ConfigError:
        line = find_line(self.text, key) if self.text else None
        return ConfigError(message, file=self.source, line=line, key=key)

    def table(self, key: str) -> Mapping[str, Any]:
        node: Any = self.raw
        for part in key.split("."):
            if not isinstance(node, Mapping):
                raise self.fail(key, "must be a table")
            node = node.get(part, {})
        if not isinstance(node, Mapping):
            raise self.fail(key, f"must be a table, got {node!r}")
        return node

    def get(self, key: str, default: Any = None) -> Any:
        table, _, leaf = key.rpartition(".")
        return self.table(table).get(leaf, default) if table else self.raw.get(leaf, default)

    def has(self, key: str) -> bool:
        table, _, leaf = key.rpartition(".")
        return leaf in (self.table(table) if table else self.raw)

    def string(self, key: str, default: str | None = None, choices: tuple[str, ...] = ()) -> str:
        v = self.get(key, default)
        if v is None:
            raise self.fail(key, "is required")
        if not isinstance(v, str):
            raise self.fail(key, f"must be a string, got {v!r}")
        if choices and v not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, got {v!r}")
        return v

    def boolean(self, key: str, default: bool) -> bool:
        v = self.get(key, default)
        if not isinstance(v, bool):
            raise self.fail(key, f"must be true or false, got {v!r}")
        return v

    def integer(self, key: str, default: int | None, lo: int, hi: int | None = None) -> int:
        v = self.get(key, default)
        if v is None:
            raise self.fail(key, "is required")
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(key, f"must be an integer, got {v!r}")
        if v < lo or (hi is not None and v > hi):
            bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise self.fail(key, f"must be in {bound}, got {v}")
        return v

    def size(self, key: str, default: str | int | None, *, allow_max: bool = False) -> int | None:
        v = self.get(key, default)
        if v is None:
            raise self.fail(key, "is required")
        if allow_max and v == "max":
            return None
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise self.fail(key, f'must be a size such as "64MiB", got {v!r}')
        try:
            n = parse_size(v)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None
        return n

    def duration_s(self, key: str, default: str) -> float:
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise self.fail(key, f'must be a duration such as "300s", got {v!r}')
        try:
            return parse_duration_ns(v) / 1e9
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None

    def check_keys(self) -> None:
        for top, value in self.raw.items():
            if top not in _SCHEMA:
                raise self.fail(top, f"unknown table{_suggest(top, _SCHEMA)}")
            if not isinstance(value, Mapping):
                raise self.fail(top, f"must be a table ([{top}]), got {value!r}")
            for key, sub in value.items():
                allowed = _SCHEMA[top]
                if key not in allowed:
                    raise self.fail(f"{top}.{key}", f"unknown key{_suggest(key, allowed)}")
                if top == "memory":
                    if not isinstance(sub, Mapping):
                        raise self.fail(f"memory.{key}", "must be a table")
                    for leaf in sub:
                        if leaf not in _SCHEMA["memory.node"]:
                            raise self.fail(
                                f"memory.{key}.{leaf}",
                                f"unknown key{_suggest(leaf, _SCHEMA['memory.node'])}",
                            )


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(choices))})"


def _parse_bandwidth(r: _Reader, key: str, default: str) -> int:
    v = r.get(key, default)
    if isinstance(v, str):
        v = v.strip()
        v = v[:-2] if v.lower().endswith("/s") else v
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise r.fail(key, f'must be a rate such as "20GB" (per second), got {v!r}')
    try:
        n = parse_size(v)
    except ValueError as exc:
        raise r.fail(key, str(exc)) from None
    if n <= 0:
        raise r.fail(key, "must be > 0")
    return n


def _check_pattern(r: _Reader, pattern: Any, npages: int) -> dict[str, Any]:
    from tiersim.orchestrator.workloads import make_workload

    if not isinstance(pattern, Mapping):
        raise r.fail(
            "workload.pattern", f'must be a table such as {{ kind = "zipf" }}, got {pattern!r}'
        )
    if pattern.get("kind") not in PATTERN_KINDS:
        raise r.fail("workload.pattern", f"kind must be one of {', '.join(PATTERN_KINDS)}")
    if "think" in pattern or "think_ns" in pattern:
        raise r.fail("workload.pattern", "think time is not replayed in the guest; leave it out")
    try:
        make_workload(dict(pattern), npages, 0)
    except ValueError as exc:
        raise r.fail("workload.pattern", str(exc)) from None
    return dict(pattern)


def parse_workload(text: str, source: str | None = None) -> ReferenceWorkload:
    """Parse and check a reference workload from TOML text."""
    from tiersim.orchestrator.content import make_content

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+)", str(exc))
        raise ConfigError(
            f"invalid TOML: {exc}", file=source, line=int(m.group(1)) if m else None
        ) from None
    r = _Reader(raw, text, source)
    r.check_keys()

    name = r.string("reference.name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise r.fail("reference.name", "must be letters, digits, '-', '_' or '.'")
    seed = r.integer("reference.seed", 0, 0, 2**32 - 1)
    runs = r.integer("reference.runs", 3, 1, 100)
    timeout_s = r.duration_s("reference.timeout", "900s")
    if timeout_s <= 0:
        raise r.fail("reference.timeout", "must be > 0")
    cpus = r.integer("machine.cpus", 1, 1, 8)

    if not r.has("memory.node0"):
        raise r.fail("memory.node0", 'is required: [memory.node0] size = "..."')
    nodes = []
    defaults = {"node0": (100, "20GiB"), "node1": (250, "10GiB")}
    for nid in ("node0", "node1"):
        if not r.has(f"memory.{nid}"):
            continue
        size = r.size(f"memory.{nid}.size", None)
        assert size is not None
        if size < 64 * 2**20 or size % (2**20):
            raise r.fail(f"memory.{nid}.size", "must be a whole number of MiB, at least 64MiB")
        lat_default, bw_default = defaults[nid]
        lat = r.integer(f"memory.{nid}.latency_ns", lat_default, 1, 1_000_000)
        bw = _parse_bandwidth(r, f"memory.{nid}.bandwidth", bw_default)
        nodes.append(NodeSpec(size, lat, bw))

    swap = r.size("swap.size", "0")
    assert swap is not None
    if swap and swap < 2**20:
        raise r.fail("swap.size", "must be 0 or at least 1MiB")

    zswap = ZswapSpec(
        enabled=r.boolean("zswap.enabled", False),
        compressor=r.string("zswap.compressor", "lz4", COMPRESSORS),
        max_pool_percent=r.integer("zswap.max_pool_percent", 20, 0, 100),
        accept_threshold_percent=r.integer("zswap.accept_threshold_percent", 90, 0, 100),
        shrinker_enabled=r.boolean("zswap.shrinker_enabled", False),
    )
    if zswap.enabled and not swap:
        raise r.fail("zswap.enabled", "zswap needs a swap device: set [swap] size")

    tunables = TunableSpec(
        demotion_enabled=r.boolean("tunables.demotion_enabled", False),
        numa_balancing=r.integer("tunables.numa_balancing", 0, 0, 3),
        swappiness=r.integer("tunables.swappiness", 60, 0, 200),
        watermark_scale_factor=r.integer("tunables.watermark_scale_factor", 10, 1, 3000),
        lru_gen=r.boolean("tunables.lru_gen", False),
    )
    if (tunables.demotion_enabled or tunables.numa_balancing & 2) and len(nodes) < 2:
        key = (
            "tunables.demotion_enabled" if tunables.demotion_enabled else "tunables.numa_balancing"
        )
        raise r.fail(key, "needs a slower memory node: add [memory.node1]")

    cgroup = CgroupSpec(
        memory_max=r.size("cgroup.memory_max", "max", allow_max=True),
        memory_high=r.size("cgroup.memory_high", "max", allow_max=True),
        zswap_max=r.size("cgroup.zswap_max", "max", allow_max=True),
        zswap_writeback=r.boolean("cgroup.zswap_writeback", True),
    )
    total = sum(n.size for n in nodes)
    if cgroup.memory_max is not None and not 0 < cgroup.memory_max <= total:
        raise r.fail("cgroup.memory_max", "must be > 0 and not larger than the guest's memory")

    footprint = r.size("workload.footprint", None)
    assert footprint is not None
    if not 0 < footprint < 2**31 * PAGE_SIZE:
        raise r.fail("workload.footprint", "must be > 0")
    if footprint > total + swap:
        raise r.fail("workload.footprint", "is larger than the guest's memory and swap together")
    npages = -(-footprint // PAGE_SIZE)
    content = r.get("workload.content", "default")
    try:
        make_content(content, 0)
    except ValueError as exc:
        raise r.fail("workload.content", str(exc)) from None

    order = r.string("workload.order", "sequential", ORDERS)
    passes = r.integer("workload.passes", 1, 0, 1000)
    op = r.string("workload.op", "read", OPS)
    if r.has("workload.pattern"):
        for key in ("order", "op"):
            if r.has(f"workload.{key}"):
                raise r.fail(f"workload.{key}", "give either order/op or a pattern table")
        pattern = _check_pattern(r, r.get("workload.pattern"), npages)
        order = "pattern"
    else:
        pattern = {
            "kind": "scan" if order == "sequential" else "uniform",
            "write_ratio": 1.0 if op == "write" else 0.0,
        }
    default_accesses = (1 + passes) * npages
    accesses = r.integer("workload.accesses", default_accesses, 1, 2**31 - 1)
    if accesses > 20_000_000:
        raise r.fail(
            "workload.accesses", "more than 20 million accesses would take hours under TCG"
        )

    return ReferenceWorkload(
        name=name,
        description=str(r.get("reference.description", "")).strip(),
        seed=seed,
        runs=runs,
        timeout_s=timeout_s,
        cpus=cpus,
        nodes=tuple(nodes),
        swap_bytes=swap,
        zswap=zswap,
        cgroup=cgroup,
        tunables=tunables,
        footprint_bytes=footprint,
        content=content,
        access=AccessSpec(order, passes, op, pattern, accesses),
        path=source,
        digest=hashlib.sha256(text.encode()).hexdigest(),
        raw=raw,
    )


def load_workload(path: str | Path) -> ReferenceWorkload:
    """Read a workload file, or a library workload by name (``zswap-text``)."""
    p = Path(path)
    if not p.exists() and not p.suffix and "/" not in str(path):
        lib = library().get(str(path))
        if lib is not None:
            p = lib
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        known = ", ".join(sorted(library()))
        raise ConfigError(
            f"cannot read reference workload: {exc.strerror or exc} (library: {known})",
            file=str(path),
        ) from None
    return parse_workload(text, str(path))


def library_dir() -> Path:
    return Path(str(resources.files("tiersim.reference").joinpath("workloads")))


def data_dir() -> Path:
    return Path(str(resources.files("tiersim.reference").joinpath("data")))


def library() -> dict[str, Path]:
    """Name -> file of the reference workloads shipped with tiersim."""
    d = library_dir()
    if not d.is_dir():
        return {}
    return {p.stem: p for p in sorted(d.glob("*.toml"))}
