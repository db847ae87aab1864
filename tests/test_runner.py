"""Whole runs: the output coffea's Runner would give, a report, and nothing lost on failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from coffea import processor
from coffea.nanoevents import NanoAODSchema
from coffea.util import load

from coffea_hpc.backends import ErrorPolicy
from coffea_hpc.errors import ChunkFailedError
from coffea_hpc.examples.dimuon import DimuonProcessor
from coffea_hpc.runner import run
from tests.helpers import assert_same, processes_mentioning, still_running, write_slow_processor


class RecordingProcessor(DimuonProcessor):
    """Leaves a marker per processed chunk, and fails on chosen chunks while a flag file
    exists — the analyst's bug, fixed between two runs by deleting the flag."""

    def __init__(self, marker_dir: Path, fail_start: int | None = None):
        self.marker_dir = str(marker_dir)
        self.fail_start = fail_start

    def process(self, events):
        meta = events.metadata
        flag = Path(self.marker_dir) / "bug"
        if meta["entrystart"] == self.fail_start and flag.exists():
            raise KeyError("Muon_ptt")
        name = f"{meta['dataset']}-{Path(meta['filename']).stem}-{meta['entrystart']}"
        with open(Path(self.marker_dir) / name, "a") as log:
            log.write("processed\n")
        return super().process(events)


@pytest.fixture(scope="module")
def runner_output(fileset):
    """What coffea's own Runner returns for the same processor and chunking."""
    runner = processor.Runner(executor=processor.IterativeExecutor(), schema=NanoAODSchema,
                              chunksize=1_000)
    spec = {ds.name: {"files": {f.path: "Events" for f in ds.files}, "metadata": ds.metadata}
            for ds in fileset}
    return runner(spec, processor_instance=DimuonProcessor())


def test_output_is_what_coffea_runner_returns(fileset, runner_output, tmp_path):
    before = tmp_path.stat().st_mode
    outcome = run(DimuonProcessor(), fileset, backend="futures", workers=2, chunksize=1_000,
                  output_dir=tmp_path)
    assert_same(outcome.output, runner_output)
    assert_same(load(tmp_path / "output.coffea"), runner_output)
    assert tmp_path.stat().st_mode == before  # an existing directory is left as it is
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["status"] == "complete"
    assert report["events"] == fileset.n_entries or report["events"] == 12_000
    assert report["failed_chunks"] == [] and report["skipped_files"] == []
    assert {"Muon_pt", "MET_pt"} <= set(report["metrics"]["columns"])
    covered = {(r["filename"], tuple(map(tuple, r["ranges"]))) for r in report["processed_ranges"]}
    assert all(ranges == ((0, 3_000),) for _, ranges in covered)
    assert not (tmp_path / "checkpoint.coffea").exists()
    stages = report["stages_s"]
    assert list(stages) == ["start", "preprocessing", "processing", "final_merge", "stop",
                            "output"]
    assert stages["processing"] > 0 and sum(stages.values()) <= report["wall_time_s"]


def test_a_failed_run_keeps_its_work_and_resumes(fileset, runner_output, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / "bug").touch()
    out = tmp_path / "out"
    with pytest.raises(ChunkFailedError, match="KeyError: 'Muon_ptt'") as info:
        run(RecordingProcessor(markers, fail_start=2_000), fileset, backend="iterative",
            chunksize=1_000, output_dir=out, policy=ErrorPolicy(max_retries=0))
    assert (out / "checkpoint.coffea").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and "Muon_ptt" in report["error"]
    assert list(report["stages_s"]) == ["start", "preprocessing", "processing"]
    saved = load(out / "checkpoint.coffea")
    assert saved.processed.n_entries == info.value.partial.processed.n_entries > 0
    saved_chunks = {
        f"{ds}-{Path(fn).stem}-{start}"
        for (ds, fn, _), spans in saved.processed
        for a, b in spans
        for start in range(a, b, 1_000)
    }
    assert 0 < len(saved_chunks) < 12

    (markers / "bug").unlink()  # the analyst fixes the bug
    outcome = run(RecordingProcessor(markers, fail_start=2_000), fileset, backend="iterative",
                  chunksize=1_000, output_dir=out, resume=True)
    assert_same(outcome.output, runner_output)
    assert outcome.result.processed.n_entries == 12_000
    # what the checkpoint held was not processed again
    logs = {p.name: p.read_text() for p in markers.iterdir()}
    assert len(logs) == 12
    assert all(logs[name] == "processed\n" for name in saved_chunks)
    assert not (out / "checkpoint.coffea").exists()
    # the rate is this run's own: the checkpoint's events are counted, not timed
    report = outcome.report
    assert report["resumed_events"] == saved.processed.n_entries
    this_run = report["events_per_s"] * report["wall_time_s"]
    assert this_run == pytest.approx(12_000 - saved.processed.n_entries, rel=0.01)


