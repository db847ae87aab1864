"""What a worker measures about each chunk it processes, as one small row of plain data.

The row travels back in the `Result` of its task (``Result.chunk_rows``) and the driver
writes it out (`coffea_hpc.metrics`); it is never added into the running sum. Everything here
is cheap next to a chunk: a few clock reads, one ``getrusage`` and the byte counter of the
file's uproot source.

Bytes are read at uproot's source (``Source.num_requested_bytes``): the compressed bytes
fetched from storage for this chunk, the file's header and tree metadata included when the
chunk opened the file. Per column, the compressed sizes of the baskets the entry range
overlaps, from the tree's own metadata (what reading that column costs without a cache).
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import time
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from coffea_hpc.data.chunks import Chunk

__all__ = ["ChunkProbe", "worker_identity"]

_HOST = socket.gethostname()
_RSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
_JOB_VARIABLES = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "COBALT_JOBID")


def worker_identity() -> dict[str, Any]:
    """Host, pid, batch job and Parsl block of this process (read now: Parsl sets the block
    variable in the worker after this module was imported)."""
    env = os.environ
    job = next((env[v] for v in _JOB_VARIABLES if env.get(v)), None)
    return {"host": _HOST, "pid": os.getpid(), "job": job,
            "block": env.get("PARSL_WORKER_BLOCK_ID") or None}


@lru_cache(maxsize=64)
def _location(path: str) -> str:
    """Where the file is read from: the server of a URL (root://, https://), else 'local'."""
    parts = urlsplit(path)
    if parts.scheme in ("", "file"):
        return "local"
    return parts.hostname or "local"


def peak_rss() -> int:
    """Peak resident memory of this process so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT


class ChunkProbe:
    """Started as a chunk starts; `row` reads the clocks and counters again as it ends.

    CPU time is this thread's (``time.thread_time``): with the iterative backend the chunk
    runs on a thread of the driver, whose own CPU must not be counted.
    """

    __slots__ = ("_bytes0", "_cpu0", "_perf0", "chunk", "start")

    def __init__(self, chunk: Chunk, bytes_before: int) -> None:
        self.chunk = chunk
        self._bytes0 = bytes_before
        self.start = time.time()
        self._perf0 = time.perf_counter()
        self._cpu0 = time.thread_time()

    def row(self, outcome: str, bytes_after: int, *, stats: dict[str, Any] | None = None,
            column_bytes: dict[str, int] | None = None, error: str | None = None) -> dict[str, Any]:
        cpu = time.thread_time() - self._cpu0
        wall = time.perf_counter() - self._perf0
        c = self.chunk
        stats = stats or {}
        return {
            "dataset": c.dataset, "file": c.filename, "treename": c.treename,
            "entrystart": c.entrystart, "entrystop": c.entrystop, "entries": c.entries,
            "location": _location(c.filename),
            **worker_identity(),
            "start": self.start, "end": self.start + wall,
            "wall_s": wall, "cpu_s": cpu,
            "build_s": stats.get("buildtime"), "process_s": stats.get("processtime"),
            "bytes_read": max(bytes_after - self._bytes0, 0),
            "columns": sorted(stats.get("columns", ())),
            "column_bytes": column_bytes or {},
            "peak_rss": peak_rss(),
            "outcome": outcome, "error": error,
        }
