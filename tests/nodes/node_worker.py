"""A client process for the concurrency test: stores, frees, zeroes and checks pages.

    python node_worker.py ADDRESS SEED ROUNDS

Prints one JSON object: the handles it still holds, with the payload each
must occupy on a cram node and a digest of its contents.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys

import lz4.block

from tiersim.nodes import GrpcNodeClient
from tiersim.nodes.testing import mixed_pages

PAGE = 4096
ZERO = bytes(PAGE)


def payload(page: bytes) -> int:
    if page == ZERO:
        return 0
    n = len(lz4.block.compress(page, store_size=False))
    return PAGE if n >= PAGE else n


async def main(address: str, seed: int, rounds: int) -> None:
    rng = random.Random(seed)
    pool = mixed_pages(64, seed)
    held: dict[int, bytes] = {}
    async with await GrpcNodeClient.connect(address, timeout=10) as client:
        for _ in range(rounds):
            content = [rng.choice(pool) for _ in range(rng.randint(1, 300))]
            r = await client.store([(0, p) for p in content])
            assert r.ok, set(r.codes)
            held.update(zip(r.handles, content, strict=True))
            victims = rng.sample(sorted(held), k=len(held) // 3)
            if victims:
                await client.free(victims)
                for h in victims:
                    del held[h]
            zeroed = rng.sample(sorted(held), k=min(5, len(held)))
            if zeroed:
                await client.zero(zeroed)
                held.update(dict.fromkeys(zeroed, ZERO))
            check = rng.sample(sorted(held), k=min(50, len(held)))
            back = await client.load(check)
            assert back.data == [held[h] for h in check]
    print(
        json.dumps({str(h): [payload(p), hashlib.sha256(p).hexdigest()] for h, p in held.items()})
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
