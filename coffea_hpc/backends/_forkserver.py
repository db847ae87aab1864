"""The server that forks the futures backend's workers, started as early as a run allows.

A worker forked from it starts with coffea-hpc's worker module (coffea, uproot, awkward,
numba) already imported: half a second of imports paid once, in the server, instead of in
every worker. Started before the driver's own imports (the command-line app, the analyst's
processor, coffea), the two go on side by side, and the first chunk does not wait for them
one after the other. This module imports nothing else of coffea-hpc, so that the command
line can start the server before it imports its app.
"""

from __future__ import annotations

import multiprocessing

__all__ = ["PRELOAD", "start_forkserver"]

PRELOAD = ["coffea_hpc.processing.worker"]
"""What the forkserver imports once, so that every worker forked from it starts with it."""


def start_forkserver() -> None:
    """Start the forkserver now, importing `PRELOAD`, unless it runs already. (It ends with
    this process.)"""
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()
