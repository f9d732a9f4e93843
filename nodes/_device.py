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
import contextlib
from collections import deque
from collections.abc import Iterator, Sequence
from typing import ClassVar, cast

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
    PageData,
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

# How a page lies on the media: (blob, payload bytes, compressor in, compressor out).
Encoded = tuple[bytes, int, int, int]
ZERO_ENCODED: Encoded = (b"", 0, 0, 0)


def is_page(data: object) -> bool:
    """One page of bytes, or a flat byte view of one: how decode_store_batch
    hands pages over. What compresses ahead of `store` takes only these."""
    if type(data) is memoryview:
        return (
            data.nbytes == PAGE_SIZE and data.ndim == 1 and data.c_contiguous and data.format == "B"
        )
    return type(data) is bytes and len(data) == PAGE_SIZE


# Batches up to this size have their handles checked in plain Python.
_SMALL_BATCH = 8

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
    # Whether storing runs a compressor (worth doing off the event loop).
    compresses: ClassVar[bool] = False

    def __init__(self, config: NodeConfig) -> None:
        if config.kind is not self.kind:
            raise ValueError(
                f"{type(self).__name__} models {self.kind.name}, not {config.kind.name}"
            )
        self.config = config
        self._physical = config.physical_bytes
        self._capacity = config.advertised_pages
        self._overhead = config.per_page_overhead_bytes
        self._low = config.watermarks.low_free_bytes
        self._high = config.watermarks.high_free_bytes
        self._max_batch = config.max_batch_pages
        self._poison_mode = config.overflow_mode is OverflowMode.POISON
        # Batches of new pages that surely fit skip the general store loop
        # (`_store_new`); tests turn this off to compare the two.
        self._fast_store = True
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

    def _encode(self, data: PageData) -> tuple[bytes, int, int, int]:
        """Lay a non-zero page on the media: (blob, payload bytes, compress in, compress out)."""
        return bytes(data) if type(data) is not bytes else data, PAGE_SIZE, 0, 0

    def _decode(self, blob: bytes, size: int) -> tuple[bytes, int]:
        """Read a payload back: (the 4096 page bytes, bytes out of the decompressor)."""
        return blob, 0

    def encode_pages(self, datas: Sequence[object]) -> list[Encoded | None]:
        """How each page would lie on the media, computed ahead of `store`.

        A pure function of the bytes (no device state is read or written), so a
        server may run it on a worker thread while its event loop receives the
        next batch, then pass the result to `store(..., encoded=...)`, which
        stays atomic. Entries that are not a valid page are None; `store`
        validates the request itself.
        """
        encode = self._encode_page
        return [encode(cast(PageData, data)) if is_page(data) else None for data in datas]

    def _encode_page(self, data: PageData) -> Encoded:
        """`_encode`, or the zero-page encoding for a page of zeros."""
        if type(data) is not bytes:
            # Not `view == ZERO_PAGE`: a memoryview compares element by element,
            # 16 us for a page of zeros.
            data = bytes(data)
        return ZERO_ENCODED if data == ZERO_PAGE else self._encode(data)

    # ------------------------------------------------------------ pressure

    def subscribe(self, maxlen: int = 64) -> PressureSubscriber:
        """Listen to pressure changes; the first event is the current state."""
        sub = PressureSubscriber(self, maxlen)
        sub.push(self._event(0))
        self._subscribers.append(sub)
        return sub

    def _unsubscribe(self, sub: PressureSubscriber) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(sub)

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

    def count_rejected(self) -> None:
        """Count a request refused before it reached the model (e.g. undecodable)."""
        self._c_rejected += 1

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

    def _check_handles(self, handles: Sequence[int], allow_zero: bool) -> np.ndarray:
        """Every handle an allocated int, none twice (handle 0 skipped when allowed).

        Returns the slots (handle - 1) of the non-zero handles, in request order.
        """
        n = len(handles)
        if n <= _SMALL_BATCH and all(type(h) is int for h in handles):
            # The engine's single-page loads and frees: plain Python is several
            # times cheaper than numpy's unique() on a handful of handles. Any
            # doubt falls through to the checks below, which name the culprit.
            hs = [h for h in handles if h] if allow_zero else handles
            if len(hs) == 0:
                return np.empty(0, dtype=np.int64)
            if min(hs) >= 1 and max(hs) <= self._next_slot and len(set(hs)) == len(hs):
                state = self._state
                if all(state[h - 1] != FREE for h in hs):
                    return np.array(hs, dtype=np.int64) - 1
        if not all(type(h) is int for h in handles):
            for h in handles:
                if isinstance(h, bool) or not isinstance(h, int | np.integer):
                    raise self._reject(_INVALID, f"handle {h!r} is not an integer")
            handles = [int(h) for h in handles]
        try:
            arr = np.fromiter(handles, dtype=np.int64, count=n)
        except OverflowError:
            big = next(h for h in handles if not -(2**63) <= h < 2**63)
            if big < 0:
                raise self._reject(_INVALID, f"handle {big} is negative") from None
            raise self._reject(_NOT_FOUND, f"handle {big} is not allocated on this node") from None
        if allow_zero:
            arr = arr[arr != 0]
        if arr.size == 0:
            return arr
        if int(arr.min()) < 0:
            raise self._reject(_INVALID, f"handle {int(arr[arr < 0][0])} is negative")
        uniq, counts = np.unique(arr, return_counts=True)
        if uniq.size != arr.size:
            raise self._reject(
                _INVALID, f"handle {int(uniq[counts > 1][0])} appears twice in one batch"
            )
        if int(uniq[0]) == 0 or int(uniq[-1]) > self._next_slot:
            bad = 0 if int(uniq[0]) == 0 else int(uniq[-1])
            raise self._reject(_NOT_FOUND, f"handle {bad} is not allocated on this node")
        slots = arr - 1
        free = slots[self._state[slots] == FREE]
        if free.size:
            raise self._reject(
                _NOT_FOUND, f"handle {int(free[0]) + 1} is not allocated on this node"
            )
        return slots

    # ------------------------------------------------------------ slots

    def _grow(self, slots: int) -> None:
        """Make the metadata arrays hold at least `slots` entries."""
        size = self._state.shape[0]
        if slots <= size:
            return
        grown = min(self._capacity, max(slots, 2 * size))
        for name in ("_state", "_size", "_hint"):
            old = getattr(self, name)
            new = np.zeros(grown, dtype=old.dtype)
            new[:size] = old
            setattr(self, name, new)

    def _new_slots(self, count: int) -> list[int]:
        """Pick `count` free slots: most recently freed first, then fresh ones."""
        free = self._free_slots
        take = min(count, len(free))
        slots = [free.pop() for _ in range(take)]
        if take < count:
            first = self._next_slot
            self._next_slot += count - take
            self._grow(self._next_slot)
            slots.extend(range(first, self._next_slot))
        return slots

    def _drop(self, slots: np.ndarray) -> np.ndarray:
        """Release what `slots` hold (payload, promise, poison); they stay allocated.

        Vectorised over a batch. Invariant relied on: size is 0 unless STORED
        and hint is 0 unless RESERVED. Returns the previous states.
        """
        states = self._state[slots]
        counts = np.bincount(states, minlength=5).tolist()
        self._stored -= counts[STORED] + counts[ZERO]
        self._zero -= counts[ZERO]
        self._poisoned -= counts[POISONED]
        if counts[STORED]:
            self._stored_bytes -= int(self._size[slots].sum(dtype=np.int64))
            self._size[slots] = 0
            blobs = self._blobs
            for slot in slots[states == STORED].tolist():
                del blobs[slot]
        if counts[RESERVED]:
            self._reserved_bytes -= int(self._hint[slots].sum(dtype=np.int64))
            self._hint[slots] = 0
        return states

    def _free_slots_now(self, slots: np.ndarray) -> None:
        self._drop(slots)
        self._state[slots] = FREE
        self._allocated -= slots.size
        self._free_slots.extend(slots.tolist())

    def _refusal(
        self, count: int, check: bool, size_hint: int, allocated: int, used: int, reserved: int
    ) -> str | None:
        """Why `count` more pages may not be allocated, or None if they may.

        The checked form is the driver's answer to node_private_allocated()
        (N_PRIVATE series v3): room must remain for the new pages at their
        hinted size, and for every page already promised but not yet written,
        without free media falling below the low watermark.
        """
        if allocated + count > self._capacity:
            return (
                f"advertised capacity reached: {allocated} of {self._capacity} pages "
                f"allocated, {count} more requested"
            )
        free = self._physical - used
        if count * self._overhead > free:
            # Even an unchecked allocation needs media for its translation entries;
            # without this, full media would report negative free bytes.
            return (
                f"media full: no room for the {self._overhead}-byte translation entries "
                f"of {count} more page(s) ({free} bytes free)"
            )
        if check:
            each = (size_hint or PAGE_SIZE) + self._overhead
            after = free - reserved - count * each
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
            raise self._reject(_INVALID, f"count {count} exceeds max_batch_pages={self._max_batch}")
        if isinstance(size_hint, bool) or not isinstance(size_hint, int):
            raise self._reject(_INVALID, f"size_hint must be an integer, got {size_hint!r}")
        if not 0 <= size_hint <= PAGE_SIZE:
            raise self._reject(_INVALID, f"size_hint_bytes must be 0..{PAGE_SIZE}, got {size_hint}")
        refusal = self._refusal(
            count, check, size_hint, self._allocated, self.physical_used_bytes, self._reserved_bytes
        )
        if refusal is not None:
            if check:
                self._c_alloc_refused += 1
            else:
                self._c_rejected += 1
            raise NodeError(_EXHAUSTED, refusal)
        hint = size_hint or PAGE_SIZE
        slots = self._new_slots(count)
        idx = np.array(slots, dtype=np.int64)
        self._state[idx] = RESERVED
        self._hint[idx] = hint
        self._allocated += count
        self._reserved_bytes += hint * count
        cost = self.latency.query_cost() if check else 0
        self._c_busy_ns += cost
        self._update_pressure(now_ns)
        return AllocateResult(handles=[s + 1 for s in slots], cost_ns=cost, state=self.state())

    def _validate_pages(
        self, pages: Sequence[tuple[int, PageData]], keep_views: bool
    ) -> tuple[list[int], list[PageData]]:
        """Split (handle, data) pairs; every data exactly one page of bytes.

        Data that is not bytes is copied into bytes, except memoryviews when
        `keep_views` (the pages are already encoded and only their length
        matters here).
        """
        try:
            if set(map(len, pages)) != {2}:
                raise TypeError
            handles = [p[0] for p in pages]
            datas = [p[1] for p in pages]
        except (TypeError, IndexError, KeyError):
            raise self._reject(_INVALID, "a page is a (handle, data) pair") from None
        if set(map(type, datas)) != {bytes}:
            for i, data in enumerate(datas):
                if type(data) is not bytes:
                    if not isinstance(data, bytearray | memoryview):
                        raise self._reject(
                            _INVALID, f"page data must be bytes, not {type(data).__name__}"
                        )
                    if not (keep_views and type(data) is memoryview and data.format == "B"):
                        datas[i] = bytes(data)
        if set(map(len, datas)) != {PAGE_SIZE}:
            bad = next(len(d) for d in datas if len(d) != PAGE_SIZE)
            raise self._reject(_INVALID, f"page data is {bad} bytes; pages are exactly {PAGE_SIZE}")
        return handles, datas

    def store(
        self,
        pages: Sequence[tuple[int, PageData]],
        *,
        check: bool = False,
        now_ns: int = 0,
        encoded: Sequence[Encoded | None] | None = None,
    ) -> BatchResult:
        """Write pages; handle 0 allocates first (checked if `check`).

        Per page: OK; RESOURCE_EXHAUSTED when its allocation is refused;
        DATA_LOSS when the payload found no physical room in poison mode (the
        page is poisoned); FAILED_PRECONDITION for the page that raised a
        machine check and every page after it (none of them is written).

        A checked allocation for a page being stored assumes the worst case (a
        page that does not compress): the driver is asked before the data
        reaches it, as in zswap's direct mode.

        `encoded`, when given, is `encode_pages()` of the same page bytes.
        """
        self._check_serving()
        n = len(pages)
        self._check_batch_len(n, "store")
        hs, datas = self._validate_pages(pages, keep_views=encoded is not None)
        if encoded is not None and len(encoded) != n:
            raise ValueError("encoded must hold one entry per page")
        explicit = self._check_handles(hs, allow_zero=True)
        if not explicit.size and self._fast_store:
            fast = self._store_new(datas, encoded, check, now_ns)
            if fast is not None:
                return fast
        hs = [int(h) for h in hs]

        # What the named pages hold now, gathered once; then the batch runs on
        # plain ints and the arrays are written back in one go at the end.
        if explicit.size:
            old_states = self._state[explicit].tolist()
            old_sizes = self._size[explicit].tolist()
            old_hints = self._hint[explicit].tolist()
        k = 0
        w_slots: list[int] = []
        w_states: list[int] = []
        w_sizes: list[int] = []
        reserved_slot = -1  # a slot allocated, then left unwritten by a machine check
        blobs, encode = self._blobs, self._encode_page
        physical, overhead, capacity = self._physical, self._overhead, self._capacity
        allocated, stored_bytes, reserved = (
            self._allocated,
            self._stored_bytes,
            self._reserved_bytes,
        )
        stored, zero, poisoned = self._stored, self._zero, self._poisoned
        c_in = c_out = c_stores = c_refused = 0
        poison_mode = self._poison_mode
        free_slots, next_slot = self._free_slots, self._next_slot
        # Jitter is drawn after the loop, in page order: the base cost of each draw
        # and the page it belongs to.
        latency = self.latency
        page_write, compress_rate = latency.page_write_base, latency.compress_ns_per_byte
        bases: list[float] = []
        owners: list[int] = []

        out_handles = hs[:]
        codes = [OK] * n
        sizes = [0] * n
        messages = [""] * n
        transferred = 0
        for i in range(n):
            h = hs[i]
            if h == 0:
                if (
                    check
                    or allocated >= capacity
                    or stored_bytes + overhead * (allocated + 1) > physical
                ):
                    if check:
                        bases.append(latency.query_base)
                        owners.append(i)
                    refusal = self._refusal(
                        1, check, 0, allocated, stored_bytes + overhead * allocated, reserved
                    )
                    if refusal is not None:
                        c_refused += check
                        codes[i] = RESOURCE_EXHAUSTED
                        messages[i] = refusal
                        continue
                if free_slots:
                    slot = free_slots.pop()
                else:
                    slot = next_slot
                    next_slot += 1
                out_handles[i] = h = slot + 1
                st, old, hint = RESERVED, 0, PAGE_SIZE
                allocated += 1
                reserved += PAGE_SIZE
            else:
                slot = h - 1
                st, old, hint = old_states[k], old_sizes[k], old_hints[k]
                k += 1
            transferred += PAGE_SIZE
            enc = encoded[i] if encoded is not None else None
            if enc is None:
                data = datas[i]
                enc = encode(data)
            blob, new, cin, cout = enc
            c_in += cin
            c_out += cout
            bases.append(page_write + compress_rate * cin)
            owners.append(i)
            used = stored_bytes + overhead * allocated
            if used - old + new > physical:
                # The hardware failure: a write with no physical room left.
                room = physical - used + old
                self._c_write_failures += 1
                if not poison_mode:
                    self._machine_check = True
                    self._c_machine_checks += 1
                    if hs[i] == 0:
                        reserved_slot = slot
                    sizes[i] = old
                    codes[i:] = [FAILED_PRECONDITION] * (n - i)
                    messages[i] = f"machine check: write of {new} bytes found {room} bytes of room"
                    messages[i + 1 :] = ["not written: the node raised a machine check"] * (
                        n - i - 1
                    )
                    break
                messages[i] = f"write of {new} bytes found {room} bytes of room: page poisoned"
                codes[i] = DATA_LOSS
                new_state, new = POISONED, 0
            else:
                new_state = STORED if new else ZERO
                c_stores += 1
            # Leave the old state...
            if st == RESERVED:
                reserved -= hint
            elif st == STORED:
                stored_bytes -= old
                stored -= 1
                if new_state != STORED:
                    del blobs[slot]
            elif st == ZERO:
                stored -= 1
                zero -= 1
            else:  # POISONED
                poisoned -= 1
            # ...and enter the new one.
            if new_state == STORED:
                stored += 1
                stored_bytes += new
                blobs[slot] = blob
                sizes[i] = new
            elif new_state == ZERO:
                stored += 1
                zero += 1
            else:
                poisoned += 1
            w_slots.append(slot)
            w_states.append(new_state)
            w_sizes.append(new)

        if next_slot != self._next_slot:
            self._next_slot = next_slot
            self._grow(next_slot)
        if w_slots:
            idx = np.array(w_slots, dtype=np.int64)
            self._state[idx] = w_states
            self._size[idx] = w_sizes
            self._hint[idx] = 0
        if reserved_slot >= 0:
            self._state[reserved_slot] = RESERVED
            self._hint[reserved_slot] = PAGE_SIZE
        self._allocated, self._stored_bytes, self._reserved_bytes = (
            allocated,
            stored_bytes,
            reserved,
        )
        self._stored, self._zero, self._poisoned = stored, zero, poisoned
        self._c_stores += c_stores
        self._c_alloc_refused += c_refused
        self._c_compress_in += c_in
        self._c_compress_out += c_out
        costs = [0] * n
        for i, cost in zip(owners, latency.jitter_many(bases), strict=True):
            costs[i] += cost
        return self._finish(out_handles, codes, sizes, costs, messages, [], now_ns, transferred)

    def _store_new(
        self,
        datas: list[PageData],
        encoded: Sequence[Encoded | None] | None,
        check: bool,
        now_ns: int,
    ) -> BatchResult | None:
        """`store` of pages that all allocate (handle 0), when the batch fits.

        The common batch (every demotion, every client that lets the node pick
        handles) needs none of the per-page branches of the general loop once
        it is known that no allocation is refused and no write lacks room:
        then the state changes in bulk. None when that is not known; the
        general loop decides. Results are the same either way, draw for draw.
        """
        n = len(datas)
        allocated = self._allocated
        if allocated + n > self._capacity:
            return None
        encode = self._encode_page
        given = encoded if encoded is not None else [None] * n
        encs = [e if e is not None else encode(d) for e, d in zip(given, datas, strict=True)]
        sizes = [e[1] for e in encs]
        overhead = self._overhead
        used_after = self._stored_bytes + sum(sizes) + overhead * (allocated + n)
        free_after = self._physical - used_after
        if free_after < 0:
            return None
        latency = self.latency
        page_write, rate = latency.page_write_base, latency.compress_ns_per_byte
        if check:
            # The general loop's refusal test for the last page, with the most
            # media used; pages before it see more room.
            if free_after - self._reserved_bytes - PAGE_SIZE < self._low:
                return None
            query = latency.query_base
            bases: list[float] = []
            for e in encs:
                bases.append(query)
                bases.append(page_write + rate * e[2])
            draws = latency.jitter_many(bases)
            costs = [a + b for a, b in zip(draws[::2], draws[1::2], strict=True)]
        else:
            costs = latency.jitter_many([page_write + rate * e[2] for e in encs])

        free_slots = self._free_slots
        reuse = min(n, len(free_slots))
        slots = [free_slots.pop() for _ in range(reuse)]
        if reuse < n:
            start = self._next_slot
            slots += range(start, start + n - reuse)
            self._next_slot = start + n - reuse
            self._grow(self._next_slot)
        blobs = self._blobs
        zero = 0
        c_in = c_out = 0
        for slot, (blob, size, cin, cout) in zip(slots, encs, strict=True):
            if size:
                blobs[slot] = blob
            else:
                zero += 1
            c_in += cin
            c_out += cout
        idx = np.array(slots, dtype=np.int64)
        size_arr = np.array(sizes, dtype=self._size.dtype)
        self._state[idx] = np.where(size_arr > 0, STORED, ZERO)
        self._size[idx] = size_arr
        self._hint[idx] = 0
        self._allocated = allocated + n
        self._stored_bytes = used_after - overhead * (allocated + n)
        self._stored += n
        self._zero += zero
        self._c_stores += n
        self._c_compress_in += c_in
        self._c_compress_out += c_out
        handles = [s + 1 for s in slots]
        return self._finish(handles, [OK] * n, sizes, costs, [""] * n, [], now_ns, n * PAGE_SIZE)

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
        slots = self._check_handles(handles, allow_zero=False)
        states = self._state[slots].tolist()
        old_sizes = self._size[slots].tolist()
        blobs, decode, latency = self._blobs, self._decode, self.latency
        read_base, decompress_rate = latency.page_read_base, latency.decompress_ns_per_byte
        hs = (slots + 1).tolist()
        codes = [OK] * n
        messages = [""] * n
        datas: list[bytes] = [ZERO_PAGE] * n  # RESERVED and ZERO pages read back as zeros
        bases = [read_base] * n
        d_out = lost = 0
        for i, st in enumerate(states):
            if st == STORED:
                datas[i], dout = decode(blobs[hs[i] - 1], old_sizes[i])
                if dout:
                    d_out += dout
                    bases[i] = read_base + decompress_rate * dout
            elif st == POISONED:
                datas[i] = b""
                codes[i] = DATA_LOSS
                messages[i] = f"page {hs[i]} is poisoned: an earlier write found no room"
                lost += 1
        costs = latency.jitter_many(bases)
        self._c_decompress_out += d_out
        self._c_loads += n - lost
        self._c_data_loss_reads += lost
        if free_after:
            self._free_slots_now(slots)
            self._c_frees += n
            old_sizes = [0] * n
        return self._finish(hs, codes, old_sizes, costs, messages, datas, now_ns, n * PAGE_SIZE)

    def free(self, handles: Sequence[int], *, now_ns: int = 0) -> OpResult:
        """Zero and release pages: node_private_freed()."""
        self._check_serving()
        n = len(handles)
        self._check_batch_len(n, "free")
        slots = self._check_handles(handles, allow_zero=False)
        self._free_slots_now(slots)
        self._c_frees += n
        media_op = self.latency.media_op_cost
        return self._finish_op(n, sum(media_op() for _ in range(n)), now_ns)

    def zero(self, handles: Sequence[int], *, now_ns: int = 0) -> OpResult:
        """Zero pages in place (CXL Media Operations: Zero); they stay allocated."""
        self._check_serving()
        n = len(handles)
        self._check_batch_len(n, "zero")
        slots = self._check_handles(handles, allow_zero=False)
        self._drop(slots)
        self._state[slots] = ZERO
        self._stored += n
        self._zero += n
        self._c_zeroes += n
        media_op = self.latency.media_op_cost
        return self._finish_op(n, sum(media_op() for _ in range(n)), now_ns)

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
