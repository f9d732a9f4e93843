"""Local cluster launcher: memory nodes as processes, on loopback or in network namespaces.

`tiersim cluster start` turns a cluster file (TOML) into running `tiersim node`
processes, waits until each answers the gRPC health check, and writes an
addresses file. A scenario then reaches the nodes over gRPC instead of
embedding them (`tiersim cluster scenario` writes the scenario with those
addresses filled in). `status`, `logs`, `stop` and `fault` act on what `start`
recorded in the run directory.

Why processes are tracked the way they are:

* Nodes are started in their own session (setsid) so that a Ctrl-C in the
  terminal that ran `start`, or the launcher exiting, does not take them down:
  the cluster outlives the command that started it, like a service.
* A pid alone is not an identity: pids are reused. Every pidfile also records
  the process's start time (field 22 of /proc/PID/stat), and a process only
  counts as ours while both match. `stop` therefore never signals a stranger.
* A node in a network namespace is started as `ip netns exec NS python -m
  tiersim node ...`; `ip netns exec` execs the command, so the recorded pid is
  the node's own. Its address is reachable only from inside the namespaces,
  so its health is checked from within its namespace too.
* Start is all-or-nothing: if any node fails to come up healthy within the
  timeout, every node already started is stopped and the state is removed,
  and the error quotes the failing node's log. No half-built cluster remains.

Nodes refuse to listen beyond loopback without authentication, so a cluster
with such a host gets a token: the file the cluster file names, or a random
one made in the run directory; nodes start with `--token-file`, and a bound
scenario carries `token_file` so the orchestrator presents it.

A cluster can also be derived from a scenario (`cluster_from_scenario`): one
node per scenario node with the very device settings an embedded run would
use, seed included, so the gRPC run and the embedded run model identical
devices and give identical results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiersim._errors import ConfigError
from tiersim._security import is_loopback
from tiersim._units import PAGE_SIZE, parse_duration_ns, parse_size

__all__ = [
    "ClusterError",
    "ClusterSpec",
    "HostSpec",
    "Launcher",
    "NodeSpec",
    "NodeStatus",
    "bind_scenario",
    "check_health",
    "cluster_from_scenario",
    "derived_seed",
    "dump_cluster",
    "load_cluster",
    "loads_cluster",
    "toml_dumps",
]

NODE_KINDS = ("dram", "cxl", "cram", "storage")
FAULT_ACTIONS = ("kill", "pause", "resume", "cut", "heal", "restart")
DEFAULT_HOST = "local"
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_START_TIMEOUT_S = 30.0
DEFAULT_STOP_GRACE_S = 5.0
# Keys a node's [nodes.options] may hold: the device settings of `tiersim node --config`
# other than those the cluster file gives at the node's top level.
OPTION_KEYS = (
    "overflow",
    "low_watermark",
    "high_watermark",
    "per_page_overhead",
    "max_batch_pages",
    "latency",
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ClusterError(Exception):
    """The launcher cannot do what was asked (nothing running, already running,
    a node that will not come up, a fault the host cannot take)."""


# ---------------------------------------------------------------- the spec


@dataclass(frozen=True)
class HostSpec:
    """Where nodes run: an address to bind, and optionally a network namespace.

    `link` is the interface inside `netns` that connects the host to the
    others; the `cut` fault takes it down. Hosts without a namespace share the
    machine's loopback and have no link of their own to cut.
    """

    name: str
    address: str = DEFAULT_ADDRESS
    netns: str | None = None
    link: str | None = None


@dataclass(frozen=True)
class NodeSpec:
    """One memory node: the device it models and where it listens."""

    name: str
    kind: str
    host: str
    advertised: int
    physical: int
    port: int = 0
    metrics_port: int | None = None
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)

    def device_settings(self) -> dict[str, Any]:
        """The node's device keys, spelled as in `tiersim node --config`."""
        out: dict[str, Any] = {"kind": self.kind, "name": self.name, "advertised": self.advertised}
        if self.kind == "cram":
            out["physical"] = self.physical
        if self.seed:
            out["seed"] = self.seed
        out.update(self.options)
        return out


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    hosts: tuple[HostSpec, ...]
    nodes: tuple[NodeSpec, ...]
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    source: str = ""
    # The token every node requires (a file holding it). None: the launcher
    # makes one when a node listens beyond loopback, where nodes refuse to
    # serve without authentication; on loopback alone no token is used.
    token_file: str | None = None

    def needs_token(self) -> bool:
        used = {n.host for n in self.nodes}
        return self.token_file is not None or any(
            not is_loopback(h.address) for h in self.hosts if h.name in used
        )

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def derived_seed(scenario_seed: int, node_name: str) -> int:
    """The jitter seed the engine gives an embedded node (engine.open_node)."""
    return zlib.crc32(f"{scenario_seed}:{node_name}".encode())


