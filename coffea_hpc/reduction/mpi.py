"""The MPI tree-merge: many ranks, each merging a share, combined in log2(P) rounds.

Run under ``mpiexec -n P`` or ``srun -n P``::

    python -m coffea_hpc.reduction.mpi SPILL_DIR_OR_FILES... -o merged.coffea

Each rank streams its share of the inputs (balanced by size) into one running sum, so its
memory is about one partial plus the sum. Then, in round ``k``, rank ``r`` with
``r % 2^(k+1) == 2^k`` sends its sum to rank ``r - 2^k`` and leaves; after ``ceil(log2 P)``
rounds rank 0 holds the total and writes it. Sums travel as a small pickled skeleton plus
raw buffers (`coffea_hpc.reduction.buffers`), received and added one buffer at a time, and
buffers over 2^30 elements are sent in pieces (MPI counts are 32-bit).

With ``--serve`` the ranks start, import and initialise MPI, then wait for their inputs on
rank 0's standard input (`coffea_hpc.reduction.mpi_job` starts them so, ahead of time).
A rank that waits for another sleeps between polls instead of blocking in MPI: MPI libraries
spin while they block, which takes a core from the ranks still working whenever ranks
outnumber cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from coffea_hpc import output
from coffea_hpc._signing import RunKey
from coffea_hpc._text import count
from coffea_hpc.errors import MergeError
from coffea_hpc.reduction._spillfile import SPILL_SUFFIX
from coffea_hpc.reduction.buffers import Slot, fold_buffers, skeleton
from coffea_hpc.reduction.merge import MergeStats, merge_stream, peak_rss
from coffea_hpc.reduction.spill import save_spilled

__all__ = ["expand_inputs", "mpi_merge"]

PIECE = 1 << 21
"""Elements per MPI message (16 MiB of float64): MPI counts are 32-bit, and small pieces keep
the receiver's temporary memory to one piece."""

_TAG_SKELETON, _TAG_BUFFER, _TAG_GO = 11, 12, 13

READY = "coffea-hpc-mpi-merge: ready"
STATS = "coffea-hpc-mpi-merge: stats "
NO_INPUTS = "coffea-hpc-mpi-merge: no inputs"
"""Lines rank 0 writes on its standard output for the process that started the ranks."""

_POLL_S = 0.002
"""Sleep between polls while a rank waits for another (a merge takes seconds)."""


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; for a directory, the partials in it (``*.coffea``, ``*.cspill``)."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir()
                              if p.suffix in (".coffea", SPILL_SUFFIX) and p.is_file()))
        elif path.exists():
            out.append(path)
        else:
            raise MergeError(f"partial {str(path)!r} does not exist")
    return out


def _share(paths: Sequence[Path], rank: int, size: int) -> list[Path]:
    """Largest-first greedy balance by bytes; every rank computes the same assignment."""
    sizes = {p: p.stat().st_size for p in paths}
    loads = [0] * size
    owner: dict[Path, int] = {}
    for path in sorted(paths, key=lambda p: (-sizes[p], str(p))):
        r = loads.index(min(loads))
        owner[path] = r
        loads[r] += sizes[path]
    return [p for p in paths if owner[p] == rank]


def _send(comm: Any, value: Any, dest: int) -> None:
    skel, buffers = skeleton(value)
    _idle_until(lambda: comm.Iprobe(source=dest, tag=_TAG_GO))
    comm.recv(source=dest, tag=_TAG_GO)
    comm.send(skel, dest=dest, tag=_TAG_SKELETON)
    for buf in buffers:
        for start in range(0, max(buf.size, 1), PIECE):
            comm.Send(np.ascontiguousarray(buf[start:start + PIECE]), dest=dest, tag=_TAG_BUFFER)


def _idle_until(ready: Callable[[], bool], pause: float = _POLL_S) -> None:
    while not ready():
        time.sleep(pause)


