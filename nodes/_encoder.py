"""Compressing a StoreStream's pages ahead of the device model, off the event loop.

`MemoryDevice.encode_pages` is a pure function of the page bytes, so a server
can compress the batches it has received while the model applies earlier
ones; `store(..., encoded=...)` then stays atomic. Two encoders do that:

- `ProcessEncoder` hands the pages to an lz4 worker process (_lz4_worker.py)
  through shared memory. It is the default where the machine has a second
  core: the worker compresses while the event loop parses and replies, with
  no GIL between them.
- `ThreadEncoder` runs `encode_pages` on one worker thread. lz4 releases the
  GIL, but each page must take it back from the busy event loop, so the thread
  overlaps less. It serves where the process cannot be had.

Either may answer None for a batch (a page that is not a page, a worker that
died): the device then encodes the batch itself, with the same result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import mmap
import os
import struct
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tiersim._errors import ConfigError
from tiersim._logging import get_logger

from ._config import COMPRESS_IN
from ._device import Encoded, MemoryDevice, is_page
from ._types import PAGE_SIZE, PageData
from .cram import CramDevice, lay_out_packed

_WORKER = Path(__file__).with_name("_lz4_worker.py")
_HEADER = struct.Struct("<II")
# Batches compressed at once, over all streams of a server: a stream holds up to
# three (the batch the model waits for and STORE_READ_AHEAD more), and two
# streams may overlap. More streams wait for a slot.
DEFAULT_SLOTS = 6
# A worker that has not answered a batch in this long is taken for stuck: it is
# killed and the device encodes from then on. A batch takes milliseconds.
ANSWER_TIMEOUT_S = 30.0


class PageEncoder(Protocol):
    async def encode(self, datas: Sequence[PageData]) -> list[Encoded | None] | None:
        """`encode_pages(datas)` of the device, or None to let the device do it."""
        ...

    async def aclose(self) -> None: ...


class ThreadEncoder:
    """`encode_pages` on one worker thread of this process."""

    def __init__(self, device: MemoryDevice) -> None:
        self._device = device
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tiersim-lz4")

    async def encode(self, datas: Sequence[PageData]) -> list[Encoded | None] | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._device.encode_pages, list(datas))

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class WorkerGone(Exception):
    """The lz4 worker process ended or stopped answering."""


class ProcessEncoder:
    """A cram device's lz4 in a worker process sharing memory with this one.

    Build with `await ProcessEncoder.start(device, max_pages)`. Each batch
    takes one of `slots` areas of a shared memfd: its pages are copied in, the
    worker is told on its stdin, and its reply gives each page's lz4 length;
    the compressed bytes are copied out of the slot's output area. The worker
    answers in request order, so a slot is free again once its output is
    read, or at once when its request is cancelled: the worker is done with
    it before it reads the next request's pages.
    """

    def __init__(
        self,
        device: CramDevice,
        proc: asyncio.subprocess.Process,
        shared: mmap.mmap,
        slots: int,
        stride: int,
    ) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self._device = device
        self._proc = proc
        self._stdin = proc.stdin
        self._stdout = proc.stdout
        self._shared = shared
        self._buf = memoryview(shared)
        self._stride = stride
        self._max_pages = stride // PAGE_SIZE
        self._free: asyncio.Queue[int] = asyncio.Queue()
        for slot in range(slots):
            self._free.put_nowait(slot)
        self._pending: deque[tuple[int, asyncio.Future[list[int]]]] = deque()
        self._gone: str | None = None
        self._log = get_logger("tiersim.nodes.encoder").bind(node=device.config.name)
        self._reader = asyncio.get_running_loop().create_task(self._read_replies())

    @classmethod
    async def start(
        cls, device: CramDevice, max_pages: int, slots: int = DEFAULT_SLOTS
    ) -> ProcessEncoder:
        """Spawn the worker. OSError when no process or shared memory can be had."""
        stride = max_pages * PAGE_SIZE
        size = slots * 2 * stride
        fd = os.memfd_create("tiersim-lz4", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            shared = mmap.mmap(fd, size)
            try:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-P",  # not the script's directory on sys.path: nodes/ is no package root
                    str(_WORKER),
                    str(fd),
                    str(slots),
                    str(stride),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    pass_fds=(fd,),
                    # Signals to the server's process group (Ctrl-C, a supervisor's
                    # SIGTERM) are the server's to handle; end of file on its stdin
                    # ends the worker when the server goes, however it goes.
                    process_group=0,
                )
            except BaseException:
                shared.close()
                raise
        finally:
            os.close(fd)
        return cls(device, proc, shared, slots, stride)

    @property
    def pid(self) -> int:
        return self._proc.pid

    async def _read_replies(self) -> None:
        try:
            while True:
                header = await self._stdout.readexactly(_HEADER.size)
                slot, count = _HEADER.unpack(header)
                sizes = struct.unpack(f"<{count}i", await self._stdout.readexactly(4 * count))
                want, future = self._pending.popleft()
                if want != slot:
                    raise WorkerGone(f"lz4 worker answered slot {slot}, expected {want}")
                if not future.done():
                    future.set_result(list(sizes))
        except (asyncio.IncompleteReadError, ConnectionError, WorkerGone, IndexError) as exc:
            self._fail(f"lz4 worker stopped: {exc!r}")
        except asyncio.CancelledError:
            self._fail("encoder closed", warn=False)
            raise

    def _fail(self, why: str, *, warn: bool = True) -> None:
        if self._gone is None:  # not closed by aclose()
            self._gone = why
            if warn:
                self._log.warning("the device compresses in the model call from now on", reason=why)
        while self._pending:
            _, future = self._pending.popleft()
            if not future.done():
                future.set_exception(WorkerGone(why))

    async def encode(self, datas: Sequence[PageData]) -> list[Encoded | None] | None:
        n = len(datas)
        if self._gone is not None or not 0 < n <= self._max_pages:
            return None
        if not all(map(is_page, datas)):
            return None  # the device's to encode, or to reject
        slot = await self._free.get()
        try:
            if self._gone is not None:
                return None
            buf = self._buf
            base = slot * 2 * self._stride
            for i, d in enumerate(datas):
                off = base + i * PAGE_SIZE
                buf[off : off + PAGE_SIZE] = d
            future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
            self._pending.append((slot, future))
            # A pipe transport drops writes once the worker is gone; the reader then
            # sees end of file and fails this request.
            self._stdin.write(_HEADER.pack(slot, n))
            try:
                sizes = await asyncio.wait_for(future, ANSWER_TIMEOUT_S)
            except WorkerGone:
                return None
            except TimeoutError:
                self._fail(f"lz4 worker did not answer in {ANSWER_TIMEOUT_S:.0f} s")
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                return None
            pos = base + self._stride
            out: list[Encoded | None] = []
            for d, size in zip(datas, sizes, strict=True):
                if 0 < size < PAGE_SIZE:
                    out.append(lay_out_packed(d, size, bytes(buf[pos : pos + size])))
                    pos += size
                else:
                    out.append(lay_out_packed(d, size, b""))
            return out
        finally:
            self._free.put_nowait(slot)

    async def aclose(self) -> None:
        """End the worker (end of file on its stdin) and release the shared memory."""
        proc = self._proc
        self._gone = self._gone or "encoder closed"
        try:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 2.0)
        finally:
            # Also when cancelled: no worker outlives its encoder.
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            self._reader.cancel()
            self._buf.release()
            self._shared.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await proc.wait()


async def start_encoder(
    device: MemoryDevice, max_pages: int, where: str = "auto"
) -> PageEncoder | None:
    """The encoder a server of `device` uses; None when the device does not compress.

    `where` is ServerOptions.compress_in: "process" insists on the lz4 worker
    (ConfigError when it cannot be had), "thread" uses a thread, "auto" the
    worker where the server may use a second core, else a thread.
    """
    if where not in COMPRESS_IN:
        raise ValueError(f"compress_in must be auto, process or thread, not {where!r}")
    if not device.compresses:
        return None
    # The worker compresses as CramDevice does; a subclass may not.
    can = type(device) is CramDevice and hasattr(os, "memfd_create")
    if where == "process" and not can:
        raise ConfigError(
            f"compress_in = process: a {type(device).__name__} has no lz4 worker "
            "(only cram nodes, on Linux)",
            key="compress_in",
        )
    if where == "process" or (where == "auto" and can and len(os.sched_getaffinity(0)) > 1):
        assert isinstance(device, CramDevice)
        try:
            return await ProcessEncoder.start(device, max_pages)
        except OSError as exc:
            if where == "process":
                raise ConfigError(
                    f"compress_in = process: cannot start the lz4 worker: {exc}",
                    key="compress_in",
                ) from None
            get_logger("tiersim.nodes.encoder").warning(
                "no lz4 worker process; compressing on a thread", error=str(exc)
            )
    return ThreadEncoder(device)
