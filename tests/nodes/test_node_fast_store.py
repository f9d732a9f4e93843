"""The bulk store of new pages (`_store_new`) answers exactly as the general loop.

Two devices receive the same operations, one with the fast path and one
without; every result, the stats and the pressure must be identical, draw
for draw of the latency jitter. Small media make refusals, overflows and
machine checks common, so the fall-back to the loop is exercised too.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from node_helpers import Pages
from tiersim import NodeError
from tiersim.nodes import PAGE_SIZE, make_device, node_config

_p = Pages(seed=11)
PALETTE = [
    bytes(PAGE_SIZE),
    *(_p.text() for _ in range(3)),
    *(_p.heap() for _ in range(3)),
    *(_p.random() for _ in range(2)),
]

op = st.one_of(
    st.tuples(
        st.just("store"),
        st.lists(st.sampled_from(range(len(PALETTE))), min_size=1, max_size=12),
        st.booleans(),
        st.booleans(),
    ),
    st.tuples(st.just("free"), st.integers(0, 50)),
    st.tuples(st.just("rewrite"), st.integers(0, 50), st.sampled_from(range(len(PALETTE)))),
)


def _apply(device, step, handles: list[int]):  # type: ignore[no-untyped-def]
    try:
        if step[0] == "store":
            _, picks, check, as_views = step
            datas = [PALETTE[i] for i in picks]
            pages = [(0, memoryview(d) if as_views else d) for d in datas]
            encoded = device.encode_pages([d for _, d in pages]) if as_views else None
            r = device.store(pages, check=check, now_ns=1000, encoded=encoded)
            handles += [h for h, c in zip(r.handles, r.codes, strict=True) if c == 0]
            return r
        if not handles:
            return None
        h = handles[step[1] % len(handles)]
        if step[0] == "free":
            handles.remove(h)
            return device.free([h])
        return device.store([(h, PALETTE[step[2]])])
    except NodeError as exc:
        return ("error", exc.code, exc.message)


@pytest.mark.parametrize("overflow", ["poison", "machine-check"])
@settings(max_examples=60, deadline=None, database=None)
@given(steps=st.lists(op, max_size=25))
def test_fast_store_matches_the_general_loop(overflow: str, steps: list) -> None:  # type: ignore[type-arg]
    cfg = node_config(
        "cram", "256KiB", "48KiB", low_watermark="4KiB", high_watermark="12KiB",
        overflow=overflow, seed=5,
    )  # fmt: skip
    fast, slow = make_device(cfg), make_device(cfg)
    slow._fast_store = False
    hf: list[int] = []
    hs: list[int] = []
    for step in steps:
        assert _apply(fast, step, hf) == _apply(slow, step, hs)
        assert fast.stats() == slow.stats()
        assert fast.state() == slow.state()
    assert list(fast.handles()) == list(slow.handles())
