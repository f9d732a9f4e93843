"""A reference workload as a tiersim scenario.

The scenario is built as a plain dict in the scenario file format
(``docs/scenario-format.md``), printed as TOML and read back with
`tiersim.orchestrator.scenario.loads_scenario`, so it is checked exactly as a
user's file would be and can be saved and run on its own (``tiersim
reference scenario W.toml > w.toml; tiersim run w.toml``).

What carries over unchanged: the seed (hence the content and access seeds,
see `image.process_seed`), the content spec, the access pattern and count,
swap size, zswap tunables, cgroup limits, swappiness, watermark scale
factor, ``demotion_enabled`` and ``numa_balancing``. HMAT latency and
bandwidth become the nodes' latency profiles (read = write = the HMAT
latency, no per-cacheline term), so tiersim's abstract distances equal the
kernel's (DRAM 576, the 250 ns / 10 GB/s node 2880).

What is calibrated from a recording, when one is given:

* Node capacity. The guest's kernel, initramfs and page tables take some of
  each node before the workload starts; tiersim has no kernel of its own. A
  byte-addressable node gets the ``MemFree`` the guest reported at the
  workload's start, so the workload meets the same free memory and the same
  point where reclaim starts.
* Total RAM. The kernel takes ``max_pool_percent`` of ``MemTotal``, which
  counts the memory it uses itself; the host gets ``total_ram`` = the guest's
  ``MemTotal``, so tiersim's pool cap is the kernel's to the page.
* The cgroup limits. The guest program locks its own few pages (text,
  stack, I/O buffers) into the cgroup before it maps the footprint; their
  charge (``workload.baseline_bytes``, about 100 KiB) is taken off
  ``memory.max`` and ``memory.high``, so the footprint meets the same room.
* Time. Under TCG the guest runs its accesses far slower than real hardware,
  and NUMA scanning, hint-fault latency and kswapd all run on wall-clock
  time. With ``guest_time`` the accesses get a fixed think time so that the
  simulated run lasts as long as the guest's workload did, stretch by stretch
  where the recording holds the guest's clock readings (``think_schedule``).
  Where the recording also holds the workload's own CPU time at those
  readings (``guest.progress_cpu_ns``), the pace is that CPU time: the
  guest's clock also counts the time its kswapd took the one vCPU, which
  tiersim's own kswapd takes from the simulated process again.
* Kernel threads' costs. Paced by CPU time, the guest host gets
  ``kthread_costs``: kswapd's cost per page scanned, demoted and swapped
  out, fitted over the library's recordings that measured its CPU time
  (kthread_costs.py). Without them, kswapd's work is scaled by the guest's
  first-touch speed (``kernel_cpu_scale``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tiersim._units import parse_size
from tiersim.orchestrator._mm import CpuCosts

from .image import CGROUP_NAME, HOST_NAME, WORKLOAD_NAME
from .kthread_costs import KthreadCosts, library_kthread_costs
from .spec import PAGE_SIZE, ReferenceWorkload
from .zones import zones_of_run

NODE_NAMES = ("node0", "node1")
SWAP_NAME = "swap0"
DURATION = "3600s"


def _meminfo_min(data: Mapping[str, Any] | None, key: str) -> int | None:
    if not data:
        return None
    entry = data.get("guest", {}).get("meminfo", {}).get(key)
    if not isinstance(entry, Mapping) or "min" not in entry:
        return None
    return int(entry["min"])


def node_zones(w: ReferenceWorkload, data: Mapping[str, Any] | None) -> list[list[dict[str, Any]]]:
    """Per node, its [[nodes.zones]] from the recorded zones (empty without a recording of them).

    The zones of one run, the one with the least memory free at the start:
    each zone's free pages (its size), managed pages, and the free pages of
    its unmovable and reclaimable pageblocks (reference/zones.py).
    """
    recorded = zones_of_run(data)
    out: list[list[dict[str, Any]]] = [[] for _ in w.nodes]
    for z in recorded:
        i = int(z["node"])
        if i >= len(out) or not z.get("free"):
            continue
        entry: dict[str, Any] = {
            "zone": z["zone"],
            "size": _size(int(z["free"]) * PAGE_SIZE),
            "managed": _size(max(int(z["managed"]), int(z["free"])) * PAGE_SIZE),
        }
        # zoneinfo and pagetypeinfo are read a moment apart: the pageblocks
        # never hold more than the zone's free pages.
        room = int(z["free"])
        blocks = z.get("fallback_blocks", {})
        for key, mt in (("unmovable", "Unmovable"), ("reclaimable", "Reclaimable")):
            kept = []
            for b in blocks.get(mt, []):
                take = min(int(b), room)
                if take > 0:
                    kept.append(take)
                    room -= take
            if kept:
                entry[key] = kept
        out[i].append(entry)
    return out


def node_capacities(w: ReferenceWorkload, data: Mapping[str, Any] | None) -> list[int]:
    """Bytes tiersim gives each NUMA node: the guest's free memory at start, or the
    nominal size. With recorded zones, the free memory of their run."""
    zones = node_zones(w, data)
    if all(zones):
        return [sum(_bytes(z["size"]) for z in zs) for zs in zones]
    out = []
    for i, node in enumerate(w.nodes):
        free = _meminfo_min(data, f"node{i}.MemFree")
        cap = free if free else node.size
        out.append(cap // PAGE_SIZE * PAGE_SIZE)
    return out


def total_ram(data: Mapping[str, Any] | None, capacities: list[int]) -> int | None:
    """The host's total_ram: the guest's MemTotal, whole pages, never below the capacities."""
    total = _meminfo_min(data, "global.MemTotal")
    if not total:
        return None
    return max(total // PAGE_SIZE * PAGE_SIZE, sum(capacities))


def guest_think_ns(w: ReferenceWorkload, data: Mapping[str, Any] | None) -> int | None:
    """Mean wall-clock time per access in the guest, from the recording."""
    if not data:
        return None
    elapsed = data.get("guest", {}).get("elapsed_ns")
    accesses = data.get("plan", {}).get("accesses") or w.access.accesses
    if not isinstance(elapsed, Mapping) or not elapsed.get("values"):
        return None
    values = [int(v) for v in elapsed["values"]]
    return int(sum(values) / len(values) / accesses)


def cpu_readings(data: Mapping[str, Any] | None) -> tuple[list[list[int]], list[int]] | None:
    """The workload's own CPU time at each clock reading, per run that
    measured it, and at its end: (readings, ends); None without them."""
    if not data:
        return None
    runs = data.get("guest", {}).get("progress_cpu_ns") or []
    ends = data.get("counters", {}).get("workload.cpu_ns", {}).get("values") or []
    if not runs or len(runs) != len(ends) or len({len(r) for r in runs}) != 1:
        return None
    return [list(map(int, r)) for r in runs], [int(v) for v in ends]


def kernel_cpu_scale(w: ReferenceWorkload, data: Mapping[str, Any] | None) -> float | None:
    """How many times slower the guest runs kernel work than tiersim's CPU costs.

    The workload's first stretch is all first touches: the guest's time per
    access there (mean over the runs) against what tiersim charges for one
    (a minor fault and the store to node 0). Under TCG this is about a
    hundred. With the workload paced at the guest's clock, kswapd's work is
    scaled by it, so that reclaim keeps the guest's pace against the
    allocations it races.
    """
    if not data or not w.nodes:
        return None
    progress = data.get("guest", {}).get("progress_ns")
    if not isinstance(progress, Mapping):
        return None
    every = int(progress.get("every") or 0)
    firsts = [int(v[1]) - int(v[0]) for v in progress.get("values") or [] if len(v) > 1]
    if every <= 0 or not firsts:
        return None
    per_access = sum(firsts) / len(firsts) / every
    fault = CpuCosts().minor_fault_ns + w.nodes[0].latency_ns
    return round(max(1.0, per_access / fault), 1)


def guest_think_schedule(
    w: ReferenceWorkload, data: Mapping[str, Any] | None
) -> list[list[int]] | None:
    """Think time by stretch of the run, from the guest's clock readings.

    The guest reads its clock every ``every`` accesses. The time between two
    readings, averaged over the runs, is spread evenly over that stretch's
    accesses: under TCG a first-touch store costs the guest far more than a
    later read, and a uniform pace would stretch the reads' phase -- the one
    the NUMA scanner acts in -- by the stores' cost. The time is the
    workload's own CPU time where the recording has it (cpu_readings()),
    its clock's otherwise.
    """
    if not data:
        return None
    progress = data.get("guest", {}).get("progress_ns")
    elapsed = data.get("guest", {}).get("elapsed_ns", {}).get("values") or []
    accesses = data.get("plan", {}).get("accesses") or w.access.accesses
    if not isinstance(progress, Mapping) or not progress.get("values") or not elapsed:
        return None
    every = int(progress["every"])
    runs = [list(map(int, v)) for v in progress["values"]]
    cpu = cpu_readings(data)
    if cpu is not None:
        runs, elapsed = cpu
    if every <= 0 or len(runs) != len(elapsed) or len({len(r) for r in runs}) != 1:
        return None
    marks = [[*r, int(end)] for r, end in zip(runs, elapsed, strict=True)]
    schedule: list[list[int]] = []
    for j in range(len(marks[0]) - 1):
        start = j * every
        n = min(every, accesses - start)
        if n <= 0:
            break
        span = sum(m[j + 1] - m[j] for m in marks) / len(marks)
        think = max(0, round(span / n))
        if not schedule or schedule[-1][1] != think:
            schedule.append([start, think])
    return schedule or None


def guest_baseline(data: Mapping[str, Any] | None) -> int:
    """Bytes the guest program itself holds in the cgroup (locked text, stack,
    buffers) before it maps its footprint, rounded up to pages."""
    if not data:
        return 0
    entry = data.get("counters", {}).get("workload.baseline_bytes")
    if not isinstance(entry, Mapping) or "max" not in entry:
        return 0
    return -(-int(entry["max"]) // PAGE_SIZE) * PAGE_SIZE


def _size(n: int) -> str | int:
    """Sizes as people write them ("48MiB") when they are whole units."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return n


