"""Per-chunk metrics: measured on the worker, written by the driver to OUTDIR/chunks.jsonl,
summed up in report.json; on every local backend, through retries and dead workers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import awkward as ak
import pandas as pd
import pyarrow.json as pajson
import pytest
import uproot

from coffea_hpc.backends import ErrorPolicy
from coffea_hpc.data.chunks import Chunk
from coffea_hpc.examples.dimuon import DimuonProcessor
from coffea_hpc.metrics import CHUNKS_NAME, read_chunks
from coffea_hpc.processing.processor import ProcessorHandle
from coffea_hpc.processing.worker import process_chunks
from coffea_hpc.runner import run


def _baskets_overlapping(path: str, columns: list[str], start: int, stop: int) -> int:
    """Compressed bytes of every basket of ``columns`` that holds an entry of the range,
    straight from uproot's public basket API."""
    total = 0
    with uproot.open(path) as f:
        tree = f["Events"]
        for name in columns:
            branch = tree[name]
            for i in range(branch.num_baskets):
                first, last = branch.basket_entry_start_stop(i)
                if first < stop and last > start:
                    total += branch.basket_compressed_bytes(i)
    return total


def test_bytes_read_are_the_baskets_of_the_columns_touched(fileset, monkeypatch):
    """The second chunk of a file finds it open: what its source fetched is exactly the
    baskets of the columns the processor touched, nothing of the others. The first chunk
    also paid for opening the file (header, the tree's metadata)."""
    from coffea_hpc.processing import worker

    monkeypatch.setattr(worker, "_BUILDER", None)  # a fresh worker: no file open yet
    path = fileset.datasets["DYJetsToLL"].files[0].path
    chunks = [Chunk("DYJetsToLL", path, "Events", a, a + 1000) for a in (0, 1000)]
    result = process_chunks(ProcessorHandle.wrap(DimuonProcessor()), chunks, "nanoaod")
    first, second = result.chunk_rows
    assert {"Muon_pt", "nMuon"} <= set(second["columns"])
    assert "Electron_pt" not in second["columns"]
    expected = _baskets_overlapping(path, second["columns"], 1000, 2000)
    assert second["bytes_read"] == expected
    assert sum(second["column_bytes"].values()) == expected
    assert first["bytes_read"] > _baskets_overlapping(path, first["columns"], 0, 1000)
    for row in (first, second):
        assert row["outcome"] == "ok" and row["pid"] == os.getpid()
        assert row["location"] == "local"
        assert row["start"] <= row["end"] and row["wall_s"] > 0 and row["cpu_s"] > 0
        assert row["build_s"] + row["process_s"] <= row["wall_s"]
        assert row["peak_rss"] > 10 * 2**20


def _check_rows(out: Path, fileset, *, backend: str) -> list[dict]:
    rows = read_chunks(out / CHUNKS_NAME)
    report = json.loads((out / "report.json").read_text())
    perf = report["performance"]
    ok = [r for r in rows if r["outcome"] == "ok"]
    # one row per chunk, each entry range once, all of the fileset
    spans = sorted((r["dataset"], r["file"], r["entrystart"], r["entrystop"]) for r in ok)
    assert len(spans) == len(set(spans))
    assert sum(r["entries"] for r in ok) == report["events"] == 12_000
    assert perf["chunk_attempts"] == len(rows)
    assert perf["bytes_read"] == sum(r["bytes_read"] for r in rows if r["bytes_read"])
    assert {r["run"] for r in rows} == {report["started"]}
    for row in ok:
        assert row["host"] and row["pid"] and row["queue_s"] >= 0
        assert row["submitted"] <= row["end"]
    assert perf["workers_seen"] == len({(r["host"], r["pid"]) for r in ok})
    assert 0 < perf["utilisation"] <= 1.0 and perf["hz_per_core"] > 0
    assert perf["slowest_files"][0]["busy_s"] == max(f["busy_s"] for f in perf["slowest_files"])
    # the readers the format was chosen for
    assert len(pd.read_json(out / CHUNKS_NAME, lines=True)) == len(rows)
    assert pajson.read_json(out / CHUNKS_NAME).num_rows == len(rows)
    assert len(ak.from_json(out / CHUNKS_NAME, line_delimited=True)) == len(rows)
    return rows


