"""Everything in this process, one element at a time: the backend for debugging.

Elements run on one helper thread, so ``compute`` returns at once like everywhere else;
nothing is pickled, so a breakpoint in the processor works.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from coffea_hpc.backends._base import PoolBackend, run_element
from coffea_hpc.backends.protocol import WorkElement

__all__ = ["IterativeBackend"]


class IterativeBackend(PoolBackend):
    name = "iterative"

    def __init__(self) -> None:
        super().__init__()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def workers(self) -> int:
        return 1

    def submit(self, element: WorkElement) -> Future:
        assert self._pool is not None
        return self._pool.submit(run_element, element)

    def _start(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coffea-hpc-iterative")

    def _close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