def _bytes(v: str | int) -> int:
    return v if isinstance(v, int) else parse_size(v)


def _limit(v: int | None) -> str | int:
    return "max" if v is None else _size(v)


def use_guest_time(w: ReferenceWorkload, guest_time: bool | None) -> bool:
    """Pace by the guest's clock by default only where time drives the outcome:
    NUMA balancing (scan periods, hint-fault latency against hot_threshold_ms),
    the zswap shrinker (it counts from cgroup statistics flushed every 2 s),
    and two nodes (kswapd races the allocations that overflow to node 1)."""
    if guest_time is not None:
        return guest_time
    return bool(w.tunables.numa_balancing) or w.zswap.shrinker_enabled or w.tiered


def to_scenario(
    w: ReferenceWorkload,
    data: Mapping[str, Any] | None = None,
    *,
    guest_time: bool | None = None,
    kthread_costs: KthreadCosts | None = None,
) -> dict[str, Any]:
    """The tiersim scenario (as a dict in the scenario file format) for `w`;
    `kthread_costs` are the guest's (default: fitted over the library)."""
    caps = node_capacities(w, data)
    zones = node_zones(w, data)
    nodes: list[dict[str, Any]] = []
    for i, (node, cap) in enumerate(zip(w.nodes, caps, strict=True)):
        entry: dict[str, Any] = {
            "name": NODE_NAMES[i],
            "kind": "dram" if i == 0 else "cxl",
            "host": HOST_NAME,
            "capacity": _size(cap),
        }
        if w.tiered:
            entry["options"] = {
                "latency": {
                    "read_base_ns": node.latency_ns,
                    "write_base_ns": node.latency_ns,
                    "per_cacheline_ns": 0.0,
                    "bandwidth_bytes_per_sec": node.bandwidth,
                    "source": "HMAT entry of the reference guest",
                }
            }
        if all(zones):
            entry["zones"] = zones[i]
        nodes.append(entry)
    if w.swap_bytes:
        nodes.append(
            {
                "name": SWAP_NAME,
                "kind": "storage",
                "host": HOST_NAME,
                "capacity": _size(w.swap_bytes),
            }
        )
    pattern = dict(w.access.pattern)
    if use_guest_time(w, guest_time):
        schedule = guest_think_schedule(w, data)
        think = guest_think_ns(w, data)
        if schedule:
            pattern["think_schedule"] = schedule
            pattern["think_distribution"] = "fixed"
        elif think:
            pattern["think_ns"] = think
            pattern["think_distribution"] = "fixed"
    z = w.zswap
    t = w.tunables
    c = w.cgroup
    base = guest_baseline(data)
    host: dict[str, Any] = {"name": HOST_NAME, "cpus": w.cpus}
    ram = total_ram(data, caps)
    if ram is not None:
        host["total_ram"] = _size(ram)
    if use_guest_time(w, guest_time) and w.tiered:
        costs = None
        if cpu_readings(data) is not None:
            # Read the library's recordings only for a workload that uses the fit.
            costs = kthread_costs or library_kthread_costs()
        if costs is not None:
            host["kthread_costs"] = costs.scenario_costs()
        else:
            scale = kernel_cpu_scale(w, data)
            if scale is not None:
                host["kernel_cpu_scale"] = scale

    def room(limit: int | None) -> int | None:
        return None if limit is None else max(PAGE_SIZE, limit - base)

    return {
        "scenario": {
            "name": f"reference-{w.name}",
            "description": w.description or f"Reference workload {w.name}",
            "question": "Does tiersim count what the kernel counts on this workload?",
            "seed": w.seed,
            "duration": DURATION,
        },
        "hosts": [host],
        "nodes": nodes,
        "tunables": {
            "demotion_enabled": t.demotion_enabled,
            "swappiness": t.swappiness,
            "watermark_scale_factor": t.watermark_scale_factor,
            "zswap": {
                "enabled": z.enabled,
                "compressor": z.compressor,
                "max_pool_percent": z.max_pool_percent,
                "accept_threshold_percent": z.accept_threshold_percent,
                "shrinker_enabled": z.shrinker_enabled,
            },
            "numa": {"numa_balancing": t.numa_balancing},
        },
        "cgroups": [
            {
                "name": CGROUP_NAME,
                "memory_max": _limit(room(c.memory_max)),
                "memory_high": _limit(room(c.memory_high)),
                "zswap_max": _limit(c.zswap_max),
                "zswap_writeback": c.zswap_writeback,
            }
        ],
        "workloads": [
            {
                "name": WORKLOAD_NAME,
                "host": HOST_NAME,
                "cgroup": CGROUP_NAME,
                "footprint": _size(w.npages * PAGE_SIZE),
                "content": w.content,
                "accesses": w.access.accesses,
                "pattern": pattern,
            }
        ],
    }