@pytest.mark.parametrize("backend", ["iterative", "futures", "parsl", "dask"])
def test_every_backend_writes_one_row_per_chunk(fileset, tmp_path, backend):
    """Two chunks per task: each still gets its own row, and the task's wait in the queue
    is counted once, on its first chunk."""
    out = tmp_path / "out"
    run(DimuonProcessor(), fileset, backend=backend, workers=2, chunksize=1_000,
        chunks_per_task=2, output_dir=out)
    rows = _check_rows(out, fileset, backend=backend)
    by_task: dict[int, list[dict]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    assert any(len(group) == 2 for group in by_task.values())
    for group in by_task.values():
        assert all(r["queue_s"] == 0 for r in group[1:])
        assert len({r["pid"] for r in group}) == 1
    if backend == "parsl":  # Parsl's workers say which block they belong to
        assert {r["block"] for r in rows} == {"0"}


class FailsOnce(DimuonProcessor):
    """Fails the first attempt of one chunk (a flag file makes it once, on any worker)."""

    def __init__(self, flag: Path, how: str = "raise"):
        self.flag = str(flag)
        self.how = how

    def process(self, events):
        if events.metadata["entrystart"] == 1000 and os.path.exists(self.flag):
            os.unlink(self.flag)
            if self.how == "exit":
                os._exit(1)  # the worker process dies
            raise RuntimeError("transient")
        return super().process(events)


@pytest.mark.parametrize(("backend", "how", "outcome"), [("iterative", "raise", "failed"),
                                                         ("futures", "exit", "lost")])
def test_retries_and_dead_workers_are_rows_with_their_attempt(fileset, tmp_path, backend,
                                                              how, outcome):
    flag = tmp_path / "flag"
    flag.touch()
    out = tmp_path / "out"
    run(FailsOnce(flag, how), fileset, backend=backend, workers=2, chunksize=1_000,
        chunks_per_task=1, output_dir=out,
        policy=ErrorPolicy(max_retries=1, processor_retries=1))
    rows = read_chunks(out / CHUNKS_NAME)
    failed = [r for r in rows if r["outcome"] != "ok"]
    assert len(failed) == 1 and failed[0]["outcome"] == outcome
    assert failed[0]["attempt"] == 1 and failed[0]["entrystart"] == 1000
    key = (failed[0]["file"], failed[0]["entrystart"])
    again = [r for r in rows if (r["file"], r["entrystart"]) == key and r["outcome"] == "ok"]
    assert [r["attempt"] for r in again] == [2]
    perf = json.loads((out / "report.json").read_text())["performance"]
    lost = "lost_to_retries_s" if outcome == "failed" else "lost_to_ended_workers_s"
    assert perf[lost] > 0 and perf["outcomes"] == {"ok": len(rows) - 1, outcome: 1}
    if outcome == "failed":
        assert "transient" in failed[0]["error"] and failed[0]["pid"] == os.getpid()


def test_a_resumed_run_appends_and_counts_only_its_own_rows(fileset, tmp_path):
    out = tmp_path / "out"
    flag = tmp_path / "flag"
    flag.touch()
    with pytest.raises(Exception, match="transient"):
        run(FailsOnce(flag), fileset, backend="iterative", chunksize=1_000, output_dir=out,
            policy=ErrorPolicy(max_retries=0))
    first = read_chunks(out / CHUNKS_NAME)
    outcome = run(FailsOnce(flag), fileset, backend="iterative", chunksize=1_000,
                  output_dir=out, resume=True)
    rows = read_chunks(out / CHUNKS_NAME)
    assert rows[: len(first)] == first
    mine = read_chunks(out / CHUNKS_NAME, run=outcome.report["started"])
    assert len(mine) == len(rows) - len(first) == outcome.report["performance"]["chunk_attempts"]


def test_a_full_disk_ends_the_rows_with_a_warning_not_the_run(caplog):
    """Writing to /dev/full fails as a full disk does: the rows stop, the figures go on."""
    from coffea_hpc.backends._task import Settled
    from coffea_hpc.metrics import ChunkLog
    from coffea_hpc.processing.result import Result

    path = Path("/dev/full")
    if not path.exists():
        pytest.skip("no /dev/full here")
    chunk = Chunk("DY", "/data/a.root", "Events", 0, 10)
    rows = [dict(_row(chunk), wall_s=0.5) for _ in range(3)]
    with ChunkLog(path, run="r") as log:
        for i, row in enumerate(rows):
            log(Settled(None, i, 0.0, Result(chunk_rows=(row,)), None, {}))
        log.flush()
        log(Settled(None, 9, 0.0, Result(chunk_rows=(dict(rows[0]),)), None, {}))
    assert "no longer written" in caplog.text
    assert log.figures(1.0, 2)["busy_s"] == 2.0


def _row(chunk: Chunk) -> dict:
    from coffea_hpc.processing.measure import ChunkProbe

    return ChunkProbe(chunk, 0).row("ok", 100, stats={"buildtime": 0.1, "processtime": 0.2,
                                                      "columns": {"x"}})
