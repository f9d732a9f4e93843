"""Scenario files: parsing into the config data classes, variants, overrides, and
errors that name the file, the line and the key."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from tiersim._errors import ConfigError
from tiersim.orchestrator import scenario as scenario_mod
from tiersim.orchestrator.config import (
    CgroupConfig,
    CramTunables,
    HostConfig,
    NodeConfig,
    NumaTunables,
    PolicyConfig,
    RunConfig,
    Scenario,
    Tunables,
    WorkloadConfig,
    ZswapTunables,
)
from tiersim.orchestrator.scenario import (
    apply_overrides,
    load_scenario,
    loads_scenario,
    parse_override,
)

MiB = 1024**2
GiB = 1024**3
MS = 1_000_000
S = 1_000_000_000
SRC = "cluster.toml"

BASE = '''\
# Two hosts sharing a CXL expander; one of them also has compressed memory.
[scenario]
name = "two-hosts"
description = """
Two hosts, one shared expander.
A "quoted" word, and a [bracket] that is not a table."""
question = "Does the shared expander help?"
seed = 7
duration = "2s"
on_node_loss = "stop"
node_timeout = "250ms"
sample_interval = "10ms"

[policy]
name = "kernel"
options = { eager = true }

[[hosts]]
name = "host0"
cpus = 8

[[hosts]]
name = "host1"

[[nodes]]
name = "dram0"
kind = "dram"
host = "host0"
capacity = "64MiB"

[[nodes]]
name = "dram1"
kind = "dram"
host = "host1"
capacity = "32MiB"

[[nodes]]
name = "cxl0"
kind = "cxl"
hosts = ["host0", "host1"]
capacity = "128MiB"
distance = 20

[[nodes]]
name = "cram0"
kind = "cram"
host = "host0"
advertised = "256MiB"
physical = "64MiB"
[nodes.options]
overflow = "machine-check"
low_watermark = "2%"
high_watermark = "4MiB"
latency = { read_base_ns = "600ns", jitter_sigma = 0.1 }

[[nodes]]
name = "swap0"
kind = "storage"
host = "host0"
capacity = "1GiB"
address = "10.0.0.2:50051"

[tunables]
demotion_enabled = true
swappiness = 100
watermark_scale_factor = 20
[tunables.zswap]
enabled = true
max_pool_percent = 25
accept_threshold_percent = 80
shrinker_enabled = true
compressor = "lz4hc"
direct_nodes = ["cram0"]
direct_charge = "fuzzy"
[tunables.cram]
tier_enabled = false
safety_check = false
reclaim = false
[tunables.numa]
numa_balancing = 2
hot_threshold_ms = 500
promote_rate_limit_MBps = 1024
scan_delay_ms = 100
scan_period_min_ms = 200
scan_period_max_ms = 5000
scan_size_mb = 64
threshold_adjust_period_ms = 10000

[[cgroups]]
name = "app"
memory_max = "48MiB"
memory_high = "40MiB"
zswap_max = "8MiB"
zswap_writeback = false

[[cgroups]]
name = "batch"

[[workloads]]
name = "kv"
host = "host0"
cgroup = "app"
footprint = "96MiB"
content = { mix = { text = 0.3, heap = 0.5, zero = 0.2 } }
accesses = 2000000
start = "100ms"
[workloads.pattern]
kind = "zipf"
alpha = 0.99
write_ratio = 0.2
think = "2us"
think_distribution = "exponential"

[[workloads]]
name = "scanner"
host = "host1"
cgroup = "batch"
footprint = 40960
pattern = "scan"

[[faults]]
at = "1500ms"
node = "cxl0"
action = "kill"

[[faults]]
at = "500ms"
node = "cram0"
action = "kill"
'''

VARIANTS = """
[[variants]]
name = "baseline"

[[variants]]
name = "classic zswap"
[variants.set]
"tunables.zswap.direct_nodes" = []
"nodes.cram0.advertised" = "512MiB"
"workloads.kv.pattern.alpha" = 1.2

[[variants]]
name = "nested tables"
[variants.set.tunables.zswap]
compressor = "lz4"
[variants.set.cgroups.app]
memory_max = "max"

[[variants]]
name = "inline"
[variants.set]
"tunables.numa" = { numa_balancing = 0 }
"workloads.scanner.pattern" = { kind = "uniform" }
"""


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the `nth` line of `text` that contains `needle`."""
    hits = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) >= nth, f"{needle!r} occurs {len(hits)} times"
    return hits[nth - 1]


def edit(old: str, new: str, text: str = BASE, count: int = 1) -> str:
    assert text.count(old) == count, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def expect_error(
    text: str, *, line: int | None, key: str | None, match: str, source: str = SRC, **kwargs: Any
) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        loads_scenario(text, source=source, **kwargs)
    err = info.value
    assert (err.file, err.line, err.key) == (source, line, key), str(err)
    assert re.search(match, err.message), err.message
    where = source if line is None else f"{source}:{line}"
    assert str(err).startswith(f"{where}, key '{key}': " if key else f"{where}: ")
    return err


