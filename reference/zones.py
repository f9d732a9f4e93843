"""The guest's zones at the workload's start, from /proc/zoneinfo and /proc/pagetypeinfo.

tiersim gives each NUMA node the memory the guest had free when the workload
started; with the zones it also gives it the kernel's layout of that memory:
which zone each free page is in (node 0 of a small x86-64 guest is a 16 MiB
DMA zone beside DMA32), each zone's managed pages (the base of its
watermarks and lowmem reserves), and the free pages that sit in pageblocks
of another migratetype than movable. A movable allocation reaches those only
through a fallback, and a fallback boosts the zone's watermarks and wakes
kswapd (mm/page_alloc.c): the mechanism behind kswapd's demotions in the
`demotion` workload.

/proc/pagetypeinfo counts free buddy blocks per (zone, migratetype, order)
and pageblocks per migratetype, not free pages per pageblock. Blocks of
order >= pageblock_order are whole free pageblocks; the smaller free blocks
of a migratetype are shared out over that migratetype's other pageblocks,
largest first, each pageblock taking blocks until it would exceed
pageblock_nr_pages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from tiersim.orchestrator.mmzone import ZONE_NAMES

# Migratetypes whose free pages a movable allocation reaches by fallback
# (fallbacks[MIGRATE_MOVABLE]), in the kernel's order.
FALLBACK_TYPES = ("Reclaimable", "Unmovable")

_ZONE_HEAD = re.compile(r"^Node\s+(\d+), zone\s+(\S+)$")
# Counts above 100000 are printed as ">100000" (pagetypeinfo_showfree_print()).
_FREE_ROW = re.compile(r"^Node\s+(\d+), zone\s+(\S+), type\s+(\S+)\s+([\d\s>]+)$")
_BLOCKS_ROW = re.compile(r"^Node\s+(\d+), zone\s+(\S+)\s+([\d\s]+)$")


def _counts(text: str) -> list[int]:
    return [int(v.lstrip(">")) for v in text.split()]


def parse_zoneinfo(lines: Sequence[str]) -> list[dict[str, Any]]:
    """Populated zones: node, zone, free, managed, min/low/high/promo, protection."""
    zones: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    for raw in lines:
        line = raw.strip()
        m = _ZONE_HEAD.match(line)
        if m:
            cur = {"node": int(m.group(1)), "zone": m.group(2)}
            zones.append(cur)
            continue
        if cur is None:
            continue
        parts = line.split()
        if line.startswith("pages free") and len(parts) == 3:
            cur["free"] = int(parts[2])
        elif len(parts) == 2 and parts[0] in ("min", "low", "high", "promo", "managed", "boost"):
            cur[parts[0]] = int(parts[1])
        elif line.startswith("protection:"):
            cur["protection"] = [int(v) for v in re.findall(r"\d+", line.partition(":")[2])]
    return [z for z in zones if z.get("managed") and z["zone"] in ZONE_NAMES]


def parse_pagetypeinfo(lines: Sequence[str]) -> dict[tuple[int, str], dict[str, Any]]:
    """Per (node, zone): free blocks per migratetype and order, pageblocks per migratetype."""
    out: dict[tuple[int, str], dict[str, Any]] = {}
    order = 9
    block_types: list[str] = []
    for raw in lines:
        line = raw.strip()
        if line.startswith("Page block order:"):
            order = int(line.split(":")[1])
        elif line.startswith("Number of blocks type"):
            block_types = line.split()[4:]
            continue
        elif line.startswith("Number of"):
            # "Number of mixed blocks" (page_owner kernels): not pageblocks per type.
            block_types = []
            continue
        m = _FREE_ROW.match(line)
        if m:
            entry = out.setdefault((int(m.group(1)), m.group(2)), {"free": {}, "blocks": {}})
            entry["free"][m.group(3)] = _counts(m.group(4))
            entry["pageblock_order"] = order
            continue
        m = _BLOCKS_ROW.match(line)
        if m and block_types:
            entry = out.setdefault((int(m.group(1)), m.group(2)), {"free": {}, "blocks": {}})
            counts = [int(v) for v in m.group(3).split()]
            entry["blocks"] = dict(zip(block_types, counts, strict=False))
    return out


def fallback_blocks(free_by_order: Sequence[int], nblocks: int, pageblock_order: int) -> list[int]:
    """Free pages per pageblock of one migratetype (largest first), see the module doc."""
    block = 1 << pageblock_order
    whole = sum(n * (1 << o) // block for o, n in enumerate(free_by_order) if o >= pageblock_order)
    out = [block] * whole
    rest = max(0, nblocks - whole)
    if not rest:
        return out
    bins = [0] * rest
    for o in range(min(pageblock_order, len(free_by_order)) - 1, -1, -1):
        for _ in range(free_by_order[o]):
            i = next((k for k in range(rest) if bins[k] + (1 << o) <= block), None)
            if i is None:
                break
            bins[i] += 1 << o
    return out + sorted((b for b in bins if b), reverse=True)


def guest_zones(zoneinfo: Sequence[str], pagetypeinfo: Sequence[str]) -> list[dict[str, Any]]:
    """One boot's zones, as the recording stores them (see the module doc)."""
    types = parse_pagetypeinfo(pagetypeinfo)
    out = []
    for z in parse_zoneinfo(zoneinfo):
        entry: dict[str, Any] = {
            k: z[k]
            for k in ("node", "zone", "free", "managed", "min", "low", "high", "protection")
            if k in z
        }
        t = types.get((z["node"], z["zone"]))
        if t:
            entry["fallback_blocks"] = {
                mt: blocks
                for mt in FALLBACK_TYPES
                if (
                    blocks := fallback_blocks(
                        t["free"].get(mt, []), t["blocks"].get(mt, 0), t.get("pageblock_order", 9)
                    )
                )
            }
        out.append(entry)
    return out


def zones_of_run(data: Mapping[str, Any] | None, run: int | None = None) -> list[dict[str, Any]]:
    """The recorded zones of one run (by default the run with the least memory free)."""
    runs = (data or {}).get("guest", {}).get("zones") or []
    runs = [r for r in runs if r]
    if not runs:
        return []
    if run is not None:
        return list(runs[run])
    return list(min(runs, key=lambda zs: sum(int(z.get("free", 0)) for z in zs)))
