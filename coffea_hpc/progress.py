"""Watching a task to its end while telling someone how far it got.

The library reports progress through a small `Reporter` protocol; the command line plugs in
rich progress bars, tests and scripts plug in nothing (`watch` then only logs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
) -> Result:
    """Wait for ``task``, updating ``reporter``; return its result (or raise its error).

    Interrupting (Ctrl-C) cancels the task before re-raising, so no work keeps running.
    ``on_tick`` is called between polls (checkpointing hooks in there).
    """
    first = task.progress()
    if reporter is not None:
        reporter.start(label, first.total, unit)
    try:
        while not task.wait(timeout=poll):
            if reporter is not None:
                reporter.update(task.progress())
            if on_tick is not None:
                on_tick(task)
    except BaseException:
        task.cancel()
        raise
    finally:
        last = task.progress()
        if reporter is not None:
            reporter.finish(last)
    log.info("%s: %d/%d %s done, %d failed", label, last.done, last.total, unit, last.failed)
    return task.result()
