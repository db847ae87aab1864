"""The Dask backend after its driver is killed outright: the local cluster's workers and
Python's resource tracker must not outlive it (the scheduler lives in the driver, so the
workers lose it with the driver and end themselves; this test holds them to it)."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from tests.helpers import write_slow_processor

pytest.importorskip("distributed")


def test_a_driver_killed_outright_leaves_no_dask_worker_behind(fileset_path, tmp_path):
    slow = write_slow_processor(tmp_path / "slow.py", 2.0)
    driver = subprocess.Popen(
        [sys.executable, "-m", "coffea_hpc.cli.app", "run", slow, "--fileset",
         str(fileset_path), "-o", str(tmp_path / "out"), "--executor", "dask",
         "--workers", "2", "--chunksize", "1000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(_dask_workers(driver.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_dask_workers(driver.pid)) == 2, "the cluster never started"
        time.sleep(3)  # chunks are sleeping in both workers
        started = psutil.Process(driver.pid).children(recursive=True)
        driver.kill()
        driver.wait()
        _, alive = psutil.wait_procs(started, timeout=60)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        driver.kill()


def _dask_workers(driver: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(driver).children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for child in children:
        try:
            if "dask worker" in " ".join(child.cmdline()) or "distributed" in " ".join(
                    child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found
