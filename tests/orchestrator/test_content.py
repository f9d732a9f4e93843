"""Content models: real bytes, deterministic, and compressing as documented."""

from __future__ import annotations

import math

import lz4.block
import numpy as np
import pytest

from tiersim.orchestrator import content
from tiersim.orchestrator.content import (
    CONTENT_NAMES,
    DEFAULT_MIX,
    PAGE_SIZE,
    BlendContent,
    ContentModel,
    HeapContent,
    MixedContent,
    PageClass,
    TextContent,
    make_content,
    measure,
)

# Every named spec, as a scenario would write it.
ALL_NAMES = list(CONTENT_NAMES)
# Classes whose pages are not all identical.
VARYING = [n for n in ALL_NAMES if n != "zero"]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_pages_are_exactly_one_page_of_bytes(name: str) -> None:
    model = make_content(name, seed=1)
    assert isinstance(model, ContentModel)
    for page_id in (0, 1, 4095, 123_456_789, 2**63 + 5):
        for version in (0, 1, 70_000):
            data = model.page(page_id, version)
            assert type(data) is bytes
            assert len(data) == PAGE_SIZE


@pytest.mark.parametrize("name", ALL_NAMES)
def test_same_seed_gives_identical_bytes(name: str) -> None:
    a = make_content(name, seed=1)
    b = make_content(name, seed=1)
    for page_id in range(0, 5000, 37):
        assert a.page(page_id, page_id % 3) == b.page(page_id, page_id % 3)


@pytest.mark.parametrize("name", VARYING)
def test_different_seed_gives_different_bytes(name: str) -> None:
    a = make_content(name, seed=1)
    b = make_content(name, seed=2)
    same = sum(a.page(p) == b.page(p) for p in range(200))
    # A mix shares zero pages between seeds; nothing else may coincide.
    zero_pages = sum(a.page(p) == bytes(PAGE_SIZE) for p in range(200))
    assert same <= zero_pages
    assert same < 200 * 0.2


@pytest.mark.parametrize("name", VARYING)
def test_a_write_changes_the_contents(name: str) -> None:
    model = make_content(name, seed=1)
    for page_id in range(100):
        v0 = model.page(page_id, 0)
        if v0 == bytes(PAGE_SIZE):
            continue  # zero pages in a mix stay zero
        assert model.page(page_id, 1) != v0
        assert model.page(page_id, 2) != model.page(page_id, 1)


def test_zero_pages_stay_zero_at_every_version() -> None:
    model = make_content("zero")
    assert all(model.page(p, v) == bytes(PAGE_SIZE) for p in range(50) for v in range(3))


