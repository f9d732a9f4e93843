"""Node configuration: keywords, TOML files and CLI flags; errors name file, line and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tiersim import ConfigError
from tiersim.cli import main
from tiersim.nodes import NodeKind, OverflowMode, load_settings, node_config
from tiersim.nodes._config import find_key_line


def test_defaults() -> None:
    c = node_config("cram", "8GiB", "1GiB")
    assert c.kind is NodeKind.CRAM and c.name == "cram"
    assert (c.advertised_bytes, c.physical_bytes) == (8 << 30, 1 << 30)
    assert c.watermarks.low_free_bytes == int((1 << 30) * 0.02)
    assert c.watermarks.high_free_bytes == int((1 << 30) * 0.05)
    assert c.per_page_overhead_bytes == 64 and c.max_batch_pages == 256
    assert c.overflow_mode is OverflowMode.POISON and c.seed == 0
    d = node_config("storage", "1GiB")
    assert d.physical_bytes == d.advertised_bytes and d.per_page_overhead_bytes == 0
    w = node_config("cram", "1GiB", "64MiB", low_watermark="1MiB", high_watermark="10%")
    assert w.watermarks.low_free_bytes == 1 << 20
    assert w.watermarks.high_free_bytes == int((64 << 20) * 0.1)


@pytest.mark.parametrize(
    ("settings", "key", "words"),
    [
        ({"kind": "hbm", "advertised": "1GiB"}, "kind", "unknown node kind"),
        ({"kind": 3, "advertised": "1GiB"}, "kind", "expected a string"),
        ({"advertised": "1GiB"}, "kind", "missing"),
        ({"kind": "dram"}, "advertised", "missing"),
        ({"kind": "dram", "advertised": 0}, "advertised", "positive"),
        ({"kind": "dram", "advertised": -4096}, "advertised", "negative"),
        ({"kind": "dram", "advertised": "-1GiB"}, "advertised", "not a size"),
        ({"kind": "dram", "advertised": "1.5 parsecs"}, "advertised", "not a size"),
        ({"kind": "dram", "advertised": 5000}, "advertised", "whole number"),
        ({"kind": "dram", "advertised": True}, "advertised", "expected a size"),
        ({"kind": "cram", "advertised": "1GiB", "physical": "2GiB"}, "physical", "more media"),
        ({"kind": "cram", "advertised": "1GiB", "physical": 0}, "physical", "positive"),
        ({"kind": "dram", "advertised": "1GiB", "physical": "512MiB"}, "physical", "must equal"),
        ({"kind": "cxl", "advertised": "1GiB", "physical": "2GiB"}, "physical", "must equal"),
        (
            {"kind": "cram", "advertised": "1GiB", "physical": "1GiB", "low_watermark": "6%"},
            "low_watermark",
            "must not exceed",
        ),
        (
            {"kind": "cram", "advertised": "1GiB", "physical": "1GiB", "high_watermark": "2GiB"},
            "high_watermark",
            "exceeds the physical",
        ),
        (
            {"kind": "cram", "advertised": "1GiB", "physical": "1GiB", "low_watermark": "x%"},
            "low_watermark",
            "not a percentage",
        ),
        (
            {"kind": "cram", "advertised": "1GiB", "physical": "1GiB", "low_watermark": "101%"},
            "low_watermark",
            "0..100",
        ),
        (
            {"kind": "dram", "advertised": "1GiB", "per_page_overhead": 64},
            "per_page_overhead",
            "cram",
        ),
        (
            {"kind": "cram", "advertised": "1GiB", "per_page_overhead": 4096},
            "per_page_overhead",
            "below the page size",
        ),
        (
            {"kind": "dram", "advertised": "1GiB", "max_batch_pages": 0},
            "max_batch_pages",
            "1..4096",
        ),
        (
            {"kind": "dram", "advertised": "1GiB", "max_batch_pages": "8"},
            "max_batch_pages",
            "integer",
        ),
        ({"kind": "dram", "advertised": "1GiB", "seed": -1}, "seed", "0.."),
        (
            {"kind": "dram", "advertised": "1GiB", "overflow": "explode"},
            "overflow",
            "unknown overflow",
        ),
        ({"kind": "dram", "advertised": "1GiB", "latency": 5}, "latency", "table"),
        (
            {"kind": "dram", "advertised": "1GiB", "latency": {"read_base": 5}},
            "latency.read_base",
            "unknown latency",
        ),
        (
            {"kind": "dram", "advertised": "1GiB", "latency": {"jitter_sigma": -1}},
            "latency.jitter_sigma",
            ">= 0",
        ),
        ({"kind": "dram", "advertised": "1GiB", "colour": "blue"}, "colour", "unknown setting"),
        (
            {"kind": "cram", "advertised": "1GiB", "compress_in": "gpu"},
            "compress_in",
            "auto, process, thread",
        ),
    ],
)
def test_bad_values_name_their_key(settings: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, settings)
    assert err.value.key == "--" + key.split(".")[0].replace("_", "-")
    assert words in err.value.message


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


GOOD = """\
# a compressed node
name = "host0-cram"
kind = "cram"
advertised = "8GiB"
physical = "1GiB"
overflow = "machine-check"
low_watermark = "2%"
high_watermark = "64MiB"
max_batch_pages = 128
seed = 42
port = 50051
metrics_port = 9101

