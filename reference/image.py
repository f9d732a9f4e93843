"""What the guest boots with: the initramfs, and the disk holding trace and page corpus.

The initramfs is written here in the kernel's ``newc`` cpio format rather
than with the cpio tool, so building it needs nothing but Python and the
result is byte-for-byte reproducible (fixed mtimes and inode numbers). It is
left uncompressed: it is a few MiB and the kernel unpacks it anyway.

The data disk carries the access trace and the content stream the guest
program (``guest/workload.c``) replays. Both come from tiersim itself: the
trace from `tiersim.orchestrator.workloads.make_workload`, the bytes from
`tiersim.orchestrator.content.make_content`, with the seed tiersim's engine
derives for the workload, so the kernel and tiersim see the same pages in the
same order with the same contents.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .spec import PAGE_SIZE, ReferenceWorkload

# The tiersim workload (process) name and the host name the translation uses;
# the engine derives the process's content and access seeds from them.
WORKLOAD_NAME = "ref"
HOST_NAME = "guest"
CGROUP_NAME = "ref"
STORE_BIT = 0x8000_0000
MAGIC = b"TSREFv1\x00"
HEADER = struct.Struct("<8sIIQQQQQ")


def process_seed(scenario_seed: int, workload_name: str = WORKLOAD_NAME) -> int:
    """The seed tiersim's engine gives a process's content and access models
    (``zlib.crc32(f"{scenario seed}:{workload name}")`` in ``engine.py``)."""
    return zlib.crc32(f"{scenario_seed}:{workload_name}".encode())


# --------------------------------------------------------------------------
# cpio (newc).


class Cpio:
    """A newc archive built in memory. Paths are relative, without a leading slash."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 300000
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        self._ino += 1
        namez = name.encode() + b"\x00"
        fields = (
            self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(namez), 0,
        )  # fmt: skip
        header = b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
        blob = header + namez
        blob += b"\x00" * (-len(blob) % 4)
        blob += data + b"\x00" * (-len(data) % 4)
        self._parts.append(blob)

    def directory(self, name: str) -> None:
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._dirs:
                self._dirs.add(d)
                self._entry(d, 0o040755, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        if "/" in name:
            self.directory(name.rsplit("/", 1)[0])
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        if "/" in name:
            self.directory(name.rsplit("/", 1)[0])
        self._entry(name, 0o120777, target.encode())

    def device(self, name: str, char: bool, major: int, minor: int, mode: int = 0o600) -> None:
        """A device node (``/dev/console`` must exist before devtmpfs is mounted)."""
        name = name.strip("/")
        self._ino += 1
        namez = name.encode() + b"\x00"
        kind = 0o020000 if char else 0o060000
        fields = (self._ino, kind | mode, 0, 0, 1, 0, 0, 0, 0, major, minor, len(namez), 0)
        blob = b"070701" + b"".join(f"{v:08X}".encode() for v in fields) + namez
        blob += b"\x00" * (-len(blob) % 4)
        self._parts.append(blob)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        out = b"".join(self._parts)
        return out + b"\x00" * (-len(out) % 512)


def build_initramfs(
    *,
    busybox: bytes,
    workload: bytes,
    init_script: str,
    modules: Iterable[tuple[str, bytes]],
) -> bytes:
    """busybox, the workload program, the init script and the modules to insmod."""
    a = Cpio()
    for d in ("bin", "dev", "proc", "sys", "run", "tmp", "lib/modules", "sys/fs/cgroup"):
        a.directory(d)
    a.device("dev/console", True, 5, 1)
    a.file("bin/busybox", busybox, 0o755)
    a.symlink("bin/sh", "busybox")
    a.file("workload", workload, 0o755)
    a.file("init", init_script.encode(), 0o755)
    for name, elf in modules:
        a.file(f"lib/modules/{name}.ko", elf)
    return a.finish()


# --------------------------------------------------------------------------
# Trace and content stream.


@dataclass(frozen=True)
class Plan:
    """The accesses as the guest replays them.

    ``entries`` holds one uint32 per access: the page, with `STORE_BIT` set
    when the access puts new bytes in the page. ``stream`` lists, in order,
    the (page, version) whose bytes those stores write. Versions follow
    tiersim: a page starts at version 0 and every write adds one, so a first
    touch stores version 1 when it is a write and version 0 when it is a read
    (the page exists with its initial contents).
    """

    entries: npt.NDArray[np.uint32]
    stream_pages: npt.NDArray[np.int64]
    stream_versions: npt.NDArray[np.int64]

    @property
    def accesses(self) -> int:
        return len(self.entries)

    @property
    def stores(self) -> int:
        return len(self.stream_pages)


def access_trace(w: ReferenceWorkload) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Pages and write flags of every access, from tiersim's own generator."""
    from tiersim.orchestrator.workloads import make_workload

    wl = make_workload(dict(w.access.pattern), w.npages, process_seed(w.seed))
    pages: list[npt.NDArray[np.int64]] = []
    writes: list[npt.NDArray[np.bool_]] = []
    left = w.access.accesses
    while left:
        chunk = wl.next_chunk(min(left, 1 << 16))
        pages.append(chunk.pages.astype(np.int64))
        writes.append(chunk.writes.astype(np.bool_))
        left -= len(chunk)
    return np.concatenate(pages), np.concatenate(writes)


def make_plan(npages: int, pages: npt.NDArray[np.int64], writes: npt.NDArray[np.bool_]) -> Plan:
    """Decide, access by access, which ones store bytes and which version."""
    if len(pages) and (int(pages.min()) < 0 or int(pages.max()) >= npages):
        raise ValueError("trace touches a page outside the footprint")
    version = np.zeros(npages, dtype=np.int64)
    touched = np.zeros(npages, dtype=np.bool_)
    entries = pages.astype(np.uint32)
    store = np.zeros(len(pages), dtype=np.bool_)
    s_pages: list[int] = []
    s_versions: list[int] = []
    # A Python loop: traces are at most a few million accesses, and the rule
    # (first touch or write) depends on the state left by earlier accesses.
    for i, (p, w) in enumerate(zip(pages.tolist(), writes.tolist(), strict=True)):
        if w:
            version[p] += 1
        elif touched[p]:
            continue
        touched[p] = True
        store[i] = True
        s_pages.append(p)
        s_versions.append(int(version[p]))
    entries[store] |= np.uint32(STORE_BIT)
    return Plan(entries, np.asarray(s_pages, np.int64), np.asarray(s_versions, np.int64))


def plan_workload(w: ReferenceWorkload) -> Plan:
    pages, writes = access_trace(w)
    return make_plan(w.npages, pages, writes)


def write_data_disk(w: ReferenceWorkload, plan: Plan, path: Path) -> int:
    """Write header, trace and content stream; return the image size in bytes."""
    from tiersim.orchestrator.content import make_content

    content = make_content(w.content, process_seed(w.seed))
    trace_off = PAGE_SIZE
    trace_bytes = plan.accesses * 4
    # The guest reads the trace in 16 KiB O_DIRECT chunks: pad to that.
    stream_off = trace_off + -(-trace_bytes // 16384) * 16384
    header = HEADER.pack(
        MAGIC, 1, PAGE_SIZE, w.npages, plan.accesses, trace_off, stream_off, plan.stores
    )
    with path.open("wb") as f:
        f.write(header.ljust(PAGE_SIZE, b"\x00"))
        f.write(plan.entries.astype("<u4").tobytes())
        f.seek(stream_off)
        batch: list[bytes] = []
        for p, v in zip(plan.stream_pages.tolist(), plan.stream_versions.tolist(), strict=True):
            data = content.page(p, v)
            if len(data) != PAGE_SIZE:
                raise ValueError(f"content model returned {len(data)} bytes for page {p}")
            batch.append(data)
            if len(batch) == 256:
                f.write(b"".join(batch))
                batch.clear()
        f.write(b"".join(batch))
        size = stream_off + plan.stores * PAGE_SIZE
        # Whole 64 KiB at the end, so the guest's last chunked read is complete.
        size += -size % 65536
        f.truncate(size)
    return size


def read_header(path: Path) -> dict[str, int | bytes]:
    """The header of a data disk (for tests and checks)."""
    with path.open("rb") as f:
        raw = f.read(HEADER.size)
    magic, version, page_size, npages, naccesses, trace_off, stream_off, nstream = HEADER.unpack(
        raw
    )
    return {
        "magic": magic,
        "version": version,
        "page_size": page_size,
        "npages": npages,
        "naccesses": naccesses,
        "trace_offset": trace_off,
        "stream_offset": stream_off,
        "nstream": nstream,
    }
