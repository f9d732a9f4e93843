"""Conversions between the plain node types and the tiersim.v1 messages.

Kept in one place so that the server and the gRPC client cannot disagree: a
value that crosses the wire and back compares equal to the original.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tiersim.v1 import node_pb2 as pb

from ._types import (
    BatchResult,
    LatencyProfile,
    NodeInfo,
    NodeKind,
    NodeState,
    NodeStats,
    OpResult,
    OverflowMode,
    PressureEvent,
    Watermarks,
)

STATS_FIELDS = tuple(NodeStats.__dataclass_fields__)


def latency_to_pb(p: LatencyProfile) -> pb.LatencyProfile:
    return pb.LatencyProfile(
        read_base_ns=p.read_base_ns,
        write_base_ns=p.write_base_ns,
        per_cacheline_ns=p.per_cacheline_ns,
        compress_ns_per_byte=p.compress_ns_per_byte,
        decompress_ns_per_byte=p.decompress_ns_per_byte,
        bandwidth_bytes_per_sec=p.bandwidth_bytes_per_sec,
        jitter_sigma=p.jitter_sigma,
        source=p.source,
    )


def latency_from_pb(m: pb.LatencyProfile) -> LatencyProfile:
    return LatencyProfile(
        read_base_ns=m.read_base_ns,
        write_base_ns=m.write_base_ns,
        per_cacheline_ns=m.per_cacheline_ns,
        compress_ns_per_byte=m.compress_ns_per_byte,
        decompress_ns_per_byte=m.decompress_ns_per_byte,
        bandwidth_bytes_per_sec=m.bandwidth_bytes_per_sec,
        jitter_sigma=m.jitter_sigma,
        source=m.source,
    )


def info_to_pb(i: NodeInfo) -> pb.NodeInfo:
    return pb.NodeInfo(
        name=i.name,
        kind=pb.NodeKind.ValueType(int(i.kind)),
        advertised_bytes=i.advertised_bytes,
        physical_bytes=i.physical_bytes,
        page_size=i.page_size,
        latency=latency_to_pb(i.latency),
        watermarks=pb.Watermarks(
            low_free_bytes=i.watermarks.low_free_bytes,
            high_free_bytes=i.watermarks.high_free_bytes,
        ),
        overflow_mode=pb.OverflowMode.ValueType(int(i.overflow_mode)),
        per_page_overhead_bytes=i.per_page_overhead_bytes,
        max_batch_pages=i.max_batch_pages,
        seed=i.seed,
        version=i.version,
    )


def info_from_pb(m: pb.NodeInfo) -> NodeInfo:
    return NodeInfo(
        name=m.name,
        kind=NodeKind(m.kind),
        advertised_bytes=m.advertised_bytes,
        physical_bytes=m.physical_bytes,
        page_size=m.page_size,
        latency=latency_from_pb(m.latency),
        watermarks=Watermarks(
            low_free_bytes=m.watermarks.low_free_bytes,
            high_free_bytes=m.watermarks.high_free_bytes,
        ),
        overflow_mode=OverflowMode(m.overflow_mode),
        per_page_overhead_bytes=m.per_page_overhead_bytes,
        max_batch_pages=m.max_batch_pages,
        seed=m.seed,
        version=m.version,
    )


def state_to_pb(s: NodeState) -> pb.NodeState:
    return pb.NodeState(
        pressure=s.pressure,
        physical_used_bytes=s.physical_used_bytes,
        free_bytes=s.free_bytes,
        allocated_pages=s.allocated_pages,
    )


def state_from_pb(m: pb.NodeState) -> NodeState:
    return NodeState(
        pressure=m.pressure,
        physical_used_bytes=m.physical_used_bytes,
        free_bytes=m.free_bytes,
        allocated_pages=m.allocated_pages,
    )


def stats_to_pb(s: NodeStats) -> pb.NodeStats:
    values = {name: getattr(s, name) for name in STATS_FIELDS}
    values["kind"] = int(s.kind)
    return pb.NodeStats(**values)


def stats_from_pb(m: pb.NodeStats) -> NodeStats:
    values = {name: getattr(m, name) for name in STATS_FIELDS}
    values["kind"] = NodeKind(m.kind)
    return NodeStats(**values)


def event_to_pb(e: PressureEvent) -> pb.PressureEvent:
    return pb.PressureEvent(
        pressure=e.pressure,
        free_bytes=e.free_bytes,
        physical_used_bytes=e.physical_used_bytes,
        sequence=e.sequence,
        time_ns=e.time_ns,
    )


def event_from_pb(m: pb.PressureEvent) -> PressureEvent:
    return PressureEvent(
        pressure=m.pressure,
        free_bytes=m.free_bytes,
        physical_used_bytes=m.physical_used_bytes,
        sequence=m.sequence,
        time_ns=m.time_ns,
    )


def results_to_pb(r: BatchResult, out: pb.StoreBatchResult | pb.LoadBatchResult) -> None:
    """Fill `out.results`, `out.cost_ns` and `out.state` from a device result."""
    # Attribute stores on a fresh element are the cheapest way to fill repeated
    # messages in upb; code and message are left at their defaults when OK.
    add = out.results.add
    datas = r.data or None
    for i, (h, c, size, t) in enumerate(
        zip(r.handles, r.codes, r.stored_bytes, r.costs_ns, strict=True)
    ):
        m = add()
        m.handle = h
        m.stored_bytes = size
        m.cost_ns = t
        if c:
            m.code = c
            m.message = r.messages[i]
        if datas is not None:
            m.data = datas[i]
    out.cost_ns = r.cost_ns
    state, st = r.state, out.state
    st.pressure = state.pressure
    st.physical_used_bytes = state.physical_used_bytes
    st.free_bytes = state.free_bytes
    st.allocated_pages = state.allocated_pages


def results_from_pb(
    results: Sequence[pb.PageResult], cost_ns: int, state: pb.NodeState, *, with_data: bool
) -> BatchResult:
    handles: list[int] = []
    codes: list[int] = []
    sizes: list[int] = []
    costs: list[int] = []
    messages: list[str] = []
    datas: list[bytes] = []
    for r in results:
        handles.append(r.handle)
        codes.append(r.code)
        sizes.append(r.stored_bytes)
        costs.append(r.cost_ns)
        messages.append(r.message)
        if with_data:
            datas.append(r.data)
    return BatchResult(
        handles=handles,
        codes=codes,
        stored_bytes=sizes,
        costs_ns=costs,
        messages=messages,
        data=datas,
        cost_ns=cost_ns,
        state=state_from_pb(state),
    )


def page_result_to_pb(r: BatchResult) -> pb.PageResult:
    """The single-page reply of the unary Store and Load."""
    m = pb.PageResult(
        handle=r.handles[0],
        code=r.codes[0],
        stored_bytes=r.stored_bytes[0],
        cost_ns=r.costs_ns[0],
        message=r.messages[0],
        state=state_to_pb(r.state),
    )
    if r.data:
        m.data = r.data[0]
    return m


def op_result_from_pb(count: int, cost_ns: int, state: pb.NodeState) -> OpResult:
    return OpResult(count=count, cost_ns=cost_ns, state=state_from_pb(state))


# ------------------------------------------------------------ wire encoding
#
# The StoreBatch of the hot path is encoded by hand: protobuf's Python API
# copies every 4 KiB page into its arena and again when serialising, which
# costs more than the node's own work. The bytes produced are an ordinary
# StoreBatch (field numbers from node.proto), so any server parses them.

_TAG_PAGES = b"\x0a"  # StoreBatch.pages = 1, length-delimited
_TAG_HANDLE = b"\x08"  # PageWrite.handle = 1, varint
_TAG_DATA_PAGE = b"\x12\x80\x20"  # PageWrite.data = 2, length 4096
_TAG_CHECK = b"\x10\x01"  # StoreBatch.check = 2, true
_TAG_ISSUE = b"\x18"  # StoreBatch.issue_time_ns = 3
_TAG_BATCH_ID = b"\x20"  # StoreBatch.batch_id = 4
_TAG_REQUEST_ID = b"\x28"  # StoreBatch.request_id = 5


def varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_VARINTS = [bytes([i]) for i in range(0x80)]


# Headers of the common pages, precomputed: a whole page with handle 0, and the
# length prefix of a whole page whose handle varint takes k bytes.
_HEAD_NEW_PAGE = _TAG_PAGES + varint(3 + 4096) + _TAG_DATA_PAGE
_LEN_WITH_HANDLE = [b""] + [varint(1 + k + 3 + 4096) for k in range(1, 11)]


def encode_store_batch(
    pages: Sequence[tuple[int, bytes]],
    *,
    check: bool,
    issue_time_ns: int,
    batch_id: int,
    request_id: int = 0,
) -> bytes:
    """Serialise a StoreBatch. Pages of any length are encoded faithfully (the
    node, not the client, judges them). Handles must be 0..2**64-1."""
    parts: list[bytes] = []
    append = parts.append
    for handle, data in pages:
        if handle < 0 or handle >= 1 << 64:
            raise ValueError(f"handle {handle} is not a uint64")
        dlen = len(data)
        if dlen == 4096:
            if handle == 0:
                append(_HEAD_NEW_PAGE)
            else:
                hv = varint(handle)
                append(_TAG_PAGES + _LEN_WITH_HANDLE[len(hv)] + _TAG_HANDLE + hv + _TAG_DATA_PAGE)
        else:
            head = b"\x12" + varint(dlen)
            hv = _TAG_HANDLE + varint(handle) if handle else b""
            append(_TAG_PAGES + varint(len(hv) + len(head) + dlen) + hv + head)
        append(data)
    if check:
        append(_TAG_CHECK)
    if issue_time_ns:
        append(_TAG_ISSUE + varint(issue_time_ns))
    if batch_id:
        append(_TAG_BATCH_ID + varint(batch_id))
    if request_id:
        append(_TAG_REQUEST_ID + varint(request_id))
    return b"".join(parts)


# ------------------------------------------------------------ wire decoding
#
# The node's side of the same hot path. Parsing a StoreBatch with protobuf
# copies each page into the message arena, and reading `.data` copies it again
# into a bytes object: two copies and ~8 us a page, a third of the node's work.
# The decoder below walks the canonical encoding and hands out memoryviews into
# the received buffer instead; a compressing device reads them once, with lz4.


@dataclass(frozen=True, slots=True)
class StoreWrites:
    """A decoded StoreBatch: (handle, data) pairs and the batch's fields.

    `data` is a memoryview into the received message on the fast path and
    bytes otherwise; both are read-only buffers of the page as sent.
    """

    pages: list[tuple[int, memoryview | bytes]]
    check: bool
    issue_time_ns: int
    batch_id: int
    request_id: int = 0


def _varint_at(raw: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the varint at `pos`; (-1, pos) when malformed."""
    value = shift = 0
    n = len(raw)
    while pos < n and shift < 64:
        b = raw[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
    return -1, pos


PAGE_BYTES = 4096
_NEW_PAGE_LEN = len(_HEAD_NEW_PAGE) + PAGE_BYTES


def _decode_store_fast(raw: bytes) -> StoreWrites | None:
    """The canonical StoreBatch encoding, or None for anything else.

    None covers unknown fields, unexpected wire types and malformed bytes
    alike: the caller then lets protobuf parse the message, which knows every
    rule (and is the one to reject it).
    """
    try:
        return _walk_store_batch(raw)
    except IndexError:  # truncated
        return None


def _walk_store_batch(raw: bytes) -> StoreWrites | None:
    mv = memoryview(raw)
    n = len(raw)
    pos = 0
    pages: list[tuple[int, memoryview | bytes]] = []
    append = pages.append
    check = False
    issue = batch_id = request_id = 0
    while pos < n:
        # Whole pages, as GrpcNodeClient sends them: a fixed header, then the page.
        if raw.startswith(_HEAD_NEW_PAGE, pos):
            end = pos + _NEW_PAGE_LEN
            if end > n:
                return None
            append((0, mv[end - PAGE_BYTES : end]))
            pos = end
            continue
        tag = raw[pos]
        pos += 1
        if tag == 0x0A and raw.startswith(_TAG_HANDLE, pos + 2) and raw[pos] >= 0x80:
            # A whole page with a handle: length (two bytes), handle, data header.
            ln = (raw[pos] & 0x7F) | (raw[pos + 1] << 7)
            end = pos + 2 + ln
            # The handle's varint, inline up to three bytes (2**21 pages): a call
            # per page would cost more than all the rest.
            b0, b1, b2 = raw[pos + 3], raw[pos + 4], raw[pos + 5]
            if b0 < 0x80:
                handle, p = b0, pos + 4
            elif b1 < 0x80:
                handle, p = (b0 & 0x7F) | (b1 << 7), pos + 5
            elif b2 < 0x80:
                handle, p = (b0 & 0x7F) | ((b1 & 0x7F) << 7) | (b2 << 14), pos + 6
            else:
                handle, p = _varint_at(raw, pos + 3)
            if (
                raw[pos + 1] < 0x80
                and handle >= 0
                and raw.startswith(_TAG_DATA_PAGE, p)
                and p + 3 + PAGE_BYTES == end
                and end <= n
            ):
                append((handle, mv[end - PAGE_BYTES : end]))
                pos = end
                continue
        if tag == 0x0A:  # pages: any other PageWrite
            ln, pos = _varint_at(raw, pos)
            end = pos + ln
            if ln < 0 or end > n:
                return None
            handle = 0
            data: memoryview | bytes = b""
            while pos < end:
                t = raw[pos]
                if t == 0x08:
                    handle, pos = _varint_at(raw, pos + 1)
                    if handle < 0:
                        return None
                elif t == 0x12:
                    dl, pos = _varint_at(raw, pos + 1)
                    if dl < 0 or pos + dl > end:
                        return None
                    data = mv[pos : pos + dl]
                    pos += dl
                else:
                    return None
            if pos != end:
                return None
            append((handle, data))
        elif tag == 0x10 or tag == 0x18 or tag == 0x20 or tag == 0x28:
            value, pos = _varint_at(raw, pos)
            if value < 0:
                return None
            if tag == 0x10:
                check = value != 0
            elif tag == 0x18:
                issue = value
            elif tag == 0x20:
                batch_id = value
            else:
                request_id = value
        else:
            return None
    return StoreWrites(pages, check, issue, batch_id, request_id)


def decode_store_batch(raw: bytes) -> StoreWrites:
    """Decode a StoreBatch; raises protobuf's DecodeError when it is not one."""
    fast = _decode_store_fast(raw)
    if fast is not None:
        return fast
    m = pb.StoreBatch.FromString(raw)
    return StoreWrites(
        [(p.handle, p.data) for p in m.pages], m.check, m.issue_time_ns, m.batch_id, m.request_id
    )
