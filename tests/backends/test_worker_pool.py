"""How a block's Parsl workers start (real local HighThroughputExecutors): forked from one
process that imported Parsl's pool and coffea once, or spawned as Parsl ships its pool."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import psutil

from coffea_hpc.backends import make_backend
from coffea_hpc.backends._worker_pool import thread_limits
from coffea_hpc.backends.parsl import ParslBackend, local_htex_config, pool_launch_command
from coffea_hpc.runner import run
from tests.helpers import assert_same

_PARENT = functools.partial(eval, "__import__('os').getppid()")
"""Run on a worker: its parent's pid (stdlib only, so the probe imports nothing itself)."""


def _started_by(pid: int) -> tuple[str, set[str]]:
    """A process's command line, and the names of the shared libraries it has loaded."""
    process = psutil.Process(pid)
    return " ".join(process.cmdline()), {Path(m.path).name for m in process.memory_maps()}


def _loaded(libraries: set[str], package: str) -> bool:
    return any(name.startswith(package) for name in libraries)


def test_local_workers_are_forked_from_one_import_of_parsl_and_coffea(tmp_path):
    with make_backend("parsl", workers=2, run_dir=tmp_path) as backend:
        parents = {backend.submit(_PARENT).result(timeout=120) for _ in range(8)}
        assert len(parents) == 1, "the workers have different parents"
        command, libraries = _started_by(parents.pop())
    assert "multiprocessing.forkserver" in command
    assert "coffea_hpc.processing.worker" in command  # what it preloads
    # and it did import them: awkward's and numba's compiled parts are in its memory
    assert _loaded(libraries, "libawkward") and _loaded(libraries, "_dispatcher"), libraries


def test_spawned_workers_give_the_same_output(tmp_path, fileset, dimuon):
    """``worker_start: spawn`` (Parsl's own pool) stays a working choice, not a dead one."""
    def spawning(name: str) -> ParslBackend:  # a Parsl config starts one DataFlowKernel
        return ParslBackend(local_htex_config(2, tmp_path / name, worker_start="spawn"),
                            workers=2)

    with spawning("probe") as spawn:
        command, _ = _started_by(spawn.submit(_PARENT).result(timeout=120))
        assert "parsl.executors.high_throughput.process_worker_pool" in command
        assert "forkserver" not in command
    spawned = run(dimuon, fileset, backend=spawning("run"), chunksize=1_000)
    forked = run(dimuon, fileset, backend=make_backend("parsl", workers=2,
                                                         run_dir=tmp_path / "fork"),
                 chunksize=1_000)
    assert spawned.report["status"] == forked.report["status"] == "complete"
    assert_same(spawned.output, forked.output)


def test_the_pool_command_found_on_path_forks_its_workers(tmp_path):
    """Sites whose workers use the first python on PATH (``python: path``) start the pool
    by its command, ``coffea-hpc-worker-pool``, as Parsl's default starts
    ``process_worker_pool.py``."""
    config = local_htex_config(1, tmp_path)
    executor = config.executors[0]
    scripts = Path(sys.executable).parent
    executor.launch_cmd = f"PATH={scripts}:$PATH {pool_launch_command('forkserver')}"
    with ParslBackend(config, workers=1) as backend:
        command, _ = _started_by(backend.submit(_PARENT).result(timeout=120))
        pool = psutil.Process(psutil.Process(
            backend.submit(_PARENT).result(timeout=60)).ppid())
        assert "coffea-hpc-worker-pool" in " ".join(pool.cmdline())
    assert "multiprocessing.forkserver" in command


def test_pinned_workers_get_their_share_of_threads_before_numpy_is_imported(tmp_path):
    """Forked workers have numpy from the server, imported before Parsl's worker sets
    OMP_NUM_THREADS for its cores: the server starts with the worker's share instead."""
    config = local_htex_config(1, tmp_path)
    config.executors[0].cpu_affinity = "block"
    read = functools.partial(eval, "__import__('os').environ.get('OPENBLAS_NUM_THREADS')")
    with ParslBackend(config, workers=1) as backend:
        assert backend.submit(read).result(timeout=120) == "1"
    assert thread_limits(["-c", "2.0", "--cpu-affinity", "none"]) == {}
    assert thread_limits(["--cert_dir", "x", "-c", "4", "--cpu-affinity", "block"]) == {
        "OMP_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4", "MKL_NUM_THREADS": "4"}
