"""Fixtures that make their own data: small synthetic NanoAOD written once per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from coffea_hpc.data.fileset import Fileset
from coffea_hpc.data.synthetic import SyntheticDataset, generate

EVENTS_PER_FILE = 3_000

SMALL_DATASETS = (
    SyntheticDataset("DYJetsToLL", "dy", 2, {"xsec": 6077.22, "is_mc": True}),
    SyntheticDataset("TTTo2L2Nu", "ttbar", 1, {"xsec": 88.29, "is_mc": True}),
    SyntheticDataset("SingleMuon", "data", 1, {"is_mc": False}),
)


@pytest.fixture(scope="session", autouse=True)
def own_metadata_cache():
    """Runs share no metadata cache with the user's own, nor leave anything in ~/.cache."""
    if "COFFEA_HPC_CACHE_DIR" in os.environ:
        yield
        return
    folder = tempfile.mkdtemp(prefix="coffea-hpc-cache-")
    os.environ["COFFEA_HPC_CACHE_DIR"] = folder
    try:
        yield
    finally:
        os.environ.pop("COFFEA_HPC_CACHE_DIR", None)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def fresh_metadata_cache(own_metadata_cache, tmp_path_factory, monkeypatch):
    """And each test starts from an empty one: what a test counts (files opened, inspection
    tasks sent to an endpoint) must not depend on which tests ran before it."""
    monkeypatch.setenv("COFFEA_HPC_CACHE_DIR", str(tmp_path_factory.mktemp("metadata-cache")))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="session")
def fileset(data_dir: Path) -> Fileset:
    """Three datasets, four files, 12,000 events (LZ4, physics branches only)."""
    return generate(data_dir, events_per_file=EVENTS_PER_FILE, datasets=SMALL_DATASETS,
                    basket_entries=1_000)


@pytest.fixture(scope="session")
def fileset_path(fileset: Fileset, data_dir: Path) -> Path:
    return fileset.save(data_dir / "fileset.json")


@pytest.fixture
def dimuon():
    from coffea_hpc.examples.dimuon import DimuonProcessor

    return DimuonProcessor()


@pytest.fixture(scope="session")
def xrootd_server(fileset: Fileset, data_dir: Path):
    """A real XRootD server on localhost serving a copy of the session's files; skips, saying
    why, where xrootd cannot run."""
    from tests.xrootd_server import XRootDServer, publish, served_folder, xrootd_missing

    reason = xrootd_missing()
    if reason:
        pytest.skip(reason)
    folder = served_folder()
    publish([Path(f.path) for _, f in fileset.files], data_dir, folder)
    server = XRootDServer(folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def remote_fileset(fileset: Fileset, data_dir: Path, xrootd_server) -> Fileset:
    """The session's fileset, every file read over root:// from ``xrootd_server``."""
    mapping = fileset.to_mapping()
    for ds in mapping.values():
        ds["files"] = {xrootd_server.url(Path(p).relative_to(data_dir)): spec
                       for p, spec in ds["files"].items()}
    return Fileset.from_mapping(mapping)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``xrootd`` skips, saying why, where no XRootD server can run (whether
    it uses the shared server or starts its own)."""
    if item.get_closest_marker("xrootd") is not None:
        from tests.xrootd_server import xrootd_missing

        reason = xrootd_missing()
        if reason:
            pytest.skip(reason)
