"""Whole runs with every reduction mode give the output of a plain run."""

from __future__ import annotations

import pytest

from coffea_hpc.backends import ErrorPolicy
from coffea_hpc.errors import ChunkFailedError, MergeError
from coffea_hpc.examples.dimuon import DimuonProcessor
from coffea_hpc.reduction import Reduction
from coffea_hpc.runner import run
from tests.helpers import assert_same


@pytest.fixture(scope="module")
def plain(fileset):
    return run(DimuonProcessor(), fileset, backend="iterative", chunksize=500).output


@pytest.mark.parametrize(
    ("backend", "reduction"),
    [
        ("iterative", Reduction(mode="driver", spill_bytes=1)),  # every partial spills
        ("futures", Reduction(mode="tree", fan_in=3)),
        ("parsl", Reduction(mode="tree", fan_in=4)),
        pytest.param("futures", Reduction(mode="mpi", mpi_ranks=2), marks=pytest.mark.mpi),
    ],
    ids=["driver-spill", "tree-futures", "tree-parsl", "mpi"],
)
def test_reduction_modes_agree(fileset, plain, tmp_path, backend, reduction):
    outcome = run(DimuonProcessor(), fileset, backend=backend, workers=2, chunksize=500,
                  output_dir=tmp_path, reduction=reduction, chunks_per_task=2)
    assert_same(outcome.output, plain)
    assert outcome.result.processed.n_entries == 12_000
    assert not (tmp_path / "spill").exists()  # every partial was merged and removed
    info = outcome.report["reduction"]
    assert info["mode"] == reduction.mode
    if reduction.mode == "tree":
        assert info["merge_tasks"] >= 24 // 2 // reduction.fan_in
    if reduction.mode == "mpi":
        assert info["final_merge"]["ranks"] == 2


class FailsOnce(DimuonProcessor):
    def __init__(self, flag):
        self.flag = str(flag)

    def process(self, events):
        import os

        if events.metadata["entrystart"] == 2_500 and os.path.exists(self.flag):
            raise RuntimeError("transient storage error")
        return super().process(events)


def test_tree_reduction_resumes_from_spilled_checkpoint(fileset, plain, tmp_path):
    flag = tmp_path / "flag"
    flag.touch()
    out = tmp_path / "out"
    reduction = Reduction(mode="tree", fan_in=2)
    with pytest.raises(ChunkFailedError):
        run(FailsOnce(flag), fileset, backend="iterative", chunksize=500, output_dir=out,
            reduction=reduction, policy=ErrorPolicy(max_retries=0))
    assert any((out / "spill").iterdir())  # the checkpoint refers to spilled partials
    flag.unlink()
    outcome = run(FailsOnce(flag), fileset, backend="iterative", chunksize=500, output_dir=out,
                  reduction=reduction, resume=True)
    assert_same(outcome.output, plain)
    assert not (out / "spill").exists()


@pytest.mark.mpi
def test_a_failed_mpi_merge_falls_back_to_the_driver(fileset, plain, tmp_path, caplog):
    """Hours of processing must not be lost to a broken MPI set-up: the partials are merged
    on the driver instead, and the report and log say why."""
    broken = tmp_path / "broken-mpiexec"
    broken.write_text("#!/bin/sh\necho 'broken-mpiexec: cannot reach the MPI runtime' >&2\n"
                      "exit 7\n")
    broken.chmod(0o755)
    reduction = Reduction(mode="mpi", mpi_ranks=2, mpi_launcher=str(broken))
    outcome = run(DimuonProcessor(), fileset, backend="futures", workers=2, chunksize=500,
                  output_dir=tmp_path / "out", reduction=reduction, chunks_per_task=2)
    assert_same(outcome.output, plain)
    merge = outcome.report["reduction"]["final_merge"]
    assert merge["ranks"] == 1 and "cannot reach the MPI runtime" in merge["mpi_error"]
    assert "merging on the driver instead" in caplog.text


class MustNotRun(DimuonProcessor):
    def process(self, events):
        raise AssertionError("processing started")


def test_a_missing_mpi_launcher_stops_the_run_before_processing(fileset, tmp_path):
    reduction = Reduction(mode="mpi", mpi_launcher="no-such-mpiexec")
    with pytest.raises(MergeError, match="'no-such-mpiexec' not found"):
        run(MustNotRun(), fileset, backend="iterative", chunksize=500, reduction=reduction,
            output_dir=tmp_path, policy=ErrorPolicy(max_retries=0))
