"""A processor over a list of chunks, as a `Computable` any backend can run.

Chunks are grouped into elements of ``chunks_per_task`` consecutive chunks (consecutive
chunks usually share a file, so a worker reuses the open file and its form); the element
folds its chunks' outputs before sending one result back.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coffea_hpc.data.chunks import Chunk, ChunkKey
from coffea_hpc.processing.processor import ProcessorHandle
from coffea_hpc.processing.result import Result
from coffea_hpc.processing.worker import process_chunks, resolve_schema
from coffea_hpc.reduction.spill import SpillPolicy

__all__ = ["ProcessChunks", "Workload"]


@dataclass(frozen=True)
class ProcessChunks:
    """One element: run the processor over a few chunks on a worker."""

    processor: ProcessorHandle
    chunks: tuple[Chunk, ...]
    schema: str = "nanoaod"
    spill: SpillPolicy | None = None
    uproot_options: Mapping[str, Any] = field(default_factory=dict)
    form_cache: str | None = None

    @property
    def keys(self) -> tuple[ChunkKey, ...]:
        return tuple(c.key for c in self.chunks)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(c.describe() for c in self.chunks)

    @property
    def weight(self) -> int:
        return sum(c.entries for c in self.chunks)

    def __call__(self) -> Result:
        return process_chunks(self.processor, self.chunks, self.schema, spill=self.spill,
                              uproot_options=self.uproot_options, form_cache=self.form_cache)


class Workload:
    """The processing of a fileset's chunks by one processor."""

    def __init__(
        self,
        processor: ProcessorHandle,
        chunks: Sequence[Chunk],
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
        self.chunks = tuple(chunks)
        self.schema = schema
        self.chunks_per_task = chunks_per_task
        self.spill = spill
        self.uproot_options = dict(uproot_options or {})
        self.form_cache = form_cache
        self._positions: dict[Hashable, int] | None = None

    def __iter__(self) -> Iterator[ProcessChunks]:
        batch: list[Chunk] = []
        for chunk in self.chunks:
            if batch and (
                len(batch) >= self.chunks_per_task or batch[-1].filename != chunk.filename
            ):
                yield self._element(batch)
                batch = []
            batch.append(chunk)
        if batch:
            yield self._element(batch)

    def _element(self, batch: list[Chunk]) -> ProcessChunks:
        return ProcessChunks(self.processor, tuple(batch), self.schema, self.spill,
                             self.uproot_options, self.form_cache)

    def __len__(self) -> int:
        return len(self.chunks)

    def __repr__(self) -> str:
        return f"Workload({len(self.chunks)} chunks, {self.n_entries} entries)"

    @property
    def n_entries(self) -> int:
        return sum(c.entries for c in self.chunks)

    def keys(self) -> list[ChunkKey]:
        return [c.key for c in self.chunks]

    @property
    def total_weight(self) -> int:
        """Events in all the chunks, without making their elements."""
        return sum(c.entries for c in self.chunks)

    @staticmethod
    def file_of(key: Hashable) -> Hashable:
        """The file a chunk reads: a file that cannot be read is given up as a whole."""
        return key[:3]  # type: ignore[index]

    def subset(self, keys: Iterable[Hashable]) -> Workload:
        """The chunks with these keys, in order; a retry asks for a few keys of a million
        chunks, so positions are looked up, not searched for."""
        if self._positions is None:
            self._positions = {c.key: i for i, c in enumerate(self.chunks)}
        where = sorted({self._positions[k] for k in keys if k in self._positions})
        return Workload(
            self.processor,
            [self.chunks[i] for i in where],
            schema=self.schema,
            chunks_per_task=self.chunks_per_task,
            spill=self.spill,
            uproot_options=self.uproot_options,
            form_cache=self.form_cache,
        )
