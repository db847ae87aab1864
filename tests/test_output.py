"""Output files: coffea's format both ways, written atomically, in private directories."""

from __future__ import annotations

import stat
from collections import defaultdict

import coffea.util
import hist
import numpy as np
import pytest

from coffea_hpc import output
from tests.helpers import assert_same


@pytest.fixture
def value():
    h = hist.Hist.new.Reg(30, 0, 300, name="mass").Weight()
    h.fill(mass=np.random.default_rng(1).uniform(0, 300, 1_000),
           weight=np.random.default_rng(2).normal(1, 0.1, 1_000))
    counts = defaultdict(int, {"all": 1_000, "selected": 412})
    return {"DYJetsToLL": {"mass": h, "cutflow": counts, "files": {"a.root", "b.root"}}}


def test_coffea_reads_what_coffea_hpc_writes(value, tmp_path):
    path = output.save(value, tmp_path / "output.coffea")
    assert_same(coffea.util.load(str(path)), value)


def test_coffea_hpc_reads_what_coffea_writes(value, tmp_path):
    path = tmp_path / "theirs.coffea"
    coffea.util.save(value, str(path))
    assert_same(output.load(path), value)


def test_a_failed_save_leaves_no_file_behind(tmp_path):
    target = tmp_path / "output.coffea"
    with pytest.raises(TypeError):
        output.save({"unpicklable": (x for x in range(3))}, target)
    assert list(tmp_path.iterdir()) == []


def test_run_directories_are_private(tmp_path):
    path = output.private_dir(tmp_path / "runs" / "mine")
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
