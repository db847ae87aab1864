"""Partials to merge: real processor outputs plus big weighted histograms."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
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


FLOAT_RTOL = 1e-12
COUNT_FIELDS = {"count"}  # mean storages: entries, integral however they were summed


def assert_same_by_label(a, b, path: str = "output") -> None:
    """Compare two outputs as coffea's accumulate defines them, up to merge order.

    Growth category axes list their labels in the order the merge met them, so categories
    are compared as sets and bins label by label; a ``column_accumulator`` concatenates in
    merge order, so its rows are compared sorted. Integer counts must be bit-identical,
    floats equal within ``FLOAT_RTOL`` (sums in another order).
    """
    from coffea.processor import column_accumulator, value_accumulator

    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, Mapping):
        assert set(a) == set(b), f"{path}: keys differ: {set(a) ^ set(b)}"
        for key in a:
            assert_same_by_label(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, hist.Hist):
        _assert_same_hist(a, b, path)
    elif isinstance(a, column_accumulator):
        _assert_close(np.sort(a.value, axis=0), np.sort(b.value, axis=0), path)
    elif isinstance(a, value_accumulator):
        assert_same_by_label(a.value, b.value, f"{path}.value")
    elif isinstance(a, np.ndarray | float):
        _assert_close(np.asarray(a), np.asarray(b), path)
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _assert_same_hist(a: hist.Hist, b: hist.Hist, path: str) -> None:
    assert a.storage_type is b.storage_type, f"{path}: storages differ"
    assert (a.variances() is None) == (b.variances() is None), \
        f"{path}: variances known in one only (hist's + makes a Double's unknown)"
    assert len(a.axes) == len(b.axes), f"{path}: dimensions differ"
    order = []  # for each axis of a: the matching bins of b
    for mine, theirs in zip(a.axes, b.axes, strict=True):
        assert type(mine) is type(theirs) and mine.name == theirs.name, f"{path}: axes differ"
        if isinstance(mine, hist.axis.StrCategory | hist.axis.IntCategory):
            assert set(mine) == set(theirs), \
                f"{path}: {mine.name} categories differ: {set(mine) ^ set(theirs)}"
            where = {label: i for i, label in enumerate(theirs)}
            index = [where[label] for label in mine] + [theirs.size] * mine.traits.overflow
        else:
            assert mine == theirs, f"{path}: axis {mine.name!r} differs"
            index = list(range(mine.extent))
        order.append(np.asarray(index, dtype=np.intp))
    va = np.asarray(a.view(flow=True))
    vb = np.asarray(b.view(flow=True))[np.ix_(*order)]
    for field in va.dtype.names or (None,):
        x, y = (va, vb) if field is None else (va[field], vb[field])
        where = f"{path}.{field}" if field else path
        if field in COUNT_FIELDS:
            np.testing.assert_array_equal(x, y, err_msg=where)
        else:
            _assert_close(x, y, where)


def _assert_close(x: np.ndarray, y: np.ndarray, path: str) -> None:
    assert x.shape == y.shape and x.dtype == y.dtype, f"{path}: {x.shape} {x.dtype} != " \
        f"{y.shape} {y.dtype}"
    if np.issubdtype(x.dtype, np.floating):
        np.testing.assert_allclose(x, y, rtol=FLOAT_RTOL, atol=0, err_msg=path)
    else:
        np.testing.assert_array_equal(x, y, err_msg=path)
