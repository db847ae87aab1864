"""The command line's progress bars: what they show about workers."""

from __future__ import annotations

import io

from rich.console import Console

from coffea_hpc.backends.protocol import TaskProgress
from coffea_hpc.cli.progress import RichReporter


def _shown(*updates: TaskProgress) -> str:
    console = Console(file=io.StringIO(), width=160, record=True)
    reporter = RichReporter(console)
    reporter.start("processing", 10, "chunks")
    for progress in updates:
        reporter.update(progress)
    reporter.finish(updates[-1])
    return console.export_text()


def test_a_run_without_workers_says_it_waits_for_them():
    waiting = TaskProgress(total=10, done=0, failed=0, total_weight=100, done_weight=0,
                           workers=0)
    assert "waiting for workers" in _shown(waiting)
    running = TaskProgress(total=10, done=3, failed=0, total_weight=100, done_weight=30,
                           workers=64)
    assert "64 workers" in _shown(waiting, running)
    assert "waiting for workers" not in _shown(waiting, running)
    unknown = TaskProgress(total=10, done=3, failed=0, total_weight=100, done_weight=30)
    assert "worker" not in _shown(unknown)


def test_failures_show_done_failed_and_retrying_apart():
    failing = TaskProgress(total=10, done=4, failed=1, total_weight=100, done_weight=40,
                           retries=3, retrying=2)
    shown = _shown(failing)
    assert "5/10" in shown  # the bar counts what is finished, failed or not
    assert "4 done, 1 failed, 2 retrying, 3 retries" in shown
    clean = TaskProgress(total=10, done=4, failed=0, total_weight=100, done_weight=40)
    assert "failed" not in _shown(clean) and "retr" not in _shown(clean)


def test_counts_are_singular_when_one():
    from coffea_hpc.cli.progress import summary_table

    report = {"status": "complete", "datasets": [], "events": 1, "wall_time_s": 1.0,
              "events_per_s": 1.0, "backend": "iterative", "workers": 1,
              "failed_chunks": [{}], "skipped_files": [{}, {}]}
    console = Console(file=io.StringIO(), width=300, record=True)
    console.print(summary_table(report))
    text = " ".join(console.export_text().split())  # the caption wraps at the table's width
    assert "1 event in" in text and "with 1 worker;" in text
    assert "1 failed chunk," in text and "2 skipped files" in text


def test_the_rate_is_shown_per_core_too():
    """Per connected worker where the backend counts them, else per slot of the backend."""
    slots = TaskProgress(total=10, done=3, failed=0, total_weight=100_000, done_weight=30_000,
                         cores=4)
    shown = _shown(slots)
    assert "ev/s" in shown and "Hz/core" in shown
    nothing = TaskProgress(total=10, done=3, failed=0, total_weight=100_000,
                           done_weight=30_000)
    assert "Hz/core" not in _shown(nothing)


def test_the_summary_says_where_the_time_went():
    from coffea_hpc.cli.progress import summary_table

    report = {"status": "complete", "datasets": [], "events": 1000, "wall_time_s": 2.0,
              "events_per_s": 500.0, "backend": "futures", "workers": 2, "failed_chunks": [],
              "skipped_files": [], "stages_s": {"processing": 1.5},
              "performance": {"events_per_s": 666.7, "hz_per_core": 333.3, "utilisation": 0.9,
                              "queue_wait_s": 0.25, "lost_to_retries_s": 0.5,
                              "lost_to_ended_workers_s": 0.0,
                              "slowest_files": [{"file": "/data/a.root", "busy_s": 1.2,
                                                 "events_per_s": 400.0}]}}
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(summary_table(report))
    text = " ".join(console.export_text().split())  # the caption wraps at the table's width
    assert "667 events/s, 333 Hz/core, workers busy 90%, queued 0.2 s" in text
    assert "lost to failures 0.5 s" in text and "slowest file: /data/a.root (1.2 s" in text