class _Lines:
    """Line numbers of keys in a cluster file, for error messages.

    tomllib reports no positions; the file's layout is simple (tables and
    arrays of tables, one key per line), so a scan of the text suffices.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?")
    _KEY = re.compile(r"""^\s*([A-Za-z0-9_\-"']+)\s*=""")

    def __init__(self, text: str) -> None:
        self.lines: dict[str, int] = {}
        counts: dict[str, int] = {}
        section = ""
        for lineno, line in enumerate(text.splitlines(), 1):
            m = self._HEADER.match(line)
            if m:
                name = m.group(2).replace('"', "").replace("'", "")
                if m.group(1) == "[[":
                    counts[name] = counts.get(name, -1) + 1
                    section = f"{name}[{counts[name]}]"
                else:
                    # [nodes.options] belongs to the last [[nodes]] entry.
                    head, _, tail = name.partition(".")
                    section = f"{head}[{counts[head]}].{tail}" if head in counts and tail else name
                self.lines.setdefault(section, lineno)
                continue
            m = self._KEY.match(line)
            if m:
                key = m.group(1).strip("\"'")
                self.lines.setdefault(f"{section}.{key}" if section else key, lineno)

    def line(self, path: str) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path.rpartition(".")[0]
        return None


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.loc = _Lines(text)
        try:
            self.doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            msg = str(exc)
            m = re.search(r"\s*\(at line (\d+), column \d+\)$", msg)
            line = int(m.group(1)) if m else None
            raise ConfigError(
                f"malformed TOML: {msg[: m.start()] if m else msg}", file=source, line=line
            ) from None

    def fail(self, path: str, key: str, message: str) -> ConfigError:
        """A ConfigError at `path` (internal, with [index]) shown as `key` (by name)."""
        return ConfigError(message, file=self.source, line=self.loc.line(path), key=key)

    def check_keys(
        self, table: Mapping[str, Any], path: str, key: str, known: Sequence[str]
    ) -> None:
        for k in table:
            if k not in known:
                raise self.fail(
                    f"{path}.{k}" if path else k,
                    f"{key}.{k}" if key else k,
                    f"unknown key (known: {', '.join(known)})",
                )

    def string(self, table: Mapping[str, Any], path: str, key: str, name: str) -> str | None:
        value = table.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(
                f"{path}.{name}", f"{key}.{name}", f"expected a non-empty string, got {value!r}"
            )
        return value.strip()

    def size(self, table: Mapping[str, Any], path: str, key: str, name: str) -> int | None:
        value = table.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self.fail(
                f"{path}.{name}", f"{key}.{name}", f"expected a size such as 64MiB, got {value!r}"
            )
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise self.fail(f"{path}.{name}", f"{key}.{name}", str(exc)) from None
        if size <= 0:
            raise self.fail(f"{path}.{name}", f"{key}.{name}", "must be positive")
        if size % PAGE_SIZE:
            raise self.fail(
                f"{path}.{name}",
                f"{key}.{name}",
                f"must be a whole number of {PAGE_SIZE}-byte pages",
            )
        return size

    def port(self, table: Mapping[str, Any], path: str, key: str, name: str) -> int | None:
        value = table.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
            raise self.fail(
                f"{path}.{name}", f"{key}.{name}", f"expected a port 0..65535, got {value!r}"
            )
        return value

    def parse(self) -> ClusterSpec:
        doc = self.doc
        self.check_keys(doc, "", "", ("cluster", "hosts", "nodes"))
        cl = doc.get("cluster", {})
        if not isinstance(cl, dict):
            raise self.fail("cluster", "cluster", "expected a table [cluster]")
        self.check_keys(cl, "cluster", "cluster", ("name", "start_timeout", "token_file"))
        token_file = self.string(cl, "cluster", "cluster", "token_file")
        if token_file is not None:
            # Relative to the cluster file, as a user reading it would expect.
            token_file = str((Path(self.source).parent / token_file).resolve())
        name = self.string(cl, "cluster", "cluster", "name") or Path(self.source).stem or "cluster"
        if not _NAME_RE.match(name):
            raise self.fail("cluster.name", "cluster.name", f"not a usable name: {name!r}")
        timeout = DEFAULT_START_TIMEOUT_S
        if "start_timeout" in cl:
            raw = cl["start_timeout"]
            try:
                timeout = parse_duration_ns(raw) / 1e9
            except (ValueError, TypeError) as exc:
                raise self.fail(
                    "cluster.start_timeout", "cluster.start_timeout", str(exc)
                ) from None
            if timeout <= 0:
                raise self.fail(
                    "cluster.start_timeout", "cluster.start_timeout", "must be positive"
                )
        hosts = self.hosts(doc.get("hosts"))
        nodes = self.nodes(doc.get("nodes"), hosts)
        return ClusterSpec(
            name=name,
            hosts=hosts,
            nodes=nodes,
            start_timeout_s=timeout,
            source=self.source,
            token_file=token_file,
        )

    def _array(self, value: object, key: str) -> list[dict[str, Any]]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, key, f"expected an array of tables [[{key}]]")
        return value

    def hosts(self, value: object) -> tuple[HostSpec, ...]:
        entries = self._array(value, "hosts")
        out: list[HostSpec] = []
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            path = f"hosts[{i}]"
            hname = self.string(entry, path, f"hosts[{i}]", "name")
            if hname is None:
                raise self.fail(path, f"hosts[{i}]", "missing: every host needs a name")
            key = f"hosts.{hname}"
            self.check_keys(entry, path, key, ("name", "address", "netns", "link"))
            if hname in seen:
                raise self.fail(f"{path}.name", key, f"duplicate host name {hname!r}")
            seen.add(hname)
            netns = self.string(entry, path, key, "netns")
            link = self.string(entry, path, key, "link")
            if link and not netns:
                raise self.fail(
                    f"{path}.link", f"{key}.link", "a link is cut inside a netns; give netns too"
                )
            out.append(
                HostSpec(
                    name=hname,
                    address=self.string(entry, path, key, "address") or DEFAULT_ADDRESS,
                    netns=netns,
                    link=link or ("eth0" if netns else None),
                )
            )
        if not out:
            out.append(HostSpec(name=DEFAULT_HOST))
        return tuple(out)

    def nodes(self, value: object, hosts: tuple[HostSpec, ...]) -> tuple[NodeSpec, ...]:
        entries = self._array(value, "nodes")
        if not entries:
            raise self.fail(
                "nodes", "nodes", "missing: a cluster needs at least one [[nodes]] entry"
            )
        host_names = [h.name for h in hosts]
        out: list[NodeSpec] = []
        seen: set[str] = set()
        # (bind address, port) -> the key that claimed it; 0.0.0.0 clashes with every address.
        claimed: dict[tuple[str, int], str] = {}
        for i, entry in enumerate(entries):
            path = f"nodes[{i}]"
            nname = self.string(entry, path, path, "name")
            if nname is None:
                raise self.fail(path, path, "missing: every node needs a name")
            key = f"nodes.{nname}"
            self.check_keys(
                entry,
                path,
                key,
                (
                    "name",
                    "kind",
                    "host",
                    "capacity",
                    "advertised",
                    "physical",
                    "port",
                    "metrics_port",
                    "seed",
                    "options",
                ),
            )
            if not _NAME_RE.match(nname):
                raise self.fail(f"{path}.name", key, f"not a usable node name: {nname!r}")
            if nname in seen:
                raise self.fail(f"{path}.name", key, f"duplicate node name {nname!r}")
            seen.add(nname)
            kind = self.string(entry, path, key, "kind")
            if kind is None:
                raise self.fail(
                    path, f"{key}.kind", f"missing: give the kind ({', '.join(NODE_KINDS)})"
                )
            if kind not in NODE_KINDS:
                raise self.fail(
                    f"{path}.kind",
                    f"{key}.kind",
                    f"unknown kind {kind!r} (known: {', '.join(NODE_KINDS)})",
                )
            host = self.string(entry, path, key, "host")
            if host is None:
                if len(hosts) > 1:
                    raise self.fail(
                        path, f"{key}.host", f"missing: which host? ({', '.join(host_names)})"
                    )
                host = hosts[0].name
            if host not in host_names:
                raise self.fail(
                    f"{path}.host",
                    f"{key}.host",
                    f"unknown host {host!r} (hosts: {', '.join(host_names)})",
                )
            if kind == "cram":
                if "capacity" in entry:
                    raise self.fail(
                        f"{path}.capacity",
                        f"{key}.capacity",
                        "a cram node takes advertised and physical, not capacity",
                    )
                advertised = self.size(entry, path, key, "advertised")
                if advertised is None:
                    raise self.fail(
                        path, f"{key}.advertised", "missing: give advertised (e.g. 64MiB)"
                    )
                physical = self.size(entry, path, key, "physical")
                if physical is None:
                    raise self.fail(path, f"{key}.physical", "missing: give physical (e.g. 16MiB)")
                if physical > advertised:
                    raise self.fail(
                        f"{path}.physical",
                        f"{key}.physical",
                        "physical is larger than advertised: "
                        "a cram device advertises at least its media",
                    )
            else:
                for k in ("advertised", "physical"):
                    if k in entry:
                        raise self.fail(
                            f"{path}.{k}",
                            f"{key}.{k}",
                            f"{k} applies to cram nodes; a {kind} node takes capacity",
                        )
                advertised = self.size(entry, path, key, "capacity")
                if advertised is None:
                    raise self.fail(path, f"{key}.capacity", "missing: give capacity (e.g. 32MiB)")
                physical = advertised
            port = self.port(entry, path, key, "port") or 0
            metrics = self.port(entry, path, key, "metrics_port")
            seed = entry.get("seed", 0)
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
                raise self.fail(
                    f"{path}.seed", f"{key}.seed", f"expected an integer 0..2**64-1, got {seed!r}"
                )
            options = entry.get("options", {})
            if not isinstance(options, dict):
                raise self.fail(f"{path}.options", f"{key}.options", "expected a table")
            self.check_keys(options, f"{path}.options", f"{key}.options", OPTION_KEYS)
            spec = NodeSpec(
                name=nname,
                kind=kind,
                host=host,
                advertised=advertised,
                physical=physical,
                port=port,
                metrics_port=metrics or None,
                seed=seed,
                options=dict(options),
            )
            self.check_device(spec, path, key)
            bind = hosts[host_names.index(host)].address
            for pkey, p in (("port", port), ("metrics_port", metrics or 0)):
                if not p:
                    continue
                for (addr, other), who in claimed.items():
                    if other == p and (addr == bind or "0.0.0.0" in (addr, bind)):
                        raise self.fail(
                            f"{path}.{pkey}",
                            f"{key}.{pkey}",
                            f"port {p} on {bind} is already taken by {who}",
                        )
                claimed[(bind, p)] = f"{key}.{pkey}"
            out.append(spec)
        return tuple(out)

    def check_device(self, spec: NodeSpec, path: str, key: str) -> None:
        """Have the node's own configuration builder check the device now.

        The node would refuse the same settings at start; refusing them here,
        with the file and line, saves starting half a cluster to learn it.
        """
        from tiersim.nodes._config import build_node_config

        def err(k: str, message: str) -> ConfigError:
            top = k.split(".")[0]
            sub = {"advertised": "capacity"}.get(top, top) if spec.kind != "cram" else top
            where = f"{path}.{sub}" if top not in OPTION_KEYS else f"{path}.options.{k}"
            shown = f"{key}.{sub}" if top not in OPTION_KEYS else f"{key}.options.{k}"
            return self.fail(where, shown, message)

        build_node_config(spec.device_settings(), err)


