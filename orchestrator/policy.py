"""Placement policies: the decisions a policy may take, and the built-in ones.

The engine asks its policy at four points, always with the kernel's own
answer as `default`, so a policy only needs to override what it cares about:

* demotion: which reclaim candidates to demote, and where (vmscan.c);
* promotion: whether a hint-faulted page on a slow tier is promoted now
  (one page per call, or a batch per call under `promote_batch` > 1);
* compressed-node admission: whether a page may go to a compressed node;
* zswap: whether to store a page being swapped out, and whether an entry
  may be written back.

Built-in policies answer in-process. An external policy (a gRPC agent, see
`agent.py`) implements the same interface over a stream. Every decision is
awaited in order, so a run stays a pure function of its inputs and of the
policy's answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._pages import F_ACTIVE, F_REFERENCED, F_YOUNG

if TYPE_CHECKING:
    from ._mm import Host, Mm

PAGE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class PageInfo:
    """What a policy may know of a page when asked about it."""

    page: int
    node: int
    young: bool
    referenced: bool
    active: bool
    accesses: int
    writes: int
    # Last compressed size in bytes (0: never compressed).
    compressed_size: int
    # Nanoseconds since the NUMA scanner last marked the page (0: never).
    since_scan_ns: int

    @classmethod
    def of(cls, mm: Mm, page: int) -> PageInfo:
        p = mm.pages
        f = p.flags[page]
        scan = p.scan_ns[page]
        zs = p.zsize[page]
        return cls(
            page=page,
            node=p.node[page],
            young=bool(f & F_YOUNG),
            referenced=bool(f & F_REFERENCED),
            active=bool(f & F_ACTIVE),
            accesses=p.hits[page],
            writes=p.version[page],
            compressed_size=PAGE_SIZE if zs == 0xFFFF else zs,
            since_scan_ns=mm.sched.now_ns - scan if scan else 0,
        )


class Policy:
    """The kernel's behaviour: every decision returns its default."""

    name = "kernel"
    # Whether the engine should count per-page accesses for this policy.
    wants_access_counts = False

    async def start(self, mm: Mm) -> None:
        """Called once the cluster is built, before the first event."""

    async def close(self) -> None:
        """Called when the run ends."""

    async def demotion(
        self, mm: Mm, host: Host, nid: int, candidates: list[int], default: list[int | None]
    ) -> list[int | None]:
        """Per candidate: the target node to try first, or None to skip demotion (swap path)."""
        return default

    async def promotion(self, mm: Mm, host: Host, page: int, dst: int, default: bool) -> bool:
        return default

    async def promotion_batch(
        self, mm: Mm, host: Host, pages: list[int], dst: int, default: list[bool]
    ) -> list[bool]:
        """Batched promotion (`promote_batch` > 1): per page, promote it to `dst` now?

        One call per batch. The default asks `promotion` page by page, so a
        policy that only defines `promotion` behaves the same in both modes.
        """
        return [
            await self.promotion(mm, host, page, dst, d)
            for page, d in zip(pages, default, strict=True)
        ]

    async def admission(
        self, mm: Mm, host: Host, pages: list[int], nid: int, default: list[bool]
    ) -> list[bool]:
        """Per page: may it be placed on compressed node `nid`?"""
        return default

    async def zswap_store(self, mm: Mm, host: Host, page: int, default: bool) -> bool:
        return default

    async def zswap_writeback(self, mm: Mm, host: Host, page: int, default: bool) -> bool:
        return default

    def stats(self) -> dict[str, Any]:
        """Counters to report in the results (decisions taken, fallbacks)."""
        return {}


class KernelPolicy(Policy):
    """The kernel's defaults (mm/vmscan.c, kernel/sched/fair.c, mm/zswap.c)."""


class CramGuardPolicy(Policy):
    """Keep a compressed node below its low watermark using the sizes it reports.

    Admission is refused when placing the page at its expected compressed
    size (its last compressed size, else the node's current average) would
    leave less free media than the node's low watermark plus a margin. The
    device never reaches pressure 1000, so migration to it is never blocked
    and it never has to be reclaimed in a hurry (the admission-control idea
    of Pond and of the compressed-memory review's "ratio query before each
    migration").
    """

    name = "cram-guard"

    def __init__(self, margin: float = 0.05) -> None:
        self.margin = margin
        self.refused = 0
        self.admitted = 0

    async def admission(
        self, mm: Mm, host: Host, pages: list[int], nid: int, default: list[bool]
    ) -> list[bool]:
        node = mm.nodes[nid]
        info = node.info
        physical = info.physical_bytes
        floor = info.watermarks.low_free_bytes + int(self.margin * physical)
        used = node.physical_used_bytes
        stored = max(node.nr_pages, 1)
        average = used // stored if node.nr_pages else PAGE_SIZE // 2
        out = []
        for page, ok in zip(pages, default, strict=True):
            zs = mm.pages.zsize[page]
            expect = (PAGE_SIZE if zs == 0xFFFF else zs) or average
            expect += info.per_page_overhead_bytes
            if ok and physical - (used + expect) >= floor:
                used += expect
                out.append(True)
                self.admitted += 1
            else:
                out.append(False)
                self.refused += 1
        return out

    def stats(self) -> dict[str, Any]:
        return {"admitted": self.admitted, "refused": self.refused}


BUILTIN: dict[str, type[Policy]] = {
    "kernel": KernelPolicy,
    "cram-guard": CramGuardPolicy,
}


def make_policy(name: str, options: dict[str, Any]) -> Policy:
    if name in BUILTIN:
        return BUILTIN[name](**options)
    if name == "agent":
        from .agent import AgentPolicy

        return AgentPolicy(**options)
    known = ", ".join([*BUILTIN, "agent"])
    raise ValueError(f"unknown policy {name!r} (expected one of: {known})")
