"""Rich progress bars and the closing summary of the command line."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from coffea_hpc._text import count
from coffea_hpc.backends.protocol import TaskProgress

__all__ = ["RichReporter", "summary_table"]


class _RateColumn(ProgressColumn):
    """Events per second for chunk bars (files per second would mean little), and per core:
    per connected worker where the backend counts them, else per slot."""

    def render(self, task: Task) -> Text:
        events = task.fields.get("events", 0)
        elapsed = task.elapsed or 0.0
        if not events or elapsed <= 0:
            return Text("")
        rate = events / elapsed
        cores = task.fields.get("workers") or task.fields.get("cores")
        per_core = f" {_si(rate / cores)} Hz/core" if cores else ""
        return Text(f"{_si(rate)} ev/s{per_core}", style="progress.data.speed")


class _WorkersColumn(ProgressColumn):
    """Connected workers, where the backend can tell: a run waiting for its batch jobs to
    start says so instead of looking stuck."""

    def render(self, task: Task) -> Text:
        workers = task.fields.get("workers")
        if workers is None or task.finished:
            return Text("")
        blocks = task.fields.get("blocks")
        jobs = ""
        if blocks is not None and any(blocks):
            pending, running = blocks
            jobs = f" ({running} running, {pending} queued blocks)" if pending \
                else f" ({running} block{'s' if running != 1 else ''})"
        if workers == 0:
            return Text(f"waiting for workers{jobs}", style="yellow")
        return Text(f"{workers} worker{'s' if workers != 1 else ''}{jobs}",
                    style="progress.data.speed")


class _FailedColumn(ProgressColumn):
    """Once anything has failed, what is done, what failed for good and what is being
    retried, apart: the bar alone counts failed chunks as finished."""

    def render(self, task: Task) -> Text:
        failed = task.fields.get("failed", 0)
        retrying = task.fields.get("retrying", 0)
        retries = task.fields.get("retries", 0)
        if not (failed or retrying or retries):
            return Text("")
        parts = [f"{task.fields.get('done', 0)} done", f"{failed} failed"]
        if retrying:
            parts.append(f"{retrying} retrying")
        if retries:
            parts.append(count(retries, "retry"))
        return Text(", ".join(parts), style="red" if failed else "yellow")


class RichReporter:
    """A `coffea_hpc.progress.Reporter` drawing one bar per stage."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._task_id: Any = None

    def start(self, label: str, total: int, unit: str) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description:<13}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            _RateColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            _WorkersColumn(),
            _FailedColumn(),
            console=self.console,
            transient=False,
            refresh_per_second=5,
        )
        self._progress.start()
        self._task_id = self._progress.add_task(label, total=total, events=0, failed=0,
                                                done=0, retries=0, retrying=0, workers=None,
                                                blocks=None, cores=None,
                                                start_time=time.monotonic())

    def update(self, progress: TaskProgress) -> None:
        if self._progress is None:
            return
        self._progress.update(
            self._task_id,
            completed=progress.done + progress.failed,
            total=progress.total,
            events=progress.done_weight if progress.total_weight > progress.total else 0,
            done=progress.done,
            failed=progress.failed,
            retries=progress.retries,
            retrying=progress.retrying,
            workers=progress.workers,
            blocks=progress.blocks,
            cores=progress.cores,
        )

    def finish(self, progress: TaskProgress) -> None:
        if self._progress is None:
            return
        self.update(progress)
        self._progress.stop()
        self._progress = None


def summary_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"coffea-hpc run: {report['status']}", title_justify="left")
    for col in ("dataset", "files", "chunks", "events", "processed"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for ds in report["datasets"]:
        table.add_row(ds["name"], str(ds["files"]), str(ds["chunks"]), f"{ds['entries']:,}",
                      f"{ds['processed']:,}")
    table.caption = (
        f"{count(report['events'], 'event', thousands=True)} in {report['wall_time_s']:.1f} s "
        f"({_si(report['events_per_s'] or 0)} events/s) on {report['backend']} "
        f"with {count(report['workers'], 'worker') if report['workers'] else '? workers'}; "
        f"{count(len(report['failed_chunks']), 'failed chunk')}, "
        f"{count(len(report['skipped_files']), 'skipped file')}"
    )
    stages = report.get("stages_s") or {}
    if stages:
        table.caption += "\ntime: " + ", ".join(
            f"{name.replace('_', ' ')} {seconds:.1f} s" for name, seconds in stages.items())
    perf = report.get("performance") or {}
    if perf.get("events_per_s") is not None:
        table.caption += "\n" + _performance_line(perf)
    table.caption_justify = "left"
    return table


def _performance_line(perf: dict[str, Any]) -> str:
    """Processing throughput and where the time went (see docs/performance.md)."""
    parts = [f"processing: {_si(perf['events_per_s'])} events/s"]
    if perf.get("hz_per_core") is not None:
        parts.append(f"{_si(perf['hz_per_core'])} Hz/core")
    if perf.get("utilisation") is not None:
        parts.append(f"workers busy {perf['utilisation']:.0%}")
    parts.append(f"queued {perf['queue_wait_s']:.1f} s")
    lost = perf["lost_to_retries_s"] + perf["lost_to_ended_workers_s"]
    if lost:
        parts.append(f"lost to failures {lost:.1f} s")
    line = ", ".join(parts)
    slowest = perf.get("slowest_files") or []
    if slowest:
        top = slowest[0]
        line += f"\nslowest file: {top['file']} ({top['busy_s']:.1f} s, " \
                f"{_si(top['events_per_s'] or 0)} events/s)"
    return line


def _si(value: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"
