"""Initramfs, access plan and data disk: the guest replays exactly what tiersim runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from reference_samples import MINIMAL, TIERED

from tiersim.orchestrator.content import make_content
from tiersim.orchestrator.workloads import make_workload
from tiersim.reference.image import (
    STORE_BIT,
    Cpio,
    access_trace,
    build_initramfs,
    make_plan,
    plan_workload,
    process_seed,
    read_header,
    write_data_disk,
)
from tiersim.reference.spec import PAGE_SIZE, parse_workload


def read_newc(blob: bytes) -> dict[str, tuple[int, bytes]]:
    """name -> (mode, data) of a newc archive (a reader independent of the writer)."""
    out: dict[str, tuple[int, bytes]] = {}
    i = 0
    while True:
        assert blob[i : i + 6] == b"070701", f"bad magic at {i}"
        fields = [int(blob[i + 6 + 8 * k : i + 14 + 8 * k], 16) for k in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = blob[i + 110 : i + 110 + namesize - 1].decode()
        j = i + 110 + namesize
        j += -j % 4
        data = blob[j : j + size]
        j += size
        j += -j % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data)
        i = j


def test_cpio_round_trip() -> None:
    a = Cpio()
    a.file("a/b/c.txt", b"hello", 0o600)
    a.symlink("bin/sh", "busybox")
    a.device("dev/console", True, 5, 1)
    blob = a.finish()
    assert len(blob) % 512 == 0
    entries = read_newc(blob)
    assert entries["a/b/c.txt"] == (0o100600, b"hello")
    assert entries["a"][0] == 0o040755 and entries["a/b"][0] == 0o040755
    assert entries["bin/sh"] == (0o120777, b"busybox")
    assert entries["dev/console"][0] == 0o020600


def test_initramfs_layout() -> None:
    blob = build_initramfs(
        busybox=b"BB", workload=b"WL", init_script="#!/bin/sh\n", modules=[("virtio_blk", b"KO")]
    )
    entries = read_newc(blob)
    assert entries["init"] == (0o100755, b"#!/bin/sh\n")
    assert entries["bin/busybox"][1] == b"BB"
    assert entries["workload"] == (0o100755, b"WL")
    assert entries["lib/modules/virtio_blk.ko"][1] == b"KO"
    for d in ("proc", "sys", "dev", "run", "sys/fs/cgroup"):
        assert entries[d][0] & 0o040000


def test_plan_versions_follow_tiersim() -> None:
    pages = np.array([0, 1, 0, 1, 2, 0], dtype=np.int64)
    writes = np.array([False, True, False, True, False, True])
    plan = make_plan(3, pages, writes)
    store = (plan.entries & STORE_BIT) != 0
    # First read of page 0 stores version 0; a re-read stores nothing;
    # every write stores the next version; page 2's first read stores v0.
    assert store.tolist() == [True, True, False, True, True, True]
    assert plan.stream_pages.tolist() == [0, 1, 1, 2, 0]
    assert plan.stream_versions.tolist() == [0, 1, 2, 0, 1]
    assert (plan.entries & ~np.uint32(STORE_BIT)).tolist() == pages.tolist()


def test_trace_is_tiersims_own_stream() -> None:
    w = parse_workload(TIERED)
    pages, writes = access_trace(w)
    wl = make_workload(dict(w.access.pattern), w.npages, process_seed(w.seed))
    chunk = wl.next_chunk(w.access.accesses)
    assert np.array_equal(pages, chunk.pages)
    assert np.array_equal(writes, chunk.writes)


def test_process_seed_matches_engine() -> None:
    import zlib

    assert process_seed(7, "ref") == zlib.crc32(b"7:ref")


def test_data_disk(tmp_path: Path) -> None:
    w = parse_workload(MINIMAL)
    plan = plan_workload(w)
    # Sequential reads: the first pass stores every page once, then reads only.
    assert plan.accesses == 2 * w.npages
    assert plan.stores == w.npages
    disk = tmp_path / "data.img"
    size = write_data_disk(w, plan, disk)
    assert disk.stat().st_size == size and size % 65536 == 0
    h = read_header(disk)
    assert h["magic"] == b"TSREFv1\x00" and h["version"] == 1 and h["page_size"] == PAGE_SIZE
    assert h["npages"] == w.npages and h["naccesses"] == plan.accesses
    assert h["nstream"] == plan.stores
    assert int(h["stream_offset"]) % PAGE_SIZE == 0
    assert int(h["stream_offset"]) >= int(h["trace_offset"]) + 4 * plan.accesses
    raw = disk.read_bytes()
    trace = np.frombuffer(raw, "<u4", plan.accesses, int(h["trace_offset"]))
    assert np.array_equal(trace, plan.entries)
    content = make_content(w.content, process_seed(w.seed))
    for k in (0, 1, plan.stores // 2, plan.stores - 1):
        off = int(h["stream_offset"]) + k * PAGE_SIZE
        page, version = int(plan.stream_pages[k]), int(plan.stream_versions[k])
        assert raw[off : off + PAGE_SIZE] == content.page(page, version)
