"""Adaptive chunking: chunks cut as they are submitted, sized so that each lasts about a
target number of seconds (``--target-chunk-seconds``).

A fixed chunking cuts every file up front. Here each file's entry range (what the fixed
chunking would cover, less what a checkpoint already counted) is a *span*, and the next
chunk is cut from the front of its span only when the backend has room for it, at the size
the dataset's measured throughput asks for: ``target / seconds-per-event``. The estimate is
the median over the dataset's latest finished chunks (their wall time per entry, as the
workers measured them), so a dataset whose events cost ten times more gets chunks ten times
smaller, and the first chunks, cut before anything was measured, have the start chunksize.

Exactly once: a span is only ever shortened from its front, so chunks cut from it are
disjoint, and together they cover it; a chunk that ran out of memory is replaced by its two
halves (`AdaptiveWorkload.split`). The task checks at the end that the ledger covers every
span (`AdaptiveWorkload.uncovered`), and the work left after a failure is the spans less
the ledger (`AdaptiveWorkload.rest`), never a list of chunks that might overlap.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from collections import deque
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from coffea_hpc.data.chunks import Chunk, ChunkKey
from coffea_hpc.data.ranges import EntryRanges
from coffea_hpc.processing.processor import ProcessorHandle
from coffea_hpc.processing.worker import resolve_schema
from coffea_hpc.processing.workload import ProcessChunks, Workload
from coffea_hpc.reduction.spill import SpillPolicy

__all__ = ["AdaptiveWorkload", "ChunkSizer", "spans_of"]

LOOKAHEAD = 1_000
"""Spans looked through for one of a measured dataset (`AdaptiveWorkload._next_span`)."""
MIN_ENTRIES = 100
"""The smallest chunk cut (unless the start chunksize is smaller)."""
MAX_FACTOR = 16
"""Chunks grow to at most this many times the start chunksize."""
MAX_GROWTH = 4
"""A dataset's chunks grow by at most this factor over its largest chunk so far: one chunk
that happened to run fast does not make the next one huge."""
RECENT = 7
"""The seconds-per-event estimate is the median over this many of the dataset's latest
chunks: a worker's first chunk (imports, the file's open) or one on a busy node does not
throw it off, and a dataset whose cost changes along its files is followed."""
MAX_SPLIT_DEPTH = 4
"""How often a chunk that ran out of memory is halved (down to 1/16) before the error
policy decides about it as about any failure."""

OUT_OF_MEMORY = frozenset({
    "MemoryError",
    "coffea_hpc.backends.futures.WorkerDied",
    "parsl.executors.high_throughput.errors.WorkerLost",
})
"""Errors of a chunk whose worker (probably) ran out of memory: raised by the processor, or
the worker process died under it (futures' pool, Parsl's HighThroughputExecutor)."""


class ChunkSizer:
    """Per dataset, the entries of the next chunk: ``target_s`` over the estimated seconds
    per event, within [min, max] and at most `MAX_GROWTH` times the largest chunk so far."""

    def __init__(self, start: int, target_s: float) -> None:
        if start < 1:
            raise ValueError(f"the start chunksize must be positive, got {start}")
        if not target_s > 0:
            raise ValueError(f"the target chunk duration must be positive, got {target_s}")
        self.start = start
        self.target_s = float(target_s)
        self.min_entries = min(start, MIN_ENTRIES)
        self.max_entries = start * MAX_FACTOR
        self._recent: dict[str, deque[float]] = {}
        """dataset -> seconds per event of its latest finished chunks"""
        self._largest: dict[str, int] = {}
        self._caps: dict[str, int] = {}
        """dataset -> the most entries a chunk may have: half a chunk that ran out of memory"""

    def learn(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Fold in the measured rows of finished chunks (`Result.chunk_rows`)."""
        for row in rows:
            entries, wall = row.get("entries") or 0, row.get("wall_s")
            if row.get("outcome") != "ok" or entries <= 0 or wall is None:
                continue
            recent = self._recent.setdefault(row["dataset"], deque(maxlen=RECENT))
            recent.append(wall / entries)

    def seconds_per_event(self, dataset: str) -> float | None:
        recent = self._recent.get(dataset)
        return statistics.median(recent) if recent else None

    def size(self, dataset: str) -> int:
        per_event = self.seconds_per_event(dataset)
        if per_event is None:
            size = self.start
        else:
            size = self.target_s / per_event if per_event > 0 else self.max_entries
            largest = self._largest.get(dataset, self.start)
            size = min(size, MAX_GROWTH * max(largest, self.start // MAX_GROWTH, 1))
        size = int(min(max(size, self.min_entries), self.max_entries,
                       self._caps.get(dataset, self.max_entries)))
        return max(size, 1)

    def cut(self, dataset: str, entries: int) -> None:
        """A chunk of ``entries`` was cut for ``dataset``."""
        self._largest[dataset] = max(self._largest.get(dataset, 0), entries)

    def cap(self, dataset: str, entries: int) -> None:
        """Never cut chunks above ``entries`` for ``dataset`` again (half of one that ran
        out of memory)."""
        self._caps[dataset] = max(min(self._caps.get(dataset, entries), entries), 1)

    def summary(self) -> dict[str, Any]:
        """What the sizer learnt, per dataset, for the report."""
        out: dict[str, Any] = {}
        for dataset in sorted({*self._recent, *self._largest}):
            per_event = self.seconds_per_event(dataset)
            out[dataset] = {
                "seconds_per_event": None if per_event is None else round(per_event, 9),
                "next_chunk_entries": self.size(dataset),
                "largest_chunk_entries": self._largest.get(dataset),
                "cap_entries": self._caps.get(dataset),
            }
        return out


def spans_of(chunks: Sequence[Chunk], done: EntryRanges | None = None) -> list[Chunk]:
    """The entry ranges ``chunks`` cover, consecutive chunks of one file joined into one
    span, less what ``done`` (a checkpoint's ledger) already counted; in the chunks' order.

    A file with no entries keeps its one empty range ``[0, 0)`` unless ``done`` has it.
    """
    joined: list[Chunk] = []
    for c in chunks:
        last = joined[-1] if joined else None
        if last is not None and last.key[:3] == c.key[:3] and last.entrystop == c.entrystart \
                and c.entries > 0 and last.entries > 0:
            joined[-1] = dataclasses.replace(last, entrystop=c.entrystop)
        else:
            joined.append(c)
    if not done:
        return joined
    out: list[Chunk] = []
    ledger = dict(iter(done))
    for span in joined:
        counted = ledger.get(span.key[:3], ())
        if span.entries == 0:
            if not counted:
                out.append(span)
            continue
        cursor = span.entrystart
        for a, b in counted:
            if b <= cursor or a == b:
                continue
            if a >= span.entrystop:
                break
            if a > cursor:
                out.append(dataclasses.replace(span, entrystart=cursor, entrystop=a))
            cursor = max(cursor, b)
        if cursor < span.entrystop:
            out.append(dataclasses.replace(span, entrystart=cursor, entrystop=span.entrystop))
    return out


class AdaptiveWorkload:
    """The processing of some spans by one processor, cut into chunks as it is iterated.

    Iterating it cuts the chunks (once: an `AdaptiveWorkload` is iterated by one task);
    `learn` (called by the task with each finished element's chunk rows) updates the sizes
    of the chunks cut after. `keys` and `subset` know the chunks cut so far, which is what
    retries ask for; `uncovered` and `rest` work on entry ranges.
    """

    adaptive = True

    def __init__(
        self,
        processor: ProcessorHandle,
        spans: Sequence[Chunk],
        sizer: ChunkSizer,
        *,
        schema: str = "nanoaod",
        chunks_per_task: int = 1,
        spill: SpillPolicy | None = None,
        uproot_options: Mapping[str, Any] | None = None,
        form_cache: str | None = None,
    ) -> None:
        if chunks_per_task < 1:
            raise ValueError(f"chunks_per_task must be >= 1, got {chunks_per_task}")
        resolve_schema(schema)  # fail on the driver, not on every worker
        self.processor = processor
        self.spans = tuple(spans)
        self.sizer = sizer
        self.schema = schema
        self.chunks_per_task = chunks_per_task
        self.spill = spill
        self.uproot_options = dict(uproot_options or {})
        self.form_cache = form_cache
        self._pending: deque[Chunk] = deque(self.spans)
        self._cut: dict[ChunkKey, Chunk] = {}
        self._order: dict[ChunkKey, int] = {}
        self._depth: dict[ChunkKey, int] = {}
        self._positions = 0
        self._splits = 0

    # -- what a task asks of any work ----------------------------------------------------

    def __iter__(self) -> Iterator[ProcessChunks]:
        # first one chunk of each dataset (at the start size), so that every dataset's cost
        # is measured early: the chunks a window cuts for a dataset reached only later would
        # otherwise all be cut blind, at the start size, however heavy its events
        probed: set[str] = set()
        i = 0
        while i < len(self._pending):
            span = self._pending[i]
            if span.dataset in probed or span.entries <= 0:
                i += 1
                continue
            probed.add(span.dataset)
            chunk, rest = self._cut_from(span)
            if rest is None:
                del self._pending[i]
            else:
                self._pending[i] = rest
                i += 1
            yield self._element([chunk])
        while self._pending:
            at = self._next_span()
            span: Chunk | None = self._pending[at]
            del self._pending[at]
            batch: list[Chunk] = []
            while span is not None and len(batch) < self.chunks_per_task:
                chunk, span = self._cut_from(span)  # type: ignore[arg-type]
                batch.append(chunk)
            if span is not None:
                self._pending.insert(at, span)
            yield self._element(batch)

    def _next_span(self) -> int:
        """Where the next chunk is cut: the first span, unless its dataset is not measured
        yet (its first chunk still running) and one a little further on is: chunks are not
        cut blind while there is other work to give out."""
        if self.sizer.seconds_per_event(self._pending[0].dataset) is not None:
            return 0
        for at, span in enumerate(itertools.islice(self._pending, 1, LOOKAHEAD), start=1):
            if self.sizer.seconds_per_event(span.dataset) is not None:
                return at
        return 0

    def __len__(self) -> int:
        """Chunks cut so far plus an estimate of those still to cut (for progress)."""
        ahead = sum(max(1, math.ceil(s.entries / self.sizer.size(s.dataset)))
                    for s in self._pending)
        return len(self._cut) + ahead

    def __repr__(self) -> str:
        return f"AdaptiveWorkload({len(self.spans)} spans, {self.n_entries} entries)"

    def keys(self) -> list[ChunkKey]:
        return list(self._cut)

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        """The chunks cut so far (those split after running out of memory replaced by their
        halves)."""
        return tuple(self._cut.values())

    @property
    def n_entries(self) -> int:
        return sum(s.entries for s in self.spans)

    @property
    def total_weight(self) -> int:
        return self.n_entries

    @property
    def splits(self) -> int:
        """Chunks split in two after running out of memory."""
        return self._splits

    @staticmethod
    def file_of(key: Hashable) -> Hashable:
        return key[:3]  # type: ignore[index]

    def subset(self, keys: Iterable[Hashable]) -> Workload:
        """The chunks already cut with these keys, in the order they were cut (retries)."""
        chosen = sorted({k for k in keys if k in self._cut},
                        key=lambda k: (self._order[k], k[3]))  # type: ignore[index]
        return Workload(self.processor, [self._cut[k] for k in chosen],  # type: ignore[index]
                        schema=self.schema, chunks_per_task=self.chunks_per_task,
                        spill=self.spill, uproot_options=self.uproot_options,
                        form_cache=self.form_cache)

    # -- adaptive ------------------------------------------------------------------------

    def learn(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.sizer.learn(rows)

    def split(self, key: Hashable) -> list[ProcessChunks]:
        """Replace the cut chunk ``key`` by its two halves and return their elements; no
        elements if it cannot be split (one entry, halved too often already, unknown).
        The dataset's chunks are capped at the halves' size from now on."""
        chunk = self._cut.get(key)  # type: ignore[call-overload]
        depth = self._depth.get(key, 0)  # type: ignore[call-overload]
        if chunk is None or chunk.entries < 2 or depth >= MAX_SPLIT_DEPTH:
            return []
        middle = chunk.entrystart + chunk.entries // 2
        halves = [dataclasses.replace(chunk, entrystop=middle),
                  dataclasses.replace(chunk, entrystart=middle)]
        position = self._order.pop(chunk.key)
        del self._cut[chunk.key]
        self._depth.pop(chunk.key, None)
        for half in halves:
            self._cut[half.key] = half
            self._order[half.key] = position
            self._depth[half.key] = depth + 1
        self.sizer.cap(chunk.dataset, halves[0].entries)
        self._splits += 1
        return [self._element([half]) for half in halves]

    def uncovered(self, covered: EntryRanges) -> list[ChunkKey]:
        """The entry ranges of the spans that ``covered`` lacks, as chunk keys."""
        missing = spans_of(self.spans, covered)
        return [c.key for c in missing]

    def rest(self, covered: EntryRanges) -> AdaptiveWorkload:
        """The same work less what ``covered`` counted: the spans left, cut afresh."""
        return AdaptiveWorkload(self.processor, spans_of(self.spans, covered), self.sizer,
                                schema=self.schema, chunks_per_task=self.chunks_per_task,
                                spill=self.spill, uproot_options=self.uproot_options,
                                form_cache=self.form_cache)

    # -- internals -----------------------------------------------------------------------

    def _cut_from(self, span: Chunk) -> tuple[Chunk, Chunk | None]:
        """The next chunk of ``span`` and what is left of it (None: nothing). What is left
        is split evenly at the wanted size (coffea's rule), so a file never ends with a
        sliver of a chunk."""
        n = span.entries
        if n <= 0:
            chunk, rest = span, None
        else:
            size = self.sizer.size(span.dataset)
            pieces = max(round(n / size), 1)
            step = math.ceil(n / pieces)
            stop = span.entrystart + step
            chunk = dataclasses.replace(span, entrystop=stop)
            rest = dataclasses.replace(span, entrystart=stop) if stop < span.entrystop else None
        self.sizer.cut(chunk.dataset, chunk.entries)
        self._order[chunk.key] = self._positions
        self._positions += 1
        self._cut[chunk.key] = chunk
        return chunk, rest

    def _element(self, batch: list[Chunk]) -> ProcessChunks:
        return ProcessChunks(self.processor, tuple(batch), self.schema, self.spill,
                             self.uproot_options, self.form_cache)


def out_of_memory(type_names: Iterable[str]) -> bool:
    """Whether an error's type names (`RemoteError.type_names`) say its worker ran out of
    memory."""
    return any(name in OUT_OF_MEMORY for name in type_names)