def test_same_filled_pages_repeat_one_nonzero_word() -> None:
    model = make_content("same-filled", seed=1)
    words = set()
    for p in range(200):
        data = model.page(p, p % 2)
        word = data[:8]
        assert word != bytes(8)
        assert data == word * (PAGE_SIZE // 8)
        words.add(word)
    assert len(words) == 200


@pytest.mark.parametrize("name", ["text", "heap", "random", "ratio4", "ratio2", "incompressible"])
def test_pages_of_a_pooled_class_are_distinct(name: str) -> None:
    model = make_content(name, seed=1)
    pages = {model.page(p, v) for p in range(2000) for v in (0, 1)}
    assert len(pages) == 4000


def test_numpy_scalars_are_accepted_as_ids_and_versions() -> None:
    for name in ("default", "text", "same-filled"):
        model = make_content(name, seed=2)
        assert model.page(np.int64(77), np.uint32(3)) == model.page(77, 3)
        assert model.page_class(np.uint64(77)) == model.page_class(77)


def test_text_is_ascii_lines() -> None:
    model = make_content("text", seed=1)
    for p in range(300):
        data = model.page(p)
        # Everything but the 16-byte binary stamp is printable ASCII or newlines.
        assert sum(1 for b in data if not (32 <= b < 127 or b == 10)) <= 16
        assert data.count(b"\n") >= 20


# ---------------------------------------------------------------------------
# Compression: measured with lz4 on the real bytes.

# (mean lz4 ratio range, quartile range) per class; the module docstring
# documents the measured means.
RATIO_RANGES = {
    "text": (2.3, 2.9),
    "heap": (2.5, 3.0),
    "ratio4": (3.85, 4.2),
    "ratio2": (1.95, 2.15),
}


@pytest.mark.parametrize("name", sorted(RATIO_RANGES))
def test_lz4_ratio_of_each_class_is_in_its_documented_range(name: str) -> None:
    lo, hi = RATIO_RANGES[name]
    for seed in (0, 1):
        stats = measure(make_content(name, seed=seed), 3000)
        assert lo <= stats.mean_ratio <= hi, (name, seed, stats)
        assert stats.ratio_q1 <= stats.ratio_median <= stats.ratio_q3
        assert stats.incompressible_share == 0
        assert stats.zero_share == stats.same_filled_share == 0


def test_text_and_heap_fall_in_the_ranges_real_data_shows() -> None:
    # lz4 on real 4 KiB pages: text roughly 2-3.5, heap roughly 2-4.
    text = measure(make_content("text"), 3000)
    heap = measure(make_content("heap"), 3000)
    assert text.ratio_q1 >= 2.0 and text.ratio_q3 <= 4.0
    assert heap.ratio_q1 >= 2.0 and heap.ratio_q3 <= 4.0


def test_ratio_presets_have_a_narrow_spread() -> None:
    for name, target in (("ratio4", 4.0), ("ratio2", 2.0)):
        stats = measure(make_content(name), 3000)
        assert target * 0.95 <= stats.ratio_q1 <= stats.ratio_q3 <= target * 1.07


@pytest.mark.parametrize("name", ["random", "incompressible"])
def test_incompressible_classes_do_not_compress(name: str) -> None:
    stats = measure(make_content(name), 2000)
    assert stats.mean_ratio == pytest.approx(1.0, abs=0.01)
    assert stats.incompressible_share >= (1.0 if name == "random" else 0.8)


def test_zero_and_same_filled_compress_to_almost_nothing() -> None:
    zero = measure(make_content("zero"), 100)
    same = measure(make_content("same-filled"), 100)
    assert zero.zero_share == 1.0 and zero.mean_ratio > 100
    assert same.same_filled_share == 1.0 and same.zero_share == 0 and same.mean_ratio > 100


def test_default_mix_is_calibrated_to_desktop_memory() -> None:
    # KERNEL.md: lz4 on desktop memory 2.58-2.63; 10-20 % same-filled pages.
    for seed in (0, 1):
        stats = measure(make_content("default", seed=seed), 20_000)
        assert stats.mean_ratio == pytest.approx(2.6, abs=0.3), stats
        assert 0.10 <= stats.zero_share + stats.same_filled_share <= 0.20
        assert stats.same_filled_share < 0.05 * (stats.zero_share + stats.same_filled_share)
        assert 0.05 <= stats.incompressible_share <= 0.2


def test_measure_counts_what_lz4_produces() -> None:
    model = make_content("ratio2", seed=1)
    stats = measure(model, 50, first_page=1000, version=2)
    sizes = [
        min(len(lz4.block.compress(model.page(p, 2), store_size=False)), PAGE_SIZE)
        for p in range(1000, 1050)
    ]
    assert stats.pages == 50
    assert stats.original_bytes == 50 * PAGE_SIZE
    assert stats.compressed_bytes == sum(sizes)
    assert stats.mean_ratio == pytest.approx(50 * PAGE_SIZE / sum(sizes))
    assert stats.ratio_median == pytest.approx(float(np.median([PAGE_SIZE / s for s in sizes])))


def test_measure_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match=r"measure needs a page count >= 1, got 0"):
        measure(make_content("zero"), 0)


