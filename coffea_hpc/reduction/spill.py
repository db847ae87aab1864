"""Spilling partial results to storage so that only references travel.

A partial output with hundreds of systematic variations can weigh hundreds of MB; shipping
it through Parsl's interchange (or Globus Compute's cloud service, which refuses it) and
holding many of them on the driver is what makes large runs fail. Above a size threshold a
worker writes its partial (coffea's format: lz4-compressed cloudpickle) to a spill directory
on shared storage and returns a `SpilledRef`. References add up into a `SpillSet`, which the
reduction stage merges where memory allows.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hist
import numpy as np

from coffea_hpc import output
from coffea_hpc.errors import MergeError
from coffea_hpc.processing.result import DeferredValue, merge_values
from coffea_hpc.reduction._spillfile import SPILL_SUFFIX, fold_spill_file, write_spill_file

__all__ = ["SpillPolicy", "SpillSet", "SpilledRef", "load_spilled", "save_spilled",
           "serialized_size", "spill"]

_SAMPLE = 1024
"""Items of a large container that `serialized_size` looks at."""


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
        value = output.load(path)
    except FileNotFoundError:
        raise MergeError(f"partial {str(path)!r} is missing (deleted, or not on shared "
                         "storage?)") from None
    except MergeError:
        raise
    except Exception as err:  # truncated, corrupt: name the file, not just the codec's words
        raise MergeError(f"partial {str(path)!r} cannot be read: "
                         f"{type(err).__name__}: {err}") from err
    return merge_values(total, value, in_place=True)


def serialized_size(value: Any) -> int:
    """Bytes the value takes in memory, a proxy for the size of its pickle.

    Decides whether a worker spills its partial, so everything that can be large must count:
    histogram storage (mean storages included), numpy and awkward arrays (``nbytes``),
    strings and bytes, containers of them (a set of a million event IDs), and coffea's
    ``column_accumulator`` and ``value_accumulator`` (their ``value``). Cheap enough to call
    after every chunk, unlike pickling the value to find out: one pass, no copies.
    """
    kind = type(value)
    if kind is str or kind is bytes or kind is bytearray:
        return len(value) + 16
    if isinstance(value, hist.Hist):
        labels = sum(_labels_size(axis) for axis in value.axes)
        return int(value.view(flow=True).nbytes) + labels + 1024
    if isinstance(value, Mapping):
        return 64 + sum(serialized_size(k) + serialized_size(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return _items_size(value)
    nbytes = getattr(value, "nbytes", None)  # numpy, awkward (ak.Array.nbytes)
    if isinstance(nbytes, int | np.integer):
        return int(nbytes) + 64
    if kind.__module__.startswith("coffea.") and hasattr(value, "value"):
        return 64 + serialized_size(value.value)  # column_accumulator, value_accumulator
    return 16


def _items_size(items: Any) -> int:
    """Estimated from the first items when there are many: a set of a million event IDs
    takes a third of a second just to iterate, for every chunk. Such containers hold one
    kind of thing, so the sample's mean is a good guess."""
    count = len(items)
    sample = items if count <= 4 * _SAMPLE else itertools.islice(items, _SAMPLE)
    size = seen = 0
    for item in sample:
        kind = type(item)
        if kind is str or kind is bytes:
            size += len(item) + 16
        else:
            size += 16 if kind is int or kind is float else serialized_size(item)
        seen += 1
    return 64 + (size * count // seen if seen else 0)


def _labels_size(axis: Any) -> int:
    if isinstance(axis, hist.axis.StrCategory):
        return sum(len(label) + 16 for label in axis)
    return 16 * axis.size if isinstance(axis, hist.axis.IntCategory) else 0