@pytest.fixture(autouse=True)
def no_spec_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep these tests about the file format: the workload and content models
    are exercised by their own tests, and faked where their seam is tested."""
    monkeypatch.setattr(scenario_mod, "_spec_validators", lambda: (None, None))


# ---------------------------------------------------------------- valid files


def test_full_scenario_parses_to_the_config_dataclasses() -> None:
    sc = loads_scenario(BASE, source=SRC)
    assert isinstance(sc, Scenario)
    assert sc.name == "two-hosts"
    assert sc.description == (
        'Two hosts, one shared expander.\nA "quoted" word, and a [bracket] that is not a table.'
    )
    assert sc.question == "Does the shared expander help?"
    assert sc.path is None
    expected = RunConfig(
        name="two-hosts",
        seed=7,
        duration_ns=2 * S,
        hosts=(HostConfig("host0", 8), HostConfig("host1", 4)),
        nodes=(
            NodeConfig("dram0", "dram", ("host0",), 64 * MiB, 64 * MiB),
            NodeConfig("dram1", "dram", ("host1",), 32 * MiB, 32 * MiB),
            NodeConfig("cxl0", "cxl", ("host0", "host1"), 128 * MiB, 128 * MiB, distance=20),
            NodeConfig(
                "cram0",
                "cram",
                ("host0",),
                256 * MiB,
                64 * MiB,
                options={
                    "overflow": "machine-check",
                    "low_watermark": "2%",
                    "high_watermark": "4MiB",
                    "latency": {"read_base_ns": "600ns", "jitter_sigma": 0.1},
                },
            ),
            NodeConfig("swap0", "storage", ("host0",), GiB, GiB, address="10.0.0.2:50051"),
        ),
        cgroups=(
            CgroupConfig("app", 48 * MiB, 40 * MiB, 8 * MiB, zswap_writeback=False),
            CgroupConfig("batch"),
        ),
        workloads=(
            WorkloadConfig(
                name="kv",
                host="host0",
                cgroup="app",
                footprint_bytes=96 * MiB,
                pattern={
                    "kind": "zipf",
                    "alpha": 0.99,
                    "write_ratio": 0.2,
                    "think_ns": 2000,
                    "think_distribution": "exponential",
                },
                content={"mix": {"text": 0.3, "heap": 0.5, "zero": 0.2}},
                accesses=2_000_000,
                start_ns=100 * MS,
            ),
            WorkloadConfig("scanner", "host1", "batch", 40960, pattern={"kind": "scan"}),
        ),
        tunables=Tunables(
            demotion_enabled=True,
            swappiness=100,
            watermark_scale_factor=20,
            zswap=ZswapTunables(
                enabled=True,
                compressor="lz4hc",
                max_pool_percent=25,
                accept_threshold_percent=80,
                shrinker_enabled=True,
                direct_nodes=("cram0",),
                direct_charge="fuzzy",
            ),
            cram=CramTunables(tier_enabled=False, safety_check=False, reclaim=False),
            numa=NumaTunables(
                numa_balancing=2,
                hot_threshold_ms=500,
                promote_rate_limit_MBps=1024,
                scan_delay_ms=100,
                scan_period_min_ms=200,
                scan_period_max_ms=5000,
                scan_size_mb=64,
                threshold_adjust_period_ms=10000,
            ),
        ),
        policy=PolicyConfig("kernel", {"eager": True}),
        on_node_loss="stop",
        node_timeout_s=0.25,
        sample_interval_ns=10 * MS,
        faults=((500 * MS, "cram0", "kill"), (1500 * MS, "cxl0", "kill")),
    )
    assert sc.variants == (expected,)


MINIMAL = """\
[scenario]
name = "tiny"
duration = "1s"

[[hosts]]
name = "h"

[[nodes]]
name = "d"
kind = "dram"
host = "h"
capacity = "16MiB"

[[cgroups]]
name = "c"

