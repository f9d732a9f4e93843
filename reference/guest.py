"""Booting the guest: its init script, the QEMU command line, a bounded run, its report.

The guest has two serial ports. ``ttyS0`` is the kernel console, saved to a
log for diagnosis. ``ttyS1`` carries only the report: sections between
``===TIERSIM BEGIN <name>===`` and ``===TIERSIM END <name>===`` markers,
which the init script writes and `parse_report` reads. Kernel messages can
never interleave with the counters that way.

Every boot is bounded by a wall-clock timeout; QEMU runs in its own process
group and is killed with it on expiry, and the error says what the console
showed last.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import GuestError, GuestTimeout, ToolError
from .spec import ReferenceWorkload
from .zones import guest_zones

BEGIN = "===TIERSIM BEGIN "
END = "===TIERSIM END "
TAIL = "==="
CGROUP = "/sys/fs/cgroup/ref"
ZSWAP_PARAMS = "/sys/module/zswap/parameters"
LRU_GEN = "/sys/kernel/mm/lru_gen/enabled"
# Each kswapd thread's CPU time so far, ns (the first field of schedstat:
# its sum_exec_runtime), as "kswapd0 123" lines.
KTHREADS = (
    "for p in /proc/[0-9]*; do read -r c < $p/comm 2>/dev/null || continue; "
    'case "$c" in kswapd*) read -r ns _ < $p/schedstat 2>/dev/null && echo "$c $ns";; esac; '
    "done"
)


def _yn(flag: bool) -> str:
    return "Y" if flag else "N"


def _limit(value: int | None) -> str:
    return "max" if value is None else str(value)


TRACEFS = "/sys/kernel/tracing"
_EVENT_RE = re.compile(r"^[a-z0-9_]+:[a-z0-9_]+$")
_FUNCTION_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


# The kernel's trace buffer, KiB. It is allocated in the guest when tracing
# starts, before the workload: with 32 MiB, zswap-demotion's zswap reached
# its pool limit and wrote back 11-13k pages, where untraced boots write none.
GUEST_TRACE_BUFFER_KB = 32768


@dataclass(frozen=True)
class GuestTrace:
    """Kernel tracing during the workload, for looking at what the counters sum up.

    ``events`` are tracepoints (``vmscan:mm_vmscan_memcg_reclaim_end``),
    ``functions`` kernel functions for the function tracer
    (``shrink_memcg``); names the kernel does not know are skipped, and the
    ``trace-available`` section of the report lists those it found. The trace
    buffer is read once the workload is done, into the report's ``trace``
    section (`trace_section`).
    """

    events: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    buffer_kb: int = GUEST_TRACE_BUFFER_KB

    def __post_init__(self) -> None:
        for name in self.events:
            if not _EVENT_RE.match(name):
                raise ValueError(f"not a tracepoint name (subsystem:event): {name!r}")
        for name in self.functions:
            if not _FUNCTION_RE.match(name):
                raise ValueError(f"not a kernel function name: {name!r}")
        if self.buffer_kb < 64:
            raise ValueError(f"trace buffer must be at least 64 KiB, got {self.buffer_kb}")

    def start_lines(self) -> list[str]:
        lines = [
            f"mount -t tracefs nodev {TRACEFS} 2>/dev/null",
            f"echo {self.buffer_kb} > {TRACEFS}/buffer_size_kb",
        ]
        found = []
        for name in self.events:
            path = f"{TRACEFS}/events/{name.replace(':', '/')}/enable"
            lines.append(f"[ -f {path} ] && echo 1 > {path}")
            found.append(f"[ -f {path} ] && echo event {name}")
        if self.functions:
            for name in self.functions:
                lines.append(f"echo {name} >> {TRACEFS}/set_ftrace_filter 2>/dev/null")
                found.append(f"grep -qx {name} {TRACEFS}/set_ftrace_filter && echo function {name}")
            # An empty filter would trace every function: only with a name the
            # kernel took.
            lines.append(
                f"grep -qv '^#' {TRACEFS}/set_ftrace_filter && "
                f"echo function > {TRACEFS}/current_tracer"
            )
        lines.append("{ " + "; ".join([*found, "true"]) + "; } | sec trace-available")
        lines.append(f"echo 1 > {TRACEFS}/tracing_on")
        return lines

    def stop_lines(self) -> list[str]:
        return [f"echo 0 > {TRACEFS}/tracing_on", f"cat {TRACEFS}/trace | sec trace"]


def trace_section(report_text: str) -> str:
    """The ``trace`` section of a report (the kernel's trace buffer), or ''."""
    return "\n".join(parse_sections(report_text).get("trace", []))


def init_script(
    w: ReferenceWorkload, modules: Sequence[str], trace: GuestTrace | None = None
) -> str:
    """The guest's /init: set the machine up as `w` says, run, report, power off.

    Order matters: swap and zswap must be configured before the workload
    starts; zswap's compressor is set before it is enabled (a new pool is
    made per compressor); transparent huge pages are off because tiersim
    models 4 KiB pages; ``numa_balancing`` is always written because the
    kernel turns it on by itself on a multi-node machine.
    """
    z = w.zswap
    t = w.tunables
    c = w.cgroup
    lines = [
        "#!/bin/sh",
        "# Generated by tiersim.reference.guest.init_script; runs as PID 1.",
        "export PATH=/bin",
        "/bin/busybox --install -s /bin",
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        "mount -t devtmpfs devtmpfs /dev",
        "mount -t tmpfs -o size=4m tmpfs /run",
        "mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null",
        "mount -t cgroup2 cgroup2 /sys/fs/cgroup",
        "R=/dev/ttyS1",
        "stty -F $R raw -echo 2>/dev/null",
        f'sec() {{ echo "{BEGIN}$1{TAIL}" >$R; cat >$R; echo "{END}$1{TAIL}" >$R; }}',
        f'fail() {{ echo "$*" | sec error; echo "{BEGIN}status{TAIL}" >$R; '
        f'echo failed >$R; echo "{END}status{TAIL}" >$R; poweroff -f; }}',
        'kv() { for f in "$@"; do [ -f "$f" ] && echo "${f##*/} $(cat "$f")"; done; }',
    ]
    for name in modules:
        lines.append(f"insmod /lib/modules/{name}.ko || fail insmod {name}")
    lines += [
        "uname -r | sec kernel",
        "n=0; while [ ! -b /dev/vda ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done",
        "[ -b /dev/vda ] || fail no data disk /dev/vda",
        "echo never > /sys/kernel/mm/transparent_hugepage/enabled",
        "echo never > /sys/kernel/mm/transparent_hugepage/defrag",
        f"echo {t.swappiness} > /proc/sys/vm/swappiness",
        f"echo {t.watermark_scale_factor} > /proc/sys/vm/watermark_scale_factor",
        f"echo {t.numa_balancing} > /proc/sys/kernel/numa_balancing 2>/dev/null"
        + (" || fail numa_balancing" if t.numa_balancing else ""),
        "[ -f /sys/kernel/mm/numa/demotion_enabled ] && "
        f"echo {'true' if t.demotion_enabled else 'false'} > /sys/kernel/mm/numa/demotion_enabled",
    ]
    if w.swap_bytes:
        lines += [
            "[ -b /dev/vdb ] || fail no swap disk /dev/vdb",
            "mkswap /dev/vdb >/dev/null || fail mkswap",
            "swapon /dev/vdb || fail swapon",
        ]
    lines += [
        f"echo {z.compressor} > {ZSWAP_PARAMS}/compressor || fail compressor {z.compressor}",
        f"echo {z.max_pool_percent} > {ZSWAP_PARAMS}/max_pool_percent",
        f"echo {z.accept_threshold_percent} > {ZSWAP_PARAMS}/accept_threshold_percent",
        f"echo {_yn(z.shrinker_enabled)} > {ZSWAP_PARAMS}/shrinker_enabled",
        f"echo {_yn(z.enabled)} > {ZSWAP_PARAMS}/enabled || fail zswap enable",
        "echo +memory > /sys/fs/cgroup/cgroup.subtree_control || fail memory controller",
        f"mkdir {CGROUP}",
        f"echo {_limit(c.memory_max)} > {CGROUP}/memory.max || fail memory.max",
        f"echo {_limit(c.memory_high)} > {CGROUP}/memory.high || fail memory.high",
        f"echo {_limit(c.zswap_max)} > {CGROUP}/memory.zswap.max || fail memory.zswap.max",
        f"echo {int(c.zswap_writeback)} > {CGROUP}/memory.zswap.writeback"
        " || fail memory.zswap.writeback",
        "sync; echo 3 > /proc/sys/vm/drop_caches",
        f"kv {ZSWAP_PARAMS}/* | sec params",
        # Which LRU the kernel reclaims with: the multi-gen LRU or the
        # active/inactive lists tiersim models (tunables.lru_gen).
        f"[ -f {LRU_GEN} ] && echo {_yn(t.lru_gen).lower()} > {LRU_GEN}",
        f"echo lru_gen $(cat {LRU_GEN} 2>/dev/null || echo absent) | sec mm",
        "for t in /sys/devices/virtual/memory_tiering/memory_tier*; do "
        '[ -d "$t" ] && echo "${t##*/} $(cat $t/nodelist)"; done | sec tiers',
        "for n in /sys/devices/system/node/node[0-9]*; do "
        "sed -n 's/^Node \\([0-9]*\\) \\(Mem[A-Za-z]*\\|Active\\|Inactive\\):"
        " *\\([0-9]*\\) kB/node\\1.\\2 \\3/p' $n/meminfo; done | sec meminfo-start",
        "grep -E '^(MemTotal|MemFree|MemAvailable):' /proc/meminfo"
        " | sed 's/: */ /; s/ kB//' | sec meminfo-global",
        "cat /proc/vmstat | sec vmstat-start",
        "cat /proc/pagetypeinfo 2>/dev/null | sec pagetypeinfo-start",
        "cat /proc/zoneinfo | sec zoneinfo-start",
        "kv /sys/kernel/debug/zswap/* | sec zswap-start",
        f"{KTHREADS} | sec kthreads-start",
        *(trace.start_lines() if trace else []),
        "mkfifo /run/ctl",
        f"sh -c 'echo $$ > {CGROUP}/cgroup.procs && "
        f"exec /workload /dev/vda {CGROUP}/memory.current 3>/run/ctl' > /run/workload.out 2>&1 &",
        "WL=$!",
        # Should the workload die before it opens the pipe, this wakes the reader.
        "( while kill -0 $WL 2>/dev/null; do sleep 1; done; echo exited > /run/ctl ) &",
        "read done < /run/ctl",
        f"{KTHREADS} | sec kthreads-end",
        "cat /proc/vmstat | sec vmstat-end",
        "cat /proc/pagetypeinfo 2>/dev/null | sec pagetypeinfo-end",
        "cat /proc/zoneinfo | sec zoneinfo-end",
        "kv /sys/kernel/debug/zswap/* | sec zswap-end",
        f"cat {CGROUP}/memory.stat | sec memory.stat",
        f"kv {CGROUP}/memory.current {CGROUP}/memory.peak {CGROUP}/memory.zswap.current "
        f"{CGROUP}/memory.swap.current | sec cgroup",
        f"cat {CGROUP}/memory.events | sec memory.events",
        "for n in /sys/devices/system/node/node[0-9]*; do "
        "sed -n 's/^Node \\([0-9]*\\) \\(Mem[A-Za-z]*\\):"
        " *\\([0-9]*\\) kB/node\\1.\\2 \\3/p' $n/meminfo; done | sec meminfo-end",
        "grep -E '^(Zswap|Zswapped|SwapTotal|SwapFree):' /proc/meminfo"
        " | sed 's/: */ /; s/ kB//' | sec meminfo-swap",
        "cat /run/workload.out | sec workload",
        *(trace.stop_lines() if trace else []),
        "kill -9 $WL 2>/dev/null",
        "dmesg | grep -iE 'oom|killed process|zswap|error|warn|Memory:|IO TLB|crashkernel"
        "|node [01]' | tail -n 60 | sec dmesg",
        # A workload the kernel killed (OOM) is an outcome to record, not a failure.
        '[ "$done" = done ] && echo "completed 1" | sec outcome'
        ' || echo "completed 0" | sec outcome',
        f'echo "{BEGIN}status{TAIL}" >$R; echo ok >$R; echo "{END}status{TAIL}" >$R',
        "sync",
        "poweroff -f",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initramfs: Path
    data_disk: Path
    swap_disk: Path | None
    report: Path
    console: Path


def _mib(n: int) -> int:
    return n // (1 << 20)


def qemu_command(w: ReferenceWorkload, files: BootFiles, qemu: str | Path) -> list[str]:
    """The QEMU command line for `w`.

    TCG only (no KVM here). A tiered machine is ``-machine pc,hmat=on`` with
    one memory backend per node, node 1 without CPUs, and HMAT latency and
    bandwidth entries from which the kernel computes each node's abstract
    distance (node 1 at 250 ns / 10 GB/s lands in memory_tier22 beside DRAM's
    memory_tier4, exactly the formula of mm/memory-tiers.c). No NIC, no
    display, no default devices: they only slow the boot.
    """
    total = w.memory_bytes
    cmd = [
        str(qemu),
        "-accel", "tcg",
        "-nodefaults",
        "-no-reboot",
        "-display", "none",
        "-monitor", "none",
        "-cpu", "max",
        "-smp", str(w.cpus),
        "-kernel", str(files.kernel),
        "-initrd", str(files.initramfs),
        "-append", "console=ttyS0 loglevel=4 panic=-1 rdinit=/init mitigations=off "
        "transparent_hugepage=never nokaslr",
        "-serial", f"file:{files.console}",
        "-serial", f"file:{files.report}",
        "-drive", f"file={files.data_disk},if=virtio,format=raw,readonly=on,cache=unsafe",
    ]  # fmt: skip
    if files.swap_disk is not None:
        cmd += ["-drive", f"file={files.swap_disk},if=virtio,format=raw,cache=unsafe"]
    if not w.tiered:
        cmd += ["-machine", "pc", "-m", f"{_mib(total)}M"]
        return cmd
    cmd += ["-machine", "pc,hmat=on", "-m", f"{_mib(total)}M"]
    cpus = f"0-{w.cpus - 1}" if w.cpus > 1 else "0"
    for i, node in enumerate(w.nodes):
        cmd += ["-object", f"memory-backend-ram,id=m{i},size={_mib(node.size)}M"]
        spec = f"node,nodeid={i},memdev=m{i},initiator=0"
        if i == 0:
            spec += f",cpus={cpus}"
        cmd += ["-numa", spec]
    for i, node in enumerate(w.nodes):
        base = f"hmat-lb,initiator=0,target={i},hierarchy=memory"
        cmd += [
            "-numa", f"{base},data-type=access-latency,latency={node.latency_ns}",
            # QEMU takes HMAT bandwidth in whole MiB/s.
            "-numa", f"{base},data-type=access-bandwidth,"
            f"bandwidth={max(1, round(node.bandwidth / (1 << 20)))}M",
        ]  # fmt: skip
    return cmd


def _tail(path: Path, n: int = 12) -> str:
    try:
        text = path.read_bytes().decode(errors="replace")
    except OSError:
        return "(no console output)"
    lines = [ln.rstrip("\r") for ln in text.splitlines() if ln.strip()]
    return "\n".join(lines[-n:]) if lines else "(no console output)"


def run_qemu(cmd: Sequence[str], timeout_s: float, console: Path) -> float:
    """Run QEMU to completion within `timeout_s`; return the wall time.

    On expiry the whole process group is killed and `GuestTimeout` carries
    the console's last lines, so a hang is reported, never waited out.
    """
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise ToolError(f"cannot run {cmd[0]}: not found") from None
    except PermissionError:
        raise ToolError(f"cannot run {cmd[0]}: permission denied") from None
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise GuestTimeout(
            f"the guest did not finish within {timeout_s:.0f}s; QEMU was killed. "
            f"Last console lines:\n{_tail(console)}"
        ) from None
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        msg = (out or b"").decode(errors="replace").strip()[-800:]
        raise GuestError(
            f"QEMU exited with status {proc.returncode}: {msg or '(no output)'}\n"
            f"Last console lines:\n{_tail(console)}"
        )
    return elapsed


# --------------------------------------------------------------------------
# The report.


def parse_sections(text: str) -> dict[str, list[str]]:
    """Sections of the report port; text outside markers is ignored."""
    out: dict[str, list[str]] = {}
    current: str | None = None
    for raw in text.splitlines():
        line = raw.replace("\r", "").rstrip()
        if line.startswith(BEGIN) and line.endswith(TAIL):
            current = line[len(BEGIN) : -len(TAIL)]
            out[current] = []
        elif line.startswith(END) and line.endswith(TAIL):
            current = None
        elif current is not None:
            out[current].append(line)
    return out


def parse_kv(lines: Sequence[str]) -> dict[str, int]:
    """``name value`` lines into integers; other lines (text values) are skipped."""
    out: dict[str, int] = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_progress(lines: Sequence[str], name: str = "progress_ns") -> list[int]:
    """The workload's clock readings (``progress_ns a,b,c``), ns since its start;
    ``progress_cpu_ns`` for its CPU time at the same points."""
    for line in lines:
        key, _, value = line.partition(" ")
        if key == name and value.strip():
            try:
                return [int(v) for v in value.strip().split(",")]
            except ValueError:
                return []
    return []


def parse_kv_text(lines: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if key:
            out[key] = value.strip()
    return out


def parse_report(text: str, console: str = "") -> dict[str, object]:
    """The counters of one boot, from the report port's text.

    ``vmstat`` holds, for every event counter of /proc/vmstat (not the
    ``nr_*`` gauges), its increase over the workload; ``zswap`` the debugfs
    values at the end; ``memory.stat``, ``cgroup`` and ``memory.events`` the
    cgroup's files at the end (the cgroup is new, so its counters are the
    workload's own).
    """
    sec = parse_sections(text)
    status = (sec.get("status") or ["missing"])[0].strip()
    if status != "ok":
        detail = "\n".join(sec.get("error", [])) or "\n".join(sec.get("workload", []))
        tail = "\n".join(console.splitlines()[-12:])
        raise GuestError(
            f"the guest reported status {status!r}: {detail or 'no detail'}"
            + (f"\nLast console lines:\n{tail}" if tail else "")
        )
    start = parse_kv(sec.get("vmstat-start", []))
    end = parse_kv(sec.get("vmstat-end", []))
    vmstat = {k: v - start.get(k, 0) for k, v in end.items() if not k.startswith("nr_")}
    zstart = parse_kv(sec.get("zswap-start", []))
    zend = parse_kv(sec.get("zswap-end", []))
    workload = parse_kv(sec.get("workload", []))
    completed = parse_kv(sec.get("outcome", [])).get("completed", 0)
    workload["completed"] = completed
    if "error" in " ".join(sec.get("workload", [])) or (
        completed and not {"elapsed_ns", "accesses"} <= set(workload)
    ):
        raise GuestError(
            "the workload failed: " + " / ".join(sec.get("workload", [])[-3:] or ["no output"])
        )
    progress = parse_progress(sec.get("workload", []))
    progress_cpu = parse_progress(sec.get("workload", []), "progress_cpu_ns")
    if not completed:
        # Killed by the kernel (the OOM killer): counters stand, timing does not.
        workload.pop("elapsed_ns", None)
        workload.pop("cpu_ns", None)
        progress = progress_cpu = []
    kt_start = parse_kv(sec.get("kthreads-start", []))
    kt_end = parse_kv(sec.get("kthreads-end", []))
    kthreads = {k: v - kt_start[k] for k, v in kt_end.items() if k in kt_start}
    swap = parse_kv(sec.get("meminfo-swap", []))
    return {
        "kernel": (sec.get("kernel") or ["?"])[0],
        "vmstat": vmstat,
        "zswap": zend,
        "zswap_start": zstart,
        "memory.stat": parse_kv(sec.get("memory.stat", [])),
        "cgroup": parse_kv(sec.get("cgroup", [])),
        "memory.events": parse_kv(sec.get("memory.events", [])),
        "meminfo": {
            **{k: v * 1024 for k, v in parse_kv(sec.get("meminfo-start", [])).items()},
            **{f"global.{k}": v * 1024 for k, v in parse_kv(sec.get("meminfo-global", [])).items()},
        },
        "meminfo_end": {
            **{k: v * 1024 for k, v in parse_kv(sec.get("meminfo-end", [])).items()},
            **{k: v * 1024 for k, v in swap.items()},
        },
        "tiers": parse_kv_text(sec.get("tiers", [])),
        "zones": guest_zones(sec.get("zoneinfo-start", []), sec.get("pagetypeinfo-start", [])),
        "params": parse_kv_text(sec.get("params", [])),
        "mm": parse_kv_text(sec.get("mm", [])),
        "workload": workload,
        "progress_ns": progress,
        "progress_cpu_ns": progress_cpu,
        "kthreads": kthreads,
        "dmesg": sec.get("dmesg", []),
    }