def test_text_vocabulary_tunes_compressibility() -> None:
    small = measure(TextContent(0, vocab_size=16), 2000).mean_ratio
    default = measure(TextContent(0), 2000).mean_ratio
    large = measure(TextContent(0, vocab_size=8192), 2000).mean_ratio
    assert small > default > large
    assert small - large > 0.15


def test_heap_entropy_tunes_compressibility() -> None:
    ratios = [
        measure(HeapContent(0, random_field_share=s), 1500).mean_ratio for s in (0, 0.1, 0.3, 1)
    ]
    assert ratios == sorted(ratios, reverse=True)
    assert ratios[-1] < 1.4 < 2.6 < ratios[0]


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.6, 0.9])
def test_blend_follows_its_documented_formula(fraction: float) -> None:
    stats = measure(BlendContent(0, random_fraction=fraction), 1000)
    k = round(fraction * 64) / 64
    if fraction == 0:
        assert stats.mean_ratio > 40
    else:
        assert stats.mean_ratio == pytest.approx(1 / (1.06 * k + 0.012), rel=0.06)


# ---------------------------------------------------------------------------
# Mixes and classes.


def test_mix_assigns_classes_in_proportion() -> None:
    mix = MixedContent({"text": 0.3, "heap": 0.5, "zero": 0.2}, seed=1)
    classes = mix.classes(np.arange(200_000))
    assert classes.dtype == np.int8
    share = np.bincount(classes, minlength=len(PageClass)) / len(classes)
    assert share[PageClass.TEXT] == pytest.approx(0.3, abs=0.005)
    assert share[PageClass.HEAP] == pytest.approx(0.5, abs=0.005)
    assert share[PageClass.ZERO] == pytest.approx(0.2, abs=0.005)
    assert share.sum() == pytest.approx(1.0)


def test_mix_of_one_class_and_zero_shares() -> None:
    only = MixedContent({"heap": 1.0, "text": 0}, seed=1)
    assert set(only.classes(np.arange(5000)).tolist()) == {PageClass.HEAP}
    assert only.page_class(123) == PageClass.HEAP


def test_mix_proportions_need_not_sum_to_one() -> None:
    a = MixedContent({"text": 3, "random": 1}, seed=1)
    share = np.mean(a.classes(np.arange(100_000)) == PageClass.RANDOM)
    assert share == pytest.approx(0.25, abs=0.005)
    assert a.proportions == {"text": 3.0, "random": 1.0}


def test_vectorised_classes_match_page_class_and_bytes() -> None:
    mix = make_content("default", seed=1)
    rng = np.random.default_rng(0)
    ids = np.concatenate([np.arange(3000), rng.integers(0, 2**63 - 1, 3000, dtype=np.int64)])
    classes = mix.classes(ids)
    for page_id, klass in zip(ids.tolist(), classes.tolist(), strict=True):
        assert mix.page_class(page_id) == klass
    for page_id, klass in zip(ids[:3000].tolist(), classes[:3000].tolist(), strict=True):
        data = mix.page(page_id, 1)
        assert (data == bytes(PAGE_SIZE)) == (klass == PageClass.ZERO)
        assert (data == data[:8] * 512 and data[:8] != bytes(8)) == (klass == PageClass.SAME_FILLED)


def test_class_is_fixed_across_versions_and_seeds_differ() -> None:
    a = make_content("default", seed=1)
    b = make_content("default", seed=2)
    ids = np.arange(20_000)
    assert not np.array_equal(a.classes(ids), b.classes(ids))
    for p in range(500):
        zero = a.page(p, 0) == bytes(PAGE_SIZE)
        assert all((a.page(p, v) == bytes(PAGE_SIZE)) == zero for v in (1, 5))


