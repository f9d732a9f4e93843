"""Many clients, tasks and processes, storing and freeing at once: accounting stays exact."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import cast

import pytest

from node_helpers import Pages, lz4_payload
from tiersim.nodes import GrpcNodeClient, node_config
from tiersim.nodes.testing import running_server

pytestmark = pytest.mark.asyncio

WORKER = Path(__file__).with_name("node_worker.py")


async def _task(client: GrpcNodeClient, seed: int, pool: list[bytes]) -> dict[int, bytes]:
    rng = random.Random(seed)
    held: dict[int, bytes] = {}
    for _ in range(12):
        content = [rng.choice(pool) for _ in range(rng.randint(1, 400))]
        r = await client.store([(0, p) for p in content], check=rng.random() < 0.5)
        assert r.ok
        held.update(zip(r.handles, content, strict=True))
        if rng.random() < 0.3:
            # An exclusive load, as zswap does on swap-in.
            some = rng.sample(sorted(held), k=len(held) // 4)
            if some:
                back = await client.load(some, free_after=True)
                assert back.data == [held.pop(h) for h in some]
        victims = rng.sample(sorted(held), k=len(held) // 3)
        if victims:
            await client.free(victims)
            for h in victims:
                del held[h]
        await asyncio.sleep(0)
    return held


async def test_concurrent_clients_leave_exact_accounting(pages: Pages) -> None:
    pool = pages.mixed(64)
    cfg = node_config("cram", "256MiB", "64MiB")
    async with running_server(cfg) as server:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                str(WORKER),
                server.address,
                str(seed),
                "8",
                stdout=asyncio.subprocess.PIPE,
            )
            for seed in (101, 102)
        ]
        clients = [await GrpcNodeClient.connect(server.address) for _ in range(3)]
        # Two tasks share one client (one channel, interleaved batches on its streams).
        tasks = [_task(clients[i % 3], seed, pool) for i, seed in enumerate(range(1, 6))]
        results = await asyncio.gather(*tasks, *(p.communicate() for p in procs))
        held: dict[int, tuple[int, str]] = {}
        for r in results[:5]:
            assert isinstance(r, dict)
            for h, page in r.items():
                assert h not in held, "two clients were given the same handle"
                held[h] = (lz4_payload(page), hashlib.sha256(page).hexdigest())
        for proc, (out, _) in zip(procs, results[5:], strict=True):
            assert proc.returncode == 0
            for h, (size, digest) in json.loads(cast(bytes, out)).items():
                assert int(h) not in held
                held[int(h)] = (size, digest)

        stats = await clients[0].stats()
        assert stats.allocated_pages == stats.stored_pages == len(held)
        assert stats.stored_bytes == sum(size for size, _ in held.values())
        assert stats.physical_used_bytes == stats.stored_bytes + 64 * len(held)
        assert stats.write_failures == 0 and stats.rejected_requests == 0
        handles = sorted(held)
        back = await clients[1].load(handles)
        assert [hashlib.sha256(d).hexdigest() for d in back.data] == [held[h][1] for h in handles]
        assert sorted(server.device.handles()) == handles
        for c in clients:
            await c.close()
