"""Property tests: any sequence of operations keeps a device's accounting exact.

A reference model written from the specification (not from the device code)
predicts every outcome: which allocations are refused, which writes overflow,
what each load returns. After every step the device's counters, its
metadata arrays and its pressure must agree with the reference.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grpc
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from node_helpers import Pages, lz4_payload
from tiersim import NodeError
from tiersim.nodes import PAGE_SIZE, MemoryDevice, NodeConfig, make_device, node_config
from tiersim.nodes._device import FREE, POISONED, RESERVED, STORED, ZERO, pressure_for
from tiersim.nodes._types import DATA_LOSS, OK, RESOURCE_EXHAUSTED

FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION.value[0]
ZERO_PAGE = bytes(PAGE_SIZE)

_p = Pages(seed=3)
PALETTE = [
    ZERO_PAGE,
    *(_p.text() for _ in range(3)),
    *(_p.heap() for _ in range(3)),
    *(_p.random() for _ in range(3)),
    b"\x01" * PAGE_SIZE,
    ZERO_PAGE[:-1] + b"\x01",
]

generated_pages = st.binary(min_size=1, max_size=48).map(
    lambda b: (b * (PAGE_SIZE // len(b) + 1))[:PAGE_SIZE]
)
page_contents = st.one_of(st.sampled_from(PALETTE), generated_pages)


@dataclasses.dataclass
class Page:
    """Reference state of one handle: 'reserved' (with hint), 'stored', 'zero' or 'poisoned'."""

    state: str
    data: bytes = ZERO_PAGE
    hint: int = 0


class DeviceMachine(RuleBasedStateMachine):
    config: NodeConfig

    def __init__(self) -> None:
        super().__init__()
        self.device: MemoryDevice = make_device(self.config)
        self.ref: dict[int, Page] = {}
        self.machine_check = False
        self.compressed = self.config.kind.name == "CRAM"
        self.refused = 0
        self.rejected = 0
        self.write_failures = 0

    # ---------------------------------------------------------- reference

    def payload(self, data: bytes) -> int:
        if self.compressed:
            return lz4_payload(data)
        return 0 if data == ZERO_PAGE else PAGE_SIZE

    def held(self, page: Page) -> int:
        return self.payload(page.data) if page.state == "stored" else 0

    def used(self) -> int:
        c = self.config
        return sum(self.held(p) for p in self.ref.values()) + c.per_page_overhead_bytes * len(
            self.ref
        )

    def refusal(self, count: int, check: bool, hint: int) -> bool:
        c = self.config
        free = c.physical_bytes - self.used()
        if len(self.ref) + count > c.advertised_pages:
            return True
        if count * c.per_page_overhead_bytes > free:
            return True
        if check:
            promised = sum(p.hint for p in self.ref.values() if p.state == "reserved")
            each = (hint or PAGE_SIZE) + c.per_page_overhead_bytes
            return free - promised - count * each < c.watermarks.low_free_bytes
        return False

    def expect_error(self, code: grpc.StatusCode, call: object) -> None:
        with pytest.raises(NodeError) as err:
            call()  # type: ignore[operator]
        assert err.value.code is code, err.value

    def dead(self, call: object) -> None:
        """In machine-check state every data operation is refused."""
        self.expect_error(grpc.StatusCode.FAILED_PRECONDITION, call)
        self.rejected += 1

    # ---------------------------------------------------------- rules

    @rule(count=st.integers(1, 4), check=st.booleans(), hint=st.sampled_from([0, 1, 100, 4096]))
    def allocate(self, count: int, check: bool, hint: int) -> None:
        d = self.device
        if self.machine_check:
            return self.dead(lambda: d.allocate(count, check=check, size_hint=hint))
        if self.refusal(count, check, hint):
            event(f"allocate: refused (check={check})")
            self.expect_error(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                lambda: d.allocate(count, check=check, size_hint=hint),
            )
            if check:
                self.refused += 1
            else:
                self.rejected += 1
            return None
        r = d.allocate(count, check=check, size_hint=hint)
        assert len(r.handles) == count
        for h in r.handles:
            assert h > 0 and h not in self.ref
            self.ref[h] = Page("reserved", hint=hint or PAGE_SIZE)
        return None

    @rule(data=st.data(), check=st.booleans())
    def store(self, data: st.DataObject, check: bool) -> None:
        d = self.device
        existing = sorted(self.ref)
        n = data.draw(st.integers(1, 6))
        named = (
            data.draw(st.lists(st.sampled_from(existing), unique=True, max_size=n))
            if existing
            else []
        )
        targets = data.draw(st.permutations(named + [0] * (n - len(named))))
        contents = data.draw(st.lists(page_contents, min_size=n, max_size=n))
        pages = list(zip(targets, contents, strict=True))
        if self.machine_check:
            return self.dead(lambda: d.store(pages, check=check))
        r = d.store(pages, check=check)
        phys = self.config.physical_bytes
        for i, (h, content) in enumerate(pages):
            code = r.codes[i]
            if h == 0:
                if self.refusal(1, check, 0):
                    event("store: allocation refused")
                    assert code == RESOURCE_EXHAUSTED and r.handles[i] == 0
                    self.refused += check
                    continue
                h = r.handles[i]
                assert h > 0 and h not in self.ref
                self.ref[h] = Page("reserved", hint=PAGE_SIZE)
            assert r.handles[i] == h
            new = self.payload(content)
            if self.used() - self.held(self.ref[h]) + new > phys:
                self.write_failures += 1
                event("store: write overflowed")
                if self.config.overflow_mode.name == "POISON":
                    assert code == DATA_LOSS, (i, r)
                    self.ref[h] = Page("poisoned", data=b"")
                    continue
                assert r.codes[i:] == [FAILED_PRECONDITION] * (n - i)
                event("store: machine check raised")
                self.machine_check = True
                return None
            assert code == OK, (i, r.messages[i])
            assert r.stored_bytes[i] == new
            self.ref[h] = Page("zero") if content == ZERO_PAGE else Page("stored", data=content)
        return None

    @precondition(lambda self: self.ref)
    @rule(data=st.data(), free_after=st.booleans())
    def load(self, data: st.DataObject, free_after: bool) -> None:
        handles = data.draw(st.lists(st.sampled_from(sorted(self.ref)), min_size=1, unique=True))
        if self.machine_check:
            return self.dead(lambda: self.device.load(handles, free_after=free_after))
        r = self.device.load(handles, free_after=free_after)
        for i, h in enumerate(handles):
            page = self.ref[h]
            if page.state == "poisoned":
                assert r.codes[i] == DATA_LOSS and r.data[i] == b""
            else:
                assert r.codes[i] == OK
                assert r.data[i] == (page.data if page.state == "stored" else ZERO_PAGE)
            if free_after:
                del self.ref[h]
        return None

    @precondition(lambda self: self.ref)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        handles = data.draw(st.lists(st.sampled_from(sorted(self.ref)), min_size=1, unique=True))
        if self.machine_check:
            return self.dead(lambda: self.device.free(handles))
        assert self.device.free(handles).count == len(handles)
        for h in handles:
            del self.ref[h]
        return None

    @precondition(lambda self: self.ref)
    @rule(data=st.data())
    def zero(self, data: st.DataObject) -> None:
        handles = data.draw(st.lists(st.sampled_from(sorted(self.ref)), min_size=1, unique=True))
        if self.machine_check:
            return self.dead(lambda: self.device.zero(handles))
        self.device.zero(handles)
        for h in handles:
            self.ref[h] = Page("zero")
        return None

    @rule(data=st.data())
    def malformed(self, data: st.DataObject) -> None:
        d = self.device
        unknown = next(h for h in range(1, 10**6) if h not in self.ref)
        some = sorted(self.ref)[:1] or [unknown]
        bad = data.draw(
            st.sampled_from(
                [
                    lambda: d.store([]),
                    lambda: d.store([(0, b"short")]),
                    lambda: d.store([(unknown, ZERO_PAGE)]),
                    lambda: d.store([(some[0], ZERO_PAGE)] * 2),
                    lambda: d.load([unknown]),
                    lambda: d.load([]),
                    lambda: d.free(some * 2),
                    lambda: d.zero([0]),
                    lambda: d.allocate(0),
                    lambda: d.load([0] * 300),
                ]
            )
        )
        before = dataclasses.replace(d.stats(), rejected_requests=0)
        with pytest.raises(NodeError):
            bad()
        self.rejected += 1
        assert dataclasses.replace(d.stats(), rejected_requests=0) == before

    @rule()
    def reset(self) -> None:
        self.device.reset()
        self.ref.clear()
        self.machine_check = False
        self.refused = self.rejected = self.write_failures = 0

    # ---------------------------------------------------------- invariants

    @invariant()
    def accounting_is_exact(self) -> None:
        d, c = self.device, self.config
        s = d.stats()
        states = [p.state for p in self.ref.values()]
        assert s.allocated_pages == len(self.ref)
        assert s.stored_pages == states.count("stored") + states.count("zero")
        assert s.zero_pages == states.count("zero")
        assert s.poisoned_pages == states.count("poisoned")
        assert s.logical_bytes == s.stored_pages * PAGE_SIZE
        assert s.stored_bytes == sum(self.held(p) for p in self.ref.values())
        assert s.physical_used_bytes == self.used() <= c.physical_bytes
        assert s.physical_used_bytes == s.stored_bytes + c.per_page_overhead_bytes * len(self.ref)
        free = c.physical_bytes - s.physical_used_bytes
        assert s.pressure == pressure_for(
            free, c.watermarks.low_free_bytes, c.watermarks.high_free_bytes
        )
        if s.pressure:
            event("pressure above 0" if s.pressure < 1000 else "pressure 1000")
        assert s.machine_check == self.machine_check
        assert s.alloc_refused == self.refused
        assert s.rejected_requests == self.rejected
        assert s.write_failures == self.write_failures
        assert list(d.handles()) == sorted(self.ref)

    @invariant()
    def metadata_arrays_agree(self) -> None:
        d = self.device
        code = {"reserved": RESERVED, "stored": STORED, "zero": ZERO, "poisoned": POISONED}
        n = d._next_slot
        for slot in range(n):
            page = self.ref.get(slot + 1)
            assert d._state[slot] == (code[page.state] if page else FREE)
            if page is not None and page.state == "stored":
                assert d._size[slot] == self.held(page) and slot in d._blobs
            else:
                assert d._size[slot] == 0 and slot not in d._blobs
            assert d._hint[slot] == (page.hint if page and page.state == "reserved" else 0)
        assert len(d._blobs) == sum(1 for p in self.ref.values() if p.state == "stored")
        assert sorted(d._free_slots) == [s for s in range(n) if s + 1 not in self.ref]


def _machine(name: str, config: NodeConfig) -> Any:
    """The unittest TestCase of a DeviceMachine over `config`."""
    cls: Any = type(name, (DeviceMachine,), {"config": config})
    cls.TestCase.settings = settings(
        max_examples=80,
        stateful_step_count=30,
        deadline=None,
        database=None,  # no example files left in the work tree
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    return cls.TestCase


# Small media so that pressure, refusals and overflow all happen within a few steps.
TestCramPoison = _machine(
    "CramPoison",
    node_config("cram", "128KiB", "20KiB", low_watermark="2KiB", high_watermark="6KiB", seed=1),
)
TestCramMachineCheck = _machine(
    "CramMachineCheck",
    node_config(
        "cram",
        "128KiB",
        "16KiB",
        overflow="machine-check",
        low_watermark=1024,
        high_watermark="4KiB",
        per_page_overhead=32,
    ),
)
TestDram = _machine(
    "Dram", node_config("dram", "40KiB", low_watermark="8KiB", high_watermark="16KiB")
)
