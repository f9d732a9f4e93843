"""``tiersim calibrate``: how the content models and page corpora compress under lz4.

Every compressed size in tiersim comes from lz4 on real bytes (DESIGN
principle 1), so the content models are the simulator's only handle on
compressibility, and they must agree with what real memory does. This
command prints, per model and per corpus, the distribution of lz4 ratios
(mean as zram and zswap quote it, total original over total compressed;
quartiles of the per-page ratio) and the shares of zero, same-filled and
incompressible pages, and checks the default mix against the published
figures gathered in KERNEL.md:

- lz4 over desktop memory: 2.58 (1.1 GB sample) and 2.63 (another x86 run);
  "about 2.6:1" is checked as 2.5 .. 2.7;
- same-filled pages, zero included, 10-20 % of zswap's pages at Meta.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lz4.block
import numpy as np

from .content import CONTENT_NAMES, PAGE_SIZE, ContentStats, make_content, measure
from .corpus import DATA, SAME_FILLED, ZERO, Corpus, load_corpus

# (low, high) bounds, from KERNEL.md "Compression ratios seen in the wild" and
# the zswap store step 1 (Meta's same-filled share).
PUBLISHED_MEAN_RATIO = (2.5, 2.7)
PUBLISHED_SAME_FILLED_SHARE = (0.10, 0.20)
DEFAULT_PAGES = 20_000


@dataclass(frozen=True)
class CalibrationRow:
    name: str
    kind: str  # "model" or "corpus"
    stats: ContentStats

    def as_dict(self) -> dict[str, Any]:
        s = self.stats
        return {
            "name": self.name,
            "kind": self.kind,
            "pages": s.pages,
            "mean_ratio": round(s.mean_ratio, 4),
            "ratio_q1": round(s.ratio_q1, 4),
            "ratio_median": round(s.ratio_median, 4),
            "ratio_q3": round(s.ratio_q3, 4),
            "zero_share": round(s.zero_share, 4),
            "same_filled_share": round(s.same_filled_share, 4),
            "incompressible_share": round(s.incompressible_share, 4),
        }


def measure_corpus(corpus: Corpus, *, pages: int | None = None, seed: int = 0) -> ContentStats:
    """lz4 over a corpus's own pages: all of them, or a seeded sample of ``pages``.

    Zero and same-filled records are measured by their kind (their lz4 size
    is that of any such page); data pages are compressed one by one.
    """
    n = len(corpus)
    idx = np.arange(n)
    if pages is not None and pages < n:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=pages, replace=False))
    kinds = corpus.records["kind"][idx]
    sizes = np.empty(len(idx), dtype=np.int64)
    compress = lz4.block.compress
    zero_size = min(len(compress(bytes(PAGE_SIZE), store_size=False)), PAGE_SIZE)
    for j, i in enumerate(idx.tolist()):
        if kinds[j] == ZERO:
            sizes[j] = zero_size
        else:
            sizes[j] = min(len(compress(corpus.page(i), store_size=False)), PAGE_SIZE)
    ratios = PAGE_SIZE / sizes
    q1, q2, q3 = (float(q) for q in np.quantile(ratios, [0.25, 0.5, 0.75]))
    total = int(sizes.sum())
    m = len(idx)
    return ContentStats(
        pages=m,
        original_bytes=m * PAGE_SIZE,
        compressed_bytes=total,
        mean_ratio=m * PAGE_SIZE / total,
        ratio_q1=q1,
        ratio_median=q2,
        ratio_q3=q3,
        zero_share=float(np.count_nonzero(kinds == ZERO)) / m,
        same_filled_share=float(np.count_nonzero(kinds == SAME_FILLED)) / m,
        incompressible_share=float(np.count_nonzero((sizes >= PAGE_SIZE) & (kinds == DATA))) / m,
    )


def calibrate(
    models: Iterable[Any] = CONTENT_NAMES,
    corpora: Sequence[str | Path] = (),
    *,
    pages: int = DEFAULT_PAGES,
    seed: int = 0,
) -> list[CalibrationRow]:
    """Measure each content model (a name or spec) over ``pages`` pages, and each corpus."""
    rows = []
    for spec in models:
        model = make_content(spec, seed=seed)
        rows.append(CalibrationRow(model.name, "model", measure(model, pages)))
    for path in corpora:
        corpus = load_corpus(path)
        sample = pages if len(corpus) > pages else None
        stats = measure_corpus(corpus, pages=sample, seed=seed)
        rows.append(CalibrationRow(Path(path).name, "corpus", stats))
    return rows


def check_published(stats: ContentStats) -> list[str]:
    """How ``stats`` (of the default mix) falls outside the published ranges; empty if inside."""
    problems = []
    lo, hi = PUBLISHED_MEAN_RATIO
    if not lo <= stats.mean_ratio <= hi:
        problems.append(f"mean lz4 ratio {stats.mean_ratio:.2f} outside {lo}..{hi}")
    lo, hi = PUBLISHED_SAME_FILLED_SHARE
    same = stats.zero_share + stats.same_filled_share
    if not lo <= same <= hi:
        problems.append(f"same-filled share (zero included) {same:.1%} outside {lo:.0%}..{hi:.0%}")
    return problems


def render(rows: Sequence[CalibrationRow]) -> Any:
    """A rich table of the rows."""
    from rich.table import Table

    table = Table(title="lz4 compression of page contents", show_lines=False)
    for col, justify in (
        ("content", "left"),
        ("pages", "right"),
        ("mean", "right"),
        ("q1", "right"),
        ("median", "right"),
        ("q3", "right"),
        ("zero", "right"),
        ("same-filled", "right"),
        ("incompressible", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        s = r.stats
        label = r.name if r.kind == "model" else f"{r.name} (corpus)"
        table.add_row(
            label,
            f"{s.pages:,}",
            f"{s.mean_ratio:.2f}",
            f"{s.ratio_q1:.2f}",
            f"{s.ratio_median:.2f}",
            f"{s.ratio_q3:.2f}",
            f"{s.zero_share:.1%}",
            f"{s.same_filled_share:.1%}",
            f"{s.incompressible_share:.1%}",
        )
    return table
