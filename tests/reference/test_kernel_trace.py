"""`tiersim reference trace`: summaries of the kernel traces a reference run keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiersim.cli import main
from tiersim.reference.kernel_trace import counts, parse, read, runs_of, spans

# The shape of /sys/kernel/tracing/trace: function calls and a tracepoint, two tasks.
TRACE = """\
# tracer: function
#
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
        workload-170     [000] .....    10.000000: zswap_store <-swap_writeout
    kworker/u4:0-33      [000] .....    10.100000: shrink_worker <-process_one_work
    kworker/u4:0-33      [000] .....    10.100500: shrink_memcg_cb <-__list_lru_walk_one
    kworker/u4:0-33      [000] .....    10.101000: shrink_memcg_cb <-__list_lru_walk_one
        workload-170     [000] .....    10.150000: zswap_store <-swap_writeout
    kworker/u4:0-33      [000] .....    10.300000: shrink_memcg_cb <-__list_lru_walk_one
    kworker/u4:0-33      [000] .....    10.300100: zswap_store <-swap_writeout
    kworker/u4:0-33      [000] .....    11.000000: shrink_worker <-process_one_work
        workload-170     [000] d....    11.200000: mm_vmscan_memcg_reclaim_end: nr_reclaimed=32
        workload-170     [000] .....    11.500000: zswap_load <-swap_read_folio
"""


def test_lines_are_calls_and_events_by_task() -> None:
    lines = parse(TRACE)
    assert len(lines) == 10
    assert {ln.task for ln in lines} == {"workload", "kworker/u4:0"}
    assert lines[-2].name == "mm_vmscan_memcg_reclaim_end"
    table = counts(lines)
    assert table[("workload", "zswap_store")].calls == 2
    assert table[("kworker/u4:0", "shrink_memcg_cb")].calls == 3
    # Times from the trace's first line.
    assert table[("workload", "zswap_load")].first == pytest.approx(1.5)


def test_each_run_of_a_driving_function_counts_its_own_task_only() -> None:
    first, second = runs_of(parse(TRACE), "shrink_worker")
    # The workload's store at 10.15 s is not the worker's.
    assert first.calls == {"shrink_memcg_cb": 3, "zswap_store": 1}
    assert first.start == pytest.approx(0.1) and first.duration == pytest.approx(0.2001)
    assert second.calls == {} and second.duration == 0


def test_cli_prints_counts_and_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "trace-0.txt"
    path.write_text(TRACE)
    assert main(["reference", "trace", str(path), "--runs-of", "shrink_worker", "--each"]) == 0
    out = capsys.readouterr().out
    assert "kworker/u4:0 shrink_memcg_cb" in out
    assert "2 calls of shrink_worker" in out
    # One line per call: its start, duration and what it called.
    assert "     0.100     200.1" in out


def test_cli_names_a_file_that_is_not_a_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("nothing traced here\n")
    assert main(["reference", "trace", str(path)]) == 2
    assert f"{path}: no traced calls or events" in capsys.readouterr().err
    assert main(["reference", "trace", str(tmp_path / "missing.txt")]) == 2
    assert "cannot read the trace" in capsys.readouterr().err


def test_an_event_keeps_its_name_whatever_its_fields_hold() -> None:
    line = "  sh-90 [000] ..... 1.000000: sched_process_exec: filename=/bin/a<-b pid=90\n"
    (ln,) = parse(line)
    assert ln.name == "sched_process_exec"


def test_a_run_ends_when_the_function_runs_again_on_another_thread() -> None:
    text = """\
    kworker/0:1-20 [000] ..... 1.000000: shrink_worker <-process_one_work
    kworker/0:1-20 [000] ..... 1.001000: shrink_memcg_cb <-walk
    kworker/0:2-21 [000] ..... 2.000000: shrink_worker <-process_one_work
    kworker/0:1-20 [000] ..... 2.500000: shrink_memcg_cb <-walk
    kworker/0:2-21 [000] ..... 2.600000: shrink_memcg_cb <-walk
"""
    first, second = runs_of(parse(text), "shrink_worker")
    # The first thread's later call belongs to no run: the work item had moved on.
    assert first.calls == {"shrink_memcg_cb": 1} and first.duration == pytest.approx(0.001)
    assert second.calls == {"shrink_memcg_cb": 1}


def test_a_trace_says_what_it_lost_and_what_was_not_understood() -> None:
    text = "# entries-in-buffer/entries-written: 3/10   #P:1\n" + TRACE + "garbage line\n"
    trace = read(text.splitlines())
    assert trace.lost == 7 and trace.not_understood == 1
    assert any("overwrote its oldest 7 entries" in n for n in trace.notes())


def test_each_needs_a_function(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "trace-0.txt"
    path.write_text(TRACE)
    assert main(["reference", "trace", str(path), "--each"]) == 2
    assert "--each" in capsys.readouterr().err


SPANS = """\
    workload-170  [000] .....  1.000000: mm_vmscan_memcg_reclaim_begin: order=0 memcg_id=28
    kworker/u4:0-33  [000] .....  1.001000: mm_vmscan_memcg_reclaim_begin: order=0 memcg_id=28
    workload-170  [000] .....  1.004000: mm_vmscan_memcg_reclaim_end: nr_reclaimed=40 pid=170
    kworker/u4:0-33  [000] .....  1.011000: mm_vmscan_memcg_reclaim_end: nr_reclaimed=50 pid=33
    workload-170  [000] .....  2.000000: mm_vmscan_memcg_reclaim_begin: order=0 memcg_id=28
    workload-170  [000] .....  2.002000: mm_vmscan_memcg_reclaim_end: nr_reclaimed=10 pid=170
    workload-170  [000] .....  3.000000: mm_vmscan_direct_reclaim_end: nr_reclaimed=99
"""


def test_begin_end_pairs_sum_guest_time_and_pages_per_task() -> None:
    found = {(sp.task, sp.event): sp for sp in spans(parse(SPANS))}
    # An end without its begin (the trace started inside the span) is left out.
    assert set(found) == {
        ("workload", "mm_vmscan_memcg_reclaim"),
        ("kworker/u4:0", "mm_vmscan_memcg_reclaim"),
    }
    mine = found[("workload", "mm_vmscan_memcg_reclaim")]
    # The worker's span overlaps the workload's: pairs are matched within a pid.
    assert (mine.calls, mine.reclaimed) == (2, 50)
    assert mine.seconds == pytest.approx(0.006)
    assert mine.us_per_page == pytest.approx(120.0)
    worker = found[("kworker/u4:0", "mm_vmscan_memcg_reclaim")]
    assert worker.seconds == pytest.approx(0.010) and worker.reclaimed == 50


def test_cli_prints_reclaim_spans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "trace-0.txt"
    path.write_text(SPANS)
    assert main(["reference", "trace", str(path)]) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("workload mm_vmscan_memcg_reclaim "))
    assert row.split()[2:] == ["2", "0.006", "3.00", "50", "120.0"]
