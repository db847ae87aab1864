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

import multiprocessing
import runpy
from multiprocessing import forkserver

POOL = "parsl.executors.high_throughput.process_worker_pool"
PRELOAD = [POOL, "coffea_hpc.processing.worker"]


def main() -> None:
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
