"""Throughput of a compressed memory node over loopback gRPC.

Not a test: it prints figures. A cram node runs in another process
(`python -m tiersim node`); pages of mixed, realistic contents (text-like,
heap-like, zero, random) are stored through GrpcNodeClient in batches, then
loaded back and compared byte for byte. Two baselines run on the same pages
in the same run:

  bare stream  the same StoreBatch messages on a bare gRPC bidi stream to a
               server in another process that parses and discards them
  lz4          lz4.block.compress over the same pages, in this process

The node is driven as the bare stream is: by default one client call holds
every page, so its batches flow on one stream without a pause between calls
(--call-pages splits the run into calls). The node runs twice: with lz4 in its
worker process (the default) and on a thread of the server (--compress-in
thread), for comparison. Each figure is the best of --repeat runs, so that
other work on the machine disturbs it less; the CPU time each process spent
per page is printed too, the node's including its lz4 worker process.

    python benchmarks/bench_node.py [--pages 65536] [--batch 256] [--in-flight 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import lz4.block

from tiersim.nodes import GrpcNodeClient
from tiersim.nodes._convert import encode_store_batch
from tiersim.nodes._server import grpc_options
from tiersim.nodes.testing import mixed_pages
from tiersim.v1 import node_pb2 as pb

STORE_METHOD = "/tiersim.v1.MemoryNode/StoreStream"


# ---------------------------------------------------------------- discard server


async def _discard_server(address_file: str, max_batch: int) -> None:
    async def store_stream(requests: Any, context: grpc.aio.ServicerContext[bytes, bytes]) -> None:
        async for raw in requests:
            batch = pb.StoreBatch.FromString(raw)
            await context.write(pb.StoreBatchResult(batch_id=batch.batch_id).SerializeToString())

    handler = grpc.method_handlers_generic_handler(
        "tiersim.v1.MemoryNode",
        {"StoreStream": grpc.stream_stream_rpc_method_handler(store_stream)},
    )
    server = grpc.aio.server(handlers=[handler], options=grpc_options(max_batch))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    tmp = address_file + ".tmp"
    Path(tmp).write_text(f"127.0.0.1:{port}\n")
    os.replace(tmp, address_file)
    await server.wait_for_termination()


# ---------------------------------------------------------------- helpers


class Process:
    """A server in another process, announced through an address file."""

    def __init__(self, cmd: list[str], address_file: Path, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not address_file.exists():
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}: {' '.join(cmd)}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise SystemExit(f"server did not start: {' '.join(cmd)}")
            time.sleep(0.05)
        self.address = address_file.read_text().strip()

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and its children (a node's lz4 worker),
        all threads (Linux /proc)."""
        return sum(_proc_cpu(pid) for pid in [self.proc.pid, *_children(self.proc.pid)])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # gone between listing and reading
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Measure:
    """Wall time and CPU time (this process and a server) of one timed section."""

    def __init__(self, server: Process | None = None) -> None:
        self.server = server

    def __enter__(self) -> Measure:
        self.wall = time.perf_counter()
        self.cpu = _own_cpu()
        self.server_cpu = self.server.cpu_seconds() if self.server else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = _own_cpu() - self.cpu
        if self.server:
            self.server_cpu = self.server.cpu_seconds() - self.server_cpu


def _best(runs: list[Measure]) -> Measure:
    return min(runs, key=lambda m: m.wall)


async def _bare_stream(address: str, pages: Sequence[bytes], batch: int, in_flight: int) -> None:
    """Push `pages` as StoreBatch messages through a discarding server."""
    async with grpc.aio.insecure_channel(address, options=grpc_options(batch)) as channel:
        await channel.channel_ready()
        call: grpc.aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(
            STORE_METHOD, request_serializer=None, response_deserializer=None
        )()
        slots = asyncio.Semaphore(in_flight)
        n_batches = (len(pages) + batch - 1) // batch

        async def reader() -> None:
            for _ in range(n_batches):
                reply: Any = await call.read()
                pb.StoreBatchResult.FromString(reply)
                slots.release()

        task = asyncio.create_task(reader())
        for i, off in enumerate(range(0, len(pages), batch)):
            await slots.acquire()
            part = [(0, p) for p in pages[off : off + batch]]
            await call.write(encode_store_batch(part, check=False, issue_time_ns=0, batch_id=i + 1))
        await task
        await call.done_writing()


