"""The hand-written StoreBatch encoder and decoder of the hot path are plain protobuf."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings

from tiersim.nodes._convert import _decode_store_fast, decode_store_batch, encode_store_batch
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
    request_id=uint64,
)
def test_encoding_parses_as_the_same_message(
    pages: list[tuple[int, bytes]], check: bool, issue: int, batch_id: int, request_id: int
) -> None:
    raw = encode_store_batch(
        pages, check=check, issue_time_ns=issue, batch_id=batch_id, request_id=request_id
    )
    expected = pb.StoreBatch(
        pages=[pb.PageWrite(handle=h, data=d) for h, d in pages],
        check=check,
        issue_time_ns=issue,
        batch_id=batch_id,
        request_id=request_id,
    )
    assert pb.StoreBatch.FromString(raw) == expected
    if all(len(d) == 4096 for _, d in pages):
        # Whole pages: byte for byte what protobuf itself writes.
        assert raw == expected.SerializeToString()


def _as_message(raw: bytes) -> pb.StoreBatch:
    w = decode_store_batch(raw)
    return pb.StoreBatch(
        pages=[pb.PageWrite(handle=h, data=bytes(d)) for h, d in w.pages],
        check=w.check,
        issue_time_ns=w.issue_time_ns,
        batch_id=w.batch_id,
        request_id=w.request_id,
    )


@settings(max_examples=150, deadline=None, database=None)
@given(
    pages=st.lists(st.tuples(uint64, page_data), max_size=12),
    check=st.booleans(),
    issue=uint64,
    batch_id=uint64,
    request_id=uint64,
)
def test_the_decoder_reads_what_protobuf_reads(
    pages: list[tuple[int, bytes]], check: bool, issue: int, batch_id: int, request_id: int
) -> None:
    raw = encode_store_batch(
        pages, check=check, issue_time_ns=issue, batch_id=batch_id, request_id=request_id
    )
    assert _as_message(raw) == pb.StoreBatch.FromString(raw)
    # The client's own encoding never needs the fallback.
    assert _decode_store_fast(raw) is not None


@settings(max_examples=150, deadline=None, database=None)
@given(
    message=st.builds(
        pb.StoreBatch,
        pages=st.lists(st.builds(pb.PageWrite, handle=uint64, data=page_data), max_size=6),
        check=st.booleans(),
        issue_time_ns=uint64,
        batch_id=uint64,
        request_id=uint64,
    ),
    cut=st.integers(0, 10_000),
    noise=st.binary(max_size=24),
)
def test_the_decoder_agrees_with_protobuf_on_any_bytes(
    message: pb.StoreBatch, cut: int, noise: bytes
) -> None:
    """Truncated, extended or corrupted messages: the same message or the same refusal."""
    whole = message.SerializeToString()
    for raw in (whole, whole[: cut % (len(whole) + 1)], whole + noise, noise + whole):
        try:
            expected = pb.StoreBatch.FromString(raw)
        except DecodeError:
            with pytest.raises(DecodeError):
                decode_store_batch(raw)
        else:
            expected.DiscardUnknownFields()  # a node has no use for them
            assert _as_message(raw) == expected


def test_unknown_fields_and_repeats_take_the_fallback() -> None:
    page = bytes(range(256)) * 16
    m = pb.StoreBatch(pages=[pb.PageWrite(handle=5, data=page)], batch_id=3)
    # An unknown field (number 15, varint) and a second batch_id: the last one wins.
    raw = m.SerializeToString() + b"\x78\x01" + b"\x20\x09"
    assert _decode_store_fast(raw) is None
    w = decode_store_batch(raw)
    assert w.batch_id == 9 and [(h, bytes(d)) for h, d in w.pages] == [(5, page)]


def test_fast_pages_are_views_of_the_message() -> None:
    page = b"\x01" * 4096
    raw = encode_store_batch([(0, page), (7, page)], check=True, issue_time_ns=2, batch_id=1)
    w = decode_store_batch(raw)
    assert w.check and w.issue_time_ns == 2
    assert [type(d) for _, d in w.pages] == [memoryview, memoryview]
    assert [h for h, _ in w.pages] == [0, 7]
