"""Adaptive chunking (``--target-chunk-seconds``): chunks cut as they are submitted, sized per
dataset from measured throughput, every entry counted exactly once.

Runs are real: processors whose cost per event is a known sleep, processors that kill their
own worker process when a chunk is too big, a run stopped by a failing chunk and resumed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coffea_hpc.backends import ErrorPolicy
from coffea_hpc.data.chunks import Chunk
from coffea_hpc.data.ranges import EntryRanges
from coffea_hpc.errors import ChunkFailedError, UserError
from coffea_hpc.metrics import read_chunks
from coffea_hpc.processing.adaptive import AdaptiveWorkload, ChunkSizer, spans_of
from coffea_hpc.processing.processor import ProcessorHandle
from coffea_hpc.runner import run
from tests.helpers import assert_same

COSTLY = """
import time

import awkward as ak

class Costly:
    '''Sleeps a fixed time per event, per dataset; sums a float per dataset.'''

    def process(self, events):
        meta = events.metadata
        time.sleep({costs!r}.get(meta["dataset"], 0.0) * len(events))
        return {{"entries": {{meta["dataset"]: len(events)}},
                 "pt": {{meta["dataset"]: float(ak.sum(ak.values_astype(events.Muon.pt,
                                                                        "float64")))}}}}

    def postprocess(self, accumulator):
        return accumulator
"""

GREEDY = """
import os

import awkward as ak

class Greedy:
    '''Runs out of memory on chunks of {dataset} above {limit} entries: {how}.'''

    def process(self, events):
        meta = events.metadata
        if meta["dataset"] == {dataset!r} and len(events) > {limit}:
            with open({log!r}, "a") as f:
                f.write(f"{{meta['entrystart']}} {{meta['entrystop']}}\\n")
            if {how!r} == "exit":
                os._exit(137)  # as the kernel's OOM killer ends a process
            raise MemoryError("cannot allocate")
        return {{"entries": {{meta["dataset"]: len(events)}},
                 "pt": {{meta["dataset"]: float(ak.sum(ak.values_astype(events.Muon.pt,
                                                                        "float64")))}}}}

    def postprocess(self, accumulator):
        return accumulator
"""

RECORDING = """
from pathlib import Path

import awkward as ak

class Recording:
    '''Logs the range of every chunk it processes; fails on the ttbar chunks past entry
    1000 while a flag file exists.'''

    def process(self, events):
        meta = events.metadata
        folder = Path({folder!r})
        if meta["dataset"] == "TTTo2L2Nu" and meta["entrystart"] >= 1000 \\
                and (folder / "bug").exists():
            raise KeyError("Muon_ptt")
        with open(folder / "calls", "a") as f:
            f.write(f"{{meta['filename']}} {{meta['entrystart']}} {{meta['entrystop']}}\\n")
        return {{"entries": {{meta["dataset"]: len(events)}},
                 "pt": {{meta["dataset"]: float(ak.sum(ak.values_astype(events.Muon.pt,
                                                                        "float64")))}}}}

    def postprocess(self, accumulator):
        return accumulator
