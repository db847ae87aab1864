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

__all__ = ["Slot", "fold_buffers", "raw_view", "skeleton"]

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
                slot = Slot(len(buffers), raw.shape, raw.dtype.str, tuple(node.axes),
                            node.storage_type(), (node.name, node.label, node.metadata))
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


def fold_buffers(total: Any, other_skeleton: Any, receive: Callable[[Slot], np.ndarray]) -> Any:
    """Add a sender's output into ``total``, receiving each buffer just when it is needed.

    ``receive(slot)`` returns the buffer for ``slot``; it is added in place into the matching
    histogram or array of ``total``, or fills the slot's template where ``total`` has
    nothing at that place. Buffers are received in index order, as the sender sent them.
    """
    slots = sorted(_slots(other_skeleton), key=lambda s: s.index)
    filled = {}
    pending = iter(slots)
    return _fold(total, other_skeleton, receive, filled, pending, "output")


def _fold(total: Any, other: Any, receive: Callable[[Slot], np.ndarray],
          filled: dict[int, np.ndarray], pending: Iterator[Slot], path: str) -> Any:
    if isinstance(other, Slot):
        incoming = _take(other, receive, filled, pending)
        if total is None:
            return _materialise(other, incoming)
        if isinstance(total, hist.Hist):
            if not other.is_hist or total.axes != hist.axis.NamedAxesTuple(other.axes):
                raise MergeError(f"{path}: histograms with different axes cannot be merged")
            if type(total.storage_type()) is not type(other.storage):
                raise MergeError(f"{path}: histograms with different storages cannot be merged")
        elif not isinstance(total, np.ndarray) or other.is_hist:
            raise MergeError(f"{path}: cannot merge {type(total).__name__} with a histogram")
        mine = raw_view(total)
        if mine.shape != incoming.shape:
            raise MergeError(f"{path}: arrays of shapes {mine.shape} and {incoming.shape} "
                             "cannot be added")
        mine += incoming
        return total
    if isinstance(other, Mapping):
        if total is None:
            total = _empty_like(other)
        elif not isinstance(total, MutableMapping):
            raise MergeError(f"{path}: cannot merge {type(total).__name__} with a mapping")
        for key, item in other.items():
            total[key] = _fold(total.get(key), item, receive, filled, pending,
                               f"{path}[{key!r}]")
        return total
    try:
        return merge_values(total, other, in_place=True)
    except MergeError as err:
        raise MergeError(f"{path}: {err}") from None


def _take(slot: Slot, receive: Callable[[Slot], np.ndarray], filled: dict[int, np.ndarray],
          pending: Iterator[Slot]) -> np.ndarray:
    # buffers arrive in index order; the skeleton is walked in insertion order, which is the
    # same order they were created in, so this normally receives exactly the next one
    while slot.index not in filled:
        nxt = next(pending)
        filled[nxt.index] = receive(nxt)
    return filled.pop(slot.index)


def _materialise(slot: Slot, buffer: np.ndarray) -> Any:
    if not slot.is_hist:
        return buffer
    h = slot.new_hist()
    raw_view(h)[...] = buffer
    return h


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
