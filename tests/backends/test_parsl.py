"""The local HighThroughputExecutor (a real one): what its processes can import, how it
reports workers that are not there yet."""

from __future__ import annotations

import functools
import importlib
import logging

import psutil
import pytest

from coffea_hpc.backends import make_backend
from coffea_hpc.backends.parsl import ParslBackend, local_htex_config
from coffea_hpc.runner import run
from tests.helpers import RecordingReporter


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
    workers until the pool connects, then the pool's size."""
    config = local_htex_config(2, tmp_path / "parsl")
    config.executors[0].provider.worker_init = "sleep 4"
    recorder = RecordingReporter()
    with caplog.at_level(logging.INFO, logger="coffea_hpc.progress"):
        outcome = run(dimuon, fileset, backend=ParslBackend(config, workers=2), chunksize=1_000,
                      reporter=recorder)
    assert outcome.report["status"] == "complete"
    assert recorder.workers["preprocessing"][0] in (0, None)  # None: not counted yet
    assert 0 in recorder.workers["preprocessing"]
    assert recorder.workers["processing"][-1] == 2
    assert "preprocessing: 0 workers connected" in caplog.text
    assert "2 workers connected" in caplog.text
