"""Watching a task: a backend that cannot count its workers does not stop a run."""

from __future__ import annotations

import uproot

from coffea_hpc.backends.futures import FuturesBackend
from coffea_hpc.runner import run
from tests.helpers import RecordingReporter


class _CannotCount(FuturesBackend):
    def connected_workers(self) -> int | None:
        raise ConnectionError("the service that knows is gone")


def test_a_failing_worker_count_leaves_the_run_alone(fileset, dimuon):
    recorder = RecordingReporter()
    outcome = run(dimuon, fileset, backend=_CannotCount(2), chunksize=1_000, reporter=recorder)
    assert outcome.report["status"] == "complete"
    on_disk = 0
    for _, f in fileset.files:
        with uproot.open(f.path) as file:
            on_disk += file[f.treename].num_entries
    assert outcome.result.processed.n_entries == on_disk
    assert recorder.workers["processing"]
    assert set(recorder.workers["preprocessing"] + recorder.workers["processing"]) == {None}