def test_resume_with_other_chunking_is_refused(fileset, tmp_path):
    markers = tmp_path / "m"
    markers.mkdir()
    (markers / "bug").touch()
    with pytest.raises(ChunkFailedError):
        run(RecordingProcessor(markers, fail_start=1_000), fileset, backend="iterative",
            chunksize=1_000, output_dir=tmp_path, policy=ErrorPolicy(max_retries=0))
    from coffea_hpc.errors import UserError

    with pytest.raises(UserError, match="chunking changed"):
        run(DimuonProcessor(), fileset, backend="iterative", chunksize=700, output_dir=tmp_path,
            resume=True)


def test_skipped_chunks_are_reported_not_lost(fileset, tmp_path):
    markers = tmp_path / "m"
    markers.mkdir()
    (markers / "bug").touch()
    outcome = run(RecordingProcessor(markers, fail_start=0), fileset, backend="iterative",
                  chunksize=1_000, output_dir=tmp_path / "o",
                  policy=ErrorPolicy(max_retries=0, continue_on=(KeyError,)))
    assert outcome.report["status"] == "incomplete"
    assert len(outcome.report["failed_chunks"]) == 4
    assert outcome.result.processed.n_entries == 12_000 - 4 * 1_000
    assert "KeyError" in outcome.report["failed_chunks"][0]["error"]
    assert "Traceback" in outcome.report["failed_chunks"][0]["traceback"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM],
                         ids=["kill", "ctrl-c", "sigterm"])
def test_a_killed_driver_resumes_from_its_checkpoint(fileset_path, runner_output, tmp_path, sig):
    slow = write_slow_processor(tmp_path / "slow.py", 0.25)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "coffea_hpc.cli.app", "run", slow,
           "--fileset", str(fileset_path), "-o", str(out), "--executor", "iterative",
           "--chunksize", "1000", "--checkpoint-every", "0.2"]
    # a shell without job control starts children with SIGINT ignored; undo that, as a
    # terminal would, so Ctrl-C reaches the driver
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoint = out / "checkpoint.coffea"
    deadline = time.monotonic() + 60
    while not checkpoint.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert checkpoint.exists(), proc.communicate()[0].decode()[-2000:]
    time.sleep(0.3)
    os.kill(proc.pid, sig)
    log = proc.communicate(timeout=60)[0].decode()
    if sig == signal.SIGINT:
        assert proc.returncode == 130, log
        assert "rerun with --resume" in log
    elif sig == signal.SIGTERM:  # scancel, a batch job's time limit
        assert proc.returncode == 143, log
        assert "terminated: what was done is saved; rerun with --resume" in log
        assert json.loads((out / "report.json").read_text())["status"] == "interrupted"
    else:
        assert proc.returncode == -signal.SIGKILL
    saved = load(checkpoint)
    assert 0 < saved.processed.n_entries < 12_000

    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same(load(out / "output.coffea"), runner_output)
    report = json.loads((out / "report.json").read_text())
    assert report["events"] == 12_000
    assert report["metrics"]["chunks"] == 12


def test_sigterm_on_a_parsl_run_leaves_no_process_behind(fileset_path, tmp_path):
    """What ``scancel`` does to a driver: Parsl's interchange and workers must go with it
    (an interchange outlived a cancelled batch job before SIGTERM was handled)."""
    slow = write_slow_processor(tmp_path / "slow.py", 1.0)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "coffea_hpc.cli.app", "run", slow, "--fileset",
         str(fileset_path), "-o", str(out), "--executor", "parsl", "--workers", "2",
         "--chunksize", "1000", "--checkpoint-every", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    checkpoint = out / "checkpoint.coffea"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert checkpoint.exists(), proc.communicate()[0].decode()[-2000:]
    started = psutil.Process(proc.pid).children(recursive=True)
    started += processes_mentioning(str(out))
    assert any("interchange" in " ".join(p.cmdline()) for p in started)
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 143, log[-2000:]
    alive = still_running(started, timeout=30)
    assert not alive, [" ".join(p.cmdline()) for p in alive]
    assert 0 < load(checkpoint).processed.n_entries < 12_000


BROKEN_ANALYSIS = '''
from pathlib import Path
from coffea import processor

CALLS = Path(__file__).with_name("calls.txt")


def check_muons(events):
    raise ValueError(f"broken analysis code in {events.metadata['dataset']}")


class Broken(processor.ProcessorABC):
    def process(self, events):
        with open(CALLS, "a") as log:
            log.write("called\\n")
        return check_muons(events)

    def postprocess(self, accumulator):
        return accumulator
'''