def loads_cluster(text: str, source: str = "<cluster>") -> ClusterSpec:
    """Parse and check a cluster file's text; errors name the file, line and key."""
    return _Parser(text, source).parse()


def load_cluster(path: str | Path) -> ClusterSpec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read cluster file: {exc.strerror}", file=str(path)) from None
    return loads_cluster(text, str(path))


def cluster_from_scenario(
    scenario: str | Path,
    *,
    variant: str | None = None,
    address: str = DEFAULT_ADDRESS,
    name: str | None = None,
) -> ClusterSpec:
    """A cluster with one node per scenario node, configured as the engine would embed it.

    The seed is the one the engine derives for an embedded node, so that a
    run against these nodes models the very same devices. Nodes the scenario
    already places at an address are left out.
    """
    from ._cli import load

    sc = load(str(scenario))
    run = _pick_variant(sc.variants, variant)
    nodes = []
    for n in run.nodes:
        if n.address:
            continue
        options = dict(n.options)
        seed = options.pop("seed", None)
        nodes.append(
            NodeSpec(
                name=n.name,
                kind=n.kind,
                host=DEFAULT_HOST,
                advertised=n.advertised_bytes,
                physical=n.physical_bytes,
                seed=int(seed) if seed is not None else derived_seed(run.seed, n.name),
                options=options,
            )
        )
    if not nodes:
        raise ConfigError(f"scenario {sc.name!r} has no embedded node to launch")
    cname = name or re.sub(r"[^A-Za-z0-9_.-]", "-", sc.name)
    return ClusterSpec(
        name=cname,
        hosts=(HostSpec(name=DEFAULT_HOST, address=address),),
        nodes=tuple(nodes),
        source=f"scenario {sc.path or sc.name}",
    )


