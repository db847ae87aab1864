"""The local HighThroughputExecutor (a real one): what its processes can import, how it
reports workers that are not there yet."""

from __future__ import annotations

import functools
import importlib
import logging
import time

import psutil
import pytest

from coffea_hpc.backends import make_backend
from coffea_hpc.backends.parsl import ParslBackend, local_htex_config
from coffea_hpc.errors import UserError
from coffea_hpc.runner import run
from tests.helpers import RecordingReporter, processes_mentioning, still_running


def test_local_pool_processes_skip_globus_compute_but_the_driver_keeps_it(tmp_path):
    """``import parsl`` pulls in globus_compute_sdk when installed (~0.5 s per process);
    the local pool's processes are started with it hidden, the driver is left alone."""
    pytest.importorskip("globus_compute_sdk")
    with make_backend("parsl", workers=1, run_dir=tmp_path) as backend:
        import_in_worker = functools.partial(importlib.import_module, "globus_compute_sdk")
        with pytest.raises(ImportError, match="hidden from local Parsl pools"):
            backend.submit(import_in_worker).result(timeout=120)
        ok = backend.submit(functools.partial(importlib.import_module, "json"))
        assert ok.result(timeout=60).__name__ == "json"
        stubs = str((tmp_path / "hidden-packages").resolve())
        launched = [p for p in psutil.process_iter() if _env_path(p).startswith(stubs)]
    # the interchange, the worker pool, its manager and the worker (the pool is detached
    # from this process by the provider, so it is found by its environment)
    assert len(launched) >= 4, [p.pid for p in launched]
    assert importlib.import_module("globus_compute_sdk").__name__ == "globus_compute_sdk"


def _env_path(process: psutil.Process) -> str:
    try:
        return process.environ().get("PYTHONPATH", "")
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return ""


def test_progress_shows_a_run_waiting_for_its_workers(tmp_path, fileset, dimuon, caplog):
    """A block that starts late, as a batch job waits in its queue: the run reports no
    workers until the pool connects, then the pool's size. (The four files are opened by
    the driver meanwhile: a small fileset with workers on this machine.)"""
    config = local_htex_config(2, tmp_path / "parsl")
    config.executors[0].provider.worker_init = "sleep 4"
    recorder = RecordingReporter()
    with caplog.at_level(logging.INFO, logger="coffea_hpc.progress"):
        outcome = run(dimuon, fileset, backend=ParslBackend(config, workers=2), chunksize=1_000,
                      reporter=recorder)
    assert outcome.report["status"] == "complete"
    assert recorder.workers["processing"][0] in (0, None)  # None: not counted yet
    assert 0 in recorder.workers["processing"]
    assert recorder.workers["processing"][-1] == 2
    assert "processing: 0 workers connected" in caplog.text
    assert "2 workers connected" in caplog.text


KILLED_DRIVER = """
import sys, time
from coffea_hpc.backends.parsl import ParslBackend
backend = ParslBackend(workers=1, run_dir=sys.argv[1]).__enter__()
print(next(iter(backend.dfk.executors.values())).interchange_proc.pid, flush=True)
time.sleep(600)
"""


def _interchange_pid(backend: ParslBackend) -> int:
    return next(e for e in backend.dfk.executors.values()
                if getattr(e, "interchange_proc", None)).interchange_proc.pid


