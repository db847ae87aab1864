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
    """Where a buffer goes: a histogram (described by its axes, storage and attributes, so
    the skeleton stays small) or a bare array (``axes`` is None)."""

    index: int
    shape: tuple[int, ...]
    dtype: str
    axes: tuple[Any, ...] | None = None
    storage: Any = None
    attrs: dict[str, Any] | None = None  # vars(): name, label, metadata, whether variances
    # are known (hist forgets them when a Double storage is added to), anything user-set

    @property
    def is_hist(self) -> bool:
        return self.axes is not None

    def new_hist(self) -> hist.Hist:
        h = hist.Hist(*self.axes or (), storage=self.storage)
        vars(h).update(self.attrs or {})
        return h


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
                            node.storage_type(), dict(vars(node)))
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
    the sender's output is ever held whole, at most one of its histograms, when its growth
    category axes list other labels than the total's. Buffers are read in index order.
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
            if not other.is_hist:
                raise MergeError(f"{path}: cannot merge a histogram with an array")
            if type(total.storage_type()) is not type(other.storage):
                raise MergeError(f"{path}: histograms with different storages cannot be merged")
            total._variance_known = False  # what hist's += does (a Double's are now unknown)
            if total.axes != hist.axis.NamedAxesTuple(other.axes):
                return _add_relabelled(total, other, read, path)
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


_CATEGORIES = (bh.axis.StrCategory, bh.axis.IntCategory)


def _add_relabelled(total: hist.Hist, other: Slot, read: Reader, path: str) -> hist.Hist:
    """Add a histogram whose growth category axes list other labels, or the same ones in
    another order, as hist's ``+=`` does: by label, new labels appended in the sender's order.

    Chunks fill growth axes in the order they meet datasets and systematics, so partials
    seldom agree. hist's own ``+=`` does this bin by bin (~40x slower than adding buffers);
    here the sender's storage is read into an array of its own and added through an index
    map along the category axes. Memory: the sum plus that histogram's storage.
    """
    theirs = tuple(other.axes)
    if len(theirs) != total.ndim or not all(
            a == b or _same_but_labels(a, b) for a, b in zip(total.axes, theirs, strict=True)):
        raise MergeError(f"{path}: histograms with different axes cannot be merged")
    total = _grown(total, theirs)
    if total.axes == hist.axis.NamedAxesTuple(theirs):  # it only lacked labels: in place
        read(other, raw_view(total), True)
        return total
    part = np.empty(other.shape, np.dtype(other.dtype))  # 4x faster than an empty Hist
    read(other, part, False)
    _add_by_label(total, theirs, part)
    return total


def _same_but_labels(a: Any, b: Any) -> bool:
    return (type(a) is type(b) and isinstance(a, _CATEGORIES) and a.traits.growth
            and a.traits == b.traits and vars(a) == vars(b))


def _grown(total: hist.Hist, theirs: tuple[Any, ...]) -> hist.Hist:
    """``total`` with the labels it lacks appended, as hist's ``+=`` appends them.

    Grown in place, by a fill of weight zero: boost-histogram moves the storage and frees
    the old one at once, where a new histogram would leave the old one alive in the
    caller's mapping while the sender is read (a third histogram at the peak). A histogram
    with an empty axis holds no bins to move, and is built anew.
    """
    new = [_missing(mine, other) for mine, other in zip(total.axes, theirs, strict=True)]
    count = max(map(len, new))
    if not count:
        return total
    if all(axis.size or labels for axis, labels in zip(total.axes, new, strict=True)):
        columns = [[labels[i % len(labels)] for i in range(count)] if labels
                   else [axis.value(0)] * count  # any valid value: the weight is zero
                   for axis, labels in zip(total.axes, new, strict=True)]
        return total.fill(*columns, weight=np.zeros(count, dtype=np.int64))
    axes = [_with_labels(axis, labels) if labels else axis
            for axis, labels in zip(total.axes, new, strict=True)]
    grown = hist.Hist(*axes, storage=total.storage_type())
    vars(grown).update(vars(total))  # name, label, metadata, anything the user set
    _add_by_label(grown, tuple(total.axes), raw_view(total))  # flow bins of a fixed axis
    return grown


def _missing(mine: Any, theirs: Any) -> list[Any]:
    if mine == theirs:
        return []
    known = set(mine)
    return [label for label in theirs if label not in known]


def _with_labels(axis: Any, labels: list[Any]) -> Any:
    attrs = vars(axis)  # name and label from here: the properties fall back on each other
    return type(axis)([*axis, *labels], name=attrs.get("name", ""), label=attrs.get("label", ""),
                      growth=True, overflow=axis.traits.overflow, __dict__=dict(attrs))


def _add_by_label(total: hist.Hist, axes: tuple[Any, ...], src: np.ndarray) -> None:
    """Add ``src``, the raw storage of a histogram with ``axes``, into ``total``, whose
    category axes hold every label of those.

    Storage is first-axis-fastest, so the flat buffers are (outer, middle, inner) blocks:
    axes before the first relabelled one are a contiguous run, identical in both; those
    after the last are identical rows. Only the middle is remapped, with one small index
    array (``np.take`` along it, 256 KiB at a time): 3-4x the time of a plain add.
    """
    if not src.size:
        return
    dst = raw_view(total)
    maps = [None if a == b else _index_map(a, b) for a, b in zip(axes, total.axes, strict=True)]
    moved = [k for k, m in enumerate(maps) if m is not None]
    first, last = moved[0], moved[-1]
    s_ext, d_ext = [a.extent for a in axes], total.axes.extent
    inner = src.size // int(np.prod(s_ext)) * int(np.prod(s_ext[:first]))
    s_mid, d_mid = int(np.prod(s_ext[first:last + 1])), int(np.prod(d_ext[first:last + 1]))
    offset = np.zeros((), np.intp)  # where each middle bin of src goes in the total's
    stride = 1
    for k in range(first, last + 1):
        index = maps[k] if maps[k] is not None else np.arange(s_ext[k])
        offset = np.add.outer(offset, index * stride)
        stride *= d_ext[k]
    source = np.zeros(d_mid, np.intp)  # for each middle bin of the total: src's
    source[offset.ravel(order="F")] = np.arange(s_mid)
    missing = np.setdiff1d(np.arange(d_mid), offset)  # bins src lacks: nothing to add
    src3, dst3 = src.reshape(-1, s_mid, inner), dst.reshape(-1, d_mid, inner)
    if inner == 2 and src.dtype == np.float64:  # (value, variance): one complex per bin
        src3, dst3 = src3.view(np.complex128), dst3.view(np.complex128)
    rows = min(len(src3), max(1, (1 << 18) // dst3[0].nbytes))  # 256 KiB: in cache
    taken = np.empty((rows, *dst3.shape[1:]), dst3.dtype)
    for start in range(0, len(src3), rows):
        block = src3[start:start + rows]
        out = taken[:len(block)]
        np.take(block, source, axis=1, out=out)
        out[:, missing] = 0
        dst3[start:start + rows] += out


def _index_map(mine: Any, theirs: Any) -> np.ndarray:
    where = {label: i for i, label in enumerate(theirs)}
    index = [where[label] for label in mine]
    if mine.traits.overflow:
        index.append(theirs.size)
    return np.array(index, dtype=np.intp)


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