def _pick_variant(variants: Sequence[Any], variant: str | None) -> Any:
    if variant is None:
        return variants[0]
    for v in variants:
        if v.name == variant or v.name.endswith(f" / {variant}"):
            return v
    names = ", ".join(v.name.split(" / ")[-1] for v in variants)
    raise ConfigError(f"no variant {variant!r} (variants: {names})")


def dump_cluster(spec: ClusterSpec) -> str:
    """The cluster file that `load_cluster` reads back as `spec`."""
    doc: dict[str, Any] = {
        "cluster": {"name": spec.name, "start_timeout": f"{spec.start_timeout_s:g}s"},
        "hosts": [],
        "nodes": [],
    }
    for h in spec.hosts:
        entry: dict[str, Any] = {"name": h.name, "address": h.address}
        if h.netns:
            entry["netns"] = h.netns
            entry["link"] = h.link
        doc["hosts"].append(entry)
    for n in spec.nodes:
        node: dict[str, Any] = {"name": n.name, "kind": n.kind, "host": n.host}
        if n.kind == "cram":
            node["advertised"] = _size_text(n.advertised)
            node["physical"] = _size_text(n.physical)
        else:
            node["capacity"] = _size_text(n.advertised)
        if n.port:
            node["port"] = n.port
        if n.metrics_port:
            node["metrics_port"] = n.metrics_port
        if n.seed:
            node["seed"] = n.seed
        if n.options:
            node["options"] = dict(n.options)
        doc["nodes"].append(node)
    return toml_dumps(doc)


def _size_text(n: int) -> str | int:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return n


# ------------------------------------------------------------ TOML writing

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # A JSON string (ASCII, \uXXXX escapes) is a valid TOML basic string.
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def toml_dumps(doc: Mapping[str, Any]) -> str:
    """Write a document of tables, arrays of tables and plain values as TOML.

    Enough for scenario and cluster files (the standard library reads TOML
    but does not write it); `tomllib.loads(toml_dumps(d)) == d` for them.
    """
    lines: list[str] = []

    def table(tbl: Mapping[str, Any], path: list[str]) -> None:
        for k, v in tbl.items():
            if not isinstance(v, dict) and not _is_table_array(v):
                lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in tbl.items():
            if isinstance(v, dict):
                lines.append("")
                lines.append("[" + ".".join(_toml_key(p) for p in [*path, k]) + "]")
                table(v, [*path, k])
        for k, v in tbl.items():
            if _is_table_array(v):
                for item in v:
                    lines.append("")
                    lines.append("[[" + ".".join(_toml_key(p) for p in [*path, k]) + "]]")
                    table(item, [*path, k])

    table(doc, [])
    return "\n".join(lines).lstrip("\n") + "\n"


# ---------------------------------------------------- binding a scenario


