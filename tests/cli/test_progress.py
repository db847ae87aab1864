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
