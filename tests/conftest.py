"""Fixtures that make their own data: small synthetic NanoAOD written once per session."""

from __future__ import annotations

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