def _receive_into(comm: Any, total: Any, source: int) -> Any:
    """Add what ``source`` sends into ``total``. Whichever of the two is ready first sleeps
    until the other says so (``_TAG_GO``, then the skeleton); the buffers then move with
    blocking calls, both ranks inside MPI, at full speed."""
    comm.send(None, dest=source, tag=_TAG_GO)
    _idle_until(lambda: comm.Iprobe(source=source, tag=_TAG_SKELETON))
    skel = comm.recv(source=source, tag=_TAG_SKELETON)

    def read(slot: Slot, target: np.ndarray, add: bool) -> None:
        scratch = np.empty(min(PIECE, max(target.size, 1)), dtype=target.dtype) if add else None
        for start in range(0, max(target.size, 1), PIECE):
            segment = target[start:start + PIECE]
            if scratch is None:
                comm.Recv(segment, source=source, tag=_TAG_BUFFER)
            else:
                piece = scratch[:segment.size]
                comm.Recv(piece, source=source, tag=_TAG_BUFFER)
                segment += piece

    if skel is None:
        return total
    return fold_buffers(total, skel, read)


def mpi_merge(inputs: Sequence[str | Path], output_path: str | Path | None = None,
              comm: Any = None, *, key: RunKey | None,
              trust_coffea_files: bool = False,
              error_file: str | None = None) -> tuple[Any, MergeStats]:
    """Merge ``inputs`` over the ranks of ``comm`` (default: COMM_WORLD); spill files
    must verify with ``key``, coffea files need ``trust_coffea_files`` (`merge_stream`).

    Returns the total (on rank 0; None elsewhere) and this rank's stats; rank 0's stats
    cover the whole merge (wall time, bytes read by all ranks, the largest peak RSS).

    A rank that fails names its error on standard error (and in ``error_file``, if given)
    and ends every rank (``Abort``): the others would wait for it forever, some of them
    spinning inside a blocking send.
    """
    if comm is None:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    try:
        return _merge(inputs, output_path, comm, key, trust_coffea_files)
    except Exception as err:
        if comm.Get_size() == 1:
            raise  # nobody waits: the caller reports it
        _abort(comm, err, error_file)
        raise


_FORWARD_GRACE_S = 0.3


