"""A real analysis gives coffea's own answer on every backend, reduction and chunk size.

The analysis (`tests/fixtures/zpeak_analysis`) is written and laid out the way analysts write
them: a processor file importing a module and a package beside it, growth ``dataset`` x
``systematic`` category axes with weights, a mean-storage profile, a nested cut flow, sets of
files, a column accumulator of selected event numbers. The fileset has a dataset with an empty
file and a dataset whose only file is empty. The folder is copied somewhere else and the runs
start from an unrelated directory, so no worker has it on its path.

Every cell must equal coffea's ``processor.Runner`` (IterativeExecutor) on the same fileset at
the same chunk size: categories equal (in any order), counts bit-identical, float sums within
a relative 1e-12 (`tests.helpers.assert_same`). The Globus backend runs against the stand-in
for the Globus Compute service (`tests/backends/globus_standin.py`): the service itself cannot
be reached here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coffea_hpc.data.fileset import Fileset
from coffea_hpc.data.synthetic import SyntheticDataset, generate
from coffea_hpc.metrics import read_chunks
from coffea_hpc.output import load
from coffea_hpc.reduction import Reduction
from coffea_hpc.runner import run
from tests.helpers import assert_same

FIXTURE = Path(__file__).parent / "fixtures" / "zpeak_analysis"
PROCESSOR = "processor.py:ZPeakProcessor"
CHUNKSIZES = (700, 5_000)

DATASETS = (
    SyntheticDataset("DYJetsToLL", "dy", 3, {"is_mc": True, "xsec": 6077.22}, empty_files=1),
    SyntheticDataset("TTTo2L2Nu", "ttbar", 1, {"is_mc": True, "xsec": 88.29}),
    SyntheticDataset("SingleMuon", "data", 1, {"is_mc": False}),
    SyntheticDataset("EmptySkim", "dy", 1, {"is_mc": True, "xsec": 1.0}, empty_files=1),
)

REDUCTIONS = {
    "driver": Reduction(),
    "spill": Reduction(spill_bytes=0),
    "tree": Reduction(mode="tree", fan_in=2),
    "mpi": Reduction(mode="mpi", mpi_ranks=2),
}
BACKENDS = ("iterative", "futures", "parsl", "dask", "globus-standin")


@pytest.fixture(scope="module")
def analysis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The analysis folder, copied where nothing expects it."""
    where = tmp_path_factory.mktemp("elsewhere") / "zpeak_analysis"
    shutil.copytree(FIXTURE, where, ignore=shutil.ignore_patterns("__pycache__"))
    return where


@pytest.fixture(scope="module")
def analysis_fileset(tmp_path_factory: pytest.TempPathFactory) -> Fileset:
    return generate(tmp_path_factory.mktemp("zpeak-data"), events_per_file=2_000,
                    datasets=DATASETS, basket_entries=500)


@pytest.fixture(scope="module")
def unrelated_cwd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        where = tmp_path_factory.mktemp("cwd")
        mp.chdir(where)
        yield where


@pytest.fixture(scope="module")
def coffea_answer(analysis: Path, analysis_fileset: Fileset) -> dict[int, Any]:
    """What coffea's own Runner gives, per chunk size."""
    from coffea import processor
    from coffea.nanoevents import NanoAODSchema

    from coffea_hpc.processing.processor import load_processor

    proc = load_processor(f"{analysis / PROCESSOR}")
    fileset = {ds.name: {"files": {f.path: f.treename for f in ds.files},
                         "metadata": dict(ds.metadata)} for ds in analysis_fileset}
    answers = {}
    for chunksize in CHUNKSIZES:
        runner = processor.Runner(executor=processor.IterativeExecutor(), schema=NanoAODSchema,
                                  chunksize=chunksize)
        answers[chunksize] = runner(fileset, processor_instance=proc, treename="Events")
    return answers


def _backend(name: str, tmp_path: Path) -> Any:
    if name != "globus-standin":
        return name
    from coffea_hpc.backends.globus import GlobusBackend
    from tests.backends.globus_standin import StandInExecutor

    return GlobusBackend("2f1a0e9c-0000-4000-8000-standin00002",
                         remote_dir=str(tmp_path / "endpoint-scratch"), workers=2,
                         api_burst_window_s=1, executor_factory=StandInExecutor)