async def _node(
    node: Process,
    pages: Sequence[bytes],
    call_pages: int,
    in_flight: int,
    repeat: int,
    show: bool = True,
) -> tuple[Measure, Measure, int]:
    stores: list[Measure] = []
    loads: list[Measure] = []
    mismatches = 0
    async with await GrpcNodeClient.connect(node.address, max_in_flight=in_flight) as client:
        for _ in range(repeat):
            await client.reset()
            handles: list[int] = []
            with Measure(node) as m:
                for off in range(0, len(pages), call_pages):
                    r = await client.store([(0, p) for p in pages[off : off + call_pages]])
                    if not r.ok:
                        raise SystemExit(f"store failed: {set(r.codes)} {r.messages[0]}")
                    handles += r.handles
            stores.append(m)
            datas: list[bytes] = []
            with Measure(node) as m:
                for off in range(0, len(handles), call_pages):
                    datas += (await client.load(handles[off : off + call_pages])).data
            loads.append(m)
            mismatches += sum(a != b for a, b in zip(datas, pages, strict=True))
        stats = await client.stats()
        if show:
            print(
                f"  node holds {stats.stored_pages} pages: "
                f"{stats.logical_bytes / 2**20:.0f} MiB logical "
                f"in {stats.physical_used_bytes / 2**20:.1f} MiB of media "
                f"(ratio {stats.logical_bytes / max(1, stats.physical_used_bytes):.2f})"
            )
    return _best(stores), _best(loads), mismatches


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pages", type=int, default=65536, help="pages per run (default 65536)")
    ap.add_argument("--unique", type=int, default=8192, help="distinct page contents (8192)")
    ap.add_argument("--batch", type=int, default=256, help="pages per batch message (256)")
    ap.add_argument("--in-flight", type=int, default=8, help="batches in flight (8)")
    ap.add_argument(
        "--call-pages",
        type=int,
        default=0,
        help="pages per client call (default: all pages in one call, one stream of "
        "batches as the bare stream sends them)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts (3)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--discard-server", metavar="ADDRESS_FILE", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.discard_server:
        asyncio.run(_discard_server(args.discard_server, args.batch))
        return 0

    unique = mixed_pages(args.unique, args.seed)
    pages = [unique[i % len(unique)] for i in range(args.pages)]
    n = len(pages)
    print(
        f"{n} pages ({n * 4096 / 2**20:.0f} MiB), {len(unique)} distinct, mix "
        f"text/heap/zero/random 35/35/15/15; batch {args.batch}, {args.in_flight} in flight, "
        f"best of {args.repeat}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}"
    )

    # (b) lz4 alone, in this process.
    compress = lz4.block.compress
    runs = []
    for _ in range(args.repeat):
        with Measure() as m:
            for p in pages:
                compress(p, store_size=False)
        runs.append(m)
    lz4_run = _best(runs)

    with tempfile.TemporaryDirectory() as tmp:
        # (a) the bare stream, to a discarding server in another process.
        addr_file = Path(tmp) / "discard.addr"
        discard = Process(
            [
                sys.executable,
                __file__,
                "--batch",
                str(args.batch),
                "--discard-server",
                str(addr_file),
            ],
            addr_file,
        )
        try:
            runs = []
            for _ in range(args.repeat):
                with Measure(discard) as m:
                    asyncio.run(_bare_stream(discard.address, pages, args.batch, args.in_flight))
                runs.append(m)
            bare = _best(runs)
        finally:
            discard.stop()

        # The node, in another process: lz4 in its worker process (the default on
        # more than one core), then on a thread of the server, for comparison.
        results = {}
        for where in ("process", "thread"):
            addr_file = Path(tmp) / f"node-{where}.addr"
            node = Process(
                [
                    sys.executable, "-m", "tiersim", "--log-level", "warning", "node",
                    "--kind", "cram", "--advertised", "8GiB", "--physical", "2GiB",
                    "--max-batch-pages", str(args.batch), "--address-file", str(addr_file),
                    "--compress-in", where,
                ],
                addr_file,
            )  # fmt: skip
            try:
                call_pages = args.call_pages or len(pages)
                results[where] = asyncio.run(
                    _node(node, pages, call_pages, args.in_flight, args.repeat, where == "process")
                )
            finally:
                node.stop()
        store, load, bad = results["process"]
        thread_store, _, thread_bad = results["thread"]
        bad += thread_bad

    rows = [
        ("node store", store, "client", "node"),
        ("  lz4 thread", thread_store, "client", "node"),
        ("node load", load, "client", "node"),
        ("bare stream", bare, "client", "server"),
        ("lz4 compress", lz4_run, "", ""),
    ]
    rate = {}
    for name, m, mine, theirs in rows:
        rate[name] = n / m.wall
        cpu = (
            f"CPU/page: {mine} {m.cpu / n * 1e6:5.1f} us"
            if mine
            else f"CPU/page: {m.cpu / n * 1e6:.1f} us"
        )
        if theirs:
            cpu += f", {theirs} {m.server_cpu / n * 1e6:5.1f} us"
        print(
            f"  {name:<13} {rate[name]:>9,.0f} pages/s {rate[name] * 4096 / 2**20:>6,.0f} MiB/s"
            f"   {cpu}"
        )
    # What no store path on this machine can beat: every page costs at least the bare
    # stream's CPU (both ends) and lz4's, and the cores can at best all be busy.
    cores = os.cpu_count() or 1
    floor_us = (bare.cpu + bare.server_cpu + lz4_run.cpu) / n * 1e6
    ceiling = cores / floor_us * 1e6
    print(
        f"  ceiling: bare stream + lz4 CPU = {floor_us:.1f} us/page on {cores} cores "
        f"= {ceiling:,.0f} pages/s, {ceiling / rate['bare stream']:.0%} of the bare stream"
    )
    print(f"  node store / bare stream = {rate['node store'] / rate['bare stream']:.0%}")
    print(f"  lz4 worker process / lz4 thread = {rate['node store'] / rate['  lz4 thread']:.2f}")
    print(f"  node store / ceiling     = {rate['node store'] / ceiling:.0%}")
    print(f"  node store / lz4         = {rate['node store'] / rate['lz4 compress']:.0%}")
    print(f"  node load  / bare stream = {rate['node load'] / rate['bare stream']:.0%}")
    if bad:
        print(f"  ERROR: {bad} pages read back differ from what was stored")
        return 1
    print("  all pages read back byte-exact")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
