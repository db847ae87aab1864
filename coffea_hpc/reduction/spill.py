"""Spilling partial results to storage so that only references travel.

A partial output with hundreds of systematic variations can weigh hundreds of MB; shipping
it through Parsl's interchange (or Globus Compute's cloud service, which refuses it) and
holding many of them on the driver is what makes large runs fail. Above a size threshold a
worker writes its partial (coffea's format: lz4-compressed cloudpickle) to a spill directory
on shared storage and returns a `SpilledRef`. References add up into a `SpillSet`, which the
reduction stage merges where memory allows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hist
import numpy as np

from coffea_hpc import output
from coffea_hpc.processing.result import DeferredValue, merge_values
from coffea_hpc.reduction._spillfile import SPILL_SUFFIX, fold_spill_file, write_spill_file

__all__ = ["SpillPolicy", "SpillSet", "SpilledRef", "load_spilled", "save_spilled",
           "serialized_size", "spill"]


@dataclass(frozen=True)
class SpillPolicy:
    """Where workers spill, and above which size (bytes; 0: every partial they return)."""

    directory: str
    threshold: int = 0


@dataclass(frozen=True)
class SpilledRef(DeferredValue):
    """A partial result written to ``path`` (``nbytes`` on disk)."""

    path: str
    nbytes: int

    def __add__(self, other: Any) -> SpillSet:
        return SpillSet((self,)) + other


@dataclass(frozen=True)
class SpillSet(DeferredValue):
    """Partials still to be merged: references on storage, plus what arrived in memory."""

    refs: tuple[SpilledRef, ...] = ()
    value: Any = field(default=None, compare=False)

    def __add__(self, other: Any) -> SpillSet:
        if isinstance(other, SpilledRef):
            return SpillSet((*self.refs, other), self.value)
        if isinstance(other, SpillSet):
            return SpillSet((*self.refs, *other.refs), merge_values(self.value, other.value))
        return SpillSet(self.refs, merge_values(self.value, other))

    def __len__(self) -> int:
        return len(self.refs)

    def __iter__(self) -> Iterator[SpilledRef]:
        return iter(self.refs)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.refs)

    def without(self, refs: tuple[SpilledRef, ...]) -> SpillSet:
        gone = set(refs)
        return SpillSet(tuple(r for r in self.refs if r not in gone), self.value)


def spill(value: Any, directory: str | Path) -> SpilledRef:
    """Write ``value`` under ``directory`` (created private) and return its reference.

    Spill files use a buffer-by-buffer layout (`_spillfile`), written atomically with mode
    600; `load_spilled` and the merges also read partials saved in coffea's format.
    """
    directory = output.private_dir(directory)
    return save_spilled(value, directory / f"partial-{uuid.uuid4().hex}{SPILL_SUFFIX}")


def save_spilled(value: Any, path: str | Path) -> SpilledRef:
    """Write ``value`` as a spill file at ``path``, atomically, with mode 600."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write_spill_file(value, tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return SpilledRef(str(path), path.stat().st_size)


def load_spilled(ref: SpilledRef | str | Path) -> Any:
    return fold_spilled(None, ref)


def fold_spilled(total: Any, ref: SpilledRef | str | Path) -> Any:
    """Add a partial from storage into ``total``: spill files buffer by buffer (memory: the
    sum plus one buffer), coffea files whole."""
    path = Path(ref.path if isinstance(ref, SpilledRef) else ref)
    try:
        if path.suffix == SPILL_SUFFIX:
            return fold_spill_file(total, path)
        return merge_values(total, output.load(path), in_place=True)
    except FileNotFoundError:
        from coffea_hpc.errors import MergeError

        raise MergeError(f"partial {str(path)!r} is missing (deleted, or not on shared "
                         "storage?)") from None


def serialized_size(value: Any) -> int:
    """Bytes the value's arrays take in memory, an upper-bound proxy for its pickle.

    Walks mappings, sequences and sets; counts histogram storage and numpy arrays exactly
    and anything else as a small constant. Cheap enough to call after every chunk, unlike
    pickling the value to find out.
    """
    if isinstance(value, hist.Hist):
        return int(value.view(flow=True).nbytes) + 1024
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, Mapping):
        return sum(serialized_size(v) + 64 for v in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return sum(serialized_size(v) for v in value) + 64
    return 64
