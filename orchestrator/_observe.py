"""What a run records beyond its final counters, for plots: time-series extras and
the compressed-size histogram of stored pages.

Kept out of engine.py so that the engine only calls two functions: one per
time-series sample (`sample_extra`), one when the results document is built
(`results_extra`). Fields are documented in docs/results-schema.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._pages import PS_CRAM_RO, PS_ZSWAP, PS_ZSWAP_DIRECT

if TYPE_CHECKING:
    from ._mm import Mm

PAGE_SIZE = 4096
ZSIZE_BUCKET_BYTES = 64
ZSIZE_BUCKETS = PAGE_SIZE // ZSIZE_BUCKET_BYTES

# Counters sampled over time: enough to plot fault, reclaim and migration rates.
SAMPLED_VMSTAT = (
    "pgfault",
    "pgmajfault",
    "pgalloc",
    "pgsteal_kswapd",
    "pgsteal_direct",
    "pgdemote_kswapd",
    "pgdemote_direct",
    "pgpromote_success",
    "pgmigrate_success",
    "numa_hint_faults",
    "zswpout",
    "zswpin",
    "zswpwb",
    "pswpout",
    "pswpin",
    "cram_demote",
    "cram_write_fault",
    "cram_reclaim",
    "oom_kill",
)


def sample_extra(mm: Mm) -> dict[str, Any]:
    """Per-sample additions: accesses so far, node free pages, zswap pool per host."""
    hosts = {}
    for h in mm.hosts:
        z = h.zswap
        hosts[h.name] = {
            "zswap_pool_bytes": z.pool_pages * PAGE_SIZE if z is not None else 0,
            "zswap_stored_pages": z.stats.stored_pages if z is not None else 0,
        }
    return {
        "accesses": sum(p.accesses for p in mm.procs),
        "hosts": hosts,
        "free_pages": {n.name: n.free_pages for n in mm.nodes},
    }


def results_extra(mm: Mm, doc: dict[str, Any]) -> None:
    """Add the device watermarks of each node and the stored-size histogram to ``doc``."""
    for n in mm.nodes:
        wm = n.info.watermarks
        entry = doc["nodes"].get(n.name)
        if entry is not None:
            entry["device_watermarks"] = {
                "low_free_bytes": int(wm.low_free_bytes),
                "high_free_bytes": int(wm.high_free_bytes),
            }
            entry["physical_bytes"] = int(n.info.physical_bytes)
    doc.setdefault("compression", {})["stored_pages_by_size"] = stored_size_histogram(mm)


def stored_size_histogram(mm: Mm) -> dict[str, Any]:
    """Pages held compressed at the end of the run, by compressed size, per location.

    Locations: ``zswap@HOST`` (the pool in DRAM), ``NODE (tier)`` (read-only
    pages on a compressed node) and ``NODE (zswap direct)``. Bucket i counts
    sizes in (64 i, 64 (i + 1)] bytes; pages stored as-is (incompressible)
    count in the last. Sizes are those the device or zswap reported when the
    page was stored, from lz4 on the page's bytes.
    """
    pages = mm.pages
    state = pages.state_np
    stored = np.flatnonzero(
        (state == PS_ZSWAP) | (state == PS_CRAM_RO) | (state == PS_ZSWAP_DIRECT)
    )
    sizes = pages.zsize_np[stored].astype(np.int64)
    known = sizes > 0
    stored, sizes = stored[known], np.minimum(sizes[known], PAGE_SIZE)
    buckets = np.clip((sizes - 1) // ZSIZE_BUCKET_BYTES, 0, ZSIZE_BUCKETS - 1)
    st = state[stored]
    locations: dict[str, list[int]] = {}

    def add(label: str, sel: np.ndarray) -> None:
        if sel.any():
            counts = np.bincount(buckets[sel], minlength=ZSIZE_BUCKETS)
            prev = locations.get(label)
            total = counts if prev is None else counts + np.asarray(prev)
            locations[label] = [int(c) for c in total]

    if len(mm.memcgs):
        host_of_memcg = np.array([m.host for m in mm.memcgs], dtype=np.int64)
        hosts = host_of_memcg[pages.memcg_np[stored].astype(np.int64)]
        for h in mm.hosts:
            add(f"zswap@{h.name}", (st == PS_ZSWAP) & (hosts == h.index))
    node = pages.node_np[stored]
    for n in mm.nodes:
        add(f"{n.name} (tier)", (st == PS_CRAM_RO) & (node == n.id))
        add(f"{n.name} (zswap direct)", (st == PS_ZSWAP_DIRECT) & (node == n.id))
    return {"bucket_bytes": ZSIZE_BUCKET_BYTES, "locations": locations}
