"""Moving pages between nodes (mm/migrate.c), demotion and promotion.

Every move goes through the NodeClient seam: the bytes travel to the target
device, which answers with the cost it modelled; the source copy is freed.
Moves to a compressed node follow the private-node protocol: ask whether the
page is safe (check-and-allocate), refuse when the node reports pressure
1000, map the page read-only on arrival (mm/cram.c).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

import grpc

from tiersim._errors import NodeError
from tiersim.nodes._types import DATA_LOSS, OK, RESOURCE_EXHAUSTED, NodeKind

from ._pages import F_ACTIVE, F_PROTNONE, PS_CRAM_RO, PS_MAPPED, PS_POISONED
from .cram import cram_admit
from .page_alloc import alloc_migration_frames, free_frame, take_frames

if TYPE_CHECKING:
    from ._mm import Host, Mm

T = TypeVar("T")

# Errors that mean the node is gone or unusable, not that one request was bad.
NODE_LOST_CODES = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
)


async def node_call(mm: Mm, nid: int, call: Awaitable[T]) -> T | None:
    """Await a node request; a lost node is recorded and answers None."""
    try:
        return await call
    except NodeError as exc:
        if exc.code in NODE_LOST_CODES:
            mm.node_lost(nid, f"{exc.code.name}: {exc.message}")
            return None
        raise


def demotion_order(mm: Mm, nid: int, host: Host, first: int) -> list[int]:
    """Targets to try: `first`, then the rest of the allowed mask by distance.

    alloc_demote_folio() allocates on the chosen target and falls back to the
    rest of the lower tiers.
    """
    targets = host.tiers.targets[nid]
    rest = [n for n in targets.allowed if n != first]
    rest.sort(key=lambda n: (mm.node_distance(host, n), n))
    return [n for n in [first, *rest] if not mm.nodes[n].lost]


async def demote_folio_list(
    mm: Mm, candidates: list[int], nid: int, host: Host
) -> tuple[list[int], list[int], int]:
    """demote_folio_list(): (demoted, failed, ns) for pages reclaimed from `nid`.

    The kernel picks one target per list, at random among the preferred
    nodes (next_demotion_node()); the policy may choose per page, or keep a
    page from demotion (it then takes the swap path).
    """
    targets = host.tiers.targets.get(nid)
    if not targets:
        return [], list(candidates), 0
    first = mm.rng.choice(targets.preferred)
    allowed = set(targets.allowed)
    plan = await mm.policy.demotion(mm, host, nid, candidates, [first] * len(candidates))
    groups: dict[int, list[int]] = {}
    failed: list[int] = []
    for page, target in zip(candidates, plan, strict=True):
        if target is None or target not in allowed:
            failed.append(page)
        else:
            groups.setdefault(target, []).append(page)
    demoted: list[int] = []
    cost = 0
    for target, group in groups.items():
        remaining = group
        for node in demotion_order(mm, nid, host, target):
            if not remaining:
                break
            moved, remaining, c = await move_pages(mm, remaining, nid, node, host, reason="demote")
            demoted.extend(moved)
            cost += c
        if remaining:
            # migrate_pages() gives up on the list at the first folio it
            # cannot allocate for (-ENOMEM): that one counts as failed, the
            # rest go back untried.
            host.vmstat.inc("pgmigrate_fail")
        failed.extend(remaining)
    if failed:
        host.vmstat.inc("pgdemote_fail", len(failed))
    return demoted, failed, cost


async def move_pages(
    mm: Mm, pages_in: list[int], src: int, dst: int, host: Host, *, reason: str
) -> tuple[list[int], list[int], int]:
    """Migrate resident pages from `src` to byte-addressable node `dst`.

    Returns (moved, not moved, ns). Pages the device poisons are lost data:
    they are counted as memory failures and moved to the poisoned state.
    """
    pages = mm.pages
    node = mm.nodes[dst]
    cram = node.kind == NodeKind.CRAM
    check = cram and mm.tunables.cram.safety_check
    rest: list[int] = []
    if cram:
        pages_in, rest = await cram_admit(mm, host, pages_in, dst)
        if not pages_in:
            return [], rest, 0
    # Frames first (see alloc_migration_frames()).
    dst_zones = alloc_migration_frames(mm, dst, pages_in)
    taken = len(dst_zones)
    batch = pages_in[:taken]
    rest.extend(pages_in[taken:])
    if not batch:
        return [], rest, 0
    writes = [(0, mm.page_bytes(page)) for page in batch]
    result = await node_call(
        mm, dst, node.client.store(writes, check=check, now_ns=mm.sched.now_ns)
    )
    if result is None:
        for page, z in zip(batch, dst_zones, strict=True):
            free_frame(mm, dst, page, z)
        return [], [*batch, *rest], 0
    mm.note_state(dst, result.state)
    moved: list[int] = []
    src_handles: list[int] = []
    cost = result.cost_ns + len(batch) * mm.costs.migrate_page_ns
    lru, handle, node_of, zsize, flags, state = (
        mm.lru,
        pages.handle,
        pages.node,
        pages.zsize,
        pages.flags,
        pages.state,
    )
    dst_state = PS_CRAM_RO if cram else PS_MAPPED
    clear = ~(F_ACTIVE | F_PROTNONE) & 0xFF
    inactive: dict[int, int] = {}  # memcg -> its inactive list on dst
    ok = poisoned = refused = unplaced = 0
    src_simple = mm.nodes[src].simple
    zone_of = pages.zone
    for page, code, new_handle, stored, z in zip(
        batch, result.codes, result.handles, result.stored_bytes, dst_zones, strict=True
    ):
        if code in (OK, DATA_LOSS):
            if handle[page]:
                src_handles.append(handle[page])
            lru.del_page(page)
            if not src_simple:
                free_frame(mm, src, page)
            zone_of[page] = z
            node_of[page] = dst
            handle[page] = new_handle
            zsize[page] = min(stored, 0xFFFF)
            flags[page] &= clear
            moved.append(page)
            if code == OK:
                state[page] = dst_state
                memcg = pages.memcg[page]
                lst = inactive.get(memcg)
                if lst is None:
                    lst = inactive[memcg] = mm.lru_lists(dst, memcg)[0]
                lru.add_head(lst, page)
                ok += 1
            else:
                # The device dropped the write: the data is gone (memory failure).
                state[page] = PS_POISONED
                poisoned += 1
        else:
            unplaced += 1
            refused += code == RESOURCE_EXHAUSTED and cram
            free_frame(mm, dst, page, z)
            rest.append(page)
    # The frames of simple sources are freed at once.
    if src_simple:
        take_frames(mm, src, -(ok + poisoned))
    vmstat = host.vmstat
    if ok:
        vmstat.inc("pgmigrate_success", ok)
        if cram:
            vmstat.inc("cram_demote", ok)
    if poisoned:
        vmstat.inc("memory_failure", poisoned)
    if refused:
        vmstat.inc("cram_demote_refused", refused)
    if src_handles:
        # The source held a device copy (a page demoted before): release it.
        snode = mm.nodes[src]
        r = await node_call(mm, src, snode.client.free(src_handles, now_ns=mm.sched.now_ns))
        if r is not None:
            mm.note_state(src, r.state)
            cost += r.cost_ns
    return moved, rest, cost


async def promote_page(mm: Mm, page: int, dst: int, host: Host, dst_zone: int) -> tuple[bool, int]:
    """Migrate one page from a lower-tier node to top-tier node `dst` (frame
    taken by the caller in zone `dst_zone`).

    The page's bytes are read back from the device (and must be the bytes
    the engine placed there); the device copy is freed.
    """
    pages = mm.pages
    src = pages.node[page]
    node = mm.nodes[src]
    if pages.handle[page] == 0:
        # A frame the page allocator handed out on a slower node: no device
        # copy to fetch; the CPU copies it at that node's speed.
        memcg = pages.memcg[page]
        mm.lru.del_page(page)
        free_frame(mm, src, page)
        pages.zone[page] = dst_zone
        pages.node[page] = dst
        pages.state[page] = PS_MAPPED
        pages.flags[page] &= ~F_PROTNONE & 0xFF
        mm.lru.add_head(mm.lru_lists(dst, memcg)[0], page)
        host.vmstat.inc("pgmigrate_success")
        return True, int(mm.latency_table[src, 0]) * 64 + mm.costs.migrate_page_ns
    result = await node_call(
        mm,
        src,
        node.client.load([pages.handle[page]], free_after=True, now_ns=mm.sched.now_ns),
    )
    if result is None:
        return False, 0
    mm.note_state(src, result.state)
    if result.codes[0] != OK:
        # Poisoned where it is: it keeps its frame until the task touches it
        # (SIGBUS) or exits, which free it (memory.forget_page, exit_mmap).
        pages.state[page] = PS_POISONED
        host.vmstat.inc("memory_failure")
        return False, result.cost_ns
    if pages.state[page] == PS_CRAM_RO:
        mm.verify(page, result.data[0])
    memcg = pages.memcg[page]
    mm.lru.del_page(page)
    free_frame(mm, src, page)
    pages.zone[page] = dst_zone
    pages.node[page] = dst
    pages.handle[page] = 0
    pages.state[page] = PS_MAPPED
    pages.flags[page] &= ~F_PROTNONE & 0xFF
    mm.lru.add_head(mm.lru_lists(dst, memcg)[0], page)
    host.vmstat.inc("pgmigrate_success")
    return True, result.cost_ns + mm.costs.migrate_page_ns
