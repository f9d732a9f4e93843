"""Cluster files, scenario binding and the TOML writer: bad input is answered precisely."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tiersim._errors import ConfigError
from tiersim.orchestrator._cli import catalog
from tiersim.orchestrator.launcher import (
    bind_scenario,
    cluster_from_scenario,
    derived_seed,
    dump_cluster,
    load_cluster,
    loads_cluster,
    toml_dumps,
)

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
[cluster]
name = "demo"
start_timeout = "20s"

[[hosts]]
name = "a"
address = "127.0.0.1"

[[nodes]]
name = "dram0"
kind = "dram"
host = "a"
capacity = "32MiB"
port = 41001

[[nodes]]
name = "cram0"
kind = "cram"
host = "a"
advertised = "64MiB"
physical = "16MiB"
port = 41002
metrics_port = 41102
[nodes.options]
overflow = "machine-check"
"""


def test_good_file_parses() -> None:
    spec = loads_cluster(GOOD, "demo.toml")
    assert spec.name == "demo"
    assert spec.start_timeout_s == 20
    assert [n.name for n in spec.nodes] == ["dram0", "cram0"]
    cram = spec.node("cram0")
    assert (cram.advertised, cram.physical, cram.port, cram.metrics_port) == (
        64 << 20,
        16 << 20,
        41002,
        41102,
    )
    assert cram.options == {"overflow": "machine-check"}
    assert spec.host("a").netns is None


def test_dump_round_trips() -> None:
    spec = loads_cluster(GOOD, "demo.toml")
    again = loads_cluster(dump_cluster(spec), "again.toml")
    assert again.nodes == spec.nodes
    assert again.hosts == spec.hosts


def test_shipped_cluster_files_load() -> None:
    files = sorted((REPO / "deploy" / "clusters").glob("*.toml"))
    assert files
    for f in files:
        load_cluster(f)


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loads_cluster(text, "bad.toml")
    return info.value


@pytest.mark.parametrize(
    ("old", "new", "key", "line", "words"),
    [
        # Clashing ports: the second claim names the first.
        (
            "port = 41002",
            "port = 41001",
            "nodes.cram0.port",
            22,
            "already taken by nodes.dram0.port",
        ),
        ("metrics_port = 41102", "metrics_port = 41001", "nodes.cram0.metrics_port", 23, "taken"),
        ('kind = "cram"', 'kind = "hbm"', "nodes.cram0.kind", 18, "unknown kind 'hbm'"),
        ('capacity = "32MiB"', "", "nodes.dram0.capacity", None, "missing: give capacity"),
        ('physical = "16MiB"', "", "nodes.cram0.physical", None, "missing: give physical"),
        ('physical = "16MiB"', 'physical = "128MiB"', "nodes.cram0.physical", 21, "larger than"),
        (
            'capacity = "32MiB"',
            'capacity = "32MiB"\nadvertised = "1GiB"',
            "nodes.dram0.advertised",
            14,
            "applies to cram",
        ),
        ('capacity = "32MiB"', 'capacity = "1000"', "nodes.dram0.capacity", 13, "4096-byte pages"),
        (
            'host = "a"\ncapacity',
            'host = "b"\ncapacity',
            "nodes.dram0.host",
            12,
            "unknown host 'b'",
        ),
        ('name = "cram0"', 'name = "dram0"', "nodes.dram0", 17, "duplicate node name"),
        ("port = 41001", "port = 70000", "nodes.dram0.port", 14, "0..65535"),
        (
            'overflow = "machine-check"',
            'overflow = "explode"',
            "nodes.cram0.options.overflow",
            25,
            "explode",
        ),
        (
            'overflow = "machine-check"',
            "colour = 3",
            "nodes.cram0.options.colour",
            25,
            "unknown key",
        ),
        ('start_timeout = "20s"', 'start_timeout = "soon"', "cluster.start_timeout", 3, ""),
        (
            'address = "127.0.0.1"',
            'address = "127.0.0.1"\nlink = "eth0"',
            "hosts.a.link",
            8,
            "netns",
        ),
    ],
)
def test_bad_files_name_file_line_and_key(
    old: str, new: str, key: str, line: int | None, words: str
) -> None:
    assert old in GOOD
    err = _error(GOOD.replace(old, new, 1))
    assert err.file == "bad.toml"
    assert err.key == key
    if line is not None:
        assert err.line == line, str(err)
    assert words in err.message


