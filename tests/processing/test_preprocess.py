"""Preprocessing: entries and uuids read once, bad files reported or skipped."""

from __future__ import annotations

import shutil

import pytest
import uproot

from coffea_hpc.backends import ErrorPolicy, make_backend
from coffea_hpc.data.fileset import Fileset
from coffea_hpc.errors import FilesetError
from coffea_hpc.processing.preprocess import preprocess


@pytest.fixture(scope="module")
def backend():
    with make_backend("iterative") as b:
        yield b


def test_entries_and_uuids_come_from_the_files(fileset, backend):
    prepared = preprocess(fileset, backend, chunksize=1_000).fileset
    for _, f in prepared.files:
        tree = uproot.open(f.path)["Events"]
        assert f.entries == tree.num_entries
        assert f.uuid == str(tree.file.uuid)
        assert f.steps[0][0] == 0 and f.steps[-1][1] == f.entries


def test_a_prepared_fileset_is_not_reopened(fileset, backend, tmp_path):
    prepared = preprocess(fileset, backend, chunksize=1_000).fileset
    moved = tmp_path / "gone"
    # point the prepared fileset at paths that do not exist: reopening would fail
    mapping = prepared.to_mapping()
    for ds in mapping.values():
        ds["files"] = {str(moved / p.lstrip("/")): v for p, v in ds["files"].items()}
    again = preprocess(Fileset.from_mapping(mapping), backend)
    assert again.fileset.n_entries == prepared.n_entries
    rechunked = preprocess(Fileset.from_mapping(mapping), backend, chunksize=500)
    assert sum(len(f.steps) for _, f in rechunked.fileset.files) > sum(
        len(f.steps) for _, f in again.fileset.files)


def test_an_empty_file_gives_one_empty_chunk(tmp_path, backend):
    path = tmp_path / "empty.root"
    with uproot.recreate(path) as out:
        out.mktree("Events", {"x": "float32"})
    prepared = preprocess(Fileset.from_mapping({"d": [str(path)]}), backend).fileset
    [(_, f)] = prepared.files
    assert f.entries == 0 and f.steps == ((0, 0),)


@pytest.fixture
def with_bad_files(fileset, tmp_path):
    good = fileset.datasets["TTTo2L2Nu"].files[0].path
    copy = tmp_path / "good.root"
    shutil.copy(good, copy)
    return Fileset.from_mapping({
        "d": {"files": {str(copy): "Events", str(tmp_path / "missing.root"): "Events"}},
        "e": {"files": {str(copy): "WrongTree"}},
    })


def test_bad_files_stop_preprocessing_naming_every_one(with_bad_files, backend):
    """Every file is tried first: all the bad ones are named, one line each."""
    with pytest.raises(FilesetError, match=r"2 of 3 files cannot be read") as info:
        preprocess(with_bad_files, backend, policy=ErrorPolicy(max_retries=0))
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == 2
    assert any("missing.root:Events: BadFileError: cannot open" in line for line in lines)
    assert any("has no tree 'WrongTree'" in line for line in lines)


def test_skip_bad_files_reports_and_goes_on(with_bad_files, backend):
    outcome = preprocess(with_bad_files, backend, policy=ErrorPolicy.skip_bad_files())
    assert [d.name for d in outcome.fileset] == ["d"]
    assert len(outcome.fileset.datasets["d"].files) == 1
    messages = " | ".join(f.describe() for f in outcome.skipped)
    assert "missing.root': no such file" in messages
    assert "has no tree 'WrongTree' (it has: Events)" in messages
    assert all(f.attempts == 2 for f in outcome.skipped)  # retried once, then skipped


def test_align_clusters_ends_chunks_on_cluster_boundaries(fileset, backend):
    """The fixture's files have baskets of 1,000 entries: chunks start on those boundaries."""
    prepared = preprocess(fileset, backend, chunksize=1_500, align_clusters=True).fileset
    for _, f in prepared.files:
        starts = set(int(x) for x in uproot.open(f.path)["Events"].common_entry_offsets())
        assert all(a in starts for a, _ in f.steps)
        assert all(b - a >= 1_500 or b == f.entries for a, b in f.steps)
        assert f.steps[-1][1] == f.entries