def bind_scenario(
    scenario: str | Path,
    addresses: Mapping[str, str],
    *,
    devices: Mapping[str, Mapping[str, Any]] | None = None,
    overrides: Sequence[str] = (),
    token_file: str | None = None,
) -> str:
    """The scenario's TOML text with its nodes pointed at running node servers.

    Every node named in `addresses` gets `address = "host:port"` and loses
    its `[nodes.options]`: the server was started with those options, and the
    scenario format refuses options beside an address. When `devices` (the
    launched nodes' device settings by name) is given, each variant is
    checked against it first: a variant whose node differs from the running
    one (size, options, seed) would silently model another device, so it is
    refused, naming the variant, node and setting. With `token_file`, bound
    nodes also get `token_file`: the orchestrator then authenticates to them.
    """
    from ._cli import resolve

    path = resolve(str(scenario))
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    nodes = raw.get("nodes", [])
    names = [n.get("name") for n in nodes if isinstance(n, dict)]
    missing = sorted(set(addresses) - set(names))
    if missing:
        raise ConfigError(
            f"the scenario has no node {', '.join(map(repr, missing))} "
            f"(its nodes: {', '.join(map(str, names))})",
            file=str(path),
        )
    if devices is not None:
        _check_devices(path, overrides, addresses, devices)
    for entry in nodes:
        if isinstance(entry, dict) and entry.get("name") in addresses:
            entry["address"] = addresses[entry["name"]]
            if token_file:
                entry["token_file"] = token_file
                entry.pop("token_env", None)
            entry.pop("options", None)
    for v in raw.get("variants", []):
        sets = v.get("set", {}) if isinstance(v, dict) else {}
        for key in list(sets):
            parts = key.split(".")
            if (
                len(parts) >= 3
                and parts[0] == "nodes"
                and parts[1] in addresses
                and parts[2] == "options"
            ):
                del sets[key]  # checked equal to the running node's settings above
    header = (
        f"# {path.name} with nodes {', '.join(sorted(addresses))} at running node servers.\n"
        "# Written by `tiersim cluster scenario`; edit the original instead.\n"
    )
    return header + toml_dumps(raw)


def _check_devices(
    path: Path,
    overrides: Sequence[str],
    addresses: Mapping[str, str],
    devices: Mapping[str, Mapping[str, Any]],
) -> None:
    from tiersim.nodes._config import build_node_config

    from ._cli import load

    sc = load(str(path), list(overrides))
    for run in sc.variants:
        for n in run.nodes:
            if n.name not in addresses or n.name not in devices:
                continue
            options = dict(n.options)
            options.setdefault("seed", derived_seed(run.seed, n.name))
            want: dict[str, Any] = {
                "kind": n.kind,
                "name": n.name,
                "advertised": n.advertised_bytes,
                **options,
            }
            if n.kind == "cram":
                want["physical"] = n.physical_bytes
            have = dict(devices[n.name])
            a = build_node_config(want)
            b = build_node_config(have)
            if a != b:
                diffs = [
                    f"{f}: scenario {getattr(a, f)!r}, running node {getattr(b, f)!r}"
                    for f in a.__dataclass_fields__
                    if getattr(a, f) != getattr(b, f)
                ]
                raise ConfigError(
                    f"variant {run.name!r}: node {n.name} differs from the running node "
                    f"({'; '.join(diffs)}); start the cluster from this variant "
                    "(tiersim cluster start --scenario ... --variant ...) "
                    "or run only matching variants",
                    file=str(path),
                    key=f"nodes.{n.name}",
                )


# ------------------------------------------------------------ health checks


def check_health(address: str, timeout: float = 2.0, service: str = "") -> str:
    """The gRPC health status of `address`: SERVING, NOT_SERVING, ... or UNREACHABLE."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # methods are set in __init__
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=True
            )
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            if code is grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _health_in(netns: str | None, address: str, timeout: float) -> str:
    """Health as seen from `netns` (the node's own namespace) or from here."""
    if not netns:
        return check_health(address, timeout)
    # A fresh interpreter in the namespace: its first channel needs more than a
    # warm one, more so on a busy machine.
    timeout = max(timeout, 3.0)
    argv = [
        _ip(),
        "netns",
        "exec",
        netns,
        sys.executable,
        "-m",
        "tiersim",
        "--log-level",
        "error",
        "health",
        address,
        "--timeout",
        f"{timeout:g}",
        "--quiet",
    ]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout + 15, check=False
        )
    except subprocess.TimeoutExpired:
        return "UNREACHABLE"
    return "SERVING" if done.returncode == 0 else (done.stdout.strip() or "UNREACHABLE")


def _ip() -> str:
    path = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip") if os.path.exists(p)),
        None,
    )
    if path is None:
        raise ClusterError("the `ip` command (iproute2) is needed for network-namespace hosts")
    return path


# ----------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a live process, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = data[data.rfind(")") + 2 :].split()
    state, start = rest[0], int(rest[19])
    if state in ("Z", "X"):
        return None
    return state, start


