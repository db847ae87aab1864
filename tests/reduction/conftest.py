"""Partials to merge: real processor outputs plus big weighted histograms."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import hist
import numpy as np
import pytest

from coffea_hpc import output
from coffea_hpc.backends import make_backend
from coffea_hpc.data.chunks import chunks_of
from coffea_hpc.examples.dimuon import DimuonProcessor
from coffea_hpc.processing.preprocess import preprocess
from coffea_hpc.processing.processor import ProcessorHandle
from coffea_hpc.processing.worker import process_chunks


def synthetic_partial(i: int) -> dict:
    """A partial with the shapes large analyses have: a weighted histogram with many bins
    and systematic variations, nested per dataset, counters, a set and an array."""
    rng = np.random.default_rng(i)
    h = (hist.Hist.new.Reg(400, 0, 200, name="pt")
         .StrCat([f"sys{k}" for k in range(12)], name="syst")
         .Reg(5, -2.5, 2.5, name="eta").Weight())
    n = 4_000
    h.fill(pt=rng.exponential(40, n), syst=rng.choice([f"sys{k}" for k in range(12)], n),
           eta=rng.uniform(-2.5, 2.5, n), weight=rng.normal(1, 0.1, n))
    counts = hist.Hist.new.Integer(0, 20, name="njet").Int64().fill(rng.poisson(4, 500))
    double = hist.Hist.new.Reg(30, 0, 3, name="x").Double().fill(rng.random(300))
    return {
        f"dataset{i % 3}": {"pt": h, "njet": counts, "x": double,
                            "cutflow": defaultdict(int, {"all": 100 + i, f"cut{i % 2}": i})},
        "sumw_total": float(rng.random()),
        "runs": {i, i + 100},
        "array": np.arange(6, dtype=np.float64) * i,
    }


@pytest.fixture(scope="session")
def processor_partials(fileset) -> list:
    with make_backend("iterative") as b:
        prepared = preprocess(fileset, b, chunksize=1_000).fileset
    handle = ProcessorHandle.wrap(DimuonProcessor())
    return [process_chunks(handle, [c], "nanoaod").value for c in chunks_of(prepared)]


@pytest.fixture(scope="session")
def partial_files(tmp_path_factory, processor_partials) -> list[Path]:
    folder = tmp_path_factory.mktemp("partials")
    values = [synthetic_partial(i) for i in range(9)] + processor_partials
    paths = []
    for i, value in enumerate(values):
        paths.append(output.save(value, folder / f"p{i:03d}.coffea"))
    return paths