[[workloads]]
name = "w"
host = "h"
cgroup = "c"
footprint = "8MiB"
pattern = { kind = "uniform" }
"""


def test_defaults_are_the_kernels_and_the_config_classes() -> None:
    (run,) = loads_scenario(MINIMAL).variants
    assert run.name == "tiny"
    assert run.seed == 0
    assert run.tunables == Tunables()
    assert run.policy == PolicyConfig()
    assert run.cgroups == (CgroupConfig("c"),)
    assert run.hosts == (HostConfig("h", cpus=4),)
    assert run.nodes[0].address is None and run.nodes[0].distance is None
    assert run.nodes[0].options == {}
    assert run.workloads[0].content == "default"
    assert run.workloads[0].accesses is None and run.workloads[0].start_ns == 0
    assert (run.on_node_loss, run.node_timeout_s, run.sample_interval_ns) == ("continue", 5.0, 0)
    assert run.faults == () and run.overrides == ()


def test_policy_shorthand_in_scenario_combines_with_policy_options() -> None:
    text = edit('duration = "1s"\n', 'duration = "1s"\npolicy = "mine"\n', MINIMAL)
    assert loads_scenario(text).variants[0].policy == PolicyConfig("mine")
    text += "\n[policy]\noptions = { k = 1 }\n"
    assert loads_scenario(text).variants[0].policy == PolicyConfig("mine", {"k": 1})


def test_inline_arrays_of_tables_and_quoted_names_are_located() -> None:
    hosts = 'hosts = [\n  { name = "h" },\n  { name = "h.two", cpus = 0 },\n]\n'
    text = hosts + edit('[[hosts]]\nname = "h"\n', "", MINIMAL)
    expect_error(
        text,
        line=3,
        key='hosts."h.two".cpus',
        match=r"^cpus must be at least 1, got 0$",
    )


def test_lines_survive_strings_comments_and_dotted_keys() -> None:
    """Text that looks like TOML structure inside strings and comments must
    not shift the lines the locator assigns."""
    preamble = (
        '# [[nodes]] in a comment, and name = "x"\n'
        "[scenario]\n"
        'name = "tiny"\n'
        "description = '''\n[[hosts]]\nname = \"fake\"\n'''\n"
        'question = "a \\"quoted\\" [[nodes]] \\\\" # trailing [comment]\n'
        'duration = "1s"\n'
    )
    rest = MINIMAL.split('duration = "1s"\n', 1)[1]
    rest = edit(
        'pattern = { kind = "uniform" }',
        'pattern.kind = "uniform"\npattern.hot = [\n  1, # one\n  2,\n]\nstart = "5s"',
        rest,
    )
    text = preamble + rest
    sc = loads_scenario(edit('start = "5s"', 'start = "0s"', text))
    assert sc.description == '[[hosts]]\nname = "fake"\n'
    assert sc.question == 'a "quoted" [[nodes]] \\'
    assert sc.variants[0].workloads[0].pattern == {"kind": "uniform", "hot": [1, 2]}
    expect_error(text, line=line_of(text, 'start = "5s"'), key="workloads.w.start", match="^start")
    # Had the string's "[[hosts]]" been taken for a header, the real host
    # would be entry 1 and its error would point into the description.
    text = edit('name = "h"\n', 'name = "h"\ncpus = 0\n', text)
    expect_error(text, line=line_of(text, "cpus = 0"), key="hosts.h.cpus", match="^cpus")


def test_variants_are_the_base_with_their_overrides() -> None:
    sc = loads_scenario(BASE + VARIANTS, source=SRC)
    assert [v.name for v in sc.variants] == ["baseline", "classic zswap", "nested tables", "inline"]
    baseline, classic, nested, inline = sc.variants

    base = loads_scenario(BASE).variants[0]
    assert baseline == RunConfig(**{**base.__dict__, "name": "baseline"})

    assert classic.tunables.zswap.direct_nodes == ()
    assert classic.nodes[3].advertised_bytes == 512 * MiB
    assert classic.nodes[3].physical_bytes == 64 * MiB
    assert classic.workloads[0].pattern["alpha"] == 1.2
    assert classic.workloads[0].pattern["think_ns"] == 2000
    assert classic.seed == base.seed
    assert classic.overrides == (
        ("tunables.zswap.direct_nodes", []),
        ("nodes.cram0.advertised", "512MiB"),
        ("workloads.kv.pattern.alpha", 1.2),
    )

    # Sub-tables of `set` spread over their keys: the rest of zswap stays.
    assert nested.tunables.zswap == ZswapTunables(
        enabled=True,
        compressor="lz4",
        max_pool_percent=25,
        accept_threshold_percent=80,
        shrinker_enabled=True,
        direct_nodes=("cram0",),
        direct_charge="fuzzy",
    )
    assert nested.cgroups[0] == CgroupConfig("app", None, 40 * MiB, 8 * MiB, False)
    assert nested.overrides == (
        ("tunables.zswap.compressor", "lz4"),
        ("cgroups.app.memory_max", "max"),
    )

    # A fixed table given inline is spread too; a pattern given inline is replaced whole.
    assert inline.tunables.numa == NumaTunables(
        numa_balancing=0,
        hot_threshold_ms=500,
        promote_rate_limit_MBps=1024,
        scan_delay_ms=100,
        scan_period_min_ms=200,
        scan_period_max_ms=5000,
        scan_size_mb=64,
        threshold_adjust_period_ms=10000,
    )
    assert inline.workloads[1].pattern == {"kind": "uniform"}


def test_a_pattern_table_override_replaces_the_whole_pattern() -> None:
    text = (
        BASE + '[[variants]]\nname = "scan"\nset = { "workloads.kv.pattern" = { kind = "scan" } }\n'
    )
    (run,) = loads_scenario(text).variants
    assert run.workloads[0].pattern == {"kind": "scan"}


def test_overrides_apply_before_the_variants() -> None:
    overrides = dict(
        parse_override(arg)
        for arg in (
            "tunables.zswap.enabled=false",
            "scenario.seed=99",
            "workloads.kv.pattern.alpha=0.5",
            'nodes.cram0.options.overflow="poison"',
        )
    )
    sc = loads_scenario(BASE + VARIANTS, overrides=overrides)
    assert all(v.seed == 99 and not v.tunables.zswap.enabled for v in sc.variants)
    assert all(v.nodes[3].options["overflow"] == "poison" for v in sc.variants)
    baseline, classic = sc.variants[:2]
    assert baseline.workloads[0].pattern["alpha"] == 0.5
    assert classic.workloads[0].pattern["alpha"] == 1.2  # the variant's own override wins
    assert classic.overrides[:4] == (
        ("tunables.zswap.enabled", False),
        ("scenario.seed", 99),
        ("workloads.kv.pattern.alpha", 0.5),
        ("nodes.cram0.options.overflow", "poison"),
    )


def test_overrides_create_missing_tables() -> None:
    (run,) = loads_scenario(
        MINIMAL, overrides={"tunables.zswap.enabled": True, "policy.options.x": [1, 2]}
    ).variants
    assert run.tunables.zswap.enabled
    assert run.policy == PolicyConfig("kernel", {"x": [1, 2]})


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("tunables.zswap.enabled=true", ("tunables.zswap.enabled", True)),
        ("scenario.seed=42", ("scenario.seed", 42)),
        ("workloads.kv.pattern.alpha=1.2", ("workloads.kv.pattern.alpha", 1.2)),
        ("nodes.cram0.physical=64MiB", ("nodes.cram0.physical", "64MiB")),
        ("scenario.duration=2s", ("scenario.duration", "2s")),
        ('scenario.name="42"', ("scenario.name", "42")),
        ('tunables.zswap.direct_nodes=["cram0"]', ("tunables.zswap.direct_nodes", ["cram0"])),
        ('workloads.kv.pattern={ kind = "scan" }', ("workloads.kv.pattern", {"kind": "scan"})),
        (' nodes."host0.dram".capacity = 1GiB ', ('nodes."host0.dram".capacity', "1GiB")),
        ("scenario.description=", ("scenario.description", "")),
        ("scenario.name=a=b", ("scenario.name", "a=b")),
        # Text that would smuggle in a second key stays one string.
        ("scenario.name=1\nseed = 2", ("scenario.name", "1\nseed = 2")),
    ],
)
def test_parse_override(arg: str, expected: tuple[str, object]) -> None:
    assert parse_override(arg) == expected


@pytest.mark.parametrize("arg", ["no-equals-sign", "=1", "a..b=1", "a.=1", "a b=1"])
def test_parse_override_refuses_malformed_arguments(arg: str) -> None:
    with pytest.raises(ConfigError):
        parse_override(arg)


def test_apply_overrides_returns_a_changed_copy() -> None:
    import tomllib

    raw = tomllib.loads(BASE)
    out = apply_overrides(
        raw,
        {
            "nodes.cram0.physical": "32MiB",
            "tunables.cram": {"reclaim": True},
            "workloads.scanner.pattern": {"kind": "uniform"},
        },
    )
    assert out["nodes"][3]["physical"] == "32MiB"
    assert out["tunables"]["cram"] == {
        "tier_enabled": False,
        "safety_check": False,
        "reclaim": True,
    }
    assert out["workloads"][1]["pattern"] == {"kind": "uniform"}
    assert raw == tomllib.loads(BASE)  # the input is left alone

    with pytest.raises(ConfigError) as info:
        apply_overrides(raw, {"nodes.cram9.physical": "1MiB"})
    assert (info.value.file, info.value.line, info.value.key) == (None, None, "nodes.cram9")
    assert "did you mean 'cram0'?" in info.value.message


def test_pattern_durations_become_nanoseconds() -> None:
    text = edit(
        'pattern = { kind = "uniform" }',
        'pattern = { kind = "uniform", gap = "1.5ms", x_ns = "3us", t = "fast" }',
        MINIMAL,
    )
    assert loads_scenario(text).variants[0].workloads[0].pattern == {
        "kind": "uniform",
        "gap_ns": 1_500_000,
        "x_ns": 3000,
        "t": "fast",
    }


def test_load_scenario_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(BASE + VARIANTS, encoding="utf-8")
    sc = load_scenario(path, {"scenario.seed": 3})
    assert sc.path == str(path)
    assert [v.seed for v in sc.variants] == [3, 3, 3, 3]

    path.write_text(edit("cpus = 8", "cpus = 0"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert (info.value.file, info.value.line) == (str(path), line_of(BASE, "cpus = 8"))


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="cannot read scenario") as info:
        load_scenario(missing)
    assert info.value.file == str(missing)

    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[scenario]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        load_scenario(latin)
    assert (info.value.file, info.value.line) == (str(latin), 2)


def test_the_documented_example_is_valid() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "scenario-format.md"
    match = re.search(r"```toml\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    assert match is not None
    sc = loads_scenario(match.group(1), source="scenario-format.md")
    assert [v.name for v in sc.variants] == [
        "zswap in DRAM",
        "zswap direct, charged a page",
        "zswap direct, charged by device size",
    ]


def test_schema_covers_every_config_field() -> None:
    """The key tables and the data classes must not drift apart."""
    schema = scenario_mod.SCHEMA
    for section, cls in (("zswap", ZswapTunables), ("cram", CramTunables), ("numa", NumaTunables)):
        assert set(schema["tunables"][section]) == {f.name for f in fields(cls)}
    node_types = pytest.importorskip("tiersim.nodes._types")
    assert set(scenario_mod.LATENCY_KEYS) == {f.name for f in fields(node_types.LatencyProfile)}


# ---------------------------------------------------------------- errors

# (name, the bad text, the text on the line the error must name (or the n-th such line),
#  the key, a pattern of the message)
ERROR_CASES: list[tuple[str, Callable[[], str], str | tuple[str, int], str, str]] = [
    (
        "unknown key, close to a valid one",
        lambda: edit("shrinker_enabled = true", "shrinker_enable = true"),
        "shrinker_enable = true",
        "tunables.zswap.shrinker_enable",
        r"^unknown key 'shrinker_enable' \(did you mean 'shrinker_enabled'\?\)$",
    ),
    (
        "unknown table",
        lambda: edit("[tunables.numa]", "[tunables.numaa]"),
        "[tunables.numaa]",
        "tunables.numaa",
        r"did you mean 'numa'\?",
    ),
    (
        "unknown key in an entry, shown by the entry's name",
        lambda: edit('capacity = "128MiB"', 'capacity = "128MiB"\nspeed = 3'),
        "speed = 3",
        "nodes.cxl0.speed",
        r"^unknown key 'speed' \(expected one of: address, advertised, ",
    ),
    (
        "unknown node option",
        lambda: edit('overflow = "machine-check"', 'overflw = "machine-check"'),
        "overflw",
        "nodes.cram0.options.overflw",
        r"did you mean 'overflow'\?",
    ),
    (
        "a table where an array of tables belongs",
        lambda: edit('[[cgroups]]\nname = "batch"\n', "").replace("[[cgroups]]", "[cgroups]"),
        "[cgroups]",
        "cgroups",
        r"cgroups must be an array of tables \(write \[\[cgroups\]\]\), got a table",
    ),
    (
        "a size of the wrong type",
        lambda: edit('capacity = "64MiB"', "capacity = true"),
        "capacity = true",
        "nodes.dram0.capacity",
        r"^capacity must be a size like 64MiB, got true$",
    ),
    (
        "a malformed size",
        lambda: edit('footprint = "96MiB"', 'footprint = "96 parsecs"'),
        "96 parsecs",
        "workloads.kv.footprint",
        r'^footprint must be a size like 64MiB, got "96 parsecs"$',
    ),
    (
        "a malformed duration",
        lambda: edit('duration = "2s"', 'duration = "2 fortnights"'),
        "2 fortnights",
        "scenario.duration",
        r'^duration must be a duration like 350ns, 2us, 100ms or 5s, got "2 fortnights"$',
    ),
    (
        "a float where an integer belongs",
        lambda: edit("cpus = 8", "cpus = 8.0"),
        "cpus = 8.0",
        "hosts.host0.cpus",
        r"^cpus must be an integer, got 8.0$",
    ),
    (
        "a boolean where an integer belongs",
        lambda: edit("swappiness = 100", "swappiness = true"),
        "swappiness = true",
        "tunables.swappiness",
        r"^swappiness must be an integer, got true$",
    ),
    (
        "a choice misspelt",
        lambda: edit('kind = "cxl"', 'kind = "cxI"'),
        'kind = "cxI"',
        "nodes.cxl0.kind",
        r'^kind must be one of dram, cxl, cram, storage, got "cxI" \(did you mean .cxl.\?\)$',
    ),
    (
        "a missing required key",
        lambda: edit('kind = "storage"\n', ""),
        ("[[nodes]]", 5),
        "nodes.swap0.kind",
        r"^missing required key 'kind'$",
    ),
    (
        "a duplicate host",
        lambda: edit('[[hosts]]\nname = "host1"', '[[hosts]]\nname = "host0"'),
        ('name = "host0"', 2),
        "hosts[1].name",
        r"^duplicate host name 'host0' \(first defined at line 19\)$",
    ),
    (
        "a duplicate node",
        lambda: edit('name = "dram1"', 'name = "dram0"'),
        ('name = "dram0"', 2),
        "nodes[1].name",
        r"^duplicate node name 'dram0' \(first defined at line 26\)$",
    ),
    (
        "an empty name",
        lambda: edit('name = "batch"', 'name = " "'),
        'name = " "',
        "cgroups[1].name",
        r"^name must not be empty$",
    ),
    (
        "a node on an unknown host",
        lambda: edit('host = "host1"\ncapacity', 'host = "hst1"\ncapacity'),
        'host = "hst1"',
        "nodes.dram1.host",
        r"^unknown host 'hst1' \(did you mean 'host1'\?\)$",
    ),
    (
        "a shared node on an unknown host",
        lambda: edit('hosts = ["host0", "host1"]', 'hosts = ["host0", "hots1"]'),
        "hots1",
        "nodes.cxl0.hosts",
        r"^unknown host 'hots1' \(did you mean 'host1'\?\)$",
    ),
    (
        "both host and hosts",
        lambda: edit('hosts = ["host0", "host1"]', 'host = "host0"\nhosts = ["host0", "host1"]'),
        'hosts = ["host0", "host1"]',
        "nodes.cxl0.hosts",
        r"^give either host or hosts, not both$",
    ),
    (
        "a workload in an unknown cgroup",
        lambda: edit('cgroup = "batch"', 'cgroup = "batsh"'),
        'cgroup = "batsh"',
        "workloads.scanner.cgroup",
        r"^unknown cgroup 'batsh' \(did you mean 'batch'\?\)$",
    ),
    (
        "a workload on an unknown host",
        lambda: edit('host = "host1"\ncgroup', 'host = "mars"\ncgroup'),
        'host = "mars"',
        "workloads.scanner.host",
        r"^unknown host 'mars' \(expected one of: host0, host1\)$",
    ),
    (
        "zswap direct on an unknown node",
        lambda: edit('direct_nodes = ["cram0"]', 'direct_nodes = ["cram00"]'),
        "direct_nodes",
        "tunables.zswap.direct_nodes",
        r"^unknown node 'cram00' \(did you mean 'cram0'\?\)$",
    ),
    (
        "zswap direct on a node that does not compress",
        lambda: edit('direct_nodes = ["cram0"]', 'direct_nodes = ["cram0", "cxl0"]'),
        "direct_nodes",
        "tunables.zswap.direct_nodes",
        r"^'cxl0' is a cxl node: zswap stores pages directly on cram nodes only$",
    ),
    (
        "a fault on an unknown node",
        lambda: edit('node = "cxl0"', 'node = "cxl9"'),
        'node = "cxl9"',
        "faults[0].node",
        r"^unknown node 'cxl9' \(did you mean 'cxl0'\?\)$",
    ),
    (
        "an unknown fault action",
        lambda: edit('action = "kill"', 'action = "reboot"', count=2).replace(
            'action = "reboot"', 'action = "kill"', 1
        ),
        'action = "reboot"',
        "faults[1].action",
        r'^action must be one of kill, got "reboot"$',
    ),
    (
        "no hosts",
        lambda: re.sub(r'\[\[hosts\]\]\nname = "host\d"\n(cpus = 8\n)?\n', "", BASE),
        "",
        "hosts",
        r"^no hosts: add at least one \[\[hosts\]\] table$",
    ),
    (
        "a host without DRAM",
        lambda: edit('kind = "dram"\nhost = "host1"', 'kind = "cxl"\nhost = "host1"'),
        ("[[hosts]]", 2),
        "hosts.host1",
        r"^impossible topology: host 'host1' has no DRAM node$",
    ),
    (
        "a host's total_ram below its nodes",
        lambda: edit('name = "host0"\ncpus = 8', 'name = "host0"\ncpus = 8\ntotal_ram = "100MiB"'),
        'total_ram = "100MiB"',
        "hosts.host0.total_ram",
        r"^total_ram \(100.0MiB\) is less than the 192.0MiB in the DRAM and CXL nodes "
        r"of host 'host0'$",
    ),
    (
        "a size too large for any machine",
        lambda: edit(
            'name = "host0"\ncpus = 8',
            'name = "host0"\ncpus = 8\ntotal_ram = "9' + "9" * 400 + 'TiB"',
        ),
        "total_ram = ",
        "hosts.host0.total_ram",
        r"^total_ram is too large \(at most 1 EiB\)$",
    ),
    (
        "a DRAM node shared by hosts",
        lambda: edit(
            'host = "host0"\ncapacity = "64MiB"', 'hosts = ["host0", "host1"]\ncapacity = "64MiB"'
        ),
        'hosts = ["host0", "host1"]',
        "nodes.dram0.hosts",
        r"^DRAM node 'dram0' is shared by hosts host0, host1: DRAM belongs to one host",
    ),
    (
        "a cram node with more media than it advertises",
        lambda: edit('physical = "64MiB"', 'physical = "300MiB"'),
        'physical = "300MiB"',
        "nodes.cram0.physical",
        r"^physical \(300.0MiB\) is larger than advertised \(256.0MiB\)",
    ),
    (
        "a cram node given a capacity",
        lambda: edit('advertised = "256MiB"', 'capacity = "256MiB"\nadvertised = "256MiB"'),
        'capacity = "256MiB"',
        "nodes.cram0.capacity",
        r"^a cram node takes advertised and physical, not capacity$",
    ),
    (
        "a zero capacity",
        lambda: edit('capacity = "128MiB"', 'capacity = "0MiB"'),
        'capacity = "0MiB"',
        "nodes.cxl0.capacity",
        r"^capacity must be larger than zero$",
    ),
    (
        "a capacity of partial pages",
        lambda: edit('capacity = "128MiB"', "capacity = 10000"),
        "capacity = 10000",
        "nodes.cxl0.capacity",
        r"^capacity \(10000 bytes\) must be a whole number of 4096-byte pages$",
    ),
    (
        "memory_max above the cluster's memory",
        lambda: edit('memory_max = "48MiB"', 'memory_max = "1GiB"'),
        'memory_max = "1GiB"',
        "cgroups.app.memory_max",
        r"^memory_max \(1.0GiB\) is larger than the total memory of the cluster \(480.0MiB\)$",
    ),
    (
        "a zero footprint",
        lambda: edit("footprint = 40960", "footprint = 0"),
        "footprint = 0",
        "workloads.scanner.footprint",
        r"^footprint must be larger than zero$",
    ),
    (
        "numa_balancing out of range",
        lambda: edit("numa_balancing = 2", "numa_balancing = 4"),
        "numa_balancing = 4",
        "tunables.numa.numa_balancing",
        r"^numa_balancing must be between 0 and 3, got 4$",
    ),
    (
        "a percentage out of range",
        lambda: edit("max_pool_percent = 25", "max_pool_percent = 101"),
        "max_pool_percent = 101",
        "tunables.zswap.max_pool_percent",
        r"^max_pool_percent must be between 0 and 100, got 101$",
    ),
    (
        "a negative percentage",
        lambda: edit("accept_threshold_percent = 80", "accept_threshold_percent = -1"),
        "accept_threshold_percent = -1",
        "tunables.zswap.accept_threshold_percent",
        r"^accept_threshold_percent must be between 0 and 100, got -1$",
    ),
    (
        "a scan period range upside down",
        lambda: edit("scan_period_max_ms = 5000", "scan_period_max_ms = 100"),
        "scan_period_min_ms = 200",
        "tunables.numa.scan_period_min_ms",
        r"^scan_period_min_ms \(200\) is above scan_period_max_ms \(100\)$",
    ),
    (
        "a distance below local",
        lambda: edit("distance = 20", "distance = 5"),
        "distance = 5",
        "nodes.cxl0.distance",
        r"^distance must be between 10 and 254, got 5$",
    ),
    (
        "a workload that starts after the run",
        lambda: edit('start = "100ms"', 'start = "3s"'),
        'start = "3s"',
        "workloads.kv.start",
        r"^start \(3.000s\) is not before the end of the run \(2.000s\)$",
    ),
    (
        "a fault after the run",
        lambda: edit('at = "1500ms"', 'at = "2s"'),
        'at = "2s"',
        "faults[0].at",
        r"^the fault at 2.000s is not before the end of the run",
    ),
    (
        "a sample interval longer than the run",
        lambda: edit('sample_interval = "10ms"', 'sample_interval = "3s"'),
        'sample_interval = "3s"',
        "scenario.sample_interval",
        r"is longer than the duration",
    ),
    (
        "options on a node that runs elsewhere",
        lambda: edit(
            'address = "10.0.0.2:50051"', 'address = "10.0.0.2:50051"\noptions = { seed = 1 }'
        ),
        "options = { seed = 1 }",
        "nodes.swap0.options",
        r"^options configure embedded nodes",
    ),
    (
        "the policy named twice",
        lambda: edit('duration = "2s"', 'duration = "2s"\npolicy = "other"'),
        'name = "kernel"',
        "policy.name",
        r"^the policy is named twice",
    ),
    (
        "a pattern without a kind",
        lambda: edit('kind = "zipf"\n', ""),
        "[workloads.pattern]",
        "workloads.kv.pattern.kind",
        r"^missing required key 'kind'$",
    ),
    (
        "an unknown pattern kind",
        lambda: edit('pattern = "scan"', 'pattern = "scna"'),
        'pattern = "scna"',
        "workloads.scanner.pattern.kind",
        r"^unknown pattern kind 'scna' \(did you mean 'scan'\?\)$",
    ),
    (
        "a pattern duration given twice",
        lambda: edit('think = "2us"', 'think = "2us"\nthink_ns = 5'),
        'think = "2us"',
        "workloads.kv.pattern.think",
        r"^think and think_ns both given$",
    ),
    (
        "content of the wrong type",
        lambda: edit("content = { mix = { text = 0.3, heap = 0.5, zero = 0.2 } }", "content = 3"),
        "content = 3",
        "workloads.kv.content",
        r"^content must be a content name or a table, got 3$",
    ),
]


@pytest.mark.parametrize(
    ("make", "needle", "key", "match"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_bad_input_names_file_line_and_key(
    make: Callable[[], str], needle: str | tuple[str, int], key: str, match: str
) -> None:
    text = make()
    if isinstance(needle, tuple):
        line: int | None = line_of(text, *needle)
    else:
        line = line_of(text, needle) if needle else None
    expect_error(text, line=line, key=key, match=match)


def test_the_duplicate_host_line_in_its_message_is_the_first_definition() -> None:
    assert line_of(BASE, 'name = "host0"') == 19


def test_missing_scenario_table() -> None:
    text = re.sub(r"(?s)\[scenario\].*?\n\n", "", BASE, count=1)
    expect_error(text, line=None, key="scenario", match=r"^missing required table \[scenario\]$")


def test_no_workloads() -> None:
    text = re.sub(r"(?s)\[\[workloads\]\].*?(?=\[\[faults\]\])", "", BASE)
    assert "[[workloads]]" not in text
    expect_error(
        text, line=None, key="workloads", match=r"^no workloads: add at least one \[\[workloads\]\]"
    )


@pytest.mark.parametrize(
    ("text", "line", "match"),
    [
        ('[scenario]\nname = "x"\nseed = \n', 3, r"^invalid TOML: Invalid value \(column 8\)$"),
        ('[scenario]\nname = "x"\nname = "y"\n', 3, r"^invalid TOML: Cannot overwrite a value"),
        ("[scenario]\n\n\n[scenario]\n", 4, r"^invalid TOML: Cannot declare \('scenario',\) twice"),
        ('[scenario]\nname = "x', 2, r"^invalid TOML: Unterminated string"),
        ('a = """\n\n\nb = 1', 4, r"^invalid TOML: Unterminated string"),
    ],
)
def test_toml_syntax_errors_give_the_line(text: str, line: int, match: str) -> None:
    expect_error(text, line=line, key=None, match=match)


