"""Helpers to run small scenarios in-process (a module name unique across tests/)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from tiersim.orchestrator.engine import run
from tiersim.orchestrator.scenario import loads_scenario

BASE = """
[scenario]
name = "t"
description = "test"
question = "test"
seed = 1
duration = "1s"

[[hosts]]
name = "h0"

[[nodes]]
name = "dram0"
kind = "dram"
host = "h0"
capacity = "8MiB"

[[nodes]]
name = "cram0"
kind = "cram"
host = "h0"
advertised = "32MiB"
physical = "8MiB"

[[nodes]]
name = "cxl0"
kind = "cxl"
host = "h0"
capacity = "4MiB"

[[nodes]]
name = "swap0"
kind = "storage"
host = "h0"
capacity = "128MiB"

[tunables.cram]
tier_enabled = false

[[cgroups]]
name = "app"

[[workloads]]
name = "w"
host = "h0"
cgroup = "app"
footprint = "16MiB"
content = "default"
accesses = 30000
[workloads.pattern]
kind = "uniform"
write_ratio = 0.2
think = "1us"
"""

# The reference `demotion` guest: node 0 a DMA zone beside DMA32 (with free
# pages in foreign pageblocks), node 1 a slower tier.
ZONED = """
[scenario]
name = "zones"
seed = 3
duration = "3600s"

[[hosts]]
name = "guest"
cpus = 1

[[nodes]]
name = "node0"
kind = "dram"
host = "guest"
capacity = "111360KiB"

[[nodes.zones]]
zone = "DMA"
size = "15232KiB"
managed = "15MiB"
unmovable = [224]

[[nodes.zones]]
zone = "DMA32"
size = "96128KiB"
managed = "130912KiB"
unmovable = [131]
reclaimable = [512, 298]

[[nodes]]
name = "node1"
kind = "cxl"
host = "guest"
capacity = "183840KiB"

[tunables]
demotion_enabled = true

[[cgroups]]
name = "ref"

[[workloads]]
name = "ref"
host = "guest"
cgroup = "ref"
footprint = "224MiB"
content = "text"
accesses = 114688
pattern = { kind = "scan" }
"""


def run_text(text: str, overrides: Mapping[str, object] | None = None) -> list[dict[str, Any]]:
    scenario = loads_scenario(text, overrides=dict(overrides or {}))
    return [asyncio.run(run(v)) for v in scenario.variants]


def vm(doc: dict[str, Any], name: str) -> int:
    return int(sum(h["vmstat"][name] for h in doc["hosts"].values()))


def zs(doc: dict[str, Any], name: str) -> int:
    return int(sum(h["zswap"][name] for h in doc["hosts"].values()))
