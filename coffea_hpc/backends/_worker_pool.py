"""Parsl's worker pool, its workers forked from one process that imported them once.

Parsl's pool starts its multiprocessing manager and each worker as fresh interpreters
(spawn), one after the other, and each imports all of Parsl (~0.6 s on a laptop core,
seconds from a busy shared filesystem) before the worker imports coffea on its first task
(~0.6 s more). Run as the pool's launch command instead of ``process_worker_pool``, this
starts a forkserver at once, which imports the pool and coffea-hpc's worker beside this
process's own import of Parsl, then runs Parsl's pool unchanged but with the forkserver in
place of its spawn context: the manager and every worker are forked from that one import,
ready to run chunks, sharing its pages. A node with 128 workers imports coffea once, not
128 times.

Where the installed Parsl no longer has the name this replaces, the pool spawns its workers
as Parsl ships it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import runpy
import sys
from multiprocessing import forkserver
from typing import Literal

WorkerStart = Literal["forkserver", "spawn"]
"""How a block's workers start: forked from one process that imported Parsl's pool and
coffea-hpc's worker once (this module), or spawned by Parsl's own pool (`POOL`), each a
fresh interpreter that imports everything itself."""

POOL = "parsl.executors.high_throughput.process_worker_pool"
PRELOAD = [POOL, "coffea_hpc.processing.worker"]


_THREAD_COUNTS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def thread_limits(argv: list[str]) -> dict[str, str]:
    """Thread counts for numerical libraries, set before the forkserver imports numpy.

    A worker with CPU affinity (``--cpu-affinity`` other than none) is pinned to its own
    cores, and Parsl's worker sets ``OMP_NUM_THREADS`` to their number before its first
    task: a spawned worker imports numpy after that, a forked one has numpy from the
    server already, its BLAS sized for the whole node. So the server starts with the
    worker's share (its cores per worker), unless the environment says otherwise.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("-c", "--cores_per_worker", default="1.0")
    parser.add_argument("--cpu-affinity", default="none")
    try:
        known, _ = parser.parse_known_args(argv)
        threads = str(max(1, int(float(known.cores_per_worker))))
    except (argparse.ArgumentError, ValueError):
        return {}  # Parsl's own parser says what is wrong with its arguments
    return {} if known.cpu_affinity == "none" else dict.fromkeys(_THREAD_COUNTS, threads)


def main() -> None:
    for name, value in thread_limits(sys.argv[1:]).items():
        os.environ.setdefault(name, value)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()  # its imports run beside this process's, just below
    import parsl.multiprocessing

    if hasattr(parsl.multiprocessing, "SpawnContext"):
        parsl.multiprocessing.SpawnContext = context
    # as the pool's script: its workers are found as __main__.worker in its children.
    # The server ends after the last of them (each holds its "alive" pipe), when the pool's
    # exit has stopped its manager.
    runpy.run_module(POOL, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
