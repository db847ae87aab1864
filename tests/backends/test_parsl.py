"""The local HighThroughputExecutor: what its processes can import (a real HTEx)."""

from __future__ import annotations

import functools
import importlib

import psutil
import pytest

from coffea_hpc.backends import make_backend


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