@pytest.mark.parametrize("backend", ["futures", "parsl"])
def test_a_processor_bug_stops_the_run_early_and_is_reported(fileset, tmp_path, backend):
    """coffea's Runner stops at the first exception; a run stops at the first chunk whose
    processor raised, without a retry (the I/O retries are not for bugs), having called
    the processor a handful of times, not for every chunk, and the report names the chunk
    with the analyst's own traceback."""
    (tmp_path / "broken.py").write_text(BROKEN_ANALYSIS)
    out = tmp_path / "out"
    with pytest.raises(ChunkFailedError, match="broken analysis code") as info:
        run(f"{tmp_path / 'broken.py'}:Broken", fileset, backend=backend, workers=2,
            chunksize=100, output_dir=out, policy=ErrorPolicy(max_retries=3))
    n_chunks = 4 * 30
    calls = len((tmp_path / "calls.txt").read_text().splitlines())
    assert calls <= 2 * 2 + 2, f"{calls} calls for {n_chunks} chunks"
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed"
    [failed] = report["failed_chunks"]
    assert failed["exception"] == "ValueError" and failed["attempts"] == 1
    assert failed["kind"] == "processor" and failed["location"] == failed["file"]
    assert failed["message"].startswith("broken analysis code in")
    assert failed["dataset"] in {ds.name for ds in fileset}
    assert Path(failed["file"]).exists() and failed["entrystop"] > failed["entrystart"]
    frames = failed["traceback"].splitlines()
    assert frames[1].endswith("in process") and "in check_muons" in failed["traceback"]
    assert "parsl" not in failed["traceback"] and "coffea_hpc" not in failed["traceback"]
    assert not info.value.resumable  # nothing was processed: nothing to resume


def test_continue_on_error_goes_on_and_lists_every_failure(fileset, tmp_path):
    (tmp_path / "broken.py").write_text(BROKEN_ANALYSIS)
    outcome = run(f"{tmp_path / 'broken.py'}:Broken", fileset, backend="futures", workers=2,
                  chunksize=1_000, output_dir=tmp_path / "out",
                  policy=ErrorPolicy.continue_on_error(max_retries=0))
    assert outcome.report["status"] == "incomplete"
    assert len(outcome.report["failed_chunks"]) == 12
    assert {f["dataset"] for f in outcome.report["failed_chunks"]} == {ds.name for ds in fileset}


MIXED_ANALYSIS = '''
import awkward as ak
from coffea import processor


class Mixed(processor.ProcessorABC):
    def process(self, events):
        if events.metadata["dataset"] == "buggy":
            raise ValueError("a bug in the analysis")
        return {"n": len(events), "sumpt": float(ak.sum(events.Muon.pt))}

    def postprocess(self, accumulator):
        return accumulator
'''


@pytest.mark.parametrize("backend", ["iterative", "futures"])
def test_read_errors_and_processor_errors_spend_their_own_retries(fileset, tmp_path,
                                                                  backend):
    """A chunk whose data fails to read is retried ``max_retries`` times (storage has bad
    moments), one whose processor raised ``processor_retries`` times; the report says which
    kind each failure was and where its file was read from."""
    import shutil

    from tests.helpers import damage_basket

    source = fileset.datasets["DYJetsToLL"].files[0].path
    damaged, copy = tmp_path / "damaged.root", tmp_path / "copy.root"
    shutil.copy(source, damaged)
    shutil.copy(source, copy)
    damage_basket(damaged)
    spec = {"good": [source], "unreadable": [str(damaged)], "buggy": [str(copy)]}
    (tmp_path / "mixed.py").write_text(MIXED_ANALYSIS)
    outcome = run(f"{tmp_path / 'mixed.py'}:Mixed", spec, backend=backend, workers=2,
                  chunksize=500, output_dir=tmp_path / "out",
                  policy=ErrorPolicy.continue_on_error(max_retries=2, processor_retries=1))
    assert outcome.report["status"] == "incomplete"
    rows = outcome.report["failed_chunks"]
    io = [r for r in rows if r["dataset"] == "unreadable"]
    bugs = [r for r in rows if r["dataset"] == "buggy"]
    assert {r["kind"] for r in io} == {"io"} and {r["kind"] for r in bugs} == {"processor"}
    assert max(r["attempts"] for r in io) == 3, io  # the file's probe chunk: 1 + 2 retries
    assert len(bugs) == 6 and {r["attempts"] for r in bugs} == {2}, bugs
    assert {r["location"] for r in bugs} == {str(copy)}
    assert {r["location"] for r in io if r["attempts"]} == {str(damaged)}
    assert outcome.report["configuration"]["processor_retries"] == 1
    assert outcome.output["n"] >= 3_000  # the good file, and what was read of the damaged one


class FailsToPostprocess(RecordingProcessor):
    """Its postprocess fails while the flag file exists: every chunk is done by then."""

    def postprocess(self, accumulator):
        if (Path(self.marker_dir) / "bug").exists():
            raise RuntimeError("postprocess bug")
        return accumulator


