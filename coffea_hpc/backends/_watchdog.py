"""Stop Parsl's interchanges when the driver dies without stopping them.

An interchange is a process of its own that never learns its client is gone: a driver killed
outright (SIGKILL, the out-of-memory killer, a batch system's kill after its grace period)
leaves it running, with its workers connected to it, until someone kills them by hand. A
watchdog process holds the read end of a pipe whose write end only the driver has. The
driver writes an all-clear once it has stopped the interchanges itself; end-of-file without
it means the driver died, and the watchdog stops them (their workers exit when they miss the
interchange's heartbeats). It runs as a script, not a module of the package, so it costs a
bare interpreter and psutil, not coffea-hpc's imports.
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
    """Watches ``pids`` (processes this driver started) on behalf of the driver."""

    def __init__(self, pids: Sequence[int]) -> None:
        targets = []
        for pid in pids:
            # the start time tells the process from a later one given the same pid
            with contextlib.suppress(psutil.Error):
                targets.append((pid, psutil.Process(pid).create_time()))
        self._proc = subprocess.Popen(
            [sys.executable, __file__, json.dumps(targets)], stdin=subprocess.PIPE,
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


def _watch(targets: list[tuple[int, float]]) -> None:
    if sys.stdin.read() == _ALL_CLEAR:
        return
    procs = []
    for pid, created in targets:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 0.01:
                proc.terminate()
                procs.append(proc)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


if __name__ == "__main__":
    _watch([tuple(t) for t in json.loads(sys.argv[1])])