def test_a_driver_killed_outright_leaves_no_interchange_or_worker(tmp_path):
    """SIGKILL gives the driver no chance to stop Parsl; its watchdog must."""
    import subprocess
    import sys

    run_dir = tmp_path / "runinfo"
    driver = subprocess.Popen([sys.executable, "-c", KILLED_DRIVER, str(run_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        interchange = psutil.Process(int(driver.stdout.readline()))
        workers = []
        for _ in range(200):  # the block starts a moment after the interchange, then the
            # pool's forkserver forks its manager and worker
            workers = processes_mentioning(str(run_dir), "worker_pool")
            if len(workers) >= 4:
                break
            time.sleep(0.1)
        assert len(workers) >= 4, "no worker pool started"
        driver.kill()
        driver.wait()
        _, alive = psutil.wait_procs([interchange], timeout=15)
        assert not alive, "the interchange outlived its driver"
        assert not still_running(workers, timeout=30), "workers outlived their interchange"
    finally:
        driver.kill()


def test_a_clean_stop_releases_the_watchdog(tmp_path):
    with ParslBackend(workers=1, run_dir=tmp_path / "runinfo") as backend:
        watchdog = backend._watchdog._proc
        interchange = psutil.Process(_interchange_pid(backend))
    assert watchdog.wait(5) == 0
    assert not interchange.is_running()


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_shutdown_is_bounded_when_the_interchange_is_gone(tmp_path, monkeypatch, fault):
    """Parsl's cleanup asks the interchange about its blocks without a timeout: a dead or
    hung interchange kept the driver alive forever. The backend stops within a bound and
    leaves no worker pool behind."""
    import signal

    import coffea_hpc.backends.parsl as parsl_backend

    monkeypatch.setattr(parsl_backend, "CLEANUP_TIMEOUT_S", 5.0)
    backend = make_backend("parsl", workers=1, run_dir=tmp_path)
    with backend:
        assert backend.submit(functools.partial(importlib.import_module, "json")).result(
            timeout=120).__name__ == "json"
        [interchange] = [e.interchange_proc for e in backend.dfk.executors.values()
                         if getattr(e, "interchange_proc", None) is not None]
        interchange_pid = interchange.pid
        assert processes_mentioning("worker_pool", str(tmp_path))
        started = time.monotonic()
        if fault == "killed":
            interchange.kill()
            interchange.wait(timeout=10)
        else:
            psutil.Process(interchange_pid).send_signal(signal.SIGSTOP)
    assert time.monotonic() - started < 5.0 + 15.0
    deadline = time.monotonic() + 30
    while processes_mentioning("worker_pool", str(tmp_path)) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not processes_mentioning("worker_pool", str(tmp_path))
    assert not psutil.pid_exists(interchange_pid)  # not even a zombie: it was reaped


def test_a_parsl_config_that_already_ran_is_refused_in_one_line(tmp_path, fileset, dimuon):
    """Parsl starts an executor once; a second run on the same Config object (a notebook,
    run after run) used to start on stopped executors and hang the process at exit."""
    config = local_htex_config(1, tmp_path / "parsl")
    first = run(dimuon, fileset, backend=ParslBackend(config, workers=1), chunksize=3_000)
    assert first.report["status"] == "complete"
    with pytest.raises(UserError, match=r"already ran a DataFlowKernel .*'coffea-hpc-local'"):
        run(dimuon, fileset, backend=ParslBackend(config, workers=1), chunksize=3_000)


def _log_order(run_dir, *marks: str) -> list[int]:
    """The line numbers in Parsl's log of the first line holding each of ``marks``."""
    [log] = list(run_dir.rglob("parsl.log"))
    lines = log.read_text().splitlines()
    return [next(i for i, line in enumerate(lines) if mark in line) for mark in marks]


def _chunk_runs(backend) -> None:
    assert backend.submit(functools.partial(importlib.import_module, "json")).result(
        timeout=120).__name__ == "json"


def test_the_local_block_is_launched_before_its_interchange(tmp_path):
    """Its worker pool imports Parsl beside the interchange, not after it (the port the
    interchange binds for workers is chosen first, so the pool's command is known)."""
    with make_backend("parsl", workers=1, run_dir=tmp_path) as backend:
        _chunk_runs(backend)
    launched, interchange, up = _log_order(tmp_path, "Launched block 0",
                                           "Popened interchange process",
                                           "Interchange process started")
    assert launched < interchange < up


def test_without_the_hook_the_local_block_is_launched_once_the_interchange_is_up(
        tmp_path, monkeypatch):
    # a Parsl release that no longer calls the method the early launch hooks into
    from parsl.executors import HighThroughputExecutor

    from coffea_hpc.backends.parsl import _local_executor_class

    monkeypatch.setattr(_local_executor_class(HighThroughputExecutor),
                        "_start_local_interchange_process",
                        HighThroughputExecutor._start_local_interchange_process)
    with make_backend("parsl", workers=1, run_dir=tmp_path) as backend:
        _chunk_runs(backend)
        executor = backend.dfk.executors["coffea-hpc-local"]
        assert not executor.launched_early and len(executor.blocks_to_job_id) == 1
    up, launched = _log_order(tmp_path, "Interchange process started", "Launched block 0")
    assert up < launched


def test_an_interchange_that_fails_to_start_takes_the_early_block_with_it(tmp_path,
                                                                         monkeypatch):
    from parsl.executors import HighThroughputExecutor

    from coffea_hpc.errors import BackendError

    def fails(self):
        raise RuntimeError("Interchange failed to start")

    monkeypatch.setattr(HighThroughputExecutor, "_start_local_interchange_process", fails)
    with pytest.raises(BackendError, match="Interchange failed to start"), \
            make_backend("parsl", workers=1, run_dir=tmp_path):
        pass
    time.sleep(2)  # a pool left behind would be up by now, waiting for its interchange
    # (for its heartbeat threshold, 10 s, before it gives up)
    assert not still_running(processes_mentioning("worker_pool", str(tmp_path)), timeout=5)
