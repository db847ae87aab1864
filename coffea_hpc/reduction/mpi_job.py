"""Starting the MPI merge from a driver, ahead of the moment it is needed.

Launching ``mpiexec``/``srun`` and importing numpy, hist and mpi4py in every rank costs
~0.5 s on a laptop and can take minutes for hundreds of ranks importing from a parallel
filesystem. An `MpiMergeJob` starts the ranks (``python -m coffea_hpc.reduction.mpi
--serve``) and leaves them asleep until `MpiMergeJob.merge` hands them their inputs, so a
run that reduces with MPI starts its job when processing starts and the merge begins the
moment the last partial is written.

The driver talks to rank 0 through the launcher's standard streams, which ``mpiexec`` and
``srun`` both forward: one JSON line in (inputs and output), a ready line and a stats line
out. Nothing needs a shared filesystem beyond the partials and the output. Closing rank 0's
input — `cancel`, or the driver dying — makes every rank exit.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from coffea_hpc._signing import RunKey
from coffea_hpc.errors import MergeError
from coffea_hpc.reduction.merge import MergeStats
from coffea_hpc.reduction.mpi import NO_INPUTS, READY, STATS, expand_inputs

__all__ = ["MpiMergeJob", "run_mpi_merge"]

log = logging.getLogger(__name__)


class MpiMergeJob:
    """MPI ranks started now, merging later; use as a context manager (it cancels what was
    never used)."""

    def __init__(self, ranks: int, launcher: str = "mpiexec") -> None:
        """``launcher`` is ``mpiexec`` (the one beside this Python first, as installed with the
        ``mpich`` wheel), ``srun``, or a full command such as ``"srun --mpi=pmi2"``."""
        if ranks < 1:
            raise MergeError(f"ranks must be >= 1, got {ranks}")
        words = launcher.split()
        local = Path(words[0]) if "/" in words[0] else Path(sys.executable).with_name(words[0])
        exe = str(local) if local.exists() else shutil.which(words[0])
        if exe is None:
            raise MergeError(f"cannot run the MPI merge: {words[0]!r} not found (install the "
                             "'mpi' extra: pip install 'coffea-hpc[mpi]', or use the site's MPI)")
        self.ranks = ranks
        self._launcher = launcher
        cmd = [exe, *words[1:], "-n", str(ranks), sys.executable, "-m",
               "coffea_hpc.reduction.mpi", "--serve"]
        log.info("MPI merge: starting %s", " ".join(cmd))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if "SLURM_JOB_ID" in env:
            # inside an allocation the workers' job step holds the CPUs; without this, the
            # merge's step (srun, or mpiexec's own srun) would queue behind it until it ends
            env["SLURM_OVERLAP"] = "1"
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env)
        self._ready = threading.Event()  # set on the ready line, or when the output ends
        self._started = False
        self._finished = threading.Event()  # set on the stats line, or when the output ends
        self._stats: dict | None = None
        self._no_inputs = False
        self._tail: collections.deque[str] = collections.deque(maxlen=5)
        self._used = False
        assert self._proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self._proc.stdout,),
                                        name="coffea-hpc-mpi-merge", daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        """Drain the ranks' output (a full pipe would stop them); keep the protocol lines and
        the last few others, for error messages."""
        for line in stream:
            line = line.rstrip("\n")
            if line == READY:
                self._started = True
                self._ready.set()
            elif line == NO_INPUTS:
                self._no_inputs = True
            elif line.startswith(STATS):
                self._stats = json.loads(line[len(STATS):])
                self._finished.set()
            elif line.strip():
                self._tail.append(line.strip())
        self._ready.set()  # exited: nobody is waiting any more
        self._finished.set()

    def ready(self, timeout: float | None = None) -> bool:
        """Wait until every rank has started and waits for its inputs (or the job ended)."""
        return self._ready.wait(timeout) and self._started and self._proc.poll() is None

    def merge(self, inputs: Sequence[str | Path], output_path: str | Path, *,
              key: RunKey | None, trust_coffea_files: bool = False,
              timeout: float | None = None, start_timeout: float = 300.0) -> MergeStats:
        """Merge ``inputs`` (files or spill directories) into ``output_path``; once per job.
        Spill files must verify with ``key``, which reaches rank 0 through its standard
        input (never the command line, which other users can see); files in coffea's format
        are merged only with ``trust_coffea_files``.

        Ranks not started ``start_timeout`` seconds after this call (a job step queued
        behind others, a launcher that hangs) are given up on, with the launcher's last words.
        """
        if self._used:
            raise MergeError("this MPI merge job has been used or cancelled already")
        if not self._ready.wait(start_timeout):
            self.cancel()
            raise MergeError(f"the MPI merge's ranks did not start within {start_timeout:g} s: "
                             + (" | ".join(self._tail) or "no output from the launcher"))
        self._used = True
        output = Path(output_path).absolute()
        # a failing rank names its error here too: the launcher may end the ranks before it
        # forwards their last words (beside the output, which every rank can reach)
        error_file = output.with_name(f".{output.name}.mpi-error-{os.getpid()}-{id(self)}")
        error_file.unlink(missing_ok=True)
        request = {"inputs": [str(p) for p in expand_inputs(inputs)],
                   "output": str(output),
                   "key": key.hex() if key is not None else None,
                   "trust_coffea_files": trust_coffea_files,
                   "error_file": str(error_file)}
        try:
            return self._run(request, timeout)
        finally:
            error_file.unlink(missing_ok=True)

    def _run(self, request: dict, timeout: float | None) -> MergeStats:
        self._say(json.dumps(request) + "\n")
        if not self._finished.wait(timeout):
            self.cancel()
            raise MergeError(f"the MPI merge did not finish within {timeout:g} s")
        data = self._stats
        if data is None:  # the output ended without stats: the job failed
            code = self._proc.wait()
            self._reader.join(timeout=5)
            if self._no_inputs:
                raise MergeError(f"the MPI merge's rank 0 read no inputs: {self._launcher!r} "
                                 "does not pass standard input on to rank 0")
            said = ""
            with contextlib.suppress(OSError):
                said = Path(request["error_file"]).read_text().strip()
            raise MergeError(f"the MPI merge failed (exit {code}): "
                             + (said or " | ".join(self._tail)))
        # the output is written; the ranks finalise MPI and exit while the run goes on
        return MergeStats(inputs=data["inputs"], wall_time_s=data["wall_time_s"],
                          bytes_read=data["bytes_read"], peak_rss_bytes=data["peak_rss_bytes"],
                          ranks=data["ranks"],
                          extra={k: data[k] for k in ("peak_rss_per_rank",
                                                      "baseline_rss_per_rank") if k in data})

    def _say(self, text: str) -> None:
        """Write rank 0's whole input and close it; a job that ended already cannot read it,
        and its exit status says why."""
        stdin = self._proc.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError, ValueError):
            stdin.write(text)
        with contextlib.suppress(BrokenPipeError, ValueError):
            stdin.close()

    def cancel(self) -> None:
        """Tell the ranks to exit (end of their input), then make sure they did."""
        self._used = True
        if self._proc.poll() is None:
            self._say("")
            try:
                self._proc.wait(10 if self._started else 0)  # ranks that are up exit
            except subprocess.TimeoutExpired:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
        self._reader.join(timeout=5)

    def __enter__(self) -> MpiMergeJob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


def run_mpi_merge(
    inputs: Sequence[str | Path],
    output_path: str | Path,
    *,
    ranks: int,
    key: RunKey | None,
    trust_coffea_files: bool = False,
    launcher: str = "mpiexec",
    timeout: float | None = None,
) -> MergeStats:
    """Start an MPI merge job with ``ranks`` ranks and merge ``inputs`` into ``output_path``."""
    with MpiMergeJob(ranks, launcher) as job:
        return job.merge(inputs, output_path, key=key, trust_coffea_files=trust_coffea_files,
                         timeout=timeout)
