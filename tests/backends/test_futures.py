"""The futures backend's crash accounting: only the element that was running in a dead
worker is charged; everything else caught in the broken pool runs again for free. And a
driver killed outright takes its pool with it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from functools import partial

import psutil

from coffea_hpc.backends.futures import FuturesBackend, WorkerDied
from tests.helpers import write_slow_processor


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


def test_a_driver_killed_outright_leaves_no_pool_behind(fileset_path, tmp_path):
    """SIGKILL gives the driver no chance to shut its pool down. Its workers wait on a queue
    whose write end they hold themselves, and hold the forkserver's and the resource
    tracker's pipes open, so without a watchdog all of them wait forever."""
    slow = write_slow_processor(tmp_path / "slow.py", 2.0)
    driver = subprocess.Popen(
        [sys.executable, "-m", "coffea_hpc.cli.app", "run", slow, "--fileset",
         str(fileset_path), "-o", str(tmp_path / "out"), "--executor", "futures",
         "--workers", "2", "--chunksize", "1000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(_pool_workers(driver.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_pool_workers(driver.pid)) == 2, "the pool never started"
        time.sleep(3)  # preprocessing is over, chunks are sleeping in both workers
        started = psutil.Process(driver.pid).children(recursive=True)
        commands = " ".join(" ".join(p.cmdline()) for p in started)
        assert "multiprocessing.forkserver" in commands
        assert "multiprocessing.resource_tracker" in commands
        driver.kill()
        driver.wait()
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        driver.kill()


def test_a_clean_stop_releases_the_watchdog():
    """The forkserver and the resource tracker outlive a pool: the next pool of this
    interpreter reuses them, so a clean stop must not have the watchdog kill them."""
    with FuturesBackend(1) as backend:
        watchdog = backend._watchdog._proc
        servers = [psutil.Process(pid) for pid in backend._watchdog.pids]
        assert len(servers) == 2
        assert backend.submit(partial(_slow, 1, 0)).result(timeout=60) == 1
    assert watchdog.wait(5) == 0
    time.sleep(1)
    assert all(server.is_running() for server in servers)
    with FuturesBackend(1) as backend:
        assert backend.submit(partial(_slow, 2, 0)).result(timeout=60) == 2


def _pool_workers(driver: int) -> list[psutil.Process]:
    """The pool's processes: children of the driver's forkserver."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(driver).children():
            if "multiprocessing.forkserver" in " ".join(child.cmdline()):
                return child.children()
    return []
