"""The lz4 worker of a compressing node server: compression in a process of its own.

A compressing node spends most of a stored page's CPU time in lz4. On a thread
of the server's process that time overlaps with the event loop only between
pages: each lz4 call gives the GIL up and must win it back from a busy event
loop before the next page, and a measured worker thread spent as long waiting
as compressing. A process of its own compresses with no GIL to share.

This file runs as a script (`python -P _lz4_worker.py FD SLOTS STRIDE`), not
through the tiersim package, so that the worker imports lz4 and the standard
library only. The server (tiersim.nodes._encoder) drives it:

- FD is a memfd of SLOTS x 2 x STRIDE bytes shared with the server. Slot s has
  its input pages at s*2*STRIDE and its output area at s*2*STRIDE + STRIDE.
- A request on stdin is 8 bytes, little-endian u32 slot and u32 page count;
  the pages lie back to back in the slot's input area.
- The reply on stdout repeats the request's 8 bytes, then one little-endian
  i32 per page: 0 for a page of zeros, else the length of lz4's output. Output
  shorter than a page lies back to back in the slot's output area, in page
  order; a page lz4 cannot shrink is kept raw by the device and not copied.
- End of file on stdin ends the worker. It runs in a process group of its
  own and ignores SIGINT besides: the server decides when it ends.

Requests are answered one at a time, in order.
"""

from __future__ import annotations

import signal

# Ctrl-C reaches the whole process group; the server decides when this ends.
# Set before anything slow is imported.
signal.signal(signal.SIGINT, signal.SIG_IGN)

import contextlib  # noqa: E402
import mmap  # noqa: E402
import os  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402

import lz4.block  # noqa: E402

PAGE_SIZE = 4096
HEADER = struct.Struct("<II")


def _read_exactly(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            return b""
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def serve(fd: int, slots: int, stride: int) -> None:
    shared = mmap.mmap(fd, slots * 2 * stride)
    buf = memoryview(shared)
    compress = lz4.block.compress
    packed_zero = compress(bytes(PAGE_SIZE), store_size=False)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    while True:
        header = _read_exactly(stdin, HEADER.size)
        if not header:
            return
        slot, count = HEADER.unpack(header)
        if slot >= slots or count * PAGE_SIZE > stride:
            raise SystemExit(f"lz4 worker: bad request slot={slot} pages={count}")
        base = slot * 2 * stride
        out = base + stride
        sizes = [0] * count
        for i in range(count):
            start = base + i * PAGE_SIZE
            packed = compress(buf[start : start + PAGE_SIZE], store_size=False)
            n = len(packed)
            if n < PAGE_SIZE:
                # A page of zeros is the only page whose lz4 output is packed_zero.
                if packed == packed_zero:
                    continue
                buf[out : out + n] = packed
                out += n
            sizes[i] = n
        _write_all(stdout, header + struct.pack(f"<{count}i", *sizes))


if __name__ == "__main__":
    # The server may go away while an answer is on its way: nothing to tell then.
    with contextlib.suppress(BrokenPipeError):
        serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