def test_single_class_models_report_their_class() -> None:
    expected = {
        "zero": PageClass.ZERO,
        "same-filled": PageClass.SAME_FILLED,
        "text": PageClass.TEXT,
        "heap": PageClass.HEAP,
        "random": PageClass.RANDOM,
        "ratio4": PageClass.RATIO4,
        "ratio2": PageClass.RATIO2,
        "incompressible": PageClass.INCOMPRESSIBLE,
    }
    for name, klass in expected.items():
        model = make_content(name)
        assert model.name == name
        assert model.page_class(12345) == klass
        assert np.array_equal(model.classes(np.arange(4)), np.full(4, klass, dtype=np.int8))
    assert make_content({"class": "blend", "random_fraction": 0.3}).page_class(0) == PageClass.BLEND


def test_default_mix_constant_matches_the_kernel_figures() -> None:
    assert math.fsum(DEFAULT_MIX.values()) == pytest.approx(1.0)
    same_filled = DEFAULT_MIX["zero"] + DEFAULT_MIX["same-filled"]
    assert 0.10 <= same_filled <= 0.20
    assert make_content("default").name == "default"


# ---------------------------------------------------------------------------
# make_content: accepted forms and precise errors.


def test_make_content_forms() -> None:
    text = make_content({"class": "text", "vocab_size": 64}, seed=1)
    assert isinstance(text, TextContent) and text.vocab_size == 64
    assert text.name == "text(vocab_size=64)"
    heap = make_content({"class": "heap", "random_field_share": 0.1})
    assert isinstance(heap, HeapContent) and heap.random_field_share == 0.1
    mix = make_content({"mix": {"ratio4": 1, "incompressible": 1}}, seed=2)
    assert isinstance(mix, MixedContent)
    assert set(mix.classes(np.arange(1000)).tolist()) == {
        PageClass.RATIO4,
        PageClass.INCOMPRESSIBLE,
    }
    assert make_content({"class": "zero"}).page(3) == bytes(PAGE_SIZE)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gzip", r"unknown content 'gzip' \(expected one of: zero, same-filled, text, heap"),
        (42, r"content must be a name or a table, got 42"),
        ({"mix": {"text": 0.5, "json": 0.5}}, r"content mix: unknown class 'json'"),
        (
            {"mix": {"text": 0.5, "heap": -0.1}},
            r"share of 'heap' must be finite and >= 0, got -0.1",
        ),
        ({"mix": {"text": 0, "heap": 0.0}}, r"shares sum to zero"),
        ({"mix": {"text": float("nan")}}, r"share of 'text' must be finite and >= 0, got nan"),
        ({"mix": {"text": "half"}}, r"share of 'text' must be a number, got 'half'"),
        ({"mix": {"text": True}}, r"share of 'text' must be a number, got True"),
        ({"mix": {}}, r"content mix must be a non-empty table"),
        ({"mix": [0.5, 0.5]}, r"content mix must be a non-empty table"),
        ({"mix": {"text": 1}, "seed": 3}, r"unexpected key\(s\) seed beside 'mix'"),
        ({"class": "text", "vocab": 3}, r"content class 'text': unknown parameter\(s\) vocab"),
        ({"class": "text", "vocab_size": 4}, r"text vocab_size must be in \[8, 65536\], got 4"),
        ({"class": "text", "vocab_size": 2.5}, r"text vocab_size must be an integer, got 2.5"),
        ({"class": "blend", "random_fraction": 1.5}, r"random_fraction must be in \[0, 1\]"),
        ({"class": "heap", "random_field_share": "x"}, r"must be a number in \[0, 1\], got 'x'"),
        ({"class": "zero", "level": 1}, r"content class 'zero' takes no parameters, got level"),
        ({"class": "lzma"}, r"unknown content class 'lzma'"),
        ({"kind": "text"}, r"content table must have a 'mix' or a 'class' key, got keys: kind"),
    ],
)
def test_bad_content_specs_are_refused_precisely(spec: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_content(spec)


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match=r"pool_size must be a power of two >= 1, got 100"):
        TextContent(0, pool_size=100)
    with pytest.raises(ValueError, match=r"content seed must be an integer, got '1'"):
        content.RandomContent("1")
