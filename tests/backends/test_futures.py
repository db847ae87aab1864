"""The futures backend's crash accounting: only the element that was running in a dead
worker is charged; everything else caught in the broken pool runs again for free."""

from __future__ import annotations

import os
import threading
import time
from functools import partial

from coffea_hpc.backends.futures import FuturesBackend, WorkerDied


def _slow(value: int, seconds: float) -> int:
    time.sleep(seconds)
    return value


def _crash_after(seconds: float) -> None:
    time.sleep(seconds)
    os._exit(3)


def test_a_crash_charges_the_crashed_element_not_the_one_beside_it():
    with FuturesBackend(2) as backend:
        crashing = backend.submit(partial(_crash_after, 0.5))
        beside = backend.submit(partial(_slow, 7, 2.0))  # running on the other worker
        retried = []
        resubmitted = threading.Event()

        def retry(_):
            retried.append(backend.submit(partial(_slow, 1, 0)))
            resubmitted.set()

        # a task retries a charged element at once, from this callback: that replaces the
        # broken pool while the element beside it has yet to be settled
        crashing.add_done_callback(retry)
        assert isinstance(crashing.exception(timeout=60), WorkerDied)
        assert beside.result(timeout=60) == 7
        # the pool may notice the crash only when ``beside`` returns: then both settle at
        # once and the callback (in the pool's thread) may still be running
        assert resubmitted.wait(60)
        assert retried[0].result(timeout=60) == 1
