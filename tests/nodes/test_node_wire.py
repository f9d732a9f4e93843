"""The hand-written StoreBatch encoder of the client's hot path is plain protobuf."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from tiersim.nodes._convert import encode_store_batch
from tiersim.v1 import node_pb2 as pb

uint64 = st.one_of(
    st.sampled_from([0, 1, 127, 128, 16383, 16384, 2**63, 2**64 - 1]),
    st.integers(0, 2**64 - 1),
)
page_data = st.one_of(
    st.binary(min_size=4096, max_size=4096), st.binary(max_size=300), st.just(bytes(4096))
)


@settings(max_examples=150, deadline=None, database=None)
@given(
    pages=st.lists(st.tuples(uint64, page_data), max_size=12),
    check=st.booleans(),
    issue=uint64,
    batch_id=uint64,
)
def test_encoding_parses_as_the_same_message(
    pages: list[tuple[int, bytes]], check: bool, issue: int, batch_id: int
) -> None:
    raw = encode_store_batch(pages, check=check, issue_time_ns=issue, batch_id=batch_id)
    expected = pb.StoreBatch(
        pages=[pb.PageWrite(handle=h, data=d) for h, d in pages],
        check=check,
        issue_time_ns=issue,
        batch_id=batch_id,
    )
    assert pb.StoreBatch.FromString(raw) == expected
    if all(len(d) == 4096 for _, d in pages):
        # Whole pages: byte for byte what protobuf itself writes.
        assert raw == expected.SerializeToString()