@pytest.mark.slow
@pytest.mark.parametrize("chunksize", CHUNKSIZES)
@pytest.mark.parametrize("reduction", list(REDUCTIONS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_cell_equals_coffea(backend, reduction, chunksize, analysis, analysis_fileset,
                                  coffea_answer, unrelated_cwd, tmp_path):
    out_dir = tmp_path / "out"
    outcome = run(str(analysis / PROCESSOR), analysis_fileset,
                  backend=_backend(backend, tmp_path), workers=2, output_dir=out_dir,
                  chunksize=chunksize, reduction=REDUCTIONS[reduction])
    expected = coffea_answer[chunksize]
    assert_same(outcome.output, expected)
    assert_same(load(out_dir / "output.coffea"), expected)
    assert outcome.report["status"] == "complete"
    # the empty files were processed, once each, as coffea processes them
    assert outcome.output["chunks"] == expected["chunks"]
    assert outcome.output["cutflow"]["EmptySkim"]["all"] == 0


@pytest.mark.parametrize("backend", ("iterative", "futures", "parsl", "dask"))
def test_adaptive_chunking_equals_coffea(backend, analysis, analysis_fileset, coffea_answer,
                                         unrelated_cwd, tmp_path):
    """Chunks cut as the run goes (``--target-chunk-seconds``), of sizes no fixed chunking
    has, add up to coffea's answer: every entry counted once, the empty files included.
    Only the number of chunks, which the analysis counts, differs."""
    out_dir = tmp_path / "out"
    outcome = run(str(analysis / PROCESSOR), analysis_fileset, backend=backend, workers=2,
                  output_dir=out_dir, chunksize=250, target_chunk_seconds=0.005)
    expected = dict(coffea_answer[CHUNKSIZES[0]])
    got = dict(outcome.output)
    sizes = {c["entrystop"] - c["entrystart"] for c in read_chunks(out_dir / "chunks.jsonl")
             if c["entrystop"] > c["entrystart"]}
    assert sizes - {250}, sizes  # the sizes did adapt (a fixed chunking cuts 8 x 250)
    assert got.pop("chunks") > 0 and expected.pop("chunks") > 0
    assert_same(got, expected)
    assert outcome.report["status"] == "complete"
    assert outcome.output["cutflow"]["EmptySkim"]["all"] == 0
    assert {(r["filename"], tuple(map(tuple, r["ranges"])))
            for r in outcome.report["processed_ranges"]} == \
        {(f.path, ((0, f.entries),)) for _, f in outcome.prepared.files}


@pytest.mark.parametrize("executor", ["parsl", "futures"])
def test_the_command_as_typed_equals_coffea(executor, analysis, analysis_fileset,
                                            coffea_answer, unrelated_cwd, tmp_path):
    """``coffea-hpc run`` in a fresh process, from a folder that is not the analysis's, as an
    analyst types it: the local Parsl pool started before the analysis is imported (and
    futures workers started without the command-line app) give coffea's answer."""
    fileset = analysis_fileset.save(tmp_path / "fileset.json")
    command = Path(sys.executable).with_name("coffea-hpc")
    done = subprocess.run(
        [str(command), "run", str(analysis / PROCESSOR), "--fileset", str(fileset),
         "-o", str(tmp_path / "out"), "--executor", executor, "--workers", "2",
         "--chunksize", str(CHUNKSIZES[0])],
        cwd=unrelated_cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same(load(tmp_path / "out" / "output.coffea"), coffea_answer[CHUNKSIZES[0]])


def test_a_run_resumed_from_its_checkpoint_updates_equals_coffea(
        analysis, analysis_fileset, coffea_answer, unrelated_cwd, tmp_path, monkeypatch):
    """What a driver killed after a few checkpoint updates leaves (the output directory as it
    stood then, copied aside) resumes to coffea's answer: the updates set the analysis's
    entries (cut flows and sums per dataset, sets of files, histograms and the column
    accumulator whole) in the checkpoint's output."""
    from coffea_hpc import checkpoint as checkpoint_module

    out = tmp_path / "out"
    left = tmp_path / "left"
    real = checkpoint_module._write_signed
    updates: list[Path] = []

    def write(payload, path, **kwargs):
        size = real(payload, path, **kwargs)
        if path.parent.name == "updates":
            updates.append(path)
            if len(updates) == 2:  # the directory as a killed driver would leave it
                shutil.copytree(out, left)
        return size

    monkeypatch.setattr(checkpoint_module, "_write_signed", write)
    run(str(analysis / PROCESSOR), analysis_fileset, backend="iterative", output_dir=out,
        chunksize=700, checkpoint_interval=0)
    monkeypatch.setattr(checkpoint_module, "_write_signed", real)
    assert len(updates) >= 2 and (left / ".coffea-hpc" / "updates").is_dir()

    resumed = run(str(analysis / PROCESSOR), analysis_fileset, backend="iterative",
                  output_dir=left, chunksize=700, resume=True)
    assert 0 < resumed.report["resumed_events"] < resumed.report["events"]
    assert_same(resumed.output, coffea_answer[700])
    assert_same(load(left / "output.coffea"), coffea_answer[700])


def test_a_run_on_forms_kept_by_the_run_before_equals_coffea(
        analysis, analysis_fileset, coffea_answer, unrelated_cwd, tmp_path):
    """The analyst's next run on the same files: the futures workers, new processes, take the
    NanoEvents forms the first run's workers kept (a kept entry is marked as used when read)
    instead of deriving them (an entry derived again would be written anew, as a new file),
    and the answer is still coffea's."""
    import os

    forms = Path(os.environ["COFFEA_HPC_CACHE_DIR"]) / "metadata.forms"
    first = run(str(analysis / PROCESSOR), analysis_fileset, backend="futures", workers=2,
                output_dir=tmp_path / "first", chunksize=700)
    kept = {entry: entry.stat().st_ino for entry in forms.glob("*.json")}
    assert kept, "the first run kept no form"
    for entry in kept:
        os.utime(entry, (1_000_000, 1_000_000))
    second = run(str(analysis / PROCESSOR), analysis_fileset, backend="futures", workers=2,
                 output_dir=tmp_path / "second", chunksize=700)
    assert {entry: entry.stat().st_ino for entry in forms.glob("*.json")} == kept
    assert any(entry.stat().st_mtime > 1_000_000 for entry in kept)  # read by the workers
    assert_same(first.output, coffea_answer[700])
    assert_same(second.output, coffea_answer[700])