def _reap(pid: int) -> None:
    """Collect the exit status of a child of this process, so no zombie stays behind."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _spawn(argv: Sequence[str], log_path: Path, env: Mapping[str, str]) -> int:
    """Start `argv` in a new session, stdin from /dev/null, stdout+stderr to the log.

    posix_spawn rather than subprocess.Popen: the node must outlive this
    process, and a Popen object for a child never waited for warns when it
    is collected.
    """
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    return os.posix_spawn(argv[0], list(argv), dict(env), file_actions=actions, setsid=True)


@dataclass
class NodeStatus:
    name: str
    kind: str
    host: str
    address: str
    pid: int
    state: str  # running, paused, dead, killed
    health: str = ""
    link: str = ""  # up, down, or "" (no link of its own)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "host": self.host,
            "address": self.address,
            "pid": self.pid,
            "state": self.state,
            "health": self.health,
            "link": self.link,
        }


def default_run_dir(name: str) -> Path:
    """Where a cluster's state lives unless told: $TIERSIM_RUN_DIR, else ./.tiersim/NAME."""
    base = os.environ.get("TIERSIM_RUN_DIR")
    return Path(base) / name if base else Path(".tiersim") / name


class Launcher:
    """Starts, inspects, faults and stops the nodes of one cluster.

    Everything it knows lives in `run_dir`: state.json (the spec, pids and
    addresses), addresses.json, and nodes/NAME.{toml,log,addr}. Any process
    may pick up a cluster another started, given the same run directory.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.state_path = self.run_dir / "state.json"
        self.addresses_path = self.run_dir / "addresses.json"
        self.nodes_dir = self.run_dir / "nodes"

    # -- state

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One launcher command at a time per run directory (start racing stop ...)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read_state(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ClusterError(
                f"{self.state_path}: unreadable state ({exc}); remove it by hand"
            ) from None

    def _write_json(self, path: Path, doc: Any) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, path)

    def _write_state(self, state: Mapping[str, Any]) -> None:
        self._write_json(self.state_path, state)
        self._write_json(
            self.addresses_path,
            {
                "cluster": state["cluster"],
                "nodes": {n: s["address"] for n, s in state["nodes"].items()},
            },
        )

    def _clear_state(self) -> None:
        for p in (self.state_path, self.addresses_path, self.run_dir / "token"):
            p.unlink(missing_ok=True)
        if self.nodes_dir.exists():
            for p in self.nodes_dir.glob("*.pid"):
                p.unlink(missing_ok=True)
            for p in self.nodes_dir.glob("*.addr"):
                p.unlink(missing_ok=True)

    @staticmethod
    def _alive(entry: Mapping[str, Any]) -> tuple[str, int] | None:
        st = _proc_stat(int(entry["pid"]))
        if st is None or st[1] != entry.get("starttime"):
            return None
        return st

    def _running(self, state: Mapping[str, Any]) -> list[str]:
        return [n for n, e in state["nodes"].items() if self._alive(e)]

    def spec(self) -> ClusterSpec:
        state = self._read_state()
        if state is None:
            raise ClusterError(f"no cluster running in {self.run_dir}")
        return _spec_from_json(state["spec"])

    def addresses(self) -> dict[str, str]:
        state = self._read_state()
        if state is None:
            raise ClusterError(f"no cluster running in {self.run_dir}")
        return {n: e["address"] for n, e in state["nodes"].items()}

    def devices(self) -> dict[str, dict[str, Any]]:
        """The device settings each running node was started with, by name."""
        return {n.name: n.device_settings() for n in self.spec().nodes}

    def token_file(self) -> str | None:
        """The file holding the token the running nodes require, if they require one."""
        return self.spec().token_file

    # -- start

    def start(self, spec: ClusterSpec, *, timeout: float | None = None) -> dict[str, str]:
        """Start every node, wait until all are healthy; return name -> address.

        Raises ClusterError when a cluster already runs here, or when a node
        does not come up (after stopping those that did).
        """
        with self._locked():
            state = self._read_state()
            if state is not None:
                running = self._running(state)
                if running:
                    raise ClusterError(
                        f"cluster {state['cluster']!r} is already running in {self.run_dir} "
                        f"({len(running)} of {len(state['nodes'])} nodes up: "
                        f"{', '.join(running)}); "
                        "stop it first (tiersim cluster stop)"
                    )
                self._clear_state()  # stale: every process of it is gone
            for h in spec.hosts:
                if h.netns and h.netns not in _netns_list():
                    raise ClusterError(
                        f"host {h.name}: network namespace {h.netns!r} does not exist "
                        "(create the hosts first: deploy/netns/netns-hosts.sh up)"
                    )
            self.nodes_dir.mkdir(parents=True, exist_ok=True)
            # Run state is never source: keep it out of any repository it sits in.
            (self.run_dir / ".gitignore").write_text("*\n")
            if spec.needs_token() and spec.token_file is None:
                spec = dataclasses.replace(spec, token_file=str(self._make_token()))
            state = {
                "cluster": spec.name,
                "run_dir": str(self.run_dir.resolve()),
                "started_at": time.time(),
                "spec": _spec_to_json(spec),
                "nodes": {},
            }
            try:
                for n in spec.nodes:
                    state["nodes"][n.name] = self._launch(spec, n, log_mode="w")
                    self._write_state(state)
                deadline = time.monotonic() + (timeout or spec.start_timeout_s)
                for n in spec.nodes:
                    entry = state["nodes"][n.name]
                    entry["address"] = self._await_healthy(spec, n, entry, deadline)
                    # Pin the port: a node restarted by a fault comes back where clients look.
                    entry["port"] = int(entry["address"].rpartition(":")[2])
                    self._write_state(state)
            except BaseException:
                self._terminate(list(state["nodes"].values()), DEFAULT_STOP_GRACE_S)
                self._clear_state()
                raise
            return {n: e["address"] for n, e in state["nodes"].items()}

    def _make_token(self) -> Path:
        """A fresh random token, readable by this user only (nodes and orchestrator run as it)."""
        path = self.run_dir / "token"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        return path.resolve()

    def _launch(
        self, spec: ClusterSpec, n: NodeSpec, *, log_mode: str, port: int | None = None
    ) -> dict[str, Any]:
        host = spec.host(n.host)
        cfg_path = self.nodes_dir / f"{n.name}.toml"
        addr_path = self.nodes_dir / f"{n.name}.addr"
        log_path = self.nodes_dir / f"{n.name}.log"
        settings = n.device_settings()
        settings["host"] = host.address
        settings["port"] = n.port if port is None else port
        if n.metrics_port:
            settings["metrics_port"] = n.metrics_port
        cfg_path.write_text(toml_dumps(settings))
        addr_path.unlink(missing_ok=True)
        if log_mode == "w":
            log_path.write_text("")
        argv = [
            sys.executable,
            "-m",
            "tiersim",
            "--log-json",
            "node",
            "--config",
            str(cfg_path.resolve()),
            "--address-file",
            str(addr_path.resolve()),
        ]
        if spec.token_file:
            # Beyond loopback a node serves only callers holding the token.
            argv += ["--token-file", spec.token_file]
        if host.netns:
            argv = [_ip(), "netns", "exec", host.netns, *argv]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            pid = _spawn(argv, log_path, env)
        except OSError as exc:
            raise ClusterError(f"node {n.name}: cannot start {argv[0]}: {exc.strerror}") from None
        st = _proc_stat(pid)
        (self.nodes_dir / f"{n.name}.pid").write_text(f"{pid}\n")
        return {
            "pid": pid,
            "starttime": st[1] if st else None,
            "kind": n.kind,
            "host": n.host,
            "netns": host.netns,
            "address": "",
            "port": n.port,
            "log": str(log_path),
            "faults": [],
        }

    def _await_healthy(
        self, spec: ClusterSpec, n: NodeSpec, entry: dict[str, Any], deadline: float
    ) -> str:
        addr_path = self.nodes_dir / f"{n.name}.addr"
        address = ""
        health = "not started"
        while True:
            if self._alive(entry) is None:
                _reap(int(entry["pid"]))
                raise ClusterError(
                    f"node {n.name} exited during start-up; its log ({entry['log']}) ends:\n"
                    + _tail(Path(entry["log"]), 15)
                )
            if not address and addr_path.exists():
                address = addr_path.read_text().strip()
            if address:
                left = max(0.5, min(3.0, deadline - time.monotonic()))
                health = _health_in(entry["netns"], address, left)
                if health == "SERVING":
                    return address
            if time.monotonic() > deadline:
                where = address or "no address yet"
                raise ClusterError(
                    f"node {n.name} ({where}) not healthy within {spec.start_timeout_s:g} s "
                    f"(health: {health}); its log ends:\n" + _tail(Path(entry["log"]), 15)
                )
            time.sleep(0.1)

    # -- stop

    def stop(self, grace: float = DEFAULT_STOP_GRACE_S) -> list[str]:
        """SIGTERM every node (SIGKILL after `grace`), wait until gone; return their names."""
        with self._locked():
            state = self._read_state()
            if state is None:
                raise ClusterError(f"no cluster running in {self.run_dir}")
            running = self._running(state)
            self._terminate(list(state["nodes"].values()), grace)
            self._clear_state()
            if not running:
                raise ClusterError(
                    f"cluster {state['cluster']!r} in {self.run_dir} had no node running "
                    "(stale state removed)"
                )
            return running

    def _terminate(self, entries: Sequence[Mapping[str, Any]], grace: float) -> None:
        live = [e for e in entries if e.get("pid") and self._alive(e)]
        for e in live:
            pid = int(e["pid"])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                # A paused node holds SIGTERM pending until it runs again.
                os.kill(pid, signal.SIGCONT)
        end = time.monotonic() + grace
        while live and time.monotonic() < end:
            for e in live:
                _reap(int(e["pid"]))
            live = [e for e in live if self._alive(e)]
            if live:
                time.sleep(0.05)
        for e in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(e["pid"]), signal.SIGKILL)
        end = time.monotonic() + 5
        while live and time.monotonic() < end:
            for e in live:
                _reap(int(e["pid"]))
            live = [e for e in live if self._alive(e)]
            if live:
                time.sleep(0.05)
        if live:
            names = ", ".join(str(e["pid"]) for e in live)
            raise ClusterError(f"processes {names} survived SIGKILL (uninterruptible sleep?)")

    # -- status and logs

    def status(self, *, health_timeout: float = 2.0) -> list[NodeStatus]:
        state = self._read_state()
        if state is None:
            raise ClusterError(f"no cluster running in {self.run_dir}")
        spec = _spec_from_json(state["spec"])
        out = []
        for name, e in state["nodes"].items():
            st = self._alive(e)
            faults = e.get("faults", [])
            if st is None:
                pstate = "killed" if faults and faults[-1] == "kill" else "dead"
            else:
                pstate = "paused" if st[0] == "T" else "running"
            host = spec.host(e["host"])
            link = _link_state(host) if host.netns else ""
            health = ""
            if pstate == "running" and link != "down":
                health = _health_in(host.netns, e["address"], health_timeout)
            elif pstate == "paused":
                health = "UNREACHABLE"
            out.append(
                NodeStatus(
                    name=name,
                    kind=e["kind"],
                    host=e["host"],
                    address=e["address"],
                    pid=int(e["pid"]),
                    state=pstate,
                    health=health,
                    link=link,
                )
            )
        return out

    def log_paths(self, node: str | None = None) -> dict[str, Path]:
        names = (
            sorted(p.stem for p in self.nodes_dir.glob("*.log")) if self.nodes_dir.exists() else []
        )
        if not names:
            raise ClusterError(f"no node logs in {self.nodes_dir}")
        if node is not None:
            if node not in names:
                raise ClusterError(f"no node {node!r} (nodes: {', '.join(names)})")
            names = [node]
        return {n: self.nodes_dir / f"{n}.log" for n in names}

    # -- faults

    def fault(self, node: str, action: str) -> str:
        """Inject a fault into a running cluster; return what was done, in words.

        kill     SIGKILL: the server vanishes, connections are reset.
        pause    SIGSTOP: connections stay open but nothing answers (a hung host).
        resume   SIGCONT after pause.
        cut      take the node's host link down (netns hosts): packets vanish.
        heal     bring the link up again.
        restart  SIGKILL, then start the node again empty on the same address.
        """
        if action not in FAULT_ACTIONS:
            raise ClusterError(f"unknown fault {action!r} (known: {', '.join(FAULT_ACTIONS)})")
        with self._locked():
            state = self._read_state()
            if state is None:
                raise ClusterError(f"no cluster running in {self.run_dir}")
            if node not in state["nodes"]:
                raise ClusterError(f"no node {node!r} (nodes: {', '.join(state['nodes'])})")
            spec = _spec_from_json(state["spec"])
            entry = state["nodes"][node]
            host = spec.host(entry["host"])
            pid = int(entry["pid"])
            alive = self._alive(entry)
            if action in ("kill", "pause", "resume") and alive is None:
                raise ClusterError(f"node {node} is not running")
            if action == "kill":
                os.kill(pid, signal.SIGKILL)
                self._await_gone(entry)
                what = f"killed {node} (pid {pid})"
            elif action == "pause":
                os.kill(pid, signal.SIGSTOP)
                what = f"paused {node} (pid {pid})"
            elif action == "resume":
                os.kill(pid, signal.SIGCONT)
                what = f"resumed {node} (pid {pid})"
            elif action in ("cut", "heal"):
                if not host.netns or not host.link:
                    raise ClusterError(
                        f"node {node} runs on host {host.name}, "
                        "which has no link of its own to cut "
                        "(only network-namespace hosts have one); use kill or pause instead"
                    )
                up = action == "heal"
                _set_link(host, up)
                others = [
                    n for n, e in state["nodes"].items() if e["host"] == host.name and n != node
                ]
                also = f" (also cuts {', '.join(others)})" if others and not up else ""
                what = f"link {host.link} of host {host.name} {'up' if up else 'down'}{also}"
            else:  # restart
                if alive is not None:
                    os.kill(pid, signal.SIGKILL)
                    self._await_gone(entry)
                n = spec.node(node)
                new = self._launch(spec, n, log_mode="a", port=int(entry["port"]))
                new["faults"] = entry.get("faults", [])
                deadline = time.monotonic() + spec.start_timeout_s
                new["address"] = self._await_healthy(spec, n, new, deadline)
                new["port"] = entry["port"]
                state["nodes"][node] = entry = new
                what = f"restarted {node} empty at {new['address']} (pid {new['pid']})"
            entry.setdefault("faults", []).append(action)
            self._write_state(state)
            return what

    def _await_gone(self, entry: Mapping[str, Any], timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while self._alive(entry) and time.monotonic() < end:
            _reap(int(entry["pid"]))
            time.sleep(0.02)
        _reap(int(entry["pid"]))


def _netns_list() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def _set_link(host: HostSpec, up: bool) -> None:
    assert host.netns and host.link
    argv = [_ip(), "-n", host.netns, "link", "set", "dev", host.link, "up" if up else "down"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        msg = done.stderr.strip()
        if "Operation not permitted" in msg or done.returncode == errno.EPERM:
            msg += " (needs root or CAP_NET_ADMIN)"
        raise ClusterError(f"{' '.join(argv[1:])}: {msg}")


def _link_state(host: HostSpec) -> str:
    argv = [_ip(), "-n", str(host.netns), "-o", "link", "show", "dev", str(host.link)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return "missing"
    flags = re.search(r"<([^>]*)>", done.stdout)
    return "up" if flags and "UP" in flags.group(1).split(",") else "down"


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _spec_to_json(spec: ClusterSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "start_timeout_s": spec.start_timeout_s,
        "token_file": spec.token_file,
        "source": spec.source,
        "hosts": [vars(h) for h in spec.hosts],
        "nodes": [{**vars(n), "options": dict(n.options)} for n in spec.nodes],
    }


def _spec_from_json(doc: Mapping[str, Any]) -> ClusterSpec:
    return ClusterSpec(
        name=doc["name"],
        start_timeout_s=doc["start_timeout_s"],
        token_file=doc.get("token_file"),
        source=doc.get("source", ""),
        hosts=tuple(HostSpec(**h) for h in doc["hosts"]),
        nodes=tuple(NodeSpec(**n) for n in doc["nodes"]),
    )
