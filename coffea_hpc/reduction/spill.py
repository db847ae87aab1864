"""Spilling partial results to storage so that only references travel.

A partial output with hundreds of systematic variations can weigh hundreds of MB; shipping
it through Parsl's interchange (or Globus Compute's cloud service, which refuses it) and
holding many of them on the driver is what makes large runs fail. Above a size threshold a
worker writes its partial to a spill directory on shared storage and returns a `SpilledRef`.
References add up into a `SpillSet`, which the reduction stage merges where memory allows.

Spill directories are shared storage, so spill files are signed with the run's key and
nothing in them is unpickled unless it verifies (`_spillfile`). Files in coffea's own format
(``coffea.util.save``) carry no signature: they are merged only when the caller says they
are the analyst's own (``trust_coffea_files``, ``coffea-hpc merge --trust-coffea-files``).
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
from coffea_hpc._signing import RunKey
from coffea_hpc.errors import MergeError
from coffea_hpc.processing.result import DeferredValue, merge_values
from coffea_hpc.reduction._spillfile import (
    SPILL_SUFFIX,
    UnverifiedFile,
    check_spill_file,
    fold_spill_file,
    write_spill_file,
)

__all__ = ["SpillPolicy", "SpillSet", "SpilledRef", "check_spilled", "load_spilled",
           "save_spilled", "serialized_size", "spill"]

_SAMPLE = 1024
"""Items of a large container that `serialized_size` looks at."""


@dataclass(frozen=True)
class SpillPolicy:
    """Where workers spill, above which size (bytes; 0: every partial they return), and the
    run's key that signs what they write (it travels with every task)."""

    directory: str
    threshold: int = 0
    key: RunKey = field(default_factory=RunKey.ephemeral, repr=False, compare=False)


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


def spill(value: Any, directory: str | Path, key: RunKey) -> SpilledRef:
    """Write ``value`` under ``directory`` (created private), signed with ``key``, and
    return its reference."""
    directory = output.private_dir(directory)
    return save_spilled(value, directory / f"partial-{uuid.uuid4().hex}{SPILL_SUFFIX}", key)


def save_spilled(value: Any, path: str | Path, key: RunKey) -> SpilledRef:
    """Write ``value`` as a spill file at ``path``, atomically, with mode 600."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)  # private from the first byte, whatever the umask
        write_spill_file(value, tmp, key, name=path.name)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return SpilledRef(str(path), path.stat().st_size)


def load_spilled(ref: SpilledRef | str | Path, key: RunKey | None, *,
                 trust_coffea_files: bool = False) -> Any:
    return fold_spilled(None, ref, key, trust_coffea_files=trust_coffea_files)


def check_spilled(refs: Iterator[SpilledRef] | tuple[SpilledRef, ...], key: RunKey) -> None:
    """Refuse (`MergeError`, naming the file) unless every partial in ``refs`` is a spill
    file signed with ``key``: what a resumed run checks before trusting its checkpoint.
    Only the signed skeleton is read; each piece is checked again when it is merged."""
    for ref in refs:
        path = Path(ref.path)
        try:
            check_spill_file(path, key)
        except FileNotFoundError:
            raise MergeError(f"partial {str(path)!r} is missing (deleted, or not on shared "
                             "storage?)") from None
        except (UnverifiedFile, ValueError) as err:
            raise MergeError(f"refusing partial {str(path)!r}: {_why(err, path)}") from None


def fold_spilled(total: Any, ref: SpilledRef | str | Path, key: RunKey | None, *,
                 trust_coffea_files: bool = False) -> Any:
    """Add a partial from storage into ``total``: spill files buffer by buffer (memory: the
    sum plus one buffer), verified with ``key``; coffea files whole, and only with
    ``trust_coffea_files`` (they carry no signature)."""
    path = Path(ref.path if isinstance(ref, SpilledRef) else ref)
    try:
        if path.suffix == SPILL_SUFFIX:
            if key is None:
                raise MergeError(
                    f"partial {str(path)!r} is a coffea-hpc spill file, verified with the key "
                    "of the run that wrote it: give that run's output directory "
                    "(coffea-hpc merge --key-from OUTPUT_DIR)")
            return fold_spill_file(total, path, key)
        if not trust_coffea_files:
            raise MergeError(
                f"refusing partial {str(path)!r}: it is not a signed coffea-hpc spill file; "
                "merge files written by coffea.util.save only if they are your own "
                "(coffea-hpc merge --trust-coffea-files)")
        value = output.load(path)
    except FileNotFoundError:
        raise MergeError(f"partial {str(path)!r} is missing (deleted, or not on shared "
                         "storage?)") from None
    except MergeError:
        raise
    except UnverifiedFile as err:
        raise MergeError(f"refusing partial {str(path)!r}: {_why(err, path)}") from None
    except Exception as err:  # truncated, corrupt: name the file, not just the codec's words
        raise MergeError(f"partial {str(path)!r} cannot be read: "
                         f"{type(err).__name__}: {err}") from err
    return merge_values(total, value, in_place=True)


def _why(err: Exception, path: Path) -> str:
    """The reason in ``err``, without the path the message names already."""
    text = str(err)
    for prefix in (f"{path}: ", f"{path} "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


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
