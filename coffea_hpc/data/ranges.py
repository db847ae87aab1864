"""Entry ranges covered by a result: the exactly-once ledger.

Every partial result says which entries of which tree it counted. Adding two results whose
ranges overlap raises, because the sum would count those events twice; that is what makes a
retried chunk, a resumed run or a hand-merged partial safe.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

from coffea_hpc.errors import OverlapError

__all__ = ["EntryRanges", "TreeKey"]

TreeKey = tuple[str, str, str]
"""(dataset, filename, treename)"""


class EntryRanges:
    """Disjoint, coalesced half-open entry ranges per (dataset, file, tree).

    An empty range is kept too (only a file with no entries has one, its single chunk
    ``[0, 0)``): the processor ran over it, and running it again would count twice whatever
    the processor counts per chunk.
    """

    __slots__ = ("_ranges",)

    def __init__(self, ranges: dict[TreeKey, list[tuple[int, int]]] | None = None) -> None:
        self._ranges: dict[TreeKey, list[tuple[int, int]]] = {}
        for key, spans in (ranges or {}).items():
            for start, stop in spans:
                self._insert(tuple(key), int(start), int(stop))  # type: ignore[arg-type]

    @classmethod
    def of(cls, key: TreeKey, start: int, stop: int) -> EntryRanges:
        out = cls()
        out._insert(key, start, stop)
        return out

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EntryRanges) and self._ranges == other._ranges

    def __repr__(self) -> str:
        return f"EntryRanges({self.n_entries} entries in {len(self._ranges)} trees)"

    def __iter__(self) -> Iterator[tuple[TreeKey, list[tuple[int, int]]]]:
        return iter(self._ranges.items())

    def __getstate__(self) -> dict[TreeKey, list[tuple[int, int]]]:
        return self._ranges

    def __setstate__(self, state: dict[TreeKey, list[tuple[int, int]]]) -> None:
        self._ranges = state

    @property
    def n_entries(self) -> int:
        return sum(b - a for spans in self._ranges.values() for a, b in spans)

    def covers(self, key: TreeKey, start: int, stop: int) -> bool:
        return any(a <= start and stop <= b for a, b in self._ranges.get(key, ()))

    def overlaps(self, key: TreeKey, start: int, stop: int) -> bool:
        return any(a < stop and start < b for a, b in self._ranges.get(key, ()))

    def __add__(self, other: EntryRanges) -> EntryRanges:
        if not isinstance(other, EntryRanges):
            return NotImplemented
        small, big = (self, other) if len(self._ranges) <= len(other._ranges) else (other, self)
        out = EntryRanges()
        out._ranges = {k: list(v) for k, v in big._ranges.items()}
        out.update(small)
        return out

    def update(self, other: EntryRanges) -> None:
        """Add ``other``'s ranges in place: what a running sum does once per chunk, in time
        proportional to ``other``, not to everything counted so far. On an overlap nothing
        is changed."""
        for key, spans in other._ranges.items():
            for start, stop in spans:
                if self._clashes(key, start, stop):
                    self._insert(key, start, stop)  # raises, naming the entries
        for key, spans in other._ranges.items():
            for start, stop in spans:
                self._insert(key, start, stop)

    def of_trees(self, trees: Iterable[TreeKey]) -> EntryRanges:
        """The ranges of these trees alone: what a checkpoint update writes."""
        out = EntryRanges()
        out._ranges = {key: list(self._ranges[key]) for key in trees if key in self._ranges}
        return out

    def replace(self, other: EntryRanges) -> None:
        """Take ``other``'s ranges for each of its trees in place of this ledger's (a
        checkpoint update holds whole trees' ranges, up to date)."""
        for key, spans in other._ranges.items():
            self._ranges[key] = list(spans)

    def _clashes(self, key: TreeKey, start: int, stop: int) -> bool:
        spans = self._ranges.get(key)
        if not spans:
            return False
        if stop == start:
            return any(a <= start <= b for a, b in spans)
        at = bisect.bisect_left(spans, (start, start))
        return (at > 0 and spans[at - 1][1] > start) or (at < len(spans) and
                                                          spans[at][0] < stop)

    def _insert(self, key: TreeKey, start: int, stop: int) -> None:
        if stop < start:
            return
        spans = self._ranges.setdefault(key, [])
        if stop == start:
            if any(a <= start <= b for a, b in spans):
                self._clash(key, start, stop, (start, stop))
            spans.append((start, stop))
            spans.sort()
            return
        # find the insertion point; spans are sorted and disjoint
        lo, hi = 0, len(spans)
        while lo < hi:
            mid = (lo + hi) // 2
            if spans[mid][0] < start:
                lo = mid + 1
            else:
                hi = mid
        before = spans[lo - 1] if lo > 0 else None
        after = spans[lo] if lo < len(spans) else None
        if (before and before[1] > start) or (after and after[0] < stop):
            self._clash(key, start, stop, before if before and before[1] > start else after)
        if before and before[1] == start:
            start = before[0]
            lo -= 1
            del spans[lo]
        if lo < len(spans) and spans[lo][0] == stop:
            stop = spans[lo][1]
            del spans[lo]
        spans.insert(lo, (start, stop))

    @staticmethod
    def _clash(key: TreeKey, start: int, stop: int, clash: tuple[int, int] | None) -> NoReturn:
        assert clash is not None
        dataset, filename, tree = key
        raise OverlapError(
            f"entries [{start}, {stop}) of {filename}:{tree} (dataset {dataset!r}) are "
            f"already counted in [{clash[0]}, {clash[1]}): adding these results would "
            "double count"
        )

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"dataset": d, "filename": f, "treename": t, "ranges": [list(s) for s in spans]}
            for (d, f, t), spans in sorted(self._ranges.items())
        ]

    @classmethod
    def from_json(cls, rows: Iterable[dict[str, Any]]) -> EntryRanges:
        return cls({(r["dataset"], r["filename"], r["treename"]): r["ranges"] for r in rows})
