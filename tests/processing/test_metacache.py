"""The metadata cache: a second run, a resume or another chunk size opens no file to
preprocess it; a changed file is opened again; a rewrite the cache cannot see is caught by
the uuid check. Opens are counted at the one function every open goes through."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from coffea_hpc import run
from coffea_hpc.backends import ErrorPolicy, make_backend
from coffea_hpc.data.fileset import Fileset
from coffea_hpc.errors import ChunkFailedError
from coffea_hpc.processing import events
from coffea_hpc.processing.metacache import MetadataCache
from coffea_hpc.processing.preprocess import preprocess

N_FILES = 200


@pytest.fixture
def opens(monkeypatch):
    """The locations every open of a ROOT file in this process asked for."""
    seen: list[str] = []
    real = events._open_file

    def counting(path, options):
        seen.append(path)
        return real(path, options)

    monkeypatch.setattr(events, "_open_file", counting)
    return seen


@pytest.fixture(scope="module")
def many_files(fileset, tmp_path_factory) -> dict:
    """200 files (copies of one: the cache knows files by location)."""
    folder = tmp_path_factory.mktemp("many")
    source = Path(fileset.files[0][1].path)
    paths = []
    for i in range(N_FILES):
        paths.append(str(shutil.copy2(source, folder / f"f{i:03d}.root")))
    return {"DYJetsToLL": paths}


@pytest.fixture(scope="module")
def backend():
    with make_backend("iterative") as b:
        yield b


def test_a_second_preprocessing_of_200_files_opens_none(many_files, backend, opens, tmp_path):
    cache = MetadataCache(tmp_path / "cache.sqlite")
    fs = Fileset.from_mapping(many_files)
    first = preprocess(fs, backend, chunksize=1_000, cache=cache)
    assert len(opens) == N_FILES and first.opened == N_FILES
    opens.clear()
    again = preprocess(fs, backend, chunksize=1_000, cache=cache)
    other = preprocess(fs, backend, chunksize=700, cache=cache)
    assert opens == [] and again.opened == other.opened == 0
    assert again.fileset == first.fileset
    assert other.fileset.n_entries == first.fileset.n_entries
    assert len(other.fileset.files[0][1].steps) != len(first.fileset.files[0][1].steps)


def test_a_changed_file_is_opened_again(fileset, backend, opens, tmp_path):
    one, other = (Path(f.path) for _, f in fileset.files[:2])
    target = tmp_path / "data.root"
    shutil.copy2(one, target)
    cache = MetadataCache(tmp_path / "cache.sqlite")
    fs = Fileset.from_mapping({"d": [str(target)]})
    before = preprocess(fs, backend, cache=cache).fileset
    shutil.copy(other, target)  # rewritten: another uuid, another modification time
    opens.clear()
    after = preprocess(fs, backend, cache=cache).fileset
    assert opens == [str(target)]
    assert after.files[0][1].uuid != before.files[0][1].uuid


def test_a_rewrite_the_cache_cannot_see_is_caught_by_the_uuid_check(fileset, tmp_path, dimuon):
    path = fileset.files[0][1].path
    cache_path = tmp_path / "cache.sqlite"
    run(dimuon, {"d": [path]}, backend="iterative", metadata_cache=cache_path)
    # as if the file were rewritten keeping its size and modification time
    with sqlite3.connect(cache_path) as db:
        db.execute("UPDATE files SET uuid = 'rewritten'")
    with pytest.raises(ChunkFailedError, match="changed since preprocessing"):
        run(dimuon, {"d": [path]}, backend="iterative", metadata_cache=cache_path,
            policy=ErrorPolicy(max_retries=0))


def flagged_processor(folder: Path, flag: Path) -> str:
    """A processor failing on the chunks at entry 2000 while ``flag`` exists (a bug fixed
    between two runs); in a file of its own, so that its digest does not depend on this
    module's state."""
    (folder / "flagged.py").write_text(
        "from pathlib import Path\n"
        "from coffea_hpc.examples.dimuon import DimuonProcessor\n\n"
        "class Flagged(DimuonProcessor):\n"
        "    def process(self, events):\n"
        f"        if events.metadata['entrystart'] == 2000 and Path({str(flag)!r}).exists():\n"
        "            raise KeyError('Muon_ptt')\n"
        "        return super().process(events)\n")
    return f"{folder / 'flagged.py'}:Flagged"


