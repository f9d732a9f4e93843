"""Memory cgroup charging and limits (mm/memcontrol.c).

memory.current counts a cgroup's resident pages on any node plus the bytes
its zswap entries occupy (obj_cgroup charges). Swapped-out pages move to
memory.swap.current. Charging above memory.max reclaims from the cgroup
itself (try_to_free_mem_cgroup_pages) and gives up after
MAX_RECLAIM_RETRIES rounds without progress: the OOM killer then ends the
process. Above memory.high the cgroup reclaims the excess on return to user.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .page_alloc import MAX_RECLAIM_RETRIES

if TYPE_CHECKING:
    from ._mm import Memcg, Mm

PAGE_SIZE = 4096
# mm/memcontrol.c: flush_memcg_stats_dwork refreshes the statistics readers
# see every FLUSH_TIME (2 * HZ).
FLUSH_TIME_NS = 2_000_000_000


def charge(memcg: Memcg, nbytes: int) -> None:
    memcg.current += nbytes
    if memcg.current > memcg.peak:
        memcg.peak = memcg.current


def uncharge(memcg: Memcg, nbytes: int) -> None:
    memcg.current -= nbytes


async def try_charge(mm: Mm, memcg: Memcg, nbytes: int = PAGE_SIZE) -> tuple[bool, int]:
    """Charge `nbytes`, reclaiming from the cgroup when over memory.max.

    Returns (charged, time spent reclaiming in ns).
    """
    limit = memcg.config.memory_max
    spent = 0
    if limit is not None and memcg.current + nbytes > limit:
        from .vmscan import try_to_free_mem_cgroup_pages

        memcg.events["max"] += 1
        retries = MAX_RECLAIM_RETRIES
        while memcg.current + nbytes > limit:
            need = (memcg.current + nbytes - limit + PAGE_SIZE - 1) // PAGE_SIZE
            memcg.reclaim_stalls += 1
            reclaimed, cost = await try_to_free_mem_cgroup_pages(mm, memcg, max(need, 32))
            spent += cost
            if reclaimed == 0:
                memcg.reclaim_no_progress += 1
                retries -= 1
                if retries <= 0:
                    memcg.events["oom"] += 1
                    return False, spent
    charge(memcg, nbytes)
    return True, spent


async def handle_over_high(mm: Mm, memcg: Memcg) -> int:
    """mem_cgroup_handle_over_high(): reclaim what exceeds memory.high."""
    high = memcg.config.memory_high
    if high is None or memcg.current <= high:
        return 0
    from .vmscan import try_to_free_mem_cgroup_pages

    memcg.events["high"] += 1
    need = (memcg.current - high + PAGE_SIZE - 1) // PAGE_SIZE
    _, cost = await try_to_free_mem_cgroup_pages(mm, memcg, need)
    return cost


def flush_memcg_stats(mm: Mm) -> None:
    """Publish each cgroup's zswap statistics (css_rstat_flush()).

    Readers of memcg_page_state() see the values of the last flush. A trace of
    the reference kernel (memcg:memcg_flush_stats) shows only the periodic
    flush of flush_memcg_stats_dwork, every 2 s, and the zswap shrinker
    counting nothing for the cgroup until the first flush after its pool
    filled: zswap_shrinker_count() reads MEMCG_ZSWAPPED and MEMCG_ZSWAP_B.
    """
    for memcg in mm.memcgs:
        zswap = mm.hosts[memcg.host].zswap
        lru = zswap.lru.get(memcg.index) if zswap is not None else None
        memcg.zswap_stat_stored = len(lru) if lru else 0
        memcg.zswap_stat_bytes = memcg.zswap_current


def start_stats_flusher(mm: Mm) -> None:
    """flush_memcg_stats_dwork: flush every FLUSH_TIME_NS until the run ends."""

    async def work() -> None:
        flush_memcg_stats(mm)
        if not mm.finished:
            mm.sched.after(FLUSH_TIME_NS, work, "memcg_flush_stats")

    mm.sched.after(FLUSH_TIME_NS, work, "memcg_flush_stats")