@pytest.mark.parametrize("spill", [False, True])
def test_a_failure_after_processing_keeps_everything_and_resume_only_finishes(
        fileset, runner_output, tmp_path, spill):
    from coffea_hpc.reduction import Reduction

    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / "bug").touch()
    out = tmp_path / "out"
    reduction = Reduction(spill_bytes=0 if spill else 256 * 1024**2)
    with pytest.raises(RuntimeError, match="postprocess bug"):
        run(FailsToPostprocess(markers), fileset, backend="futures", workers=2,
            chunksize=1_000, output_dir=out, reduction=reduction)
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["failed_stage"] == "output"
    assert "postprocess bug" in report["error"] and report["events"] == 12_000
    assert (out / "checkpoint.coffea").exists()
    assert bool(list((out / "spill").glob("partial-*"))) is spill
    processed = sorted(p.name for p in markers.iterdir() if p.name != "bug")
    (markers / "bug").unlink()  # the analyst fixes the bug

    outcome = run(FailsToPostprocess(markers), fileset, backend="futures", workers=2,
                  chunksize=1_000, output_dir=out, reduction=reduction, resume=True)
    assert sorted(p.name for p in markers.iterdir()) == processed  # nothing reprocessed
    assert all(len((markers / n).read_text().splitlines()) == 1 for n in processed)
    assert_same(outcome.output, runner_output)
    assert outcome.report["status"] == "complete"
    assert not (out / "checkpoint.coffea").exists() and not (out / "spill").exists()


class Inconsistent(DimuonProcessor):
    """Gives a mapping for one dataset and a number for the others: no merge can add them."""

    def process(self, events):
        out = super().process(events)
        if events.metadata["dataset"] != "TTTo2L2Nu":
            out["sumw"] = 1.0
        return out


def test_a_final_merge_that_fails_is_reported_and_keeps_the_partials(fileset, tmp_path):
    from coffea_hpc.errors import MergeError
    from coffea_hpc.reduction import Reduction

    out = tmp_path / "out"
    with pytest.raises(MergeError, match="cannot merge") as info:
        run(Inconsistent(), fileset, backend="futures", workers=2, chunksize=1_000,
            output_dir=out, reduction=Reduction(spill_bytes=0))
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["failed_stage"] == "final_merge"
    assert report["error"].startswith("final merge failed: MergeError")
    assert info.value.resumable and (out / "checkpoint.coffea").exists()
    assert len(list((out / "spill").glob("partial-*"))) >= 2


def test_outputs_that_cannot_be_added_name_the_chunk_and_dataset(fileset, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ChunkFailedError, match=r"dataset '.*'.*cannot merge") as info:
        run(Inconsistent(), fileset, backend="iterative", chunksize=1_000, output_dir=out)
    assert ".root:Events[" in str(info.value)
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["error"] == str(info.value)


class SometimesNothing(DimuonProcessor):
    """Returns None for the data: coffea drops such chunks; the report counts them."""

    def process(self, events):
        if events.metadata["dataset"] == "SingleMuon":
            return None
        return super().process(events)


def test_chunks_without_output_are_counted_and_warned(fileset, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="coffea_hpc"):
        outcome = run(SometimesNothing(), fileset, backend="iterative", chunksize=1_000,
                      output_dir=tmp_path)
    assert outcome.report["metrics"]["chunks_without_output"] == 3
    assert outcome.report["status"] == "complete"
    assert "SingleMuon" not in outcome.output["cutflow"]
    assert "3 chunks returned None" in caplog.text


class DiesOn1000(DimuonProcessor):
    """Its worker process dies on every chunk starting at entry 1000, as one killed for
    memory does."""

    def process(self, events):
        if events.metadata["entrystart"] == 1000:
            os._exit(1)
        return super().process(events)


@pytest.mark.parametrize("backend", ["futures", "parsl"])
def test_a_worker_that_dies_spends_retries_and_the_report_names_the_likely_cause(
        fileset, tmp_path, backend):
    """A worker process that dies while its block lives is no ended block: it spends the
    chunk's retries (not the processor's budget), and the report says what probably
    happened."""
    with pytest.raises(ChunkFailedError):
        run(DiesOn1000(), fileset, backend=backend, workers=2, chunksize=1_000,
            chunks_per_task=1, output_dir=tmp_path / "out",
            policy=ErrorPolicy(max_retries=1, processor_retries=0))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    [failed] = report["failed_chunks"]
    assert failed["entrystart"] == 1000 and failed["attempts"] == 2
    assert failed["kind"] == "worker" and "out of memory" in failed["cause"]
    assert report["metrics"]["chunks_lost_to_ended_blocks"] == 0