"""


def _write(path: Path, text: str, name: str, **fields) -> str:
    path.write_text(text.format(**fields))
    return f"{path}:{name}"


def _covers_each_file_once(report: dict, prepared) -> None:
    ranges = {r["filename"]: [tuple(s) for s in r["ranges"]] for r in report["processed_ranges"]}
    assert ranges == {f.path: [(0, f.entries)] for _, f in prepared.files}


def _disjoint_and_complete(rows: list[tuple[str, int, int]], prepared) -> None:
    """``rows`` (file, start, stop) never overlap, and cover every file exactly."""
    ledger = EntryRanges()
    for filename, start, stop in rows:
        ledger.update(EntryRanges.of(("d", filename, "Events"), start, stop))  # raises
    assert {k[1]: spans for k, spans in ledger} == \
        {f.path: [(0, f.entries)] for _, f in prepared.files}


# -- the pieces, without processes --------------------------------------------------------


def _chunk(start: int, stop: int, filename: str = "a.root", dataset: str = "A") -> Chunk:
    return Chunk(dataset, filename, "Events", start, stop)


def test_spans_join_a_files_chunks_and_leave_out_what_was_counted():
    chunks = [_chunk(0, 100), _chunk(100, 200), _chunk(0, 0, "empty.root"),
              _chunk(0, 50, "b.root", "B"), _chunk(50, 90, "b.root", "B")]
    assert [(c.filename, c.entrystart, c.entrystop) for c in spans_of(chunks)] == \
        [("a.root", 0, 200), ("empty.root", 0, 0), ("b.root", 0, 90)]
    done = EntryRanges({("A", "a.root", "Events"): [(20, 60), (150, 200)],
                        ("A", "empty.root", "Events"): [(0, 0)],
                        ("B", "b.root", "Events"): [(0, 10)]})
    assert [(c.filename, c.entrystart, c.entrystop) for c in spans_of(chunks, done)] == \
        [("a.root", 0, 20), ("a.root", 60, 150), ("b.root", 10, 90)]


def test_the_sizer_aims_at_the_target_within_bounds():
    sizer = ChunkSizer(1_000, 2.0)
    assert sizer.size("A") == 1_000  # nothing measured yet: the start chunksize
    sizer.learn([{"dataset": "A", "entries": 1_000, "wall_s": 10.0, "outcome": "ok"},
                 {"dataset": "B", "entries": 1_000, "wall_s": 0.1, "outcome": "ok"},
                 {"dataset": "B", "entries": 1_000, "wall_s": 99.0, "outcome": "failed"}])
    assert sizer.size("A") == 200  # 10 ms per event: 2 s is 200 events
    sizer.cut("B", 1_000)
    assert sizer.size("B") == 4_000  # wants 20,000: grows at most 4x a step
    sizer.cut("B", 4_000)
    assert sizer.size("B") == 16_000  # and never past 16x the start
    sizer.cap("B", 300)
    assert sizer.size("B") == 300
    assert ChunkSizer(1_000, 0.001).size("A") == 1_000
    tiny = ChunkSizer(1_000, 1e-6)
    tiny.learn([{"dataset": "A", "entries": 1_000, "wall_s": 1.0, "outcome": "ok"}])
    assert tiny.size("A") == 100  # the minimum


def test_chunks_are_cut_as_they_are_asked_for_and_never_overlap():
    sizer = ChunkSizer(100, 1.0)
    work = AdaptiveWorkload(ProcessorHandle.wrap(object()),
                            [_chunk(0, 1_000), _chunk(0, 0, "empty.root")], sizer)
    elements = iter(work)
    first = next(elements)
    assert first.keys == (("A", "a.root", "Events", 0, 100),)
    sizer.learn([{"dataset": "A", "entries": 100, "wall_s": 0.25, "outcome": "ok"}])
    second = next(elements)
    # wants 400 (4x the largest so far); the 900 left split evenly in two
    assert second.keys == (("A", "a.root", "Events", 100, 550),)
    halves = work.split(second.keys[0])
    assert [e.keys[0][3:] for e in halves] == [(100, 325), (325, 550)]
    cut = list(work.keys())
    assert second.keys[0] not in cut
    assert sizer.size("A") == 225  # capped at the halves' size
    rest = list(elements)
    assert rest[-1].keys == (("A", "empty.root", "Events", 0, 0),)
    ledger = EntryRanges()
    for key in list(work.keys()):
        ledger.update(EntryRanges.of(key[:3], key[3], key[4]))  # raises on an overlap
    assert work.uncovered(ledger) == []
    partial = EntryRanges({("A", "a.root", "Events"): [(0, 325), (550, 1_000)]})
    assert work.uncovered(partial) == [("A", "a.root", "Events", 325, 550),
                                       ("A", "empty.root", "Events", 0, 0)]
    assert [e.keys for e in work.rest(partial)] == [(("A", "a.root", "Events", 325, 550),),
                                                  (("A", "empty.root", "Events", 0, 0),)]


# -- runs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixed_answer(fileset, tmp_path_factory):
    """The Costly processor's output with a fixed chunking: what every run must give."""
    folder = tmp_path_factory.mktemp("fixed")
    processor = _write(folder / "costly.py", COSTLY, "Costly", costs={})
    return run(processor, fileset, backend="iterative", chunksize=1_000).output


def test_chunk_sizes_follow_each_datasets_cost_toward_the_target(fileset, tmp_path,
                                                                   fixed_answer):
    """ttbar events cost 50 times dy's: its chunks shrink toward the 0.15 s target, dy's
    grow, and once measured, chunks last about the target."""
    costs = {"DYJetsToLL": 2e-5, "TTTo2L2Nu": 1e-3, "SingleMuon": 2e-5}
    processor = _write(tmp_path / "costly.py", COSTLY, "Costly", costs=costs)
    out = tmp_path / "out"
    outcome = run(processor, fileset, backend="futures", workers=2, output_dir=out,
                  chunksize=300, target_chunk_seconds=0.15)
    assert_same(outcome.output, fixed_answer)
    _covers_each_file_once(outcome.report, outcome.prepared)
    rows = read_chunks(out / "chunks.jsonl")
    assert all(r["outcome"] == "ok" for r in rows)
    ttbar = [r for r in rows if r["dataset"] == "TTTo2L2Nu"]
    dy = [r for r in rows if r["dataset"] == "DYJetsToLL"]
    assert max(r["entries"] for r in dy) >= 1_200  # grew from 300
    late = sorted(ttbar, key=lambda r: r["start"])[-4:]  # cut after ttbar was measured
    assert all(r["entries"] <= 225 for r in late), [r["entries"] for r in late]
    assert all(0.075 <= r["wall_s"] <= 0.3 for r in late), [r["wall_s"] for r in late]
    learnt = outcome.report["adaptive_chunking"]["datasets"]
    assert learnt["TTTo2L2Nu"]["seconds_per_event"] == pytest.approx(1e-3, rel=0.5)
    assert outcome.report["configuration"]["target_chunk_seconds"] == 0.15
    _disjoint_and_complete([(r["file"], r["entrystart"], r["entrystop"]) for r in rows],
                           outcome.prepared)


