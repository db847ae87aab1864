"""Splitting an output into a small skeleton and its big numeric buffers.

Sending a GB-scale histogram through pickle costs two to three times its size in memory and
is several times slower than sending its storage as a raw buffer. An output is split into a
*skeleton* — the same nesting of mappings, with each histogram replaced by an empty copy of
itself (axes only) and each numpy array by its shape and dtype — and the list of *buffers*
that go with it. Everything that is not elementwise-additive (sets, strings, counters of
Python numbers, histograms with mean storages) stays in the skeleton and is merged with
coffea's accumulate semantics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import boost_histogram as bh
import hist
import numpy as np

from coffea_hpc.errors import MergeError
from coffea_hpc.processing.result import merge_values

__all__ = ["Reader", "Slot", "fold_buffers", "raw_view", "skeleton"]

_ADDITIVE = (bh.storage.Double, bh.storage.Int64, bh.storage.Weight, bh.storage.Unlimited,
             bh.storage.AtomicInt64)


@dataclass(frozen=True)
class Slot:
    """Where a buffer goes: a histogram (described by its axes, storage and labels, so the
    skeleton stays small) or a bare array (``axes`` is None)."""

    index: int
    shape: tuple[int, ...]
    dtype: str
    axes: tuple[Any, ...] | None = None
    storage: Any = None
    labels: tuple[Any, Any, Any] = (None, None, None)  # name, label, metadata

    @property
    def is_hist(self) -> bool:
        return self.axes is not None

    def new_hist(self) -> hist.Hist:
        name, label, metadata = self.labels
        return hist.Hist(*self.axes or (), storage=self.storage, name=name, label=label,
                         metadata=metadata)


def raw_view(obj: hist.Hist | np.ndarray) -> np.ndarray:
    """A flat, writable numeric view of a histogram's storage (flow bins included) or of an
    array; weighted storages become pairs of float64 (value, variance) side by side."""
    arr = np.asarray(obj.view(flow=True)) if isinstance(obj, hist.Hist) else obj
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        raise MergeError("cannot send a non-contiguous array as a buffer")
    flat = arr.ravel(order="K")  # memory order: a view for C- and Fortran-ordered storage
    if flat.dtype.names:
        flat = flat.view(np.float64)
    return flat


def _bufferable(value: Any) -> bool:
    if isinstance(value, hist.Hist):
        return isinstance(value.storage_type(), _ADDITIVE)
    return isinstance(value, np.ndarray) and value.dtype.kind in "iuf" and value.size > 0


def skeleton(value: Any) -> tuple[Any, list[np.ndarray]]:
    """Split ``value`` into its skeleton and its buffers (views, nothing copied)."""
    buffers: list[np.ndarray] = []

    def walk(node: Any) -> Any:
        if _bufferable(node):
            raw = raw_view(node)
            if isinstance(node, hist.Hist):
                attrs = vars(node)  # .metadata warns (and will raise) when never set
                slot = Slot(len(buffers), raw.shape, raw.dtype.str, tuple(node.axes),
                            node.storage_type(), (attrs.get("name"), attrs.get("label"),
                                                  attrs.get("metadata")))
            else:
                slot = Slot(len(buffers), raw.shape, raw.dtype.str)
            buffers.append(raw)
            return slot
        if isinstance(node, Mapping):
            out = _empty_like(node)
            for key, item in node.items():
                out[key] = walk(item)
            return out
        return node

    return walk(value), buffers


Reader = Callable[[Slot, np.ndarray, bool], None]
"""``read(slot, target, add)``: put the slot's data into ``target`` (a flat raw view), adding
to what is there when ``add`` is true. Called in the slots' index order, once each."""


def fold_buffers(total: Any, other_skeleton: Any, read: Reader) -> Any:
    """Add a sender's output into ``total``, reading each buffer straight into place.

    A buffer is added into the matching histogram or array of ``total`` (or fills a new one
    where ``total`` has nothing at that place), piece by piece if ``read`` wants: no copy of
    the sender's output is ever held whole. Buffers are read in index order, as sent.
    """
    expected = iter(range(sum(1 for _ in _slots(other_skeleton))))
    return _fold(total, other_skeleton, read, expected, "output")


def _fold(total: Any, other: Any, read: Reader, expected: Iterator[int], path: str) -> Any:
    if isinstance(other, Slot):
        if next(expected) != other.index:
            raise MergeError(f"{path}: buffers arrived out of order")
        if total is None:
            target = other.new_hist() if other.is_hist else np.empty(other.shape,
                                                                     np.dtype(other.dtype))
            read(other, raw_view(target), False)
            return target
        if isinstance(total, hist.Hist):
            if not other.is_hist or total.axes != hist.axis.NamedAxesTuple(other.axes):
                raise MergeError(f"{path}: histograms with different axes cannot be merged")
            if type(total.storage_type()) is not type(other.storage):
                raise MergeError(f"{path}: histograms with different storages cannot be merged")
        elif not isinstance(total, np.ndarray) or other.is_hist:
            raise MergeError(f"{path}: cannot merge {type(total).__name__} with a histogram")
        mine = raw_view(total)
        if mine.shape != tuple(other.shape) or mine.dtype != np.dtype(other.dtype):
            raise MergeError(f"{path}: arrays of shapes {mine.shape} and {other.shape} "
                             "cannot be added")
        read(other, mine, True)
        return total
    if isinstance(other, Mapping):
        if total is None:
            total = _empty_like(other)
        elif not isinstance(total, MutableMapping):
            raise MergeError(f"{path}: cannot merge {type(total).__name__} with a mapping")
        for key, item in other.items():
            total[key] = _fold(total.get(key), item, read, expected, f"{path}[{key!r}]")
        return total
    try:
        return merge_values(total, other, in_place=True)
    except MergeError as err:
        raise MergeError(f"{path}: {err}") from None


def _slots(node: Any) -> Iterator[Slot]:
    if isinstance(node, Slot):
        yield node
    elif isinstance(node, Mapping):
        for item in node.values():
            yield from _slots(item)


def _empty_like(mapping: Mapping[Any, Any]) -> MutableMapping[Any, Any]:
    """A new, empty mapping of the same type (defaultdicts keep their factory)."""
    import copy

    out = copy.copy(mapping)
    out.clear()  # type: ignore[attr-defined]
    return out  # type: ignore[return-value]
