"""Reference workload files: parsing, defaults, and errors that name file, line and key."""

from __future__ import annotations

import pytest
from reference_samples import MINIMAL, TIERED

from tiersim._errors import ConfigError
from tiersim.reference.spec import find_line, library, load_workload, parse_workload


def test_minimal_defaults() -> None:
    w = parse_workload(MINIMAL, "mini.toml")
    assert w.name == "mini"
    assert w.runs == 3
    assert w.npages == 3072
    assert not w.tiered
    assert w.zswap.enabled and w.zswap.compressor == "lz4"
    assert w.zswap.max_pool_percent == 20 and w.zswap.accept_threshold_percent == 90
    assert w.cgroup.memory_max == 8 << 20 and w.cgroup.zswap_max is None
    # Sequential is tiersim's scan; the fill is the first pass.
    assert w.access.pattern == {"kind": "scan", "write_ratio": 0.0}
    assert w.access.accesses == 2 * 3072
    # Recorded on the active/inactive LRU tiersim models, not the multi-gen LRU.
    assert w.tunables.lru_gen is False
    assert parse_workload(MINIMAL + "\n[tunables]\nlru_gen = true\n").tunables.lru_gen


def test_tiered_random_write() -> None:
    w = parse_workload(TIERED)
    assert w.tiered
    assert [n.latency_ns for n in w.nodes] == [100, 250]
    assert w.nodes[1].bandwidth == 10 << 30
    assert w.access.pattern == {"kind": "uniform", "write_ratio": 1.0}
    assert w.access.accesses == 3 * w.npages


def test_pattern_table_is_passed_through() -> None:
    text = MINIMAL.replace(
        "passes = 1", 'pattern = { kind = "zipf", alpha = 1.1 }\naccesses = 5000'
    )
    w = parse_workload(text)
    assert w.access.pattern == {"kind": "zipf", "alpha": 1.1}
    assert w.access.accesses == 5000


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_workload(text, "w.toml")
    return info.value


def test_unknown_key_names_line_and_suggests() -> None:
    err = _error(MINIMAL.replace("memory_max", "memory_mx"))
    assert err.key == "cgroup.memory_mx"
    assert err.line == MINIMAL.splitlines().index('memory_max = "8MiB"') + 1
    assert "memory_max" in err.message


def test_bad_size() -> None:
    err = _error(MINIMAL.replace('footprint = "12MiB"', 'footprint = "12 parsecs"'))
    assert err.key == "workload.footprint"
    assert err.file == "w.toml"
    assert err.line is not None


def test_zswap_needs_swap() -> None:
    err = _error(MINIMAL.replace('size = "64MiB"', 'size = "0"'))
    assert err.key == "zswap.enabled"


def test_demotion_needs_a_second_node() -> None:
    err = _error(MINIMAL + "\n[tunables]\ndemotion_enabled = true\n")
    assert err.key == "tunables.demotion_enabled"
    assert "node1" in err.message


def test_unknown_content_is_reported() -> None:
    err = _error(MINIMAL.replace('content = "text"', 'content = "pictures"'))
    assert err.key == "workload.content"
    assert "pictures" in err.message


def test_order_and_pattern_are_exclusive() -> None:
    err = _error(MINIMAL.replace("passes = 1", 'order = "random"\npattern = { kind = "scan" }'))
    assert err.key == "workload.order"


def test_think_time_refused() -> None:
    err = _error(MINIMAL.replace("passes = 1", 'pattern = { kind = "scan", think = "1us" }'))
    assert "think" in err.message


def test_invalid_toml() -> None:
    err = _error("[reference\nname = 1")
    assert "invalid TOML" in err.message


def test_find_line_nested() -> None:
    text = "[a]\nx = 1\n\n[a.b]\ny = 2\n"
    assert find_line(text, "a.x") == 2
    assert find_line(text, "a.b.y") == 5
    assert find_line(text, "a.b.z") == 4  # the enclosing table


def test_library_workloads_parse() -> None:
    lib = library()
    assert {"zswap-text", "zswap-zero", "demotion", "promotion"} <= set(lib)
    for name, path in lib.items():
        w = load_workload(path)
        assert w.name == name, f"{path}: name must match the file name"
        assert w.runs >= 3


def test_load_by_library_name() -> None:
    assert load_workload("zswap-text").name == "zswap-text"


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_workload("/nonexistent/w.toml")
    assert "cannot read" in info.value.message
