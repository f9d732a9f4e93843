"""Record a reference workload: boot the real kernel several times and keep the counter ranges.

The kernel is not deterministic under TCG -- kswapd, the NUMA scanner and
zswap's shrinker run against wall-clock time -- so one boot proves little.
Identical runs of zswap under a cgroup limit agreed within 2-4 % here, but
kswapd-driven demotion varied up to 4x. A recording therefore holds every
run's value and, per counter, the observed minimum and maximum; tiersim is
compared against that range.

The data document (``reference/data/<name>.json``)::

    {
      "schema": "tiersim-reference-data/1",
      "workload": "zswap-text",
      "workload_sha256": "...",          # of the workload file recorded
      "kernel": {"release": "7.3.4+deb13-amd64", "package_version": "..."},
      "qemu": "QEMU emulator version ...",
      "recorded_at": "2026-...Z",
      "runs": 3,
      "plan": {"npages": ..., "accesses": ..., "stores": ...},
      "guest": {"meminfo": {...ranges...}, "tiers": {...}, "elapsed_ns": {...},
                "progress_ns": {"every": 4096, "values": [[0, ...], ...]},
                "progress_cpu_ns": [[0, ...], ...]},
      "counters": {"vmstat.zswpout": {"min": .., "max": .., "values": [..]}, ...}
    }

Counter names are ``<source>.<name>``: ``vmstat`` (increase over the
workload), ``zswap`` (debugfs at the end), ``memory.stat``, ``cgroup``,
``memory.events``, ``workload`` (``workload.cpu_ns``: the program's own CPU
time, against ``workload.elapsed_ns`` on the wall clock), ``kthreads`` (each
kswapd thread's CPU time over the workload, ns). ``guest.progress_ns`` holds
each completed run's clock readings, one every ``every`` accesses, for
pacing tiersim by where the guest's time went; ``guest.progress_cpu_ns`` the
program's CPU time at the same readings (runs recorded before it was kept
have none).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import GuestError, HarnessError
from .guest import (
    BootFiles,
    GuestTrace,
    init_script,
    parse_report,
    qemu_command,
    run_qemu,
    trace_section,
)
from .image import Plan, build_initramfs, plan_workload, write_data_disk
from .kernel import Kernel, cache_root, fetch_kernel, resolve_modules
from .spec import ReferenceWorkload
from .tools import Tools, build_workload, ensure_tools

SCHEMA = "tiersim-reference-data/1"
# Sources flattened into "counters".
SOURCES = ("vmstat", "zswap", "memory.stat", "cgroup", "memory.events", "workload", "kthreads")
# Kept even when zero in every run: the counters the fidelity check compares.
ALWAYS_KEEP = frozenset(
    {
        "vmstat.zswpout", "vmstat.zswpin", "vmstat.zswpwb", "vmstat.pswpout", "vmstat.pswpin",
        "vmstat.swpout_zero", "vmstat.swpin_zero",
        "vmstat.pgdemote_kswapd", "vmstat.pgdemote_direct", "vmstat.pgpromote_success",
        "vmstat.pgpromote_candidate", "vmstat.numa_hint_faults", "vmstat.oom_kill",
        "zswap.stored_pages", "zswap.pool_total_size", "zswap.written_back_pages",
        "zswap.pool_limit_hit", "zswap.stored_incompressible_pages",
        "zswap.reject_compress_poor", "zswap.reject_reclaim_fail", "zswap.reject_compress_fail",
        "memory.events.oom_kill", "workload.completed",
    }
)  # fmt: skip
MODULES = ("virtio_blk",)
# Loaded only when the kernel ships them as modules (Debian builds them in).
OPTIONAL_MODULES = ("zsmalloc", "lz4", "lz4_compress", "lz4hc", "lz4hc_compress")

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class Prepared:
    """Everything a boot needs that does not change between runs."""

    tools: Tools
    kernel: Kernel
    initramfs: Path
    data_disk: Path
    plan: Plan
    workdir: Path
    qemu_version: str


def qemu_version(qemu: Path) -> str:
    try:
        out = subprocess.run(
            [str(qemu), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.splitlines()[0].strip() if out else "?"


def prepare(
    w: ReferenceWorkload,
    workdir: Path,
    *,
    install: bool = True,
    series: str | None = None,
    cache: Path | None = None,
    progress: Progress = _quiet,
    trace: GuestTrace | None = None,
) -> Prepared:
    cache = cache or cache_root()
    progress("checking tools")
    tools = ensure_tools(install=install)
    progress("fetching the kernel")
    kernel = fetch_kernel(series, cache=cache)
    progress(f"kernel {kernel.release}; building the guest workload")
    binary = build_workload(tools.gcc, cache / "build")
    modules = resolve_modules(kernel.modules_dir, MODULES, optional=OPTIONAL_MODULES)
    script = init_script(w, [name for name, _ in modules], trace)
    initramfs = workdir / "initramfs.cpio"
    initramfs.write_bytes(
        build_initramfs(
            busybox=tools.busybox.read_bytes(),
            workload=binary.read_bytes(),
            init_script=script,
            modules=modules,
        )
    )
    progress("planning accesses and writing the page corpus")
    plan = plan_workload(w)
    data_disk = workdir / "data.img"
    write_data_disk(w, plan, data_disk)
    return Prepared(tools, kernel, initramfs, data_disk, plan, workdir, qemu_version(tools.qemu))


def boot(w: ReferenceWorkload, p: Prepared, index: int, timeout_s: float) -> dict[str, Any]:
    """One boot: fresh swap disk, run, parse. Console logs stay in the workdir."""
    swap = None
    if w.swap_bytes:
        swap = p.workdir / f"swap-{index}.img"
        with swap.open("wb") as img:
            img.truncate(w.swap_bytes)
    files = BootFiles(
        kernel=p.kernel.vmlinuz,
        initramfs=p.initramfs,
        data_disk=p.data_disk,
        swap_disk=swap,
        report=p.workdir / f"report-{index}.txt",
        console=p.workdir / f"console-{index}.log",
    )
    for stale in (files.report, files.console):
        stale.unlink(missing_ok=True)
    cmd = qemu_command(w, files, p.tools.qemu)
    wall = run_qemu(cmd, timeout_s, files.console)
    if swap is not None:
        swap.unlink(missing_ok=True)
    try:
        report_text = files.report.read_bytes().decode(errors="replace")
    except OSError:
        report_text = ""
    console = files.console.read_bytes().decode(errors="replace") if files.console.exists() else ""
    report = parse_report(report_text, console)
    workload: dict[str, int] = report["workload"]  # type: ignore[assignment]
    accesses = workload.get("accesses")
    if workload.get("completed") and accesses != p.plan.accesses:
        raise GuestError(f"the guest made {accesses} accesses, the plan has {p.plan.accesses}")
    report["wall_s"] = round(wall, 2)
    return report


def _range(values: Sequence[int | float]) -> dict[str, Any]:
    return {"min": min(values), "max": max(values), "values": list(values)}


def aggregate(
    w: ReferenceWorkload, reports: Sequence[Mapping[str, Any]], prepared: Prepared | None = None
) -> dict[str, Any]:
    """The data document of a recording: per counter, min, max and every value."""
    if not reports:
        raise HarnessError("no runs to aggregate")
    names: set[str] = set()
    for rep in reports:
        for src in SOURCES:
            names.update(f"{src}.{k}" for k in rep.get(src, {}))
    counters: dict[str, Any] = {}
    for name in sorted(names | ALWAYS_KEEP):
        src, key = _split_name(name)
        values = [int(rep.get(src, {}).get(key, 0)) for rep in reports]
        if name in ALWAYS_KEEP or any(values):
            counters[name] = _range(values)
    meminfo_keys = sorted({k for rep in reports for k in rep.get("meminfo", {})})
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "workload": w.name,
        "workload_sha256": w.digest,
        "kernel": {"release": reports[0].get("kernel", "?")},
        "qemu": prepared.qemu_version if prepared else "?",
        "recorded_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "runs": len(reports),
        "plan": {
            "npages": w.npages,
            "accesses": prepared.plan.accesses if prepared else w.access.accesses,
            "stores": prepared.plan.stores if prepared else None,
        },
        "guest": {
            "meminfo": {
                k: _range([int(rep["meminfo"].get(k, 0)) for rep in reports]) for k in meminfo_keys
            },
            "tiers": reports[0].get("tiers", {}),
            # Per run, the zones at the workload's start (reference/zones.py).
            "zones": [rep.get("zones", []) for rep in reports],
            # /sys/kernel/mm/lru_gen/enabled during the runs (0x0000: the
            # active/inactive LRU that tiersim models).
            "lru_gen": reports[0].get("mm", {}).get("lru_gen", "?"),
            "elapsed_ns": _range(
                [
                    int(rep["workload"]["elapsed_ns"])
                    for rep in reports
                    if rep["workload"].get("completed")
                ]
                or [0]
            ),
            "wall_s": _range([float(rep.get("wall_s", 0.0)) for rep in reports]),
            # Clock readings every `every` accesses, one list per completed run.
            "progress_ns": {
                "every": next(
                    (
                        int(rep["workload"]["progress_every"])
                        for rep in reports
                        if rep["workload"].get("completed")
                        and rep["workload"].get("progress_every")
                    ),
                    0,
                ),
                "values": [
                    list(rep.get("progress_ns", []))
                    for rep in reports
                    if rep["workload"].get("completed") and rep.get("progress_ns")
                ],
            },
            # The workload's own CPU time at the same readings, per completed
            # run that reported it (recordings before it have none).
            "progress_cpu_ns": [
                list(rep.get("progress_cpu_ns", []))
                for rep in reports
                if rep["workload"].get("completed") and rep.get("progress_cpu_ns")
            ],
        },
        "counters": counters,
    }
    if prepared:
        doc["kernel"]["package_version"] = prepared.kernel.package_version
    return doc


def _split_name(name: str) -> tuple[str, str]:
    for src in sorted(SOURCES, key=len, reverse=True):
        if name.startswith(src + "."):
            return src, name[len(src) + 1 :]
    src, _, key = name.partition(".")
    return src, key


def record(
    w: ReferenceWorkload,
    *,
    runs: int | None = None,
    timeout_s: float | None = None,
    install: bool = True,
    series: str | None = None,
    keep: Path | None = None,
    progress: Progress = _quiet,
    trace: GuestTrace | None = None,
) -> dict[str, Any]:
    """Boot the kernel `runs` times on workload `w` and return the data document.

    With `trace` (which needs `keep`), each boot's kernel trace is written to
    ``trace-<run>.txt`` in the kept directory, and the document says so
    (``guest.trace``): the trace buffer is the guest's memory, so a traced
    run is not one of the workload's ordinary runs.
    """
    if trace is not None and keep is None:
        raise HarnessError("tracing needs a directory to keep the traces in (keep)")
    runs = runs or w.runs
    timeout_s = timeout_s or w.timeout_s
    cache = cache_root()
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        workdir = keep
    else:
        (cache / "work").mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"{w.name}-", dir=cache / "work"))
    try:
        prepared = prepare(
            w, workdir, install=install, series=series, progress=progress, trace=trace
        )
        reports = []
        for i in range(runs):
            progress(f"run {i + 1}/{runs}: booting {prepared.kernel.release}")
            rep = boot(w, prepared, i, timeout_s)
            killed = "" if rep["workload"].get("completed") else "; the workload was killed"
            progress(
                f"run {i + 1}/{runs}: done in {rep['wall_s']}s{killed} "
                f"(zswpout {rep['vmstat'].get('zswpout', 0)}, "
                f"pgdemote_kswapd {rep['vmstat'].get('pgdemote_kswapd', 0)})"
            )
            reports.append(rep)
            if trace is not None:
                report = workdir / f"report-{i}.txt"
                text = report.read_bytes().decode(errors="replace")
                (workdir / f"trace-{i}.txt").write_text(trace_section(text) + "\n")
        doc = aggregate(w, reports, prepared)
        if trace is not None:
            doc["guest"]["trace"] = {
                "events": list(trace.events),
                "functions": list(trace.functions),
                "buffer_kb": trace.buffer_kb,
            }
        return doc
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


def merge(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """One recording of the runs of two: `new` appended to `old`.

    Both must record the same workload file on the same kernel release. A
    counter a recording lacks was zero in all of its runs (see aggregate()).
    Per-run data the older one did not record (the zones) is left empty for
    its runs. CPU times (``workload.cpu_ns``, ``kthreads.*``) are not zero
    where they were not measured: they keep the values of the runs that
    measured them, in order, as ``guest.progress_cpu_ns`` does, so the two
    stay aligned run by run.
    """
    for key in ("schema", "workload", "workload_sha256"):
        if old.get(key) != new.get(key):
            raise HarnessError(
                f"cannot append: the recordings differ in {key} "
                f"({old.get(key)!r} against {new.get(key)!r})"
            )
    for rec, which in ((old, "recording"), (new, "new runs")):
        traced = rec.get("guest", {}).get("trace")
        if traced:
            raise HarnessError(
                f"cannot append: the {which} were traced ({traced.get('buffer_kb')} KiB of "
                "the guest's memory held the trace buffer), not ordinary runs of the workload"
            )
    for key in ("lru_gen", "tiers"):
        if key in old["guest"] and old["guest"][key] != new["guest"].get(key):
            raise HarnessError(
                f"cannot append: the guest's {key} differs "
                f"({old['guest'][key]!r} against {new['guest'].get(key)!r})"
            )
    if old["kernel"].get("release") != new["kernel"].get("release"):
        raise HarnessError(
            "cannot append: recorded on kernel "
            f"{old['kernel'].get('release')}, this run on {new['kernel'].get('release')}"
        )
    n_old, n_new = int(old["runs"]), int(new["runs"])

    def cpu_time(k: str) -> bool:
        return k == "workload.cpu_ns" or k.startswith("kthreads.")

    def joined(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
        out = {}
        for k in sorted(set(a) | set(b)):
            # A counter a recording lacks was zero in its runs; a CPU time it
            # lacks was not measured there: only the measuring runs count.
            va = list(a[k]["values"]) if k in a else [] if cpu_time(k) else [0] * n_old
            vb = list(b[k]["values"]) if k in b else [] if cpu_time(k) else [0] * n_new
            out[k] = _range(va + vb)
        return out

    doc = dict(new)
    doc["runs"] = n_old + n_new
    doc["counters"] = joined(old["counters"], new["counters"])
    og, ng = old["guest"], new["guest"]
    guest = dict(ng)
    guest["meminfo"] = joined(og.get("meminfo", {}), ng.get("meminfo", {}))
    # elapsed_ns holds one value per completed run, or [0] for none.
    elapsed = [v for v in [*og["elapsed_ns"]["values"], *ng["elapsed_ns"]["values"]] if v]
    guest["elapsed_ns"] = _range(elapsed or [0])
    guest["wall_s"] = _range(list(og["wall_s"]["values"]) + list(ng["wall_s"]["values"]))
    op, np_ = og.get("progress_ns", {}), ng.get("progress_ns", {})
    if op.get("values") and np_.get("values") and op.get("every") != np_.get("every"):
        raise HarnessError(
            "cannot append: clock readings every "
            f"{op.get('every')} accesses in the recording, every {np_.get('every')} in this one"
        )
    guest["progress_ns"] = {
        "every": np_.get("every") if np_.get("values") else op.get("every", 0),
        "values": list(op.get("values", [])) + list(np_.get("values", [])),
    }
    guest["progress_cpu_ns"] = list(og.get("progress_cpu_ns", [])) + list(
        ng.get("progress_cpu_ns", [])
    )
    guest["zones"] = list(og.get("zones") or [[]] * n_old) + list(ng.get("zones") or [[]] * n_new)
    doc["guest"] = guest
    return doc


def write_json(path: Path, doc: Any) -> None:
    """Write atomically, so an interrupted recording never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
