"""Compressed memory as a byte-addressable tier (mm/cram.c, Price's RFC v4).

A compressed CXL node is a private memory node: the kernel never hands its
memory out freely, only migrates pages to it after asking the driver. Pages
arrive write-protected (mapped read-only); reads are served by the device
at its latency without a fault; a write faults and migrates the page to the
faulting CPU's node, freeing the compressed copy. The device's watermark
interrupts set its pressure: at 1000 (low watermark) migration to it is
refused with -ENOSPC and kswapd is woken on the node, which reclaims its
cold pages to swap — they are never demoted further.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tiersim.nodes._types import NodeKind

from .page_alloc import alloc_page, free_frame

if TYPE_CHECKING:
    from ._mm import Host, Mm, Process

# Pressure at which the device's low-watermark interrupt blocks migration.
CRAM_PRESSURE_BLOCK = 1000


async def cram_admit(mm: Mm, host: Host, pages: list[int], nid: int) -> tuple[list[int], list[int]]:
    """Which of `pages` may migrate to compressed node `nid`: (admitted, refused).

    With the safety check on, nothing migrates while the node reports
    pressure 1000; the placement policy then has its say page by page. The
    per-page "is one more page safe?" question itself is asked of the device
    with the store (check-and-allocate), in migrate.move_pages().
    """
    if not mm.tunables.cram.tier_enabled:
        return [], pages
    node = mm.nodes[nid]
    if mm.tunables.cram.safety_check and node.pressure >= CRAM_PRESSURE_BLOCK:
        host.vmstat.inc("cram_demote_refused", len(pages))
        return [], pages
    admit = await mm.policy.admission(mm, host, pages, nid, [True] * len(pages))
    admitted = [p for p, ok in zip(pages, admit, strict=True) if ok]
    refused = [p for p, ok in zip(pages, admit, strict=True) if not ok]
    if refused:
        host.vmstat.inc("cram_demote_refused", len(refused))
    return admitted, refused


def cram_pressure_changed(mm: Mm, nid: int, pressure: int) -> None:
    """The device's watermark interrupt: at pressure 1000 wake kswapd on the node."""
    from .vmscan import wakeup_kswapd

    if pressure >= CRAM_PRESSURE_BLOCK and mm.nodes[nid].kind == NodeKind.CRAM:
        wakeup_kswapd(mm, nid)


async def do_cram_wp_fault(mm: Mm, proc: Process, host: Host, page: int) -> int:
    """A write to a read-only compressed page: promote it to local memory.

    Returns the time charged, or -1 when the process had to be killed.
    """
    from .memory import do_anonymous_page, forget_page, oom_kill
    from .migrate import promote_page

    host.vmstat.inc("cram_write_fault")
    cost = mm.costs.wp_fault_ns
    nid, c = await alloc_page(mm, host, page)
    cost += c
    if nid < 0:
        host.vmstat.inc("cram_promote_fail")
        await oom_kill(mm, proc, "oom")
        return -1
    ok, c = await promote_page(mm, page, nid, host, mm.pages.zone[page])
    cost += c
    if not ok:
        free_frame(mm, nid, page)
        host.vmstat.inc("cram_promote_fail")
        # The compressed copy was unreadable: the data is lost; refault empty.
        await forget_page(mm, page)
        c = await do_anonymous_page(mm, proc, host, page)
        return -1 if c < 0 else cost + c
    host.vmstat.inc("pgpromote_success")
    return cost
