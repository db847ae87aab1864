"""Per-chunk metrics on the driver: one JSON line per chunk attempt, and the run's figures.

Workers measure each chunk (`coffea_hpc.processing.measure`) and send the rows back with
their task's result; `ChunkLog` observes every task as it settles (`FutureTask.observe`),
adds what only the driver knows (when it submitted the task, the attempt number, which run)
and streams the row to ``OUTDIR/chunks.jsonl``. JSON Lines, because a run that dies leaves a
readable file (every complete line is a row), and pandas (``read_json(lines=True)``),
pyarrow (``pyarrow.json.read_json``) and awkward (``from_json(line_delimited=True)``) all
read it. Nothing per chunk stays in memory: the figures of `ChunkLog.figures` are running
sums, per file and per column at most.

A worker folds several chunks into one task: each keeps its own row, and the task's wait in
the queue (its first chunk's start minus the driver's submit time) is counted once, on the
first. Timestamps are each machine's own clock (``time.time``): queue waits of workers whose
clock is behind the driver's are clipped at zero.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coffea_hpc.backends._task import Settled

__all__ = ["CHUNKS_NAME", "ChunkLog", "read_chunks"]

CHUNKS_NAME = "chunks.jsonl"

log = logging.getLogger(__name__)

_FLUSH_EVERY_S = 2.0
_SLOWEST = 10


class ChunkLog:
    """Writes chunk rows to ``path`` (None: only the figures are kept) and sums them up.

    ``append`` keeps the rows of earlier runs (a resumed run); every row names its ``run``,
    so readers can tell them apart, and the figures count this run's rows only.
    """

    def __init__(self, path: Path | None, *, run: str, append: bool = False) -> None:
        self.path = path
        self.run = run
        self._file: IO[str] | None = None
        if path is not None:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append
                                                              else os.O_TRUNC), 0o600)
                self._file = os.fdopen(fd, "w", buffering=1 << 16)
            except OSError as err:
                self._give_up(err)
        self._flushed = time.monotonic()
        self.rows = 0
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.events = 0
        self.busy_s = self.cpu_s = self.build_s = self.process_s = 0.0
        self.queue_s = self.retry_s = self.lost_s = 0.0
        self.bytes_read = 0
        self.tasks = 0
        self.first_start: float | None = None
        self.last_end: float | None = None
        self.workers_seen: set[tuple[str, int]] = set()
        self.peak_rss = 0
        self.column_bytes: collections.Counter[str] = collections.Counter()
        self._files: dict[str, list[Any]] = {}
        self._datasets: dict[str, list[float]] = {}

    def __enter__(self) -> ChunkLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as err:
                self._give_up(err)
            self._file = None

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as err:
                self._give_up(err)
        self._flushed = time.monotonic()

    def _give_up(self, err: OSError) -> None:
        """Metrics never stop a run: a full disk ends the chunk rows with one warning (what
        is on disk stays readable, line by line); the figures go on."""
        log.warning("chunk metrics are no longer written to %s: %s", self.path, err)
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    def __call__(self, settled: Settled) -> None:
        """Record one task as it came back (the `FutureTask` observer)."""
        if settled.result is not None:
            rows: Any = settled.result.chunk_rows
        else:
            rows = _lost_rows(settled)
        self.tasks += 1
        first = True
        for row in rows:
            key = (row["dataset"], row["file"], row["treename"], row["entrystart"],
                   row["entrystop"])
            row["attempt"] = settled.attempts.get(key, 0) + 1
            row["submitted"] = settled.submitted
            row["queue_s"] = _queued(row, settled.submitted) if first else 0.0
            row["task"] = settled.token
            row["run"] = self.run
            first = False
            self._add(row)
            if self._file is not None:
                try:
                    self._file.write(json.dumps(row, separators=(",", ":"), default=str) + "\n")
                except OSError as err:
                    self._give_up(err)
        if time.monotonic() - self._flushed > _FLUSH_EVERY_S:
            self.flush()

    def _add(self, row: dict[str, Any]) -> None:
        self.rows += 1
        outcome = row["outcome"]
        self.outcomes[outcome] += 1
        wall = row["wall_s"] or 0.0
        self.queue_s += row["queue_s"]
        per_column = row.pop("column_bytes", None) or {}
        if outcome == "lost":
            self.lost_s += wall
            return
        self.busy_s += wall
        self.cpu_s += row["cpu_s"] or 0.0
        self.bytes_read += row["bytes_read"] or 0
        self.peak_rss = max(self.peak_rss, row["peak_rss"] or 0)
        self.workers_seen.add((row["host"], row["pid"]))
        start, end = row["start"], row["end"]
        self.first_start = start if self.first_start is None else min(self.first_start, start)
        self.last_end = end if self.last_end is None else max(self.last_end, end)
        if outcome != "ok":
            self.retry_s += wall
            return
        self.events += row["entries"]
        self.build_s += row["build_s"] or 0.0
        self.process_s += row["process_s"] or 0.0
        self.column_bytes.update(per_column)
        stats = self._files.get(row["file"])
        if stats is None:
            stats = self._files[row["file"]] = [row["dataset"], 0.0, 0, 0, 0]
        stats[1] += wall
        stats[2] += row["entries"]
        stats[3] += 1
        stats[4] += row["bytes_read"] or 0
        ds = self._datasets.setdefault(row["dataset"], [0, 0.0, 0])
        ds[0] += 1
        ds[1] += wall
        ds[2] += row["entries"]

    def figures(self, processing_s: float | None, workers: int | None) -> dict[str, Any]:
        """The run's performance figures for ``report.json`` (see docs/performance.md).

        ``processing_s``: the processing stage's wall time; ``workers``: the backend's
        slots. Rates per core divide by the slots, not by the workers that happened to
        connect: a slot that waited in a batch queue was paid for in wall time too.
        """
        rate = self.events / processing_s if processing_s else None
        slots = workers or None
        slowest = sorted(self._files.items(), key=lambda kv: kv[1][1], reverse=True)[:_SLOWEST]
        return {
            "chunks_file": CHUNKS_NAME if self.path is not None else None,
            "chunk_attempts": self.rows,
            "outcomes": dict(self.outcomes),
            "events_per_s": _round(rate, 1),
            "hz_per_core": _round(rate / slots, 2) if rate is not None and slots else None,
            "events_per_cpu_s": _round(self.events / self.cpu_s, 1) if self.cpu_s else None,
            "utilisation": _round(self.busy_s / (slots * processing_s), 3)
            if slots and processing_s else None,
            "cpu_efficiency": _round(self.cpu_s / self.busy_s, 3) if self.busy_s else None,
            "busy_s": _round(self.busy_s, 3),
            "cpu_s": _round(self.cpu_s, 3),
            "build_s": _round(self.build_s, 3),
            "process_s": _round(self.process_s, 3),
            "queue_wait_s": _round(self.queue_s, 3),
            "mean_queue_wait_s": _round(self.queue_s / self.tasks, 4) if self.tasks else None,
            "lost_to_retries_s": _round(self.retry_s, 3),
            "lost_to_ended_workers_s": _round(self.lost_s, 3),
            "bytes_read": self.bytes_read,
            "workers_seen": len(self.workers_seen),
            "peak_worker_rss": self.peak_rss,
            "column_bytes": dict(self.column_bytes.most_common()),
            "datasets": {name: {"chunks": n, "mean_chunk_s": _round(wall / n, 4),
                                "events_per_busy_s": _round(events / wall, 1) if wall else None}
                         for name, (n, wall, events) in self._datasets.items()},
            "slowest_files": [
                {"file": name, "dataset": ds, "busy_s": _round(wall, 3), "events": events,
                 "chunks": chunks, "bytes_read": nbytes,
                 "events_per_s": _round(events / wall, 1) if wall else None}
                for name, (ds, wall, events, chunks, nbytes) in slowest],
        }


def read_chunks(path: str | Path, run: str | None = None,
                fields: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The rows of a chunks file (those of ``run`` only, if given; only ``fields`` of
    them, if given); a last line cut short by a run that died is skipped."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if run is None or row.get("run") == run:
                rows.append(row if fields is None else {k: row.get(k) for k in fields})
    return rows


def _lost_rows(settled: Settled) -> list[dict[str, Any]]:
    """Rows for the chunks of a task that died as a whole (its worker ended): the time lost
    is what the driver saw, submit to now, charged to the first chunk."""
    now = time.time()
    lost = now - settled.submitted if settled.submitted is not None else 0.0
    rows = []
    for key in settled.element.keys:
        if not (isinstance(key, tuple) and len(key) == 5):
            continue
        dataset, filename, treename, start, stop = key
        rows.append({
            "dataset": dataset, "file": filename, "treename": treename, "entrystart": start,
            "entrystop": stop, "entries": stop - start, "location": None, "host": None,
            "pid": None,
            "job": None, "block": None, "start": None, "end": now, "wall_s": lost,
            "cpu_s": None, "build_s": None, "process_s": None, "bytes_read": None,
            "columns": [], "peak_rss": None, "outcome": "lost",
            "error": settled.error.summary() if settled.error else None,
        })
        lost = 0.0
    return rows


def _queued(row: dict[str, Any], submitted: float | None) -> float:
    if submitted is None or row["start"] is None:
        return 0.0
    return max(row["start"] - submitted, 0.0)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