def test_no_nodes_and_malformed_toml() -> None:
    assert "at least one [[nodes]]" in _error("[cluster]\nname = 'x'\n").message
    err = _error("[cluster\nname = 'x'\n")
    assert err.line == 1 and "malformed TOML" in err.message
    assert "unknown key" in _error("colour = 'red'\n[[nodes]]\nname='a'\n").message


def test_any_address_clashes_with_every_address() -> None:
    text = GOOD.replace('address = "127.0.0.1"', 'address = "0.0.0.0"')
    text += '\n[[hosts]]\nname = "b"\naddress = "127.0.0.2"\n'
    text += '\n[[nodes]]\nname = "swap0"\nkind = "storage"\nhost = "b"\ncapacity = "64MiB"\n'
    text += "port = 41001\n"
    assert "already taken" in _error(text).message


def test_cluster_from_scenario_matches_the_engine() -> None:
    spec = cluster_from_scenario("default")
    assert [n.name for n in spec.nodes] == ["dram0", "cram0", "swap0"]
    for n in spec.nodes:
        assert n.seed == derived_seed(42, n.name)  # default.toml: seed = 42
    cram = spec.node("cram0")
    assert (cram.advertised, cram.physical) == (64 << 20, 16 << 20)
    # Options of the scenario's nodes travel to the launched node.
    over = cluster_from_scenario("cram-overcommit")
    assert over.node("cram0").options == {"overflow": "poison"}


@pytest.mark.parametrize("name", sorted(catalog()))
def test_toml_writer_round_trips_the_catalog(name: str) -> None:
    raw = tomllib.loads(catalog()[name].read_text())
    assert tomllib.loads(toml_dumps(raw)) == raw


def test_toml_writer_values() -> None:
    doc = {
        "a": 'quote " and \\ and\nnewline é',
        "b": [1, 2.5, True, "x"],
        "c": {"dotted.key": {"inner": float("inf")}},
        "t": [{"name": "x", "sub": {"k": 1}}, {"name": "y"}],
        "empty": [],
    }
    assert tomllib.loads(toml_dumps(doc)) == doc


def test_bind_scenario_points_nodes_at_addresses() -> None:
    addresses = {"dram0": "127.0.0.1:1", "cram0": "127.0.0.1:2"}
    raw = tomllib.loads(bind_scenario("cram-overcommit", addresses))
    nodes = {n["name"]: n for n in raw["nodes"]}
    assert nodes["dram0"]["address"] == "127.0.0.1:1"
    assert nodes["cram0"]["address"] == "127.0.0.1:2"
    assert "options" not in nodes["cram0"]  # the running node carries them
    assert "address" not in nodes["swap0"]  # stays embedded


def test_bind_scenario_refuses_unknown_nodes_and_mismatched_devices() -> None:
    with pytest.raises(ConfigError, match="no node 'nvme0'"):
        bind_scenario("default", {"nvme0": "127.0.0.1:1"})
    spec = cluster_from_scenario("default")
    devices = {n.name: n.device_settings() for n in spec.nodes}
    addresses = {n.name: "127.0.0.1:1" for n in spec.nodes}
    bind_scenario("default", addresses, devices=devices)  # every variant matches
    # A cluster started with other media than the scenario's cram0 is refused.
    devices["cram0"] = {**devices["cram0"], "physical": 32 << 20}
    with pytest.raises(ConfigError, match=r"node cram0 differs .*physical_bytes"):
        bind_scenario("default", addresses, devices=devices)
    # So is one whose seed is not the one the engine derives.
    devices = {n.name: n.device_settings() for n in spec.nodes}
    devices["dram0"]["seed"] = 1
    with pytest.raises(ConfigError, match="seed"):
        bind_scenario("default", addresses, devices=devices, overrides=[])


def test_token_file_and_when_a_token_is_needed(tmp_path: Path) -> None:
    spec = loads_cluster(GOOD, "demo.toml")
    assert spec.token_file is None and not spec.needs_token()  # loopback only
    far = loads_cluster(GOOD.replace('address = "127.0.0.1"', 'address = "198.18.100.11"'), "x")
    assert far.needs_token()
    (tmp_path / "secret").write_text("t0ken\n")
    text = GOOD.replace('start_timeout = "20s"', 'start_timeout = "20s"\ntoken_file = "secret"')
    spec = loads_cluster(text, str(tmp_path / "c.toml"))
    assert spec.token_file == str(tmp_path / "secret") and spec.needs_token()
    raw = tomllib.loads(bind_scenario("default", {"cram0": "h:1"}, token_file="/run/t"))
    cram = next(n for n in raw["nodes"] if n["name"] == "cram0")
    assert cram["token_file"] == "/run/t"