# --------------------------------------------------------------------------
# A small TOML writer for the shapes above (tomllib only reads).


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _string(k)


def _string(s: str) -> str:
    escaped = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _table(out: list[str], path: str, table: Mapping[str, Any], array: bool = False) -> None:
    out.append(f"[[{path}]]" if array else f"[{path}]")
    subtables = []
    for k, v in table.items():
        if isinstance(v, Mapping) and k not in ("content", "pattern"):
            subtables.append((k, v))
        else:
            out.append(f"{_key(k)} = {_value(v)}")
    for k, v in subtables:
        out.append("")
        _table(out, f"{path}.{_key(k)}", v)


def dumps_toml(doc: Mapping[str, Any]) -> str:
    """TOML text for a scenario dict: top tables, arrays of tables, inline content/pattern."""
    out: list[str] = []
    for k, v in doc.items():
        if isinstance(v, Mapping):
            _table(out, _key(k), v)
            out.append("")
        elif isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
            for entry in v:
                _table(out, _key(k), entry, array=True)
                out.append("")
        else:
            out.insert(0, f"{_key(k)} = {_value(v)}")
    return "\n".join(out).rstrip() + "\n"


def scenario_toml(
    w: ReferenceWorkload,
    data: Mapping[str, Any] | None = None,
    *,
    guest_time: bool | None = None,
    kthread_costs: KthreadCosts | None = None,
) -> str:
    head = f"# tiersim scenario for reference workload {w.name!r} (tiersim reference scenario)\n"
    scenario = to_scenario(w, data, guest_time=guest_time, kthread_costs=kthread_costs)
    return head + dumps_toml(scenario)


def to_run_config(
    w: ReferenceWorkload,
    data: Mapping[str, Any] | None = None,
    *,
    guest_time: bool | None = None,
    overrides: Mapping[str, object] | None = None,
    kthread_costs: KthreadCosts | None = None,
) -> Any:
    """The validated RunConfig tiersim runs for `w`, with scenario keys
    `overrides` set as `tiersim run --set` sets them."""
    from tiersim.orchestrator.scenario import loads_scenario

    text = scenario_toml(w, data, guest_time=guest_time, kthread_costs=kthread_costs)
    scenario = loads_scenario(
        text, source=f"<scenario for {w.name}>", overrides=dict(overrides or {})
    )
    return scenario.variants[0]
