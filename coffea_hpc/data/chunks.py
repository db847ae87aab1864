"""Chunks: the unit of work, an entry range of one tree in one file.

The splitting rule is coffea's, so a chunk size means the same thing in both tools:
``n = max(round(N / chunksize), 1)`` chunks of ``ceil(N / n)`` entries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # workers unpickle chunks; the fileset model (pydantic) costs them 0.25 s
    from coffea_hpc.data.fileset import File, Fileset

__all__ = ["Chunk", "ChunkKey", "aligned_steps", "chunks_of", "even_steps"]

ChunkKey = tuple[str, str, str, int, int]
"""(dataset, filename, treename, entrystart, entrystop): a chunk's identity."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """What a worker needs to process one entry range; coffea's ``WorkItem`` fields."""

    dataset: str
    filename: str
    treename: str
    entrystart: int
    entrystop: int
    fileuuid: str = ""
    usermeta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    replicas: tuple[str, ...] = field(default=(), compare=False, hash=False)
    """Other locations of the same file, tried in order when ``filename`` cannot be read."""

    @property
    def key(self) -> ChunkKey:
        return (self.dataset, self.filename, self.treename, self.entrystart, self.entrystop)

    @property
    def entries(self) -> int:
        return self.entrystop - self.entrystart

    @property
    def metadata(self) -> dict[str, Any]:
        """``events.metadata`` as coffea's Runner sets it: the chunk's identity, then the
        dataset's user metadata."""
        meta: dict[str, Any] = {
            "dataset": self.dataset,
            "filename": self.filename,
            "treename": self.treename,
            "entrystart": self.entrystart,
            "entrystop": self.entrystop,
            "fileuuid": self.fileuuid,
        }
        meta.update(self.usermeta)
        return meta

    def describe(self) -> str:
        return f"{self.filename}:{self.treename}[{self.entrystart}:{self.entrystop}]"


def even_steps(n_entries: int, chunksize: int) -> list[tuple[int, int]]:
    """Split ``n_entries`` into near-equal ranges of about ``chunksize`` (coffea's rule).

    A file with no entries gives one empty range, as coffea's Runner does: the processor is
    still called (with no events), so its output carries the file's dataset as a category, the
    file in a set of files, a cut flow of zeros.
    """
    if chunksize < 1:
        raise ValueError(f"chunksize must be positive, got {chunksize}")
    if n_entries <= 0:
        return [(0, 0)]
    n = max(round(n_entries / chunksize), 1)
    size = math.ceil(n_entries / n)
    return [(start, min(start + size, n_entries)) for start in range(0, n_entries, size)]


def aligned_steps(
    cluster_starts: Sequence[int], n_entries: int, chunksize: int
) -> list[tuple[int, int]]:
    """Ranges that start and stop on ROOT cluster boundaries, each at least ``chunksize``
    entries where the file allows, so no basket is decompressed by two chunks."""
    if n_entries <= 0:
        return [(0, 0)]
    bounds = sorted({b for b in cluster_starts if 0 < b < n_entries})
    steps: list[tuple[int, int]] = []
    start = 0
    for b in bounds:
        if b - start >= chunksize:
            steps.append((start, b))
            start = b
    steps.append((start, n_entries))
    return steps


def chunks_of(
    fileset: Fileset,
    *,
    limit_chunks: int | None = None,
) -> list[Chunk]:
    """The chunks of a preprocessed fileset, dataset by dataset.

    ``limit_chunks`` caps the chunks taken from each dataset (coffea's ``maxchunks``).
    """
    out: list[Chunk] = []
    for ds in fileset:
        taken = 0
        for f in ds.files:
            for start, stop in _steps_of(f):
                if limit_chunks is not None and taken >= limit_chunks:
                    break
                out.append(Chunk(ds.name, f.path, f.treename, start, stop, f.uuid or "",
                                 ds.metadata, f.replicas))
                taken += 1
    return out


def _steps_of(f: File) -> Iterable[tuple[int, int]]:
    if f.steps is None:
        raise ValueError(f"file {f.path!r} is not preprocessed (no steps)")
    return [(a, b) for a, b in f.steps if b >= a]