def _abort(comm: Any, err: Exception, error_file: str | None = None) -> None:
    what = str(err) if isinstance(err, MergeError) else f"{type(err).__name__}: {err}"
    line = f"error (rank {comm.Get_rank()}): {what}"
    print(line, file=sys.stderr, flush=True)
    if error_file:
        # the launcher may end every rank before it has forwarded what this one printed:
        # the driver that asked for a file reads the reason there (the first rank to fail wins)
        with contextlib.suppress(OSError):
            fd = os.open(error_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(line + "\n")
    # the launcher forwards what a rank prints asynchronously, and an abort can end it before
    # it has: a moment's grace gets the line to the terminal of a merge run by hand
    time.sleep(_FORWARD_GRACE_S)
    comm.Abort(2)  # the launcher ends every rank; this call does not return


def _merge(inputs: Sequence[str | Path], output_path: str | Path | None,
           comm: Any, key: RunKey | None, trust: bool) -> tuple[Any, MergeStats]:
    rank, size = comm.Get_rank(), comm.Get_size()
    started = time.perf_counter()
    baseline = psutil.Process().memory_info().rss  # interpreter and libraries, before data
    paths = expand_inputs(inputs) if rank == 0 else None
    paths = comm.bcast(paths, root=0)
    stats = MergeStats(ranks=size)
    total = merge_stream(_share(paths, rank, size), key, stats=stats, trust_coffea_files=trust)

    step = 1
    while step < size:
        if rank % (2 * step) == step:
            _send(comm, total, rank - step)
            total = None
            break
        if rank % (2 * step) == 0 and rank + step < size:
            total = _receive_into(comm, total, rank + step)
        step *= 2
    stats.wall_time_s = time.perf_counter() - started
    stats.peak_rss_bytes = peak_rss()
    mine = np.array([stats.bytes_read, stats.peak_rss_bytes, stats.inputs, baseline], np.int64)
    every = np.empty((size, mine.size), np.int64) if rank == 0 else None
    request = comm.Igather(mine, every, root=0)
    _idle_until(request.Test)
    if rank != 0:
        return None, stats
    assert every is not None
    stats.bytes_read = int(every[:, 0].sum())
    stats.inputs = int(every[:, 2].sum())
    stats.extra["peak_rss_per_rank"] = every[:, 1].tolist()
    stats.extra["baseline_rss_per_rank"] = every[:, 3].tolist()
    stats.peak_rss_bytes = int(every[:, 1].max())
    if output_path is not None:
        _save(total, Path(output_path), key)
        stats.extra["peak_rss_per_rank"][0] = peak_rss()
        stats.peak_rss_bytes = max(stats.extra["peak_rss_per_rank"])
    stats.wall_time_s = time.perf_counter() - started
    return total, stats


def _save(total: Any, path: Path, key: RunKey | None) -> None:
    """Coffea's format for people; a spill file when the path says so, for a run's driver,
    which reads it back: written and read in half the time, without pickling a copy of the
    storage (rank 0's memory stays the sum plus one piece)."""
    if path.suffix == SPILL_SUFFIX:
        if key is None:
            raise MergeError(f"{path}: a spill file is signed, and no key was given")
        save_spilled(total, path, key)
    else:
        output.save(total, path)  # pickling a histogram copies its storage once


def _await_request(comm: Any) -> dict[str, Any] | None:
    """Wait (sleeping) for rank 0 to read one JSON request from its standard input; None
    when it reads end-of-file: the process that started the ranks cancelled or died."""
    comm.Barrier()  # every rank has imported and initialised MPI
    request = None
    if comm.Get_rank() == 0:
        print(READY, flush=True)
        line = sys.stdin.readline()
        request = json.loads(line) if line.strip() else None
        if request is None:
            print(NO_INPUTS, flush=True)
        comm.Ibarrier().Wait()
    else:
        _idle_until(comm.Ibarrier().Test, pause=0.01)
    return comm.bcast(request, root=0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coffea_hpc.reduction.mpi",
                                     description="Merge partial outputs with MPI.")
    parser.add_argument("inputs", nargs="*", help="partial files or spill directories")
    parser.add_argument("-o", "--output", help="merged output file")
    parser.add_argument("--key-file", help="the key of the run that wrote the spill files "
                                           "(OUTPUT_DIR/.coffea-hpc/key)")
    parser.add_argument("--trust-coffea-files", action="store_true",
                        help="also merge unsigned files written by coffea.util.save")
    parser.add_argument("--serve", action="store_true",
                        help="start, then read the inputs and output as one JSON line on "
                             "rank 0's standard input; report on its standard output")
    args = parser.parse_args(argv)
    if not args.serve and args.output is None:
        parser.error("the following arguments are required: -o/--output")
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    inputs, output_path = list(args.inputs), args.output
    trust = args.trust_coffea_files
    try:
        key = RunKey.from_file(args.key_file) if args.key_file else None
    except Exception as err:
        _abort(comm, err)
        return 2
    error_file = None
    if args.serve:
        request = _await_request(comm)
        if request is None:
            return 0
        inputs, output_path = request["inputs"], request["output"]
        error_file = request.get("error_file")
        key = RunKey.from_hex(request["key"]) if request.get("key") else None
        trust = bool(request.get("trust_coffea_files"))
    try:
        _, stats = mpi_merge(inputs, output_path, comm, key=key, trust_coffea_files=trust,
                             error_file=error_file)
    except Exception as err:  # a single rank: mpi_merge left the report to us
        _abort(comm, err, error_file)
        return 2
    if comm.Get_rank() == 0:
        if args.serve:
            print(STATS + json.dumps(stats.as_dict()), flush=True)
        else:
            print(f"merged {count(stats.inputs, 'partial')} with {count(stats.ranks, 'rank')} in "
                  f"{stats.wall_time_s:.2f} s -> {output_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
