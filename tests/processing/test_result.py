"""Results add like coffea accumulators and refuse to double count."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import hist
import pytest

from coffea_hpc.data.ranges import EntryRanges
from coffea_hpc.errors import MergeError, OverlapError
from coffea_hpc.processing.result import Failure, RemoteError, Result

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
    acc.absorb(_result(1, 2, {"n": 5}))
    acc.absorb(_result(2, 3, {"n": 7}))
    assert shared == {"n": 1}
    assert acc.value == {"n": 13}


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
