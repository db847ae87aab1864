"""A pool of local worker processes (``concurrent.futures``).

Workers are forked from a server process that has already imported coffea-hpc, so they start
quickly and never inherit the driver's threads. (Like every process pool, this needs the
usual ``if __name__ == "__main__":`` guard in scripts.)

When one worker dies (an OOM kill, a segfault in a C extension), ``concurrent.futures``
breaks the whole pool and fails every queued element with it. Charging all of them a retry
would let one bad chunk exhaust everybody's retries, so this backend works out which element
was running in the dead process: that one fails (and the task's error policy decides), all
others are quietly resubmitted to a fresh pool.

A driver killed outright (SIGKILL, the out-of-memory killer) cannot shut its pool down, and
the pool does not notice on its own: a `Watchdog` stops the forkserver, the workers it forked
and multiprocessing's resource tracker when the driver dies.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
from concurrent.futures import Future, InvalidStateError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import psutil

from coffea_hpc.backends._base import PoolBackend, refuse_an_unguarded_script, warm_up
from coffea_hpc.backends._forkserver import PRELOAD, start_forkserver
from coffea_hpc.backends._watchdog import Watchdog
from coffea_hpc.backends.protocol import WorkElement

__all__ = ["FuturesBackend", "WorkerDied", "start_forkserver"]

log = logging.getLogger(__name__)

_FREE_RESUBMITS = 5
"""How often an element caught in someone else's crash is resubmitted without charge."""


def _settle_outer(outer: Future, exc: BaseException | None = None, *,
                  result: Any = None) -> None:
    """Give the future the task holds its outcome, unless the run cancelled it meanwhile
    (a stopping run cancels what is still pending while pool threads settle elements)."""
    try:
        if exc is not None:
            outer.set_exception(exc)
        else:
            outer.set_result(result)
    except InvalidStateError:
        pass


class WorkerDied(RuntimeError):
    """The worker process running an element exited abruptly."""


def _pool_servers() -> list[int]:
    """Start multiprocessing's forkserver and resource tracker now, and return their pids.

    Both belong to the interpreter, not to a pool: started on first use, reused by every
    pool, and asked for here so that the watchdog knows them before any worker exists.
    """
    from multiprocessing import forkserver

    forkserver.ensure_running()  # starts the resource tracker first
    pids = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            command = " ".join(child.cmdline())
            if "multiprocessing.forkserver" in command \
                    or "multiprocessing.resource_tracker" in command:
                pids.append(child.pid)
    return sorted(pids)


def _ready() -> None:
    """Nothing: submitted once per worker at start, so that the pool forks them at once."""


def _run_tracked(element: WorkElement, scratch: str, token: int) -> Any:
    """Leave a note saying which process runs ``token`` while it runs."""
    note = Path(scratch) / str(token)
    note.write_text(str(os.getpid()))
    try:
        return element()
    finally:
        note.unlink(missing_ok=True)


class FuturesBackend(PoolBackend):
    name = "futures"

    def __init__(self, workers: int | None = None) -> None:
        super().__init__()
        self._workers = workers or os.cpu_count() or 1
        if self._workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.RLock()
        self._tokens = itertools.count()
        self._scratch = ""
        self._watchdog: Watchdog | None = None

    @property
    def workers(self) -> int:
        return self._workers

    def submit(self, element: WorkElement) -> Future:
        outer: Future = Future()
        self._dispatch(element, outer, _FREE_RESUBMITS)
        return outer

    def _dispatch(self, element: WorkElement, outer: Future, free: int) -> None:
        token = next(self._tokens)
        with self._lock:
            pool = self._live_pool()
            inner = pool.submit(_run_tracked, element, self._scratch, token)
            # the pool's own table of its processes: shutting a broken pool down (as the
            # first of its failed elements to be resubmitted does) unbinds the attribute, and
            # the remaining elements must still be told apart
            processes = getattr(pool, "_processes", None)
        if processes is None:
            processes = {}
        inner.add_done_callback(
            lambda f: self._settle(f, processes, element, outer, token, free)
        )

    def _settle(self, inner: Future, processes: dict[int, Any], element: WorkElement,
                outer: Future, token: int, free: int) -> None:
        if outer.cancelled():  # the run is stopping: nobody waits for this element
            return
        if inner.cancelled():
            outer.cancel()
            return
        exc = inner.exception()
        if exc is None:
            _settle_outer(outer, result=inner.result())
            return
        if not isinstance(exc, BrokenProcessPool) or not self._started:
            _settle_outer(outer, exc)
            return
        culprit = self._died_running(processes, token)
        if culprit is not None or free <= 0:
            _settle_outer(outer, WorkerDied(
                f"the worker process{f' (pid {culprit})' if culprit else ''} running this "
                "exited abruptly (killed for memory, or a crash in compiled code?)"))
            return
        try:
            self._dispatch(element, outer, free - 1)
        except Exception as err:  # the backend is closing
            _settle_outer(outer, err)

    def _died_running(self, processes: dict[int, Any], token: int) -> int | None:
        """The pid of the dead process if it was running ``token``, else None.

        ``concurrent.futures`` fails the futures before it terminates the surviving workers,
        so at this moment only the process that crashed has an exit code.
        """
        note = Path(self._scratch) / str(token)
        try:
            pid = int(note.read_text())
        except (OSError, ValueError):
            return None  # never started: innocent
        note.unlink(missing_ok=True)
        proc = processes.get(pid)
        if proc is None or proc.exitcode is not None:
            return pid
        return None

    def _live_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            raise RuntimeError("the futures backend is closed")
        if getattr(self._pool, "_broken", False):
            log.warning("a worker process died; starting a new pool")
            self._pool.shutdown(wait=False, cancel_futures=False)
            self._pool = self._new_pool()
            self._watch()  # a new forkserver, if the old one died too
        return self._pool

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return ProcessPoolExecutor(max_workers=self._workers, mp_context=context,
                                   initializer=warm_up)

    def _watch(self) -> None:
        servers = _pool_servers()
        if self._watchdog is not None:
            if list(self._watchdog.pids) == servers:
                return
            self._watchdog.release()
        self._watchdog = Watchdog(servers, descendants=True)

    on_this_machine = True

    def _start(self) -> None:
        refuse_an_unguarded_script("futures")
        self._scratch = tempfile.mkdtemp(prefix="coffea-hpc-futures-")
        self._pool = self._new_pool()
        self._watch()
        # a pool forks its workers on demand: asking for them now has them import coffea
        # while the driver preprocesses, not when the first chunk is waiting
        for _ in range(self._workers):
            self._pool.submit(_ready)

    def _close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        try:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        finally:
            if self._watchdog is not None:
                self._watchdog.release()
                self._watchdog = None
            shutil.rmtree(self._scratch, ignore_errors=True)
