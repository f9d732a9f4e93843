"""Calibration: the content models against the compression figures published for real memory."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tiersim.cli import main
from tiersim.orchestrator.calibrate import (
    PUBLISHED_MEAN_RATIO,
    PUBLISHED_SAME_FILLED_SHARE,
    calibrate,
    check_published,
    measure_corpus,
)
from tiersim.orchestrator.content import CONTENT_NAMES, make_content, measure
from tiersim.orchestrator.corpus import corpus_from_file, load_corpus


@pytest.mark.parametrize("seed", [0, 7])
def test_default_mix_lands_in_the_published_ranges(seed: int) -> None:
    """KERNEL.md: lz4 over desktop memory ~2.6:1 (2.58, 2.63 measured); 10-20 % of
    zswap's pages same-filled, zero pages included (Meta)."""
    stats = measure(make_content("default", seed=seed), 20_000)
    lo, hi = PUBLISHED_MEAN_RATIO
    assert lo <= stats.mean_ratio <= hi
    assert 2.55 <= stats.mean_ratio <= 2.65  # "about 2.6:1", tighter than the check
    slo, shi = PUBLISHED_SAME_FILLED_SHARE
    assert slo <= stats.zero_share + stats.same_filled_share <= shi
    # Under 1 % of same-filled pages are non-zero at Meta: here a small minority too.
    assert stats.same_filled_share < 0.1 * (stats.zero_share + stats.same_filled_share)
    assert check_published(stats) == []


def test_calibration_rows_cover_every_model_and_flag_outliers() -> None:
    rows = calibrate(pages=500)
    assert [r.name for r in rows] == list(CONTENT_NAMES)
    by = {r.name: r.stats for r in rows}
    assert by["random"].incompressible_share == 1.0 and by["zero"].zero_share == 1.0
    assert 3.8 < by["ratio4"].mean_ratio < 4.2 and 1.9 < by["ratio2"].mean_ratio < 2.2
    assert by["text"].ratio_q1 <= by["text"].ratio_median <= by["text"].ratio_q3
    problems = check_published(by["random"])
    assert any("mean lz4 ratio 1.00" in p for p in problems)
    assert any("same-filled share" in p for p in problems)


def test_corpus_calibration_measures_each_page(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    blob = bytes(4096) * 3 + b"\x11" * 4096 + rng.bytes(4096 * 4)
    src = tmp_path / "blob.bin"
    src.write_bytes(blob)
    corpus_path = tmp_path / "blob.corpus"
    corpus_from_file(src, corpus_path)
    stats = measure_corpus(load_corpus(corpus_path))
    assert stats.pages == 8
    assert stats.zero_share == 3 / 8 and stats.same_filled_share == 1 / 8
    assert stats.incompressible_share == 4 / 8
    (row,) = [r for r in calibrate([], [corpus_path], pages=100) if r.kind == "corpus"]
    assert row.stats == stats and row.name == "blob.corpus"


def test_calibrate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--pages", "3000", "--model", "default", "--model", "text"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert re.search(r"default mix: lz4 2\.[56]\d:1, .*: within the published ranges", out)
    assert (
        main(
            [
                "calibrate",
                "--pages",
                "200",
                "--model",
                '{"class": "text", "vocab_size": 8}',
                "--json",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["rows"][0]["name"] == "text(vocab_size=8)"
    assert doc["published"]["mean_ratio"] == list(PUBLISHED_MEAN_RATIO)
    assert main(["calibrate", "--model", "nonsense"]) == 2
    assert "unknown content 'nonsense'" in capsys.readouterr().err
    assert main(["calibrate", "--corpus", str(tmp_path / "none.corpus")]) == 2
    assert "none.corpus: cannot read corpus" in capsys.readouterr().err