# ---------------------------------------------------------------- variant errors


def with_variant(body: str) -> str:
    return BASE + '\n[[variants]]\nname = "v"\n' + body


def test_variant_with_an_unknown_override_key() -> None:
    text = with_variant('[variants.set]\n"tunables.zswap.enable" = false\n')
    expect_error(
        text,
        line=line_of(text, '"tunables.zswap.enable"'),
        key="tunables.zswap.enable",
        match=r"^unknown key 'enable' \(did you mean 'enabled'\?\)$",
    )


def test_variant_naming_an_unknown_entry() -> None:
    text = with_variant('[variants.set]\n"workloads.kvv.footprint" = "1MiB"\n')
    expect_error(
        text,
        line=line_of(text, "kvv"),
        key="workloads.kvv",
        match=r"^no entry named 'kvv' in workloads \(did you mean 'kv'\?\)$",
    )


def test_variant_nested_set_table_with_an_unknown_key() -> None:
    text = with_variant("[variants.set.tunables.cram]\ntier_enable = true\n")
    expect_error(
        text,
        line=line_of(text, "tier_enable = true"),
        key="tunables.cram.tier_enable",
        match=r"did you mean 'tier_enabled'\?",
    )


def test_variant_error_points_at_the_override_that_caused_it() -> None:
    text = with_variant('[variants.set]\n"nodes.cram0.advertised" = "32MiB"\n')
    expect_error(
        text,
        line=line_of(text, '"nodes.cram0.advertised"'),
        key="nodes.cram0.advertised",
        match=r"^variant 'v': physical \(64.0MiB\) is larger than advertised \(32.0MiB\)",
    )


