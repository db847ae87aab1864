"""Chunking follows coffea's rule exactly: checked against coffea's own Runner."""

from __future__ import annotations

import itertools

import pytest
from coffea import processor

from coffea_hpc.backends import make_backend
from coffea_hpc.data.chunks import aligned_steps, chunks_of, even_steps
from coffea_hpc.processing.preprocess import preprocess


@pytest.mark.parametrize("chunksize", [400, 1_000, 1_234, 2_999, 3_000, 10_000])
def test_chunks_match_coffea_runner(fileset, chunksize):
    runner = processor.Runner(executor=processor.IterativeExecutor(), chunksize=chunksize)
    coffea_items = {
        (i.dataset, i.filename, i.entrystart, i.entrystop)
        for i in runner.preprocess({ds.name: [f.path for f in ds.files] for ds in fileset},
                                   treename="Events")
    }
    with make_backend("iterative") as b:
        prepared = preprocess(fileset, b, chunksize=chunksize).fileset
    ours = {(c.dataset, c.filename, c.entrystart, c.entrystop) for c in chunks_of(prepared)}
    assert ours == coffea_items


@pytest.mark.parametrize("n", [1, 7, 99, 100, 101, 1_000_003])
@pytest.mark.parametrize("size", [1, 10, 100, 7_777])
def test_even_steps_tile_the_file(n, size):
    steps = even_steps(n, size)
    assert steps[0][0] == 0 and steps[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(steps))
    full = {b - a for a, b in steps[:-1]}
    assert len(full) <= 1 and steps[-1][1] - steps[-1][0] <= max(full | {n})
    assert len(steps) <= max(round(n / size), 1)


def test_a_file_without_entries_gives_one_empty_chunk():
    assert even_steps(0, 100) == [(0, 0)]
    assert aligned_steps([0], 0, 100) == [(0, 0)]


@pytest.mark.parametrize("limit", [None, 1, 2])
def test_empty_files_are_chunked_as_coffea_runner_chunks_them(tmp_path, limit):
    from coffea_hpc.data.synthetic import SyntheticDataset, generate

    fs = generate(tmp_path, events_per_file=500, datasets=(
        SyntheticDataset("Skim", "dy", 3, empty_files=2),
        SyntheticDataset("AllEmpty", "dy", 1, empty_files=1)))
    runner = processor.Runner(executor=processor.IterativeExecutor(), chunksize=200,
                              maxchunks=limit)
    coffea_items = {
        (i.dataset, i.filename, i.entrystart, i.entrystop)
        for i in runner.preprocess({ds.name: [f.path for f in ds.files] for ds in fs},
                                   treename="Events")
    }
    with make_backend("iterative") as b:
        prepared = preprocess(fs, b, chunksize=200).fileset
    ours = [(c.dataset, c.filename, c.entrystart, c.entrystop)
            for c in chunks_of(prepared, limit_chunks=limit)]
    assert len(ours) == len(set(ours))
    if limit is None:  # coffea's maxchunks takes chunks in an order of its own
        assert set(ours) == coffea_items
        assert sum(1 for c in ours if c[2] == c[3] == 0) == 3
    else:
        assert len(ours) == len(coffea_items)


def test_aligned_steps_end_on_cluster_boundaries():
    clusters = [0, 100, 200, 300, 400, 500]
    steps = aligned_steps(clusters, 550, 180)
    assert steps == [(0, 200), (200, 400), (400, 550)]
    assert all(a in clusters for a, _ in steps)


def test_limit_chunks_is_per_dataset(fileset):
    with make_backend("iterative") as b:
        prepared = preprocess(fileset, b, chunksize=500).fileset
    chunks = chunks_of(prepared, limit_chunks=2)
    per_ds = {}
    for c in chunks:
        per_ds[c.dataset] = per_ds.get(c.dataset, 0) + 1
    assert per_ds == {ds.name: 2 for ds in fileset}
