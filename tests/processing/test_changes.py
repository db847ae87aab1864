"""What a checkpoint update writes is what the results folded in since touched."""

from __future__ import annotations

from collections import defaultdict

import hist

from coffea_hpc.data.ranges import EntryRanges
from coffea_hpc.processing.changes import Changes
from coffea_hpc.processing.result import Result
from coffea_hpc.reduction.spill import SpilledRef


def _chunk(dataset: str, value, i: int = 0) -> Result:
    return Result(value=value, processed=EntryRanges.of((dataset, f"/{dataset}.root", "E"),
                                                        10 * i, 10 * i + 10),
                  metrics={"read_from": {(f"/{dataset}.root", "local")}, "chunks": 1})


def test_the_entries_touched_two_mappings_deep_with_their_trees_and_metrics():
    h = hist.Hist.new.Reg(4, 0, 4).Double()
    changes = Changes()
    changes.note(_chunk("ZJets", {"ZJets": {"mass": h, "n": 1},
                                  "sumw": defaultdict(float, ZJets=2.0), "chunks": 1}))
    changes.note(_chunk("ZJets", {"ZJets": {"mass": h, "n": 1}, "empty": {}, "chunks": 1}, 1))
    taken = changes.take()
    assert taken.paths == {("ZJets", "mass"), ("ZJets", "n"), ("sumw", "ZJets"),
                           ("chunks",), ("empty",)}
    assert taken.trees == {("ZJets", "/ZJets.root", "E")}
    assert taken.metrics.metrics == {"read_from": {("/ZJets.root", "local")}, "chunks": 2}
    assert not taken.unknown
    # taking starts afresh
    assert not changes.paths and not changes.trees and not changes.metrics.metrics


def test_an_output_that_is_not_a_mapping_cannot_be_told_entry_by_entry():
    for value in (hist.Hist.new.Reg(4, 0, 4).Double(), 3, SpilledRef("/spill/p", 10)):
        changes = Changes()
        changes.note(_chunk("ds", {"fine": 1}))
        changes.note(_chunk("ds", value, 1))
        assert changes.take().unknown
        assert not changes.take().unknown  # until the next whole checkpoint, noted afresh