def test_a_chunk_whose_worker_is_killed_for_memory_is_split(fileset, tmp_path, fixed_answer):
    """A worker process that dies on every ttbar chunk over 1000 entries: the 3000-entry
    chunk is retried as halves, those as quarters, which fit; the output is complete."""
    log = tmp_path / "too-big"
    processor = _write(tmp_path / "greedy.py", GREEDY, "Greedy", dataset="TTTo2L2Nu",
                       limit=1_000, how="exit", log=str(log))
    out = tmp_path / "out"
    outcome = run(processor, fileset, backend="futures", workers=2, output_dir=out,
                  chunksize=3_000, target_chunk_seconds=30.0,
                  policy=ErrorPolicy(max_retries=0))
    assert_same(outcome.output, fixed_answer)
    _covers_each_file_once(outcome.report, outcome.prepared)
    # the halves run side by side, on both workers: either may be first
    tried = log.read_text().splitlines()
    assert tried[0] == "0 3000" and set(tried) == {"0 3000", "0 1500", "1500 3000"}, tried
    assert outcome.report["adaptive_chunking"]["out_of_memory_splits"] == 3
    assert outcome.report["metrics"]["chunks"] >= 7
    ok = [(r["file"], r["entrystart"], r["entrystop"]) for r in read_chunks(out / "chunks.jsonl")
          if r["outcome"] == "ok"]
    _disjoint_and_complete(ok, outcome.prepared)


def test_a_memory_error_splits_the_chunk_only_with_adaptive_chunking(fileset, tmp_path,
                                                                      fixed_answer):
    log = tmp_path / "too-big"
    processor = _write(tmp_path / "greedy.py", GREEDY, "Greedy", dataset="SingleMuon",
                       limit=800, how="raise", log=str(log))
    outcome = run(processor, fileset, backend="iterative", chunksize=3_000,
                  target_chunk_seconds=30.0)
    assert_same(outcome.output, fixed_answer)
    assert log.read_text().split() == ["0", "3000", "0", "1500", "1500", "3000"]
    # a fixed chunking stops at a MemoryError, as it always did
    with pytest.raises(ChunkFailedError, match="MemoryError: cannot allocate"):
        run(processor, fileset, backend="iterative", chunksize=3_000)


def test_a_resumed_adaptive_run_processes_exactly_what_is_missing(fileset, tmp_path,
                                                                   fixed_answer):
    (tmp_path / "bug").touch()
    processor = _write(tmp_path / "recording.py", RECORDING, "Recording", folder=str(tmp_path))
    out = tmp_path / "out"
    options = {"backend": "iterative", "chunksize": 400, "target_chunk_seconds": 0.004,
               "output_dir": out, "policy": ErrorPolicy(max_retries=0)}
    with pytest.raises(ChunkFailedError, match="Muon_ptt"):
        run(processor, fileset, **options)
    first = [line.split() for line in (tmp_path / "calls").read_text().splitlines()]
    ttbar = [row for row in first if "TTTo2L2Nu" in row[0]]
    assert ttbar and max(int(r[2]) for r in ttbar) >= 1_000  # part of the file is done
    (tmp_path / "bug").unlink()

    with pytest.raises(UserError, match=r"--target-chunk-seconds 0\.004 → 0\.5"):
        run(processor, fileset, **{**options, "target_chunk_seconds": 0.5}, resume=True)
    with pytest.raises(UserError, match=r"--target-chunk-seconds 0\.004 → unset"):
        run(processor, fileset, **{**options, "target_chunk_seconds": None}, resume=True)
    assert len((tmp_path / "calls").read_text().splitlines()) == len(first)

    outcome = run(processor, fileset, **options, resume=True)
    assert_same(outcome.output, fixed_answer)
    _covers_each_file_once(outcome.report, outcome.prepared)
    calls = [line.split() for line in (tmp_path / "calls").read_text().splitlines()]
    second = calls[len(first):]
    assert second and all("TTTo2L2Nu" in r[0] or "SingleMuon" in r[0] for r in second)
    _disjoint_and_complete([(f, int(a), int(b)) for f, a, b in calls], outcome.prepared)
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete" and report["resumed_events"] > 0
