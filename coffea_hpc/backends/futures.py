"""A pool of local worker processes (``concurrent.futures``).

Workers are forked from a server process that has already imported coffea-hpc, so they start
in milliseconds and never inherit the driver's threads. A worker that dies breaks the whole
pool in ``concurrent.futures``; the pool is then replaced, and the lost elements come back as
failures for the task to retry.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from coffea_hpc.backends._base import PoolBackend, run_element
from coffea_hpc.backends.protocol import WorkElement

__all__ = ["FuturesBackend"]

log = logging.getLogger(__name__)


class FuturesBackend(PoolBackend):
    name = "futures"

    def __init__(self, workers: int | None = None) -> None:
        super().__init__()
        self._workers = workers or os.cpu_count() or 1
        if self._workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._pool: ProcessPoolExecutor | None = None

    @property
    def workers(self) -> int:
        return self._workers

    def submit(self, element: WorkElement) -> Future:
        assert self._pool is not None
        try:
            return self._pool.submit(run_element, element)
        except BrokenProcessPool:
            log.warning("a worker process died; starting a new pool")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(run_element, element)

    def _new_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["coffea_hpc.processing.worker"])
        return ProcessPoolExecutor(max_workers=self._workers, mp_context=context)

    def _start(self) -> None:
        self._pool = self._new_pool()

    def _close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
