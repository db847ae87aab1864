"""Results add like coffea accumulators and refuse to double count."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import hist
import pytest

from coffea_hpc.data.ranges import EntryRanges
from coffea_hpc.errors import MergeError, OverlapError
from coffea_hpc.processing.result import Failure, RemoteError, Result, merge_values

KEY = ("d", "/f.root", "Events")


def _result(start: int, stop: int, value) -> Result:
    return Result(value=value, processed=EntryRanges.of(KEY, start, stop),
                  metrics={"entries": stop - start})


def test_addition_merges_values_ranges_and_metrics():
    h1 = hist.Hist.new.Reg(4, 0, 4).Weight().fill([1, 2], weight=[0.5, 2.0])
    h2 = hist.Hist.new.Reg(4, 0, 4).Weight().fill([2], weight=[1.0])
    a = _result(0, 10, {"h": h1, "n": 1, "s": {"x"}, "c": defaultdict(int, a=1)})
    b = _result(10, 20, {"h": h2, "n": 2, "s": {"y"}, "c": defaultdict(int, a=2, b=1)})
    total = a + b
    assert total.value["n"] == 3 and total.value["s"] == {"x", "y"}
    assert dict(total.value["c"]) == {"a": 3, "b": 1}
    assert total.value["h"].values().tolist() == [0.0, 0.5, 3.0, 0.0]
    assert total.processed.n_entries == 20 and total.metrics["entries"] == 20
    assert h1.values().tolist() == [0.0, 0.5, 2.0, 0.0]  # operands untouched
    assert sum([a, b]).value["n"] == 3


def test_absorb_never_mutates_what_the_processor_handed_out():
    shared = {"n": 1}
    acc = Result()
    acc.absorb(_result(0, 1, shared))
    acc.absorb(Result(metrics={"read_from": {("/f.root", "local")}}))  # no output to add
    acc.absorb(_result(1, 2, {"n": 5}))
    acc.absorb(_result(2, 3, {"n": 7}))
    assert shared == {"n": 1}
    assert acc.value == {"n": 13}


def test_absorb_folds_metrics_in_place_so_a_chunk_costs_the_same_late_in_a_run():
    # the driver folds every chunk's metrics, among them the set of files read: added up
    # afresh each time, it was copied whole per chunk, a cost growing with the files read
    def chunk(i: int) -> Result:
        return Result(value={"n": 1}, processed=EntryRanges.of(("d", f"/f{i}.root", "E"), 0, 1),
                      metrics={"read_from": {(f"/f{i}.root", "local")}, "entries": 1,
                               "columns": {"Muon_pt"}})

    handed = [chunk(i) for i in range(4)]
    first_files = handed[0].metrics["read_from"]
    acc = Result()
    acc.absorb(handed[0]).absorb(handed[1])
    files = acc.metrics["read_from"]
    for part in handed[2:]:
        acc.absorb(part)
    assert acc.metrics["read_from"] is files  # the same set, grown: not a copy per chunk
    assert files == {(f"/f{i}.root", "local") for i in range(4)}
    assert acc.metrics["entries"] == 4 and acc.metrics["columns"] == {"Muon_pt"}
    assert first_files == {("/f0.root", "local")}  # what was handed in is untouched
    assert [len(p.metrics["read_from"]) for p in handed] == [1, 1, 1, 1]

    view = acc.without_failures()  # shares the sum: folding into it must not change it
    view.absorb(chunk(9))
    assert len(acc.metrics["read_from"]) == 4 and acc.metrics["entries"] == 4
    assert len(view.metrics["read_from"]) == 5


def test_overlapping_results_cannot_be_added():
    with pytest.raises(OverlapError):
        _result(0, 10, 1) + _result(5, 15, 1)
    acc = _result(0, 10, {"n": 1})
    with pytest.raises(OverlapError):
        acc.absorb(_result(9, 12, {"n": 1}))
    assert acc.value == {"n": 1}  # a refused fold leaves the sum as it was


def test_incompatible_values_raise_merge_error():
    h1 = hist.Hist.new.Reg(4, 0, 4).Double()
    h2 = hist.Hist.new.Reg(5, 0, 4).Double()
    with pytest.raises(MergeError, match="cannot merge Hist with Hist"):
        _result(0, 1, h1) + _result(1, 2, h2)


def test_remote_errors_match_by_type_across_processes():
    try:
        Path("/definitely/not/here").read_text()
    except OSError as exc:
        err = RemoteError.from_exception(exc)
    assert err.matches((OSError,)) and err.matches((FileNotFoundError,))
    assert not err.matches((KeyError,))
    assert err.summary().startswith("FileNotFoundError:")
    assert "Traceback" in err.traceback
    failure = Failure(KEY, err, 2, "f.root[0:10]")
    assert failure.describe().startswith("f.root[0:10]: FileNotFoundError")


def _zoo():
    import copy
    from collections import defaultdict

    import hist
    import numpy as np
    from coffea.processor import column_accumulator, value_accumulator

    def h(*labels):
        out = hist.Hist(hist.axis.StrCategory([], growth=True, name="dataset"),
                        hist.axis.Regular(4, 0, 4, name="x"), storage=hist.storage.Weight())
        for i, label in enumerate(labels):
            out.fill(dataset=label, x=[i + 0.5], weight=[0.1 * (i + 1)])
        return out

    a = {"h": h("a", "b"), "n": 3, "f": 0.25, "s": {"x"}, "arr": np.arange(3.0), "l": [1],
         "cut": defaultdict(int, {"all": 5}), "col": column_accumulator(np.arange(2)),
         "val": value_accumulator(float, 1.5), "only_a": {"deep": h("z")}}
    b = {"h": h("c", "a"), "n": 2.5, "f": 1, "s": {"y"}, "arr": np.ones(3), "l": [2],
         "cut": defaultdict(int, {"all": 1, "two": 1}), "col": column_accumulator(np.arange(3)),
         "val": value_accumulator(float, 2.0), "only_b": h("q")}
    return copy.deepcopy(a), copy.deepcopy(b)


@pytest.mark.parametrize("in_place", [False, True])
def test_merge_values_is_coffeas_accumulate(in_place):
    from coffea.processor.accumulator import add, iadd

    from tests.helpers import assert_same

    a, b = _zoo()
    ours = merge_values(a, b, in_place=in_place)
    theirs = (iadd if in_place else add)(*_zoo())
    assert_same(ours, theirs)
    assert list(ours) == list(theirs)  # key order too
    assert list(ours["h"].axes[0]) == list(theirs["h"].axes[0])  # category order too
    if not in_place:
        assert_same(a, _zoo()[0])  # operands untouched
    else:
        assert ours is a


@pytest.mark.parametrize(("x", "y"), [({"a": 1}, 2), ({"a": 1}, {1, 2}), ([1], {"a": 1})])
def test_merging_what_coffea_cannot_merge_is_a_merge_error(x, y):
    from coffea.processor.accumulator import add

    with pytest.raises(ValueError):
        add(x, y)
    with pytest.raises(MergeError, match="cannot merge"):
        merge_values(x, y)