def test_variant_shrinking_the_cluster_below_a_cgroup_limit() -> None:
    text = with_variant(
        '[variants.set]\n"nodes.cxl0.capacity" = "4MiB"\n"cgroups.app.memory_max" = "400MiB"\n'
    )
    expect_error(
        text,
        line=line_of(text, '"cgroups.app.memory_max"'),
        key="cgroups.app.memory_max",
        match=r"^variant 'v': memory_max \(400.0MiB\) is larger than the total memory",
    )


def test_variant_value_of_the_wrong_type() -> None:
    text = with_variant('set = { "tunables.numa.numa_balancing" = "2" }\n')
    expect_error(
        text,
        line=line_of(text, "set = {"),
        key="tunables.numa.numa_balancing",
        match=r'^variant \'v\': numa_balancing must be an integer, got "2"$',
    )


@pytest.mark.parametrize(
    ("body", "key", "match"),
    [
        (
            '"tunables.zswap" = true',
            "tunables.zswap",
            r"^tunables.zswap is a table: set one of its keys",
        ),
        ('"nodes" = []', "nodes", r"^nodes is an array of tables: address one entry by name"),
        ('"variants.v.name" = "w"', "variants", r"^variants cannot be overridden$"),
        ('"scenario.seed.low" = 1', "scenario.seed.low", r"^scenario.seed is a single value"),
        ('"scenario..seed" = 1', "scenario..seed", r"^not a key path"),
        (
            '"workloads.scanner.pattern.n" = 1',
            "workloads.scanner.pattern.n",
            r"^cannot set .*not a table",
        ),
    ],
)
def test_variant_override_paths_that_cannot_be_set(body: str, key: str, match: str) -> None:
    text = with_variant("[variants.set]\n" + body + "\n")
    expect_error(text, line=line_of(text, body), key=key, match=match)


