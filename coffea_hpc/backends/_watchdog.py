"""Stop what a driver started when the driver dies without stopping it.

Parsl's interchanges, and the forkserver and pool workers of a ``concurrent.futures`` pool,
never learn that their driver is gone: a driver killed outright (SIGKILL, the out-of-memory
killer, a batch system's kill after its grace period) leaves them running until someone kills
them by hand. (Pool workers wait on a queue whose write end they hold themselves, and hold the
forkserver's and the resource tracker's pipes open, so none of the three sees end-of-file.)
A watchdog process holds the read end of a pipe whose write end only the driver has. The
driver writes an all-clear once it has stopped them itself; end-of-file without it means the
driver died, and the watchdog stops them (and, where asked, everything they started). It runs
as a script, not a module of the package, so it costs a bare interpreter and psutil, not
coffea-hpc's imports.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Sequence

import psutil

_ALL_CLEAR = "stopped\n"


class Watchdog:
    """Watches ``pids`` (processes this driver started) on behalf of the driver.

    With ``descendants``, what each of them has started by the time the driver dies goes
    too: a forkserver's children are the pool's current workers, which come and go.
    """

    def __init__(self, pids: Sequence[int], *, descendants: bool = False) -> None:
        self.pids = tuple(pids)
        targets = []
        for pid in pids:
            # the start time tells the process from a later one given the same pid
            with contextlib.suppress(psutil.Error):
                targets.append((pid, psutil.Process(pid).create_time()))
        self._proc = subprocess.Popen(
            [sys.executable, __file__, json.dumps({"targets": targets,
                                                   "descendants": descendants})],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True)  # not in the driver's process group: Ctrl-C spares it

    def release(self) -> None:
        """The driver has stopped the processes itself: the watchdog leaves them be."""
        stdin = self._proc.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):
                stdin.write(_ALL_CLEAR)
                stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()


def _watch(targets: list[tuple[int, float]], descendants: bool) -> None:
    if sys.stdin.read() == _ALL_CLEAR:
        return
    procs = []
    for pid, created in targets:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 0.01:
                # listed before anything is stopped: orphans are reparented, out of reach
                procs += [proc, *(proc.children(recursive=True) if descendants else ())]
        except psutil.Error:
            pass
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    # the grace period also lets processes that ignore SIGTERM (multiprocessing's resource
    # tracker) see their pipes close and clean up as they exit
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


if __name__ == "__main__":
    _spec = json.loads(sys.argv[1])
    _watch([tuple(t) for t in _spec["targets"]], _spec["descendants"])
