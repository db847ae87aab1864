"""A worker's memory stays flat however many distinct files it reads.

Every file a worker opens leaves garbage once it is closed: uproot's model of the tree and the
derived forms, and whatever an analysis keeps per file. That garbage is reference cycles, which
only the cyclic collector frees, and a file stays open long enough for its objects to reach the
oldest generation, which the collector visits least. The runs below pass about a thousand files
of one chunk each through each worker, as a fileset of many small files does; the processor
reports its own process's RSS after every chunk, so the ceiling is checked where the memory is.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot

from coffea_hpc.data.chunks import Chunk
from coffea_hpc.processing.events import EventsBuilder
from coffea_hpc.processing.processor import ProcessorHandle
from coffea_hpc.processing.worker import process_chunks

FILES = 2_000
EVENTS = 20_000
WARM_UP = 50
CEILING = 1.5
"""RSS after a worker's last file over its RSS after its first ``WARM_UP`` files."""

SCRATCH_OBJECTS = 100_000
PER_FILE_BYTES = 1 << 20


class _PerFile:
    """What an analysis keeps for the file it reads (its era's corrections, say): a cycle,
    as most object graphs of real libraries are, holding a sizeable array."""

    def __init__(self) -> None:
        self.table = np.ones(PER_FILE_BYTES // 8)
        self.me = self


class RecordRss:
    """Reports its own process's RSS after each chunk, numbered per process.

    Unpickled once per worker, so ``seen`` counts that worker's files. Like a real analysis
    it makes ~10^5 Python objects per chunk (which moves what is alive at the time, such as
    the open files, to older generations) and keeps a few files' worth of state of its own.
    """

    def __init__(self) -> None:
        self.seen = 0
        self.per_file: OrderedDict[str, _PerFile] = OrderedDict()

    def __call__(self, events: Any) -> dict[str, Any]:
        import psutil

        self.per_file[events.metadata["filename"]] = _PerFile()
        while len(self.per_file) > 4:
            self.per_file.popitem(last=False)
        scratch = [[] for _ in range(SCRATCH_OBJECTS)]
        total = float(ak.sum(events.Muon_pt) + ak.sum(events.MET_pt)) + len(scratch)
        self.seen += 1
        rss = psutil.Process().memory_info().rss
        return {"rss": {os.getpid(): {self.seen: rss}}, "sum": total}


def _many_files(where: Path, n: int) -> list[str]:
    """``n`` paths to a small flat tree. They are hard links to one file: a worker keys what
    it keeps per file by path, so each is a file it has not seen, and writing 2,000 files
    would cost more than reading them."""
    rng = np.random.default_rng(7)
    counts = rng.poisson(1.5, EVENTS)
    columns = {
        "run": np.ones(EVENTS, np.uint32),
        "luminosityBlock": np.ones(EVENTS, np.uint32),
        "event": np.arange(1, EVENTS + 1, dtype=np.uint64),
        "Muon_pt": ak.unflatten(rng.exponential(20, counts.sum()), counts),
        "MET_pt": rng.exponential(20, EVENTS),
    }
    first = where / "f0.root"
    with uproot.recreate(first, compression=None) as out:
        out.mktree("Events", {k: v.layout.form.type if isinstance(v, ak.Array) else v.dtype
                              for k, v in columns.items()})
        out["Events"].extend(columns)
    paths = [first]
    for i in range(1, n):
        paths.append(where / f"f{i}.root")
        os.link(first, paths[-1])
    return [str(p) for p in paths]


def _assert_flat(by_file: dict[int, int], who: str) -> None:
    warm = by_file[WARM_UP] / 2**20
    last = max(by_file)
    peak = max(rss for seen, rss in by_file.items() if seen > WARM_UP) / 2**20
    assert peak <= CEILING * warm, (
        f"{who}: {warm:.0f} MB after {WARM_UP} files, {by_file[last] / 2**20:.0f} MB after "
        f"{last}, {peak:.0f} MB at most in between")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_worker_rss_is_flat_over_2000_distinct_files(tmp_path):
    from coffea_hpc import run

    fileset = {"many": {"treename": "Events", "files": _many_files(tmp_path, FILES)}}
    outcome = run(RecordRss(), fileset, backend="futures", workers=2, schema="base",
                  chunksize=EVENTS, chunks_per_task=1)
    per_worker = outcome.result.value["rss"]
    assert sum(len(by_file) for by_file in per_worker.values()) == FILES
    busy = {pid: by_file for pid, by_file in per_worker.items() if len(by_file) > 4 * WARM_UP}
    assert busy, "no worker read enough files to tell"
    for pid, by_file in busy.items():
        _assert_flat(by_file, f"worker {pid}")


def test_one_process_reading_distinct_files_stays_flat(tmp_path):
    """The same without a pool: ``process_chunks`` called file after file in one process, as
    the iterative backend's loop and every worker do."""
    handle = ProcessorHandle.wrap(RecordRss())
    by_file = {}
    for path in _many_files(tmp_path, 400):
        result = process_chunks(handle, [Chunk("many", path, "Events", 0, EVENTS)], "base")
        assert not result.failures, result.failures[0].error.message
        (seen,) = result.value["rss"].values()
        by_file.update(seen)
    _assert_flat(by_file, "this process")


def test_open_files_keep_no_arrays(tmp_path):
    """uproot keeps up to 100 MB of what was read from each open file, for a read that never
    comes: every chunk is a new entry range. Kept for four open files per worker, that was
    hundreds of MB of every worker's memory with large chunks."""
    from coffea.nanoevents import BaseSchema

    path = _many_files(tmp_path, 1)[0]
    builder = EventsBuilder()
    for start in range(0, EVENTS, EVENTS // 4):
        events = builder.events(Chunk("many", path, "Events", start, start + EVENTS // 4),
                                BaseSchema)
        assert ak.sum(events.Muon_pt) > 0
    cache = builder.tree(path, "Events").file.array_cache
    assert cache is None or len(cache) == 0
    builder.close()
    assert builder.closed == 1
    cached = EventsBuilder(uproot_options={"array_cache": "10 MB"})
    ak.sum(cached.events(Chunk("many", path, "Events", 0, EVENTS), BaseSchema).Muon_pt)
    assert len(cached.tree(path, "Events").file.array_cache) > 0, "an explicit cache is kept"
    cached.close()
