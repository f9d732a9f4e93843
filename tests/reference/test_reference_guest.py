"""Guest configuration, QEMU command lines, the report format and the bounded boot."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from reference_samples import MINIMAL, TIERED

from tiersim.reference.errors import GuestError, GuestTimeout, ToolError
from tiersim.reference.guest import (
    BEGIN,
    END,
    TAIL,
    BootFiles,
    GuestTrace,
    init_script,
    parse_report,
    qemu_command,
    run_qemu,
    trace_section,
)
from tiersim.reference.spec import parse_workload


def _files(tmp_path: Path, swap: bool = True) -> BootFiles:
    return BootFiles(
        kernel=tmp_path / "vmlinuz",
        initramfs=tmp_path / "initrd",
        data_disk=tmp_path / "data.img",
        swap_disk=tmp_path / "swap.img" if swap else None,
        report=tmp_path / "report.txt",
        console=tmp_path / "console.log",
    )


def test_init_script_applies_the_workload() -> None:
    text = MINIMAL.replace("[cgroup]", '[cgroup]\nzswap_writeback = false\nzswap_max = "4MiB"')
    w = parse_workload(text + "\n[tunables]\nswappiness = 100\n")
    s = init_script(w, ["virtio_blk"])
    assert s.startswith("#!/bin/sh\n")
    assert "insmod /lib/modules/virtio_blk.ko" in s
    assert "echo lz4 > /sys/module/zswap/parameters/compressor" in s
    # The compressor is set before zswap is enabled.
    assert s.index("parameters/compressor") < s.index("parameters/enabled")
    assert "echo Y > /sys/module/zswap/parameters/enabled" in s
    assert "echo 20 > /sys/module/zswap/parameters/max_pool_percent" in s
    assert f"echo {8 << 20} > /sys/fs/cgroup/ref/memory.max" in s
    assert f"echo {4 << 20} > /sys/fs/cgroup/ref/memory.zswap.max" in s
    assert "echo 0 > /sys/fs/cgroup/ref/memory.zswap.writeback" in s
    assert "echo 100 > /proc/sys/vm/swappiness" in s
    assert "echo 0 > /proc/sys/kernel/numa_balancing" in s
    assert "mkswap /dev/vdb" in s and "swapon /dev/vdb" in s
    assert "echo never > /sys/kernel/mm/transparent_hugepage/enabled" in s
    # The kernel reclaims from the active/inactive lists tiersim models
    # (tunables.lru_gen), and the report says which LRU it used.
    enable = "echo n > /sys/kernel/mm/lru_gen/enabled"
    assert enable in s and s.index(enable) < s.index("sec mm") < s.index("exec /workload")
    with_mglru = init_script(parse_workload(text + "\n[tunables]\nlru_gen = true\n"), [])
    assert "echo y > /sys/kernel/mm/lru_gen/enabled" in with_mglru
    # Counters are read while the workload's memory is still mapped.
    assert s.index("read done < /run/ctl") < s.index("sec vmstat-end") < s.index("kill -9 $WL")
    assert s.rstrip().endswith("poweroff -f")


def test_init_script_tiers() -> None:
    s = init_script(parse_workload(TIERED), [])
    assert "echo true > /sys/kernel/mm/numa/demotion_enabled" in s
    assert "echo 2 > /proc/sys/kernel/numa_balancing" in s
    assert "mkswap" not in s


def test_qemu_single_node(tmp_path: Path) -> None:
    cmd = qemu_command(parse_workload(MINIMAL), _files(tmp_path), "qemu-system-x86_64")
    assert cmd[0] == "qemu-system-x86_64"
    assert cmd[cmd.index("-accel") + 1] == "tcg"
    assert cmd[cmd.index("-m") + 1] == "256M"
    assert "-numa" not in cmd
    serials = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-serial"]
    assert serials == [f"file:{tmp_path / 'console.log'}", f"file:{tmp_path / 'report.txt'}"]
    drives = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-drive"]
    assert (
        drives[0].startswith(f"file={tmp_path / 'data.img'},if=virtio")
        and "readonly=on" in drives[0]
    )
    assert drives[1].startswith(f"file={tmp_path / 'swap.img'},if=virtio")


def test_qemu_hmat(tmp_path: Path) -> None:
    cmd = qemu_command(parse_workload(TIERED), _files(tmp_path, swap=False), "qemu")
    assert cmd[cmd.index("-machine") + 1] == "pc,hmat=on"
    assert cmd[cmd.index("-m") + 1] == "320M"
    numa = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-numa"]
    assert "node,nodeid=0,memdev=m0,initiator=0,cpus=0" in numa
    assert "node,nodeid=1,memdev=m1,initiator=0" in numa  # no CPUs on node 1
    assert any("target=1" in n and "latency=250" in n for n in numa)
    assert any("target=0" in n and "bandwidth=20480M" in n for n in numa)
    assert any("target=1" in n and "bandwidth=10240M" in n for n in numa)
    assert "memory-backend-ram,id=m1,size=128M" in cmd


def _report(**sections: list[str]) -> str:
    out = ["noise before"]
    for name, lines in sections.items():
        out += [
            f"{BEGIN}{name.replace('_', '-')}{TAIL}\r",
            *lines,
            f"{END}{name.replace('_', '-')}{TAIL}",
        ]
    return "\n".join(out) + "\n"


GOOD = dict(
    kernel=["7.3.4+deb13-amd64"],
    vmstat_start=["nr_free_pages 100", "zswpout 5", "pgfault 10"],
    vmstat_end=["nr_free_pages 50", "zswpout 105", "pgfault 60"],
    zswap_end=["stored_pages 40", "pool_total_size 81920"],
    workload=[
        "npages 10",
        "elapsed_ns 123",
        "accesses 20",
        "stores 10",
        "cpu_ns 100",
        "progress_every 8",
        "progress_ns 0,40,90",
        "progress_cpu_ns 0,30,70",
    ],
    kthreads_start=["kswapd0 1000", "kswapd1 50"],
    kthreads_end=["kswapd0 4000", "kswapd1 50", "kswapd2 7"],
    meminfo_start=["node0.MemFree 1000", "node0.MemTotal 2000"],
    tiers=["memory_tier4 0", "memory_tier22 1"],
    mm=["lru_gen 0x0000"],
    outcome=["completed 1"],
    status=["ok"],
)


def test_parse_report() -> None:
    rep = parse_report(_report(**GOOD))
    assert rep["kernel"] == "7.3.4+deb13-amd64"
    assert rep["vmstat"] == {"zswpout": 100, "pgfault": 50}  # increases; gauges dropped
    assert rep["zswap"] == {"stored_pages": 40, "pool_total_size": 81920}
    assert rep["meminfo"] == {"node0.MemFree": 1024000, "node0.MemTotal": 2048000}
    assert rep["tiers"] == {"memory_tier4": "0", "memory_tier22": "1"}
    assert rep["mm"] == {"lru_gen": "0x0000"}
    assert rep["workload"] == {
        "npages": 10,
        "elapsed_ns": 123,
        "accesses": 20,
        "stores": 10,
        "cpu_ns": 100,
        "progress_every": 8,
        "completed": 1,
    }
    assert rep["progress_ns"] == [0, 40, 90]
    # The program's CPU time at the same readings; kswapd's CPU over the
    # workload (a thread seen only at the end is left out).
    assert rep["progress_cpu_ns"] == [0, 30, 70]
    assert rep["kthreads"] == {"kswapd0": 3000, "kswapd1": 0}


def test_parse_report_killed_workload() -> None:
    rep = parse_report(_report(**{**GOOD, "workload": ["npages 10"], "outcome": ["completed 0"]}))
    assert rep["workload"] == {"npages": 10, "completed": 0}
    assert rep["progress_ns"] == [] and rep["progress_cpu_ns"] == []


def test_parse_report_failures() -> None:
    with pytest.raises(GuestError, match="status 'missing'"):
        parse_report("nothing at all", console="[ 1.0] Kernel panic - not syncing")
    bad = {**GOOD, "status": ["failed"], "error": ["insmod virtio_blk"]}
    with pytest.raises(GuestError, match="insmod virtio_blk"):
        parse_report(_report(**bad))
    with pytest.raises(GuestError, match="the workload failed"):
        parse_report(_report(**{**GOOD, "workload": ["error open: No such file"]}))


def _fake_qemu(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake-qemu"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_hanging_guest_times_out(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    # A "QEMU" that prints a boot line, then hangs -- with a child, as QEMU's
    # helper threads and processes would: the whole group must die.
    qemu = _fake_qemu(tmp_path, f"echo 'Booting Linux' > {console}\nsleep 300 &\nsleep 300\n")
    start = time.monotonic()
    with pytest.raises(GuestTimeout) as info:
        run_qemu([str(qemu)], 1.5, console)
    assert time.monotonic() - start < 10
    msg = str(info.value)
    assert "did not finish within 2s" in msg and "QEMU was killed" in msg
    assert "Booting Linux" in msg


def test_qemu_error_is_reported(tmp_path: Path) -> None:
    qemu = _fake_qemu(tmp_path, "echo 'qemu: -numa: bad option' >&2\nexit 1\n")
    with pytest.raises(GuestError, match="bad option"):
        run_qemu([str(qemu)], 10, tmp_path / "console.log")


def test_missing_qemu(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="not found"):
        run_qemu([str(tmp_path / "no-such-qemu")], 10, tmp_path / "console.log")


def test_guest_trace_lines_bracket_the_workload() -> None:
    trace = GuestTrace(events=("vmscan:mm_vmscan_memcg_reclaim_end",), functions=("shrink_memcg",))
    s = init_script(parse_workload(MINIMAL), [], trace)
    lines = s.splitlines()
    enable = lines.index(
        "[ -f /sys/kernel/tracing/events/vmscan/mm_vmscan_memcg_reclaim_end/enable ] "
        "&& echo 1 > /sys/kernel/tracing/events/vmscan/mm_vmscan_memcg_reclaim_end/enable"
    )
    # The function tracer only with a name the kernel took: an empty filter
    # would trace every function.
    tracer = lines.index(
        "grep -qv '^#' /sys/kernel/tracing/set_ftrace_filter && "
        "echo function > /sys/kernel/tracing/current_tracer"
    )
    start = next(i for i, line in enumerate(lines) if "exec /workload" in line)
    dump = lines.index("cat /sys/kernel/tracing/trace | sec trace")
    workload_out = lines.index("cat /run/workload.out | sec workload")
    assert enable < tracer < start < workload_out < dump
    assert "echo shrink_memcg >> /sys/kernel/tracing/set_ftrace_filter 2>/dev/null" in lines
    # Without tracing the script does not touch tracefs.
    assert "tracing" not in init_script(parse_workload(MINIMAL), [])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"events": ("mm_vmscan_kswapd_wake",)}, "not a tracepoint name"),
        ({"events": ("vmscan:x; reboot",)}, "not a tracepoint name"),
        ({"functions": ("f$(id)",)}, "not a kernel function name"),
        ({"buffer_kb": 1}, "at least 64 KiB"),
    ],
)
def test_guest_trace_refuses_names_it_cannot_pass_to_the_shell(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        GuestTrace(**kwargs)  # type: ignore[arg-type]


def test_trace_section_is_read_from_the_report() -> None:
    text = _report(**GOOD, trace=["# tracer: function", "  workload-1 [000] 1.0: shrink_memcg"])
    assert trace_section(text).splitlines()[1].endswith("shrink_memcg")
    assert trace_section(_report(**GOOD)) == ""


def test_recording_with_a_trace_needs_a_directory_to_keep_it() -> None:
    from tiersim.reference.errors import HarnessError
    from tiersim.reference.record import record

    with pytest.raises(HarnessError, match="keep"):
        record(parse_workload(MINIMAL), trace=GuestTrace(events=("vmscan:x",)))


def test_recording_keeps_clock_readings_when_the_first_run_was_killed() -> None:
    from tiersim.reference.record import aggregate

    def report(completed: int, progress: list[int]) -> dict[str, object]:
        workload = {"completed": completed}
        if completed:
            workload |= {"elapsed_ns": 90, "accesses": 20, "progress_every": 8}
        return {
            "vmstat": {},
            "zswap": {},
            "meminfo": {},
            "workload": workload,
            "progress_ns": progress,
        }

    doc = aggregate(parse_workload(MINIMAL), [report(0, []), report(1, [0, 40, 70])])
    assert doc["guest"]["progress_ns"] == {"every": 8, "values": [[0, 40, 70]]}


def test_recording_keeps_cpu_readings_and_kswapd_time() -> None:
    from tiersim.reference.record import aggregate

    reps = [
        {
            "vmstat": {},
            "zswap": {},
            "meminfo": {},
            "workload": {"completed": 1, "elapsed_ns": 90, "cpu_ns": 60, "progress_every": 8},
            "progress_ns": [0, 40, 70],
            "progress_cpu_ns": [0, 20 + i, 50],
            "kthreads": {"kswapd0": 1000 * (i + 1)},
        }
        for i in range(2)
    ]
    doc = aggregate(parse_workload(MINIMAL), reps)
    assert doc["guest"]["progress_cpu_ns"] == [[0, 20, 50], [0, 21, 50]]
    assert doc["counters"]["kthreads.kswapd0"]["values"] == [1000, 2000]
    assert doc["counters"]["workload.cpu_ns"]["values"] == [60, 60]
