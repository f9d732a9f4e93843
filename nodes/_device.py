"""The shared device model: handles, accounting, watermarks, overflow, pressure.

A device is synchronous and single-threaded: every public method runs to
completion without yielding, so a server calling it from one event loop keeps
exact accounting however many clients it serves. Per-page metadata lives in
numpy arrays indexed by slot (handle - 1); only the stored payloads are Python
objects, in a dict keyed by slot.

Page states:

    FREE      not allocated
    RESERVED  allocated, never written: reads back zeros; a checked allocation
              still counts it at its size hint (or a whole page) as promised media
    STORED    holds a payload (compressed on cram)
    ZERO      holds an all-zero page: no payload on the media
    POISONED  an overflowing write dropped its data; loads answer DATA_LOSS

Accounting is kept in running counters and is exact at every step:
physical_used = stored_bytes + per_page_overhead * allocated_pages.

A request is validated whole before anything is applied; a rejected request
changes nothing but `rejected_requests`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator, Sequence
from typing import ClassVar

import grpc
import numpy as np

from tiersim import __version__
from tiersim._errors import NodeError

from ._config import NodeConfig
from ._latency import LatencyModel
from ._types import (
    DATA_LOSS,
    OK,
    PAGE_SIZE,
    RESOURCE_EXHAUSTED,
    AllocateResult,
    BatchResult,
    NodeInfo,
    NodeKind,
    NodeState,
    NodeStats,
    OpResult,
    OverflowMode,
    PressureEvent,
)

FREE, RESERVED, STORED, ZERO, POISONED = 0, 1, 2, 3, 4
PRESSURE_MAX = 1000
ZERO_PAGE = bytes(PAGE_SIZE)
FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]

_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_NOT_FOUND = grpc.StatusCode.NOT_FOUND
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

# Metadata arrays start small and double, so a huge advertised capacity costs
# nothing until it is used.
_INITIAL_SLOTS = 1024


def pressure_for(free_bytes: int, low: int, high: int) -> int:
    """Pressure 0..1000 from free bytes: 1000 at/below low, 0 at/above high, linear between."""
    if free_bytes <= low:
        return PRESSURE_MAX
    if free_bytes >= high:
        return 0
    return PRESSURE_MAX * (high - free_bytes) // (high - low)


class PressureSubscriber:
    """One listener to a device's pressure changes.

    A bounded queue: when the listener falls behind, the oldest events are
    dropped, so it always catches up to the latest value and never makes the
    node grow memory. `push` is called synchronously by the device in the
    thread that runs it (the server's event loop).
    """

    def __init__(self, device: MemoryDevice, maxlen: int) -> None:
        self._device: MemoryDevice | None = device
        self._queue: deque[PressureEvent] = deque(maxlen=maxlen)
        self._wakeup = asyncio.Event()
        self.dropped = 0

    @property
    def closed(self) -> bool:
        return self._device is None

    def push(self, event: PressureEvent) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(event)
        self._wakeup.set()

    def get_nowait(self) -> PressureEvent | None:
        """The oldest undelivered event, or None."""
        return self._queue.popleft() if self._queue else None

    def drain(self) -> list[PressureEvent]:
        events = list(self._queue)
        self._queue.clear()
        return events

    async def get(self) -> PressureEvent:
        """Wait for the next event."""
        while not self._queue:
            if self._device is None:
                raise EOFError("pressure subscription closed")
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()

    def close(self) -> None:
        if self._device is not None:
            self._device._unsubscribe(self)
            self._device = None
            self._wakeup.set()


class MemoryDevice:
    """Base of all device models. Subclasses say how a page sits on the media."""

    kind: ClassVar[NodeKind]
    _kind_name: ClassVar[str] = "memory"

    def __init__(self, config: NodeConfig) -> None:
        if config.kind is not self.kind:
            raise ValueError(f"{type(self).__name__} models {self.kind.name}, not {config.kind.name}")
        self.config = config
        self._physical = config.physical_bytes
        self._capacity = config.advertised_pages
        self._overhead = config.per_page_overhead_bytes
        self._low = config.watermarks.low_free_bytes
        self._high = config.watermarks.high_free_bytes
        self._max_batch = config.max_batch_pages
        self._poison_mode = config.overflow_mode is OverflowMode.POISON
        self._subscribers: list[PressureSubscriber] = []
        # Pressure event sequence survives reset: it orders events for a watcher.
        self._sequence = 0
        self._pressure = 0
        self._seed = config.seed
        self.latency = LatencyModel(config.latency, config.seed)
        self._clear()
        self._pressure = self._compute_pressure()

    # ------------------------------------------------------------ state

    def _clear(self) -> None:
        size = min(self._capacity, _INITIAL_SLOTS)
        self._state = np.zeros(size, dtype=np.uint8)
        # Payload bytes on the media (0..4096) and, for RESERVED pages, the size promised.
        self._size = np.zeros(size, dtype=np.uint16)
        self._hint = np.zeros(size, dtype=np.uint16)
        self._blobs: dict[int, bytes] = {}
        self._free_slots: list[int] = []
        self._next_slot = 0
        self._allocated = 0
        self._stored = 0
        self._zero = 0
        self._poisoned = 0
        self._stored_bytes = 0
        self._reserved_bytes = 0
        self._machine_check = False
        self._c_stores = 0
        self._c_loads = 0
        self._c_frees = 0
        self._c_zeroes = 0
        self._c_alloc_refused = 0
        self._c_write_failures = 0
        self._c_machine_checks = 0
        self._c_data_loss_reads = 0
        self._c_compress_in = 0
        self._c_compress_out = 0
        self._c_decompress_out = 0
        self._c_busy_ns = 0
        self._c_queue_ns = 0
        self._c_rejected = 0

    @property
    def machine_check(self) -> bool:
        return self._machine_check

    @property
    def physical_used_bytes(self) -> int:
        return self._stored_bytes + self._overhead * self._allocated

    @property
    def free_bytes(self) -> int:
        return self._physical - self._stored_bytes - self._overhead * self._allocated

    def _compute_pressure(self) -> int:
        return pressure_for(self.free_bytes, self._low, self._high)

    def state(self) -> NodeState:
        used = self.physical_used_bytes
        return NodeState(
            pressure=self._pressure,
            physical_used_bytes=used,
            free_bytes=self._physical - used,
            allocated_pages=self._allocated,
        )

    def info(self) -> NodeInfo:
        c = self.config
        return NodeInfo(
            name=c.name,
            kind=c.kind,
            advertised_bytes=c.advertised_bytes,
            physical_bytes=c.physical_bytes,
            page_size=PAGE_SIZE,
            latency=c.latency,
            watermarks=c.watermarks,
            overflow_mode=c.overflow_mode,
            per_page_overhead_bytes=c.per_page_overhead_bytes,
            max_batch_pages=c.max_batch_pages,
            seed=self._seed,
            version=__version__,
        )

    def stats(self) -> NodeStats:
        used = self.physical_used_bytes
        return NodeStats(
            name=self.config.name,
            kind=self.kind,
            allocated_pages=self._allocated,
            stored_pages=self._stored,
            zero_pages=self._zero,
            poisoned_pages=self._poisoned,
            logical_bytes=self._stored * PAGE_SIZE,
            stored_bytes=self._stored_bytes,
            physical_used_bytes=used,
            physical_bytes=self._physical,
            advertised_bytes=self.config.advertised_bytes,
            pressure=self._pressure,
            machine_check=self._machine_check,
            stores=self._c_stores,
            loads=self._c_loads,
            frees=self._c_frees,
            zeroes=self._c_zeroes,
            alloc_refused=self._c_alloc_refused,
            write_failures=self._c_write_failures,
            machine_checks=self._c_machine_checks,
            data_loss_reads=self._c_data_loss_reads,
            compress_in_bytes=self._c_compress_in,
            compress_out_bytes=self._c_compress_out,
            decompress_out_bytes=self._c_decompress_out,
            busy_ns=self._c_busy_ns,
            queue_ns=self._c_queue_ns,
            rejected_requests=self._c_rejected,
        )

    def handles(self) -> Iterator[int]:
        """Allocated handles, in slot order (for inspection and tests)."""
        for slot in np.flatnonzero(self._state[: self._next_slot] != FREE).tolist():
            yield slot + 1

    # ------------------------------------------------------------ media hooks

    def _encode(self, data: bytes) -> tuple[bytes, int, int, int]:
        """Lay a non-zero page on the media: (blob, payload bytes, compress in, compress out)."""
        return data, PAGE_SIZE, 0, 0

    def _decode(self, blob: bytes, size: int) -> tuple[bytes, int]:
        """Read a payload back: (the 4096 page bytes, bytes out of the decompressor)."""
        return blob, 0

    # ------------------------------------------------------------ pressure

    def subscribe(self, maxlen: int = 64) -> PressureSubscriber:
        """Listen to pressure changes; the first event is the current state."""
        sub = PressureSubscriber(self, maxlen)
        sub.push(self._event(0))
        self._subscribers.append(sub)
        return sub

    def _unsubscribe(self, sub: PressureSubscriber) -> None:
        try:
            self._subscribers.remove(sub)
        except ValueError:
            pass

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def _event(self, time_ns: int) -> PressureEvent:
        used = self.physical_used_bytes
        return PressureEvent(
            pressure=self._pressure,
            free_bytes=self._physical - used,
            physical_used_bytes=used,
            sequence=self._sequence,
            time_ns=time_ns,
        )

    def _update_pressure(self, time_ns: int) -> None:
        # Evaluated once per request, as the device raises one interrupt per command.
        pressure = self._compute_pressure()
        if pressure != self._pressure:
            self._pressure = pressure
            self._sequence += 1
            event = self._event(time_ns)
            for sub in self._subscribers:
                sub.push(event)

    # ------------------------------------------------------------ validation

    def _reject(self, code: grpc.StatusCode, message: str) -> NodeError:
        self._c_rejected += 1
        return NodeError(code, message)

    def _check_serving(self) -> None:
        if self._machine_check:
            raise self._reject(
                _PRECONDITION, "machine check: the node refuses all data operations until reset"
            )

    def _check_batch_len(self, n: int, what: str) -> None:
        if n == 0:
            raise self._reject(_INVALID, f"empty {what} batch")
        if n > self._max_batch:
            raise self._reject(
                _INVALID, f"{what} batch of {n} pages exceeds max_batch_pages={self._max_batch}"
            )

    def _check_handles(self, handles: Sequence[int], allow_zero: bool) -> None:
        """Every handle an allocated int, none twice (handle 0 skipped when allowed)."""
        seen: set[int] = set()
        top = self._next_slot
        missing = None
        for h in handles:
            if type(h) is not int:
                if isinstance(h, int | np.integer) and not isinstance(h, bool):
                    h = int(h)
                else:
                    raise self._reject(_INVALID, f"handle {h!r} is not an integer")
            if h <= 0:
                if h == 0 and allow_zero:
                    continue
                if h < 0:
                    raise self._reject(_INVALID, f"handle {h} is negative")
            if h in seen:
                raise self._reject(_INVALID, f"handle {h} appears twice in one batch")
            seen.add(h)
            if missing is None and (h == 0 or h > top):
                missing = h
        if missing is None and seen:
            slots = np.fromiter(seen, dtype=np.int64, count=len(seen)) - 1
            free = slots[self._state[slots] == FREE]
            if free.size:
                missing = int(free.min()) + 1
        if missing is not None:
            raise self._reject(_NOT_FOUND, f"handle {missing} is not allocated on this node")

    # ------------------------------------------------------------ slots

    def _take_slot(self, hint: int) -> int:
        if self._free_slots:
            slot = self._free_slots.pop()
        else:
            slot = self._next_slot
            self._next_slot += 1
            if slot >= self._state.shape[0]:
                grown = min(self._capacity, max(_INITIAL_SLOTS, 2 * self._state.shape[0]))
                for name in ("_state", "_size", "_hint"):
                    old = getattr(self, name)
                    new = np.zeros(grown, dtype=old.dtype)
                    new[: old.shape[0]] = old
                    setattr(self, name, new)
        self._state[slot] = RESERVED
        self._hint[slot] = hint
        self._size[slot] = 0
        self._allocated += 1
        self._reserved_bytes += hint
        return slot

    def _release(self, slot: int) -> None:
        """Drop whatever a slot holds (payload, promise, poison); it stays allocated."""
        st = self._state[slot]
        if st == RESERVED:
            self._reserved_bytes -= int(self._hint[slot])
            self._hint[slot] = 0
        elif st == STORED:
            self._stored -= 1
            self._stored_bytes -= int(self._size[slot])
            self._size[slot] = 0
            del self._blobs[slot]
        elif st == ZERO:
            self._stored -= 1
            self._zero -= 1
        elif st == POISONED:
            self._poisoned -= 1

    def _free_slot(self, slot: int) -> None:
        self._release(slot)
        self._state[slot] = FREE
        self._allocated -= 1
        self._free_slots.append(slot)

    def _allocation_refusal(self, count: int, check: bool, size_hint: int) -> str | None:
        """Why `count` more pages may not be allocated, or None if they may.

        The checked form is the driver's answer to node_private_allocated()
        (N_PRIVATE series v3): room must remain for the new pages at their
        hinted size, and for every page already promised but not yet written,
        without free media falling below the low watermark.
        """
        if self._allocated + count > self._capacity:
            return (
                f"advertised capacity reached: {self._allocated} of {self._capacity} pages "
                f"allocated, {count} more requested"
            )
        if count * self._overhead > self.free_bytes:
            # Even an unchecked allocation needs media for its translation entries;
            # without this, full media would report negative free bytes.
            return (
                f"media full: no room for the {self._overhead}-byte translation entries "
                f"of {count} more page(s) ({self.free_bytes} bytes free)"
            )
        if check:
            each = (size_hint or PAGE_SIZE) + self._overhead
            after = self.free_bytes - self._reserved_bytes - count * each
            if after < self._low:
                return (
                    f"no headroom: {count} page(s) of up to {each} bytes would leave "
                    f"{after} free bytes, below the low watermark ({self._low})"
                )
        return None

    # ------------------------------------------------------------ operations

    def allocate(
        self, count: int, *, check: bool = False, size_hint: int = 0, now_ns: int = 0
    ) -> AllocateResult:
        """Reserve `count` handles, all or nothing."""
        self._check_serving()
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise self._reject(_INVALID, f"count must be a positive integer, got {count!r}")
        if count > self._max_batch:
            raise self._reject(
                _INVALID, f"count {count} exceeds max_batch_pages={self._max_batch}"
            )
        if not 0 <= size_hint <= PAGE_SIZE:
            raise self._reject(_INVALID, f"size_hint_bytes must be 0..{PAGE_SIZE}, got {size_hint}")
        refusal = self._allocation_refusal(count, check, size_hint)
        if refusal is not None:
            if check:
                self._c_alloc_refused += 1
            else:
                self._c_rejected += 1
            raise NodeError(_EXHAUSTED, refusal)
        hint = size_hint or PAGE_SIZE
        handles = [self._take_slot(hint) + 1 for _ in range(count)]
        cost = self.latency.query_cost() if check else 0
        self._c_busy_ns += cost
        self._update_pressure(now_ns)
        return AllocateResult(handles=handles, cost_ns=cost, state=self.state())

    def store(
        self, pages: Sequence[tuple[int, bytes]], *, check: bool = False, now_ns: int = 0
    ) -> BatchResult:
        """Write pages; handle 0 allocates first (checked if `check`).

        Per page: OK; RESOURCE_EXHAUSTED when its allocation is refused;
        DATA_LOSS when the payload found no physical room in poison mode (the
        page is poisoned); FAILED_PRECONDITION for the page that raised a
        machine check and every page after it (none of them is written).
        """
        self._check_serving()
        n = len(pages)
        self._check_batch_len(n, "store")
        datas: list[bytes] = []
        for _, data in pages:
            if type(data) is not bytes:
                if not isinstance(data, bytearray | memoryview):
                    raise self._reject(_INVALID, f"page data must be bytes, not {type(data).__name__}")
                data = bytes(data)
            if len(data) != PAGE_SIZE:
                raise self._reject(
                    _INVALID, f"page data is {len(data)} bytes; pages are exactly {PAGE_SIZE}"
                )
            datas.append(data)
        self._check_handles([h for h, _ in pages], allow_zero=True)

        state_arr, size_arr, blobs = self._state, self._size, self._blobs
        latency, overhead, physical = self.latency, self._overhead, self._physical
        encode = self._encode
        out_handles: list[int] = []
        codes: list[int] = []
        sizes: list[int] = []
        costs: list[int] = []
        messages: list[str] = []
        transferred = 0
        for i in range(n):
            h = int(pages[i][0])
            data = datas[i]
            extra = 0
            if h == 0:
                refusal = self._allocation_refusal(1, check, 0)
                if check:
                    extra = latency.query_cost()
                if refusal is not None:
                    if check:
                        self._c_alloc_refused += 1
                    out_handles.append(0)
                    codes.append(RESOURCE_EXHAUSTED)
                    sizes.append(0)
                    costs.append(extra)
                    messages.append(refusal)
                    continue
                slot = self._take_slot(PAGE_SIZE)
                h = slot + 1
                state_arr, size_arr = self._state, self._size  # may have grown
            else:
                slot = h - 1
            transferred += PAGE_SIZE
            if data == ZERO_PAGE:
                blob, new, cin, cout = b"", 0, 0, 0
            else:
                blob, new, cin, cout = encode(data)
                self._c_compress_in += cin
                self._c_compress_out += cout
            cost = extra + latency.page_write_cost(cin)
            old = int(size_arr[slot])
            used = self._stored_bytes + overhead * self._allocated
            if used - old + new > physical:
                # The hardware failure: a write with no physical room left.
                self._c_write_failures += 1
                free = physical - used
                if not self._poison_mode:
                    self._machine_check = True
                    self._c_machine_checks += 1
                    msg = f"machine check: write of {new} bytes found {free + old} bytes of room"
                    out_handles.append(h)
                    codes.append(FAILED_PRECONDITION)
                    sizes.append(old)
                    costs.append(cost)
                    messages.append(msg)
                    for j in range(i + 1, n):
                        out_handles.append(int(pages[j][0]))
                        codes.append(FAILED_PRECONDITION)
                        sizes.append(0)
                        costs.append(0)
                        messages.append("not written: the node raised a machine check")
                    break
                self._release(slot)
                state_arr[slot] = POISONED
                self._poisoned += 1
                out_handles.append(h)
                codes.append(DATA_LOSS)
                sizes.append(0)
                costs.append(cost)
                messages.append(
                    f"write of {new} bytes found {free + old} bytes of room: page poisoned"
                )
                continue
            self._release(slot)
            self._stored += 1
            if new == 0:
                state_arr[slot] = ZERO
                self._zero += 1
            else:
                state_arr[slot] = STORED
                size_arr[slot] = new
                blobs[slot] = blob
                self._stored_bytes += new
            self._c_stores += 1
            out_handles.append(h)
            codes.append(OK)
            sizes.append(new)
            costs.append(cost)
            messages.append("")
        return self._finish(out_handles, codes, sizes, costs, messages, [], now_ns, transferred)

    def load(
        self, handles: Sequence[int], *, free_after: bool = False, now_ns: int = 0
    ) -> BatchResult:
        """Read pages. Poisoned pages answer DATA_LOSS with empty data.

        With `free_after` every page is freed after it is read (an exclusive
        load, as zswap's), poisoned ones included; its stored size is then 0.
        """
        self._check_serving()
        n = len(handles)
        self._check_batch_len(n, "load")
        self._check_handles(handles, allow_zero=False)
        state_arr, size_arr, blobs = self._state, self._size, self._blobs
        latency, decode = self.latency, self._decode
        hs = [int(h) for h in handles]
        codes: list[int] = []
        sizes: list[int] = []
        costs: list[int] = []
        messages: list[str] = []
        datas: list[bytes] = []
        for h in hs:
            slot = h - 1
            st = state_arr[slot]
            size = 0
            if st == STORED:
                size = int(size_arr[slot])
                data, dout = decode(blobs[slot], size)
                self._c_decompress_out += dout
                cost = latency.page_read_cost(dout)
                code, msg = OK, ""
                self._c_loads += 1
            elif st == POISONED:
                data, code = b"", DATA_LOSS
                msg = f"page {h} is poisoned: an earlier write found no physical room"
                cost = latency.page_read_cost(0)
                self._c_data_loss_reads += 1
            else:  # RESERVED or ZERO: the page reads back as zeros
                data, code, msg = ZERO_PAGE, OK, ""
                cost = latency.page_read_cost(0)
                self._c_loads += 1
            if free_after:
                self._free_slot(slot)
                self._c_frees += 1
                size = 0
            codes.append(code)
            sizes.append(size)
            costs.append(cost)
            messages.append(msg)
            datas.append(data)
        return self._finish(hs, codes, sizes, costs, messages, datas, now_ns, n * PAGE_SIZE)

    def free(self, handles: Sequence[int], *, now_ns: int = 0) -> OpResult:
        """Zero and release pages: node_private_freed()."""
        self._check_serving()
        self._check_batch_len(len(handles), "free")
        self._check_handles(handles, allow_zero=False)
        cost = 0
        for h in handles:
            self._free_slot(int(h) - 1)
            cost += self.latency.media_op_cost()
        self._c_frees += len(handles)
        return self._finish_op(len(handles), cost, now_ns)

    def zero(self, handles: Sequence[int], *, now_ns: int = 0) -> OpResult:
        """Zero pages in place (CXL Media Operations: Zero); they stay allocated."""
        self._check_serving()
        self._check_batch_len(len(handles), "zero")
        self._check_handles(handles, allow_zero=False)
        cost = 0
        for h in handles:
            slot = int(h) - 1
            self._release(slot)
            self._state[slot] = ZERO
            self._stored += 1
            self._zero += 1
            cost += self.latency.media_op_cost()
        self._c_zeroes += len(handles)
        return self._finish_op(len(handles), cost, now_ns)

    def reset(self, seed: int = 0) -> None:
        """Back to empty; clears a machine check. Seed 0 keeps the configured seed."""
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise self._reject(_INVALID, f"seed must be 0..2**64-1, got {seed!r}")
        self._seed = seed or self.config.seed
        self._clear()
        self.latency.reseed(self._seed)
        self._update_pressure(0)

    # ------------------------------------------------------------ results

    def _finish(
        self,
        handles: list[int],
        codes: list[int],
        sizes: list[int],
        costs: list[int],
        messages: list[str],
        datas: list[bytes],
        now_ns: int,
        transferred: int,
    ) -> BatchResult:
        wait = self.latency.queue(now_ns, transferred)
        if wait:
            costs[0] += wait
            self._c_queue_ns += wait
        total = sum(costs)
        self._c_busy_ns += total
        self._update_pressure(now_ns)
        return BatchResult(
            handles=handles,
            codes=codes,
            stored_bytes=sizes,
            costs_ns=costs,
            messages=messages,
            data=datas,
            cost_ns=total,
            state=self.state(),
        )

    def _finish_op(self, count: int, cost: int, now_ns: int) -> OpResult:
        wait = self.latency.queue(now_ns, 0)
        cost += wait
        self._c_queue_ns += wait
        self._c_busy_ns += cost
        self._update_pressure(now_ns)
        return OpResult(count=count, cost_ns=cost, state=self.state())
