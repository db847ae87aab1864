"""Watching a task to its end while telling someone how far it got.

The library reports progress through a small `Reporter` protocol; the command line plugs in
rich progress bars, tests and scripts plug in nothing (`watch` then only logs).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from coffea_hpc.backends.protocol import Task, TaskProgress
from coffea_hpc.processing.result import Result

__all__ = ["Reporter", "watch"]

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def start(self, label: str, total: int, unit: str) -> None: ...

    def update(self, progress: TaskProgress) -> None: ...

    def finish(self, progress: TaskProgress) -> None: ...


def watch(
    task: Task,
    label: str,
    reporter: Reporter | None = None,
    *,
    unit: str = "chunks",
    poll: float = 0.2,
    on_tick: Callable[[Task], None] | None = None,
    workers: Callable[[], int | None] | None = None,
    blocks: Callable[[], tuple[int, int] | None] | None = None,
    cores: int | None = None,
) -> Result:
    """Wait for ``task``, updating ``reporter``; return its result (or raise its error).

    Interrupting (Ctrl-C) cancels the task before re-raising, so no work keeps running.
    ``on_tick`` is called between polls (checkpointing hooks in there). ``workers`` counts
    the backend's connected workers (``Backend.connected_workers``): progress then shows a
    run that waits for a batch queue as waiting, not as stuck, and the log says when
    workers come and go. ``blocks`` gives the backend's batch jobs (pending, running),
    shown beside the workers while a run scales out.
    ``cores``: the backend's slots, for the rate per core where the connected workers are
    not known.
    """
    news = getattr(task, "wait_for_news", None)
    shown = getattr(task, "arrivals", 0)  # results in before the start are news too
    first = task.progress()
    if reporter is not None:
        reporter.start(label, first.total, unit)
    with _WorkerCount(workers, blocks) as count:
        logged: int | None = None
        try:
            while not _wait(task, news, poll, shown):
                logged = _log_workers(label, count.value, logged)
                progress = task.progress()
                shown = getattr(task, "arrivals", 0)
                if reporter is not None:
                    reporter.update(replace(progress, workers=count.value,
                                            blocks=count.blocks, cores=cores))
                if on_tick is not None:
                    on_tick(task)
        except BaseException:
            task.cancel()
            raise
        finally:
            last = replace(task.progress(), workers=count.settled(timeout=1.0), cores=cores)
            _log_workers(label, last.workers, logged)
            if reporter is not None:
                reporter.finish(last)
    log.info("%s: %d/%d %s done, %d failed", label, last.done, last.total, unit, last.failed)
    return task.result()


def _log_workers(label: str, count: int | None, logged: int | None) -> int | None:
    """Log the worker count when it changed; the count now logged."""
    if count is not None and count != logged:
        log.info("%s: %d %s connected", label, count, "worker" if count == 1 else "workers")
        return count
    return logged


_QUIET = 0.05
"""Least seconds between two updates: a stream of results is shown in steps."""


def _wait(task: Task, news: Callable[..., bool] | None, poll: float, shown: int) -> bool:
    """Wait for the next update, then return whether the task is done: as soon as a result
    arrives that was not ``shown`` (an analyst watches for the first chunk of a short run),
    or after ``poll`` seconds without one."""
    if news is None:
        return task.wait(timeout=poll)
    return bool(news(poll, since=shown, quiet=min(_QUIET, poll)))


class _WorkerCount:
    """Counts workers every ``interval`` seconds in a daemon thread, because counting can
    block (Parsl asks its interchange) and the loop collecting results must not."""

    def __init__(self, count: Callable[[], int | None] | None,
                 blocks: Callable[[], tuple[int, int] | None] | None = None,
                 interval: float = 2.0) -> None:
        self.value: int | None = None
        self.blocks: tuple[int, int] | None = None
        self._count = count
        self._blocks = blocks
        self._interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        """Count again now, not at the end of the interval."""
        self._counted = threading.Event()
        self._thread: threading.Thread | None = None

    def settled(self, timeout: float) -> int | None:
        """A count taken now, waiting up to ``timeout`` for it: a short task can end
        between two counts, and its last word should not be one from before its workers
        connected."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return self.value
        self._counted.clear()
        self._wake.set()
        self._counted.wait(timeout)
        return self.value

    def __enter__(self) -> _WorkerCount:
        if self._count is not None:
            self._thread = threading.Thread(target=self._run, name="coffea-hpc-workers",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        assert self._count is not None
        while not self._stop.is_set():
            try:
                self.value = self._count()
                if self._blocks is not None:
                    self.blocks = self._blocks()
            except Exception as err:  # the backend is shutting down, its service is gone
                log.debug("cannot count workers: %s", err)
                return
            finally:
                self._counted.set()
            self._wake.wait(self._interval)
            self._wake.clear()