[latency]
read_base_ns = 550
jitter_sigma = 0.2
"""


def test_toml_file(tmp_path: Path) -> None:
    config, options = load_settings(_toml(tmp_path, GOOD), {})
    assert config.name == "host0-cram" and config.kind is NodeKind.CRAM
    assert config.overflow_mode is OverflowMode.MACHINE_CHECK
    assert config.watermarks.high_free_bytes == 64 << 20
    assert config.max_batch_pages == 128 and config.seed == 42
    assert config.latency.read_base_ns == 550 and config.latency.jitter_sigma == 0.2
    assert options.port == 50051 and options.metrics_port == 9101
    assert options.host == "127.0.0.1"
    # CLI flags override the file.
    config, options = load_settings(_toml(tmp_path, GOOD), {"seed": 7, "port": 0, "kind": None})
    assert config.seed == 7 and options.port == 0 and config.kind is NodeKind.CRAM


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        ('kind = "cram"\nadvertised = "8GiB"\nadvertized = "1GiB"\n', 3, "advertized", "unknown"),
        ('kind = "cram"\n\nadvertised = true\n', 3, "advertised", "expected a size"),
        ('kind = "dram"\nadvertised = "1GiB"\nphysical = "2GiB"\n', 3, "physical", "must equal"),
        (
            'kind = "cram"\nadvertised = "1GiB"\n\n  physical   = "2GiB"\n',
            4,
            "physical",
            "more media",
        ),
        ('kind = "hbm"\nadvertised = "1GiB"\n', 1, "kind", "unknown node kind"),
        ('kind = "dram"\nadvertised = "1GiB"\nport = "80"\n', 3, "port", "integer"),
        (
            'kind = "dram"\nadvertised = "1GiB"\n\n[latency]\nread_base_ns = 1\nfoo = 2\n',
            6,
            "latency.foo",
            "unknown latency",
        ),
        (
            'kind = "dram"\nadvertised = "1GiB"\n[latency]\njitter_sigma = "big"\n',
            4,
            "latency.jitter_sigma",
            "number",
        ),
        ('kind = "dram"\nadvertised = "1GiB"\nlatency.foo = 1\n', 3, "latency.foo", "unknown"),
        ('kind = "dram"\nadvertised = "1GiB"\n[extra]\nx = 1\n', 3, "extra", "unknown"),
        ('kind = "cram"\nadvertised = "1GiB"\ncompress_in = 2\n', 3, "compress_in", "one of"),
    ],
)
def test_toml_errors_name_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, words: str
) -> None:
    path = _toml(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path, {})
    e = err.value
    assert (e.file, e.line, e.key) == (str(path), line, key)
    assert words in e.message
    assert f"{path}:{line}" in str(e)


def test_malformed_toml_names_the_line(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'kind = "cram"\nadvertised = "8GiB\nphysical = 1\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path, {})
    assert err.value.file == str(path) and err.value.line == 2
    assert "malformed TOML" in err.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path / "nope.toml", {})
    assert err.value.file and "cannot read" in err.value.message


def test_find_key_line() -> None:
    text = '# c\nkind = "x"\n[latency]\n"read_base_ns" = 1\n[other]\nkind = 2\n'
    assert find_key_line(text, "kind") == 2
    assert find_key_line(text, "latency.read_base_ns") == 4
    assert find_key_line(text, "other.kind") == 6
    assert find_key_line(text, "latency") == 3
    assert find_key_line(text, "nothing") is None


def test_cli_reports_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["node", "--kind", "hbm", "--advertised", "1GiB"]) == 2
    err = capsys.readouterr().err
    assert "--kind" in err and "unknown node kind" in err
    assert main(["node", "--kind", "dram", "--advertised", "1GiB", "--physical", "2GiB"]) == 2
    assert "--physical" in capsys.readouterr().err
    assert main(["node", "--kind", "cram", "--advertised", "0"]) == 2
    assert "--advertised" in capsys.readouterr().err


def test_cli_reports_toml_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _toml(tmp_path, 'kind = "cram"\nadvertised = "1GiB"\nphysical = "1GiB"\nseed = "x"\n')
    assert main(["node", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4" in err and "seed" in err
    # A flag that fixes the bad key wins over the file.
    path2 = _toml(tmp_path, 'kind = "cram"\nadvertised = "1GiB"\nphysical = "2GiB"\n')
    assert main(["node", "--config", str(path2), "--physical", "3GiB"]) == 2
    assert "--physical" in capsys.readouterr().err


def test_compress_in_is_read_case_blind() -> None:
    _, options = load_settings(
        None, {"kind": "cram", "advertised": "1GiB", "compress_in": " Thread"}
    )
    assert options.compress_in == "thread"
    _, options = load_settings(None, {"kind": "cram", "advertised": "1GiB"})
    assert options.compress_in == "auto"