def test_variant_names_must_be_given_and_unique() -> None:
    text = BASE + '\n[[variants]]\nname = "a"\n\n[[variants]]\nname = "a"\n'
    expect_error(
        text,
        line=line_of(text, 'name = "a"', nth=2),
        key="variants[1].name",
        match=r"^duplicate variant name 'a' \(first defined at line \d+\)$",
    )
    text = BASE + '\n[[variants]]\nname = ""\n'
    expect_error(
        text,
        line=line_of(text, 'name = ""'),
        key="variants[0].name",
        match=r"^name must not be empty$",
    )
    text = BASE + "\n[[variants]]\nset = {}\n"
    expect_error(
        text,
        line=line_of(text, "[[variants]]"),
        key="variants[0].name",
        match=r"^missing required key 'name'$",
    )


def test_variant_set_must_be_a_table() -> None:
    text = with_variant('set = ["x"]\n')
    expect_error(
        text,
        line=line_of(text, 'set = ["x"]'),
        key="variants.v.set",
        match=r"^set must be a table of overrides",
    )


# ---------------------------------------------------------------- --set errors


def test_command_line_overrides_name_the_option() -> None:
    with pytest.raises(ConfigError) as info:
        loads_scenario(
            BASE, source=SRC, overrides=dict([parse_override("tunables.zswap.enabld=true")])
        )
    err = info.value
    assert (err.file, err.line, err.key) == ("--set", None, "tunables.zswap.enabld")
    assert str(err) == (
        "--set, key 'tunables.zswap.enabld': unknown key 'enabld' (did you mean 'enabled'?)"
    )

    with pytest.raises(ConfigError) as info:
        loads_scenario(BASE, source=SRC, overrides={"nodes.cram0.physical": "1GiB"})
    err = info.value
    assert (err.file, err.line, err.key) == ("--set", None, "nodes.cram0.physical")
    assert err.message.startswith("physical (1.0GiB) is larger than advertised")