def test_a_rerun_and_a_resume_open_no_file_to_preprocess(fileset, tmp_path, opens):
    spec = {ds.name: {"files": [f.path for f in ds.files], "metadata": ds.metadata}
            for ds in fileset}
    flag = tmp_path / "bug"
    flag.touch()
    proc = flagged_processor(tmp_path, flag)
    out = tmp_path / "out"
    cache = tmp_path / "cache.sqlite"
    with pytest.raises(ChunkFailedError):
        run(proc, spec, backend="iterative",
            chunksize=1_000, output_dir=out, policy=ErrorPolicy(max_retries=0),
            metadata_cache=cache)
    flag.unlink()
    opens.clear()
    resumed = run(proc, spec, backend="iterative",
                  chunksize=1_000, output_dir=out, resume=True, metadata_cache=cache)
    assert resumed.report["status"] == "complete"
    assert resumed.report["reads"]["files_opened_in_preprocessing"] == 0
    # processing opens files, preprocessing none: one open per file, at most
    assert len(opens) <= len(fileset.files)
    rerun = run(proc, spec, backend="iterative", chunksize=500,
                output_dir=tmp_path / "again", metadata_cache=cache)
    assert rerun.report["reads"]["files_opened_in_preprocessing"] == 0


def test_root_urls_are_cached_by_their_xrootd_identity(remote_fileset, backend, opens, tmp_path):
    cache = MetadataCache(tmp_path / "cache.sqlite")
    fs = Fileset.from_mapping({ds.name: [f.path for f in ds.files] for ds in remote_fileset})
    first = preprocess(fs, backend, cache=cache)
    opens.clear()
    again = preprocess(fs, backend, cache=cache)
    assert opens == [] and again.fileset == first.fileset


def test_a_damaged_cache_is_ignored_with_a_warning(fileset, backend, tmp_path, caplog):
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"not a database" * 100)
    fs = Fileset.from_mapping({"d": [fileset.files[0][1].path]})
    prepared = preprocess(fs, backend, cache=MetadataCache(path)).fileset
    assert prepared.n_entries > 0
    assert "metadata cache" in caplog.text


def test_the_cache_is_private_to_the_user(fileset, backend, tmp_path):
    path = tmp_path / "private" / "cache.sqlite"
    preprocess(Fileset.from_mapping({"d": [fileset.files[0][1].path]}), backend,
               cache=MetadataCache(path))
    assert path.stat().st_mode & 0o077 == 0
    assert path.parent.stat().st_mode & 0o077 == 0


def test_a_resume_without_a_cache_reuses_the_prepared_fileset(fileset, tmp_path):
    spec = {ds.name: {"files": [f.path for f in ds.files], "metadata": ds.metadata}
            for ds in fileset}
    flag = tmp_path / "bug"
    flag.touch()
    proc = flagged_processor(tmp_path, flag)
    out = tmp_path / "out"
    with pytest.raises(ChunkFailedError):
        run(proc, spec, backend="iterative", chunksize=1_000, output_dir=out,
            policy=ErrorPolicy(max_retries=0), metadata_cache=False)
    flag.unlink()
    resumed = run(proc, spec, backend="iterative", chunksize=1_000, output_dir=out,
                  resume=True, metadata_cache=False)
    assert resumed.report["status"] == "complete"
    assert resumed.report["reads"]["files_opened_in_preprocessing"] == 0
