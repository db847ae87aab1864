"""The MPI tree-merge: many ranks, each merging a share, combined in log2(P) rounds.

Run under ``mpiexec -n P`` or ``srun -n P``::

    python -m coffea_hpc.reduction.mpi SPILL_DIR_OR_FILES... -o merged.coffea

Each rank streams its share of the inputs (balanced by size) into one running sum, so its
memory is about one partial plus the sum. Then, in round ``k``, rank ``r`` with
``r % 2^(k+1) == 2^k`` sends its sum to rank ``r - 2^k`` and leaves; after ``ceil(log2 P)``
rounds rank 0 holds the total and writes it. Sums travel as a small pickled skeleton plus
raw buffers (`coffea_hpc.reduction.buffers`), received and added one buffer at a time, and
buffers over 2^30 elements are sent in pieces (MPI counts are 32-bit).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from coffea_hpc import output
from coffea_hpc.errors import MergeError
from coffea_hpc.reduction._spillfile import SPILL_SUFFIX
from coffea_hpc.reduction.buffers import Slot, fold_buffers, skeleton
from coffea_hpc.reduction.merge import MergeStats, merge_stream, peak_rss

__all__ = ["expand_inputs", "mpi_merge", "run_mpi_merge"]

log = logging.getLogger(__name__)

PIECE = 1 << 21
"""Elements per MPI message (16 MiB of float64): MPI counts are 32-bit, and small pieces keep
the receiver's temporary memory to one piece."""

_TAG_SKELETON, _TAG_BUFFER = 11, 12


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
    loads = [0] * size
    owner: dict[Path, int] = {}
    for path in sorted(paths, key=lambda p: (-p.stat().st_size, str(p))):
        r = loads.index(min(loads))
        owner[path] = r
        loads[r] += path.stat().st_size
    return [p for p in paths if owner[p] == rank]


def _send(comm: Any, value: Any, dest: int) -> None:
    skel, buffers = skeleton(value)
    comm.send(skel, dest=dest, tag=_TAG_SKELETON)
    for buf in buffers:
        for start in range(0, max(buf.size, 1), PIECE):
            comm.Send(np.ascontiguousarray(buf[start:start + PIECE]), dest=dest, tag=_TAG_BUFFER)


def _receive_into(comm: Any, total: Any, source: int) -> Any:
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
              comm: Any = None) -> tuple[Any, MergeStats]:
    """Merge ``inputs`` over the ranks of ``comm`` (default: COMM_WORLD).

    Returns the total (on rank 0; None elsewhere) and this rank's stats; rank 0's stats
    cover the whole merge (wall time, bytes read by all ranks, the largest peak RSS).
    """
    if comm is None:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    started = time.perf_counter()
    baseline = psutil.Process().memory_info().rss  # interpreter and libraries, before data
    paths = expand_inputs(inputs) if rank == 0 else None
    paths = comm.bcast(paths, root=0)
    stats = MergeStats(ranks=size)
    total = merge_stream(_share(paths, rank, size), stats=stats)

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
    every = comm.gather((stats.bytes_read, stats.peak_rss_bytes, stats.inputs, baseline),
                        root=0)
    if rank != 0:
        return None, stats
    stats.bytes_read = sum(row[0] for row in every)
    stats.inputs = sum(row[2] for row in every)
    stats.extra["peak_rss_per_rank"] = [row[1] for row in every]
    stats.extra["baseline_rss_per_rank"] = [row[3] for row in every]
    stats.peak_rss_bytes = max(row[1] for row in every)
    if output_path is not None:
        output.save(total, output_path)  # pickling a histogram copies its storage once
        stats.extra["peak_rss_per_rank"][0] = peak_rss()
        stats.peak_rss_bytes = max(stats.extra["peak_rss_per_rank"])
    stats.wall_time_s = time.perf_counter() - started
    return total, stats


def run_mpi_merge(
    inputs: Sequence[str | Path],
    output_path: str | Path,
    *,
    ranks: int,
    launcher: str = "mpiexec",
    timeout: float | None = None,
) -> MergeStats:
    """Launch the MPI merge as ``launcher -n ranks python -m coffea_hpc.reduction.mpi``.

    The input list goes through a file (a run may have many thousands of partials).
    ``launcher`` is ``mpiexec`` (the one beside this Python first, as installed with the
    ``mpich`` wheel), ``srun``, or a full command such as ``"srun --mpi=pmi2"``.
    """
    if ranks < 1:
        raise MergeError(f"ranks must be >= 1, got {ranks}")
    words = launcher.split()
    local = Path(sys.executable).with_name(words[0])
    exe = str(local) if local.exists() else shutil.which(words[0])
    if exe is None:
        raise MergeError(f"cannot run the MPI merge: {words[0]!r} not found (install the "
                         "'mpi' extra: pip install 'coffea-hpc[mpi]', or use the site's MPI)")
    with tempfile.TemporaryDirectory(prefix="coffea-hpc-mpi-") as tmp:
        listing = Path(tmp) / "inputs.txt"
        listing.write_text("\n".join(str(Path(p)) for p in expand_inputs(inputs)) + "\n")
        stats_path = Path(tmp) / "stats.json"
        cmd = [exe, *words[1:], "-n", str(ranks), sys.executable, "-m", "coffea_hpc.reduction.mpi",
               "--inputs-from", str(listing), "-o", str(output_path), "--stats", str(stats_path)]
        log.info("MPI merge: %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise MergeError(f"the MPI merge failed (exit {proc.returncode}): "
                             + " | ".join(tail))
        data = json.loads(stats_path.read_text())
    return MergeStats(inputs=data["inputs"], wall_time_s=data["wall_time_s"],
                      bytes_read=data["bytes_read"], peak_rss_bytes=data["peak_rss_bytes"],
                      ranks=data["ranks"],
                      extra={k: data[k] for k in ("peak_rss_per_rank", "baseline_rss_per_rank")
                             if k in data})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coffea_hpc.reduction.mpi",
                                     description="Merge partial outputs with MPI.")
    parser.add_argument("inputs", nargs="*", help="partial files or spill directories")
    parser.add_argument("--inputs-from", help="a file listing inputs, one per line")
    parser.add_argument("-o", "--output", required=True, help="merged output file")
    parser.add_argument("--stats", help="write merge statistics (JSON) here")
    args = parser.parse_args(argv)
    inputs = list(args.inputs)
    if args.inputs_from:
        inputs += [line for line in Path(args.inputs_from).read_text().splitlines() if line]
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    try:
        _, stats = mpi_merge(inputs, args.output, comm)
    except MergeError as err:
        print(f"error (rank {comm.Get_rank()}): {err}", file=sys.stderr, flush=True)
        comm.Abort(2)
        return 2
    if comm.Get_rank() == 0 and args.stats:
        Path(args.stats).write_text(json.dumps(stats.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
