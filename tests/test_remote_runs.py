"""Runs over root:// URLs from real XRootD servers on localhost (scripts/local-xrootd.sh):
the same output as from local paths on every backend, replicas and redirectors, a server
stopped mid-run, a server that never answers."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from coffea_hpc import run
from coffea_hpc.backends import ErrorPolicy
from coffea_hpc.data.fileset import Fileset
from coffea_hpc.errors import ChunkFailedError
from tests.helpers import assert_same, write_slow_processor
from tests.xrootd_server import SilentServer, XRootDServer, publish, served_folder

pytestmark = pytest.mark.xrootd

CHUNKSIZE = 1_000


def paths_only(fs: Fileset) -> dict:
    """The fileset as analysts write it (no entries, no uuid): preprocessing opens each file."""
    return {ds.name: {"files": [f.path for f in ds.files], "metadata": ds.metadata}
            for ds in fs}


@pytest.fixture(scope="module")
def local_output(fileset):
    from coffea_hpc.examples.dimuon import DimuonProcessor

    return run(DimuonProcessor(), paths_only(fileset), backend="iterative", chunksize=CHUNKSIZE,
               metadata_cache=False).output


@pytest.mark.parametrize("backend", ["iterative", "futures", "parsl"])
def test_root_urls_give_the_output_of_local_paths(remote_fileset, local_output, dimuon,
                                                  backend, tmp_path):
    outcome = run(dimuon, paths_only(remote_fileset), backend=backend, workers=2,
                  chunksize=CHUNKSIZE, output_dir=tmp_path, metadata_cache=False,
                  xrootd_timeout=30)
    assert_same(outcome.output, local_output)
    reads = outcome.report["reads"]
    assert reads["files_opened_in_preprocessing"] == len(remote_fileset.files)
    assert sorted(reads["read_from"]) == sorted(f.path for _, f in remote_fileset.files)
    assert all(path == location for path, location in reads["read_from"].items())
    assert reads["failed_locations"] == []


@pytest.fixture
def second_server():
    folder = served_folder()
    with XRootDServer(folder) as server:
        yield server
    shutil.rmtree(folder, ignore_errors=True)


def test_a_file_missing_on_the_first_redirector_is_read_from_the_second(
        fileset, data_dir, xrootd_server, second_server, dimuon, tmp_path):
    # the second server has the files under /store; the first has no /store at all
    [(ds, f)] = [(ds, f) for ds, f in fileset.files if ds.name == "TTTo2L2Nu"]
    publish([Path(f.path)], data_dir, second_server.folder / "store")
    lfn = f"/store/{Path(f.path).relative_to(data_dir)}"
    outcome = run(dimuon, {ds.name: {"files": [lfn], "metadata": ds.metadata}},
                  backend="iterative", chunksize=CHUNKSIZE, output_dir=tmp_path,
                  metadata_cache=False, xrootd_timeout=10,
                  redirector=[f"root://localhost:{xrootd_server.port}/",
                              f"root://localhost:{second_server.port}/"])
    local = run(dimuon, {ds.name: {"files": [f.path], "metadata": ds.metadata}},
                backend="iterative", chunksize=CHUNKSIZE, metadata_cache=False)
    assert_same(outcome.output, local.output)
    first, second = (f"root://localhost:{s.port}/{lfn}" for s in (xrootd_server, second_server))
    reads = outcome.report["reads"]
    assert reads["read_from"] == {first: second}
    failed = reads["failed_locations"]
    assert failed and {row["location"] for row in failed} == {first}
    assert all("no such file" in row["error"].lower() for row in failed)
    assert outcome.report["failed_chunks"] == []


def test_replicas_listed_in_the_fileset_are_tried_in_order(fileset, data_dir, xrootd_server,
                                                          second_server, dimuon):
    [(ds, f)] = [(ds, f) for ds, f in fileset.files if ds.name == "SingleMuon"]
    publish([Path(f.path)], data_dir, second_server.folder)
    relative = Path(f.path).relative_to(data_dir)
    gone = xrootd_server.url(f"nowhere/{relative}")
    spec = {ds.name: [[gone, second_server.url(relative), xrootd_server.url(relative)]]}
    outcome = run(dimuon, spec, backend="iterative", chunksize=CHUNKSIZE,
                  metadata_cache=False, xrootd_timeout=10)
    assert outcome.report["reads"]["read_from"] == {gone: second_server.url(relative)}


def test_every_location_failing_is_one_oserror_naming_each(fileset, data_dir, xrootd_server,
                                                          dimuon):
    relative = Path(fileset.files[0][1].path).relative_to(data_dir)
    a, b = (xrootd_server.url(f"{where}/{relative}") for where in ("a", "b"))
    with pytest.raises(ChunkFailedError) as info:
        run(dimuon, {"d": {"files": {a: {"num_entries": 10, "uuid": "u", "replicas": [b],
                                         "steps": [[0, 10]]}}}},
            backend="iterative", metadata_cache=False, xrootd_timeout=10,
            policy=ErrorPolicy(max_retries=0))
    [failure] = info.value.failures
    assert failure.error.matches((OSError,))
    assert failure.error.type_name == "NoReadableLocationError"
    assert a in failure.error.message and b in failure.error.message


def test_a_server_stopped_mid_run_and_restarted_costs_retries_not_output(
        fileset, data_dir, local_output, tmp_path):
    folder = served_folder()
    try:
        publish([Path(f.path) for _, f in fileset.files], data_dir, folder)
        with XRootDServer(folder) as server:
            spec = {ds.name: {"files": [server.url(Path(f.path).relative_to(data_dir))
                                        for f in ds.files], "metadata": ds.metadata}
                    for ds in fileset}
            slow = write_slow_processor(tmp_path / "slow.py", 0.4)

            def outage() -> None:
                # down long enough for the client to spend its connection retries (5 x 1 s
                # windows): after that only a short stream error window lets it try again
                time.sleep(1.5)
                server.stop()
                time.sleep(8)
                server.start()

            breaker = threading.Thread(target=outage)
            breaker.start()
            try:
                outcome = run(slow, spec, backend="iterative", chunksize=CHUNKSIZE,
                              output_dir=tmp_path / "out", metadata_cache=False,
                              xrootd_timeout=1, policy=ErrorPolicy(max_retries=10))
            finally:
                breaker.join()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert_same(outcome.output, local_output)
    assert outcome.report["status"] == "complete"
    assert outcome.report["reads"]["failed_locations"], "the outage was not noticed"


def test_a_server_that_never_answers_times_out_and_is_reported(dimuon, tmp_path):
    with SilentServer() as silent:
        url = f"root://localhost:{silent.port}//data/nano.root"
        started = time.monotonic()
        outcome = run(dimuon, {"d": [url]}, backend="iterative", output_dir=tmp_path,
                      metadata_cache=False, xrootd_timeout=2,
                      policy=ErrorPolicy.skip_bad_files(max_retries=0))
        elapsed = time.monotonic() - started
    assert elapsed < 30
    [skipped] = outcome.report["skipped_files"]
    assert url in skipped["file"]
    assert "expired" in skipped["error"].lower() or "timeout" in skipped["error"].lower()
    assert [row["location"] for row in outcome.report["reads"]["failed_locations"]] == [url]


def test_a_replica_server_lost_mid_run_moves_chunks_to_the_next(
        fileset, data_dir, local_output, second_server, tmp_path):
    """No retry is spent: a chunk whose read fails is processed again from the replica."""
    folder = served_folder()
    try:
        files = [Path(f.path) for _, f in fileset.files]
        publish(files, data_dir, folder)
        publish(files, data_dir, second_server.folder)
        with XRootDServer(folder) as first:
            spec = {ds.name: {"files": [[first.url(Path(f.path).relative_to(data_dir)),
                                         second_server.url(Path(f.path).relative_to(data_dir))]
                                        for f in ds.files], "metadata": ds.metadata}
                    for ds in fileset}
            slow = write_slow_processor(tmp_path / "slow.py", 0.3)
            breaker = threading.Timer(1.5, first.stop)
            breaker.start()
            try:
                outcome = run(slow, spec, backend="iterative", chunksize=CHUNKSIZE,
                              metadata_cache=False, xrootd_timeout=1,
                              policy=ErrorPolicy(max_retries=0))
            finally:
                breaker.join()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert_same(outcome.output, local_output)
    read_from = outcome.report["reads"]["read_from"]
    where = [loc for locs in read_from.values()
             for loc in (locs if isinstance(locs, list) else [locs])]
    assert any(f"localhost:{first.port}/" in loc for loc in where), read_from
    assert any(f"localhost:{second_server.port}/" in loc for loc in where), read_from
    failed = outcome.report["reads"]["failed_locations"]
    assert failed and all(f"localhost:{first.port}" in row["location"] for row in failed)