# ---------------------------------------------------------------- the models' own checks


def test_pattern_and_content_are_checked_by_their_models(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []

    def make_workload(spec: dict[str, Any], footprint_pages: int, seed: int) -> object:
        calls.append(("workload", (spec, footprint_pages, seed)))
        if spec.get("alpha", 1) > 2:
            raise ValueError("workload 'zipf': alpha must be at most 2")
        return object()

    def make_content(spec: object) -> object:
        calls.append(("content", spec))
        if spec == "noise":
            raise ValueError("unknown content 'noise'")
        return object()

    monkeypatch.setattr(scenario_mod, "_spec_validators", lambda: (make_workload, make_content))

    loads_scenario(BASE + VARIANTS)
    assert (
        "workload",
        (
            {
                "kind": "zipf",
                "alpha": 0.99,
                "write_ratio": 0.2,
                "think_ns": 2000,
                "think_distribution": "exponential",
            },
            96 * MiB // 4096,
            7,
        ),
    ) in calls
    assert ("workload", ({"kind": "scan"}, 10, 7)) in calls
    assert ("content", "default") in calls
    # Variants share specs: each distinct spec is built once per scenario.
    assert len(calls) == len({repr(c) for c in calls})

    text = edit("alpha = 0.99", "alpha = 3")
    expect_error(
        text,
        line=line_of(text, "[workloads.pattern]"),
        key="workloads.kv.pattern",
        match=r"^workload 'zipf': alpha must be at most 2$",
    )
    text = with_variant('[variants.set]\n"workloads.kv.pattern.alpha" = 2.5\n')
    expect_error(
        text,
        line=line_of(text, '"workloads.kv.pattern.alpha"'),
        key="workloads.kv.pattern",
        match=r"^variant 'v': workload 'zipf': alpha must be at most 2$",
    )
    text = edit('pattern = "scan"', 'pattern = "scan"\ncontent = "noise"')
    expect_error(
        text,
        line=line_of(text, 'content = "noise"'),
        key="workloads.scanner.content",
        match=r"^unknown content 'noise'$",
    )


def test_node_options_are_checked_by_the_node_configuration() -> None:
    pytest.importorskip("tiersim.nodes._config")
    text = edit('high_watermark = "4MiB"', 'high_watermark = "1%"')
    expect_error(
        text,
        line=line_of(text, 'low_watermark = "2%"'),
        key="nodes.cram0.options.low_watermark",
        match=r"watermark",
    )
    text = edit("jitter_sigma = 0.1", 'jitter_sigma = "big"')
    expect_error(
        text,
        line=line_of(text, "latency = {"),
        key="nodes.cram0.options.latency.jitter_sigma",
        match=r"number",
    )
    text = edit("jitter_sigma = 0.1", "jiter_sigma = 0.1")
    expect_error(
        text,
        line=line_of(text, "latency = {"),
        key="nodes.cram0.options.latency.jiter_sigma",
        match=r"^unknown key 'jiter_sigma' \(did you mean 'jitter_sigma'\?\)$",
    )


def test_real_models_accept_the_documented_example() -> None:
    """The shipped example must hold up against the real pattern and content models."""
    workloads = pytest.importorskip("tiersim.orchestrator.workloads")
    content = pytest.importorskip("tiersim.orchestrator.content")
    validators = (workloads.make_workload, content.make_content)
    doc = Path(__file__).resolve().parents[2] / "docs" / "scenario-format.md"
    match = re.search(r"```toml\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    assert match is not None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scenario_mod, "_spec_validators", lambda: validators)
        assert len(loads_scenario(match.group(1)).variants) == 3
