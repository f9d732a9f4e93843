"""Event counters under the names /proc/vmstat and memory.stat export them.

Kept as plain dicts so results serialise as they are; the names are fixed
here so a typo in a mechanism fails loudly instead of creating a new counter.
"""

from __future__ import annotations

VMSTAT_EVENTS = (
    "pgfault",
    "pgmajfault",
    "pgalloc",
    # Frames taken per zone (faults, migrations, the zswap pool), and LRU
    # pages kswapd passed over because they lie above the zone it balances.
    "pgalloc_dma",
    "pgalloc_dma32",
    "pgalloc_normal",
    "pgalloc_movable",
    "pgskip_dma",
    "pgskip_dma32",
    "pgskip_normal",
    "pgskip_movable",
    # zone_statistics(): a page allocated on the preferred node, or elsewhere.
    "numa_hit",
    "numa_miss",
    "pgfree",
    "pgactivate",
    "pgdeactivate",
    # Folios moved to the inactive tail as their writeback ended
    # (folio_rotate_reclaimable()): the swap-cache folios zswap's shrink
    # worker writes back through. Pages reclaim writes to the swap device
    # are freed at once, not rotated (swap.swap_write()).
    "pgrotated",
    "pgrefill",
    "pgscan_kswapd",
    "pgscan_direct",
    "pgsteal_kswapd",
    "pgsteal_direct",
    "pgdemote_kswapd",
    "pgdemote_direct",
    "pgdemote_fail",
    "pgpromote_success",
    "pgpromote_candidate",
    "pgpromote_fail",
    "numa_hint_faults",
    "numa_pages_migrated",
    "numa_pte_updates",
    "pswpin",
    "pswpout",
    "zswpin",
    "zswpout",
    "zswpwb",
    "swpout_zero",
    "swpin_zero",
    "swap_ra",
    "swap_ra_hit",
    "allocstall",
    "kswapd_wake",
    # balance_pgdat() runs, kswapd woken again within its 0.1 s nap, and
    # kswapd running again at once because its run left the node unbalanced.
    "pageoutrun",
    "kswapd_low_wmark_hit_quickly",
    "kswapd_high_wmark_hit_quickly",
    "oom_kill",
    "pgmigrate_success",
    "pgmigrate_fail",
    # mm/cram.c (compressed memory tier)
    "cram_demote",
    "cram_demote_refused",
    "cram_write_fault",
    "cram_promote_fail",
    "cram_reclaim",
    # memory failure
    "memory_failure",
    "sigbus",
    "pages_lost",
)


class VmStat(dict[str, int]):
    """A dict of vmstat counters that refuses names it does not know."""

    def __init__(self) -> None:
        super().__init__((name, 0) for name in VMSTAT_EVENTS)

    def inc(self, name: str, n: int = 1) -> None:
        if name not in self:
            raise KeyError(f"unknown vmstat counter {name!r}")
        self[name] += n
