"""The exactly-once ledger: coalescing, and refusing to count an entry twice."""

from __future__ import annotations

import pickle

import pytest

from coffea_hpc.data.ranges import EntryRanges
from coffea_hpc.errors import OverlapError

KEY = ("ds", "/f.root", "Events")


def test_adjacent_ranges_coalesce_in_any_order():
    parts = [EntryRanges.of(KEY, a, a + 10) for a in (20, 0, 10, 40, 30)]
    total = EntryRanges()
    for p in parts:
        total = total + p
    assert list(total) == [(KEY, [(0, 50)])]
    assert total.n_entries == 50
    assert total.covers(KEY, 5, 45) and not total.covers(KEY, 45, 55)


def test_gaps_are_kept():
    total = EntryRanges.of(KEY, 0, 10) + EntryRanges.of(KEY, 20, 30)
    assert list(total) == [(KEY, [(0, 10), (20, 30)])]


@pytest.mark.parametrize(("a", "b"), [((0, 10), (5, 15)), ((5, 15), (0, 10)), ((0, 10), (0, 10)),
                                      ((0, 30), (10, 20))])
def test_overlap_is_an_error_naming_the_entries(a, b):
    with pytest.raises(OverlapError, match=r"/f.root:Events.*double count"):
        EntryRanges.of(KEY, *a) + EntryRanges.of(KEY, *b)


def test_different_trees_and_datasets_do_not_clash():
    other = ("ds2", "/f.root", "Events")
    total = EntryRanges.of(KEY, 0, 10) + EntryRanges.of(other, 0, 10)
    assert total.n_entries == 20


def test_json_and_pickle_round_trip():
    total = EntryRanges.of(KEY, 0, 10) + EntryRanges.of(("d", "/g", "T"), 3, 7)
    assert EntryRanges.from_json(total.to_json()) == total
    assert pickle.loads(pickle.dumps(total)) == total


def test_an_empty_range_is_recorded_and_counts_once():
    """A file with no entries has one chunk, [0, 0): running it twice would count twice
    whatever the processor counts per chunk (chunks, files, categories)."""
    empty = EntryRanges.of(KEY, 0, 0)
    assert empty and empty.n_entries == 0
    assert empty.covers(KEY, 0, 0) and not EntryRanges().covers(KEY, 0, 0)
    with pytest.raises(OverlapError, match="double count"):
        empty + EntryRanges.of(KEY, 0, 0)
    assert EntryRanges.from_json(empty.to_json()) == empty
