"""Growth category axes: every merge path gives coffea's accumulate, up to category order.

Processors fill ``StrCategory([], growth=True)`` axes as they meet datasets and systematics,
so partials list different labels, in different orders. hist's ``+`` unions them by label;
the buffer-based merges (spill files, merge tasks, MPI) must do the same.
"""

from __future__ import annotations

import copy
import gc
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import awkward as ak
import hist
import numpy as np
import pytest
from coffea.processor import accumulate, column_accumulator, value_accumulator

from coffea_hpc import output
from coffea_hpc._signing import RunKey
from coffea_hpc.errors import MergeError
from coffea_hpc.reduction import load_spilled, merge_serial, merge_stream, spill
from coffea_hpc.reduction.merge import MergeSpilled
from coffea_hpc.reduction.spill import serialized_size
from tests.reduction.conftest import assert_same_by_label

DATASETS = ["ttbar", "dy", "wjets", "data"]
SYSTEMATICS = ["nominal", "jes_up", "jes_down", "btag_up", "btag_down"]
YEARS = [2016, 2017, 2018]
STORAGES = {"double": hist.storage.Double(), "int64": hist.storage.Int64(),
            "weight": hist.storage.Weight(), "mean": hist.storage.Mean(),
            "weighted_mean": hist.storage.WeightedMean()}
MPIEXEC = Path(sys.executable).with_name("mpiexec")
HAS_MPI = MPIEXEC.exists() or shutil.which("mpiexec") is not None
KEY = RunKey.ephemeral()


def _growth(cls: type, name: str) -> hist.axis.AxesMixin:
    return cls([], growth=True, name=name)


def _fill(h: hist.Hist, rng: np.random.Generator, n: int, **labels: list) -> hist.Hist:
    values = {name: np.asarray(choices)[rng.integers(0, len(choices), n)]
              for name, choices in labels.items()}
    kind = h.storage_type
    weight = rng.normal(1, 0.2, n) if kind in (hist.storage.Double, hist.storage.Weight,
                                               hist.storage.WeightedMean) else None
    sample = rng.normal(50, 10, n) if kind in (hist.storage.Mean,
                                              hist.storage.WeightedMean) else None
    extra = {k: v for k, v in {"weight": weight, "sample": sample}.items() if v is not None}
    return h.fill(**values, pt=rng.exponential(40, n), **extra)


def growth_partial(i: int) -> dict:
    """Labels that differ between partials, overlap in part, come in a random order; keys
    and whole axes some partials lack; every storage; the other types outputs hold."""
    rng = np.random.default_rng(1000 + i)
    datasets = list(rng.permutation(DATASETS)[:1 + i % 3])
    systs = list(rng.permutation(SYSTEMATICS)[:2 + i % 4])
    years = [int(y) for y in rng.permutation(YEARS)[:1 + i % 2]]
    hists = {}
    for name, storage in STORAGES.items():
        h = hist.Hist(_growth(hist.axis.StrCategory, "dataset"),
                      _growth(hist.axis.StrCategory, "systematic"),
                      _growth(hist.axis.IntCategory, "year"),
                      hist.axis.Regular(8, 0, 200, name="pt"), storage=storage)
        hists[name] = _fill(h, rng, 400, dataset=datasets, systematic=systs, year=years)
    # categories after a regular axis, and between two: other memory layouts
    hists["late"] = _fill(hist.Hist(hist.axis.Regular(6, 0, 200, name="pt"),
                                    _growth(hist.axis.StrCategory, "systematic"),
                                    storage=hist.storage.Weight()), rng, 300, systematic=systs)
    hists["middle"] = _fill(hist.Hist(hist.axis.Regular(5, 0, 200, name="pt"),
                                      _growth(hist.axis.IntCategory, "year"),
                                      hist.axis.Regular(3, 0, 3, name="x"),
                                      storage=hist.storage.Int64()),
                            rng, 300, year=years, x=rng.integers(0, 3, 300).tolist())
    never_filled = hist.Hist(_growth(hist.axis.StrCategory, "dataset"),
                             hist.axis.Regular(4, 0, 1, name="pt"), storage=hist.storage.Weight())
    per_dataset = {ds: {"pt": _fill(hist.Hist(_growth(hist.axis.StrCategory, "systematic"),
                                              hist.axis.Regular(10, 0, 200, name="pt"),
                                              storage=hist.storage.Weight()),
                                    rng, 200, systematic=systs),
                        "cutflow": defaultdict(int, {"all": 100 + i, f"cut{i % 3}": i})}
                   for ds in datasets}
    return {"hists": hists, "per_dataset": per_dataset, "empty": never_filled,
            "runs": {f"run{i}", f"run{i % 2}"}, "sumw": float(rng.random()), "n": i,
            "array": np.arange(6, dtype=np.float64) * i, "counts": np.arange(4) * i,
            "columns": column_accumulator(rng.random(5 + i)),
            "total_weight": value_accumulator(float, float(rng.random()))}


N_PARTIALS = 6


@pytest.fixture(scope="module")
def partials() -> list[dict]:
    """Growth partials, and an empty one (a chunk that selected nothing)."""
    values = [growth_partial(i) for i in range(N_PARTIALS)]
    return [*values[:3], {}, *values[3:]]


@pytest.fixture(scope="module")
def expected(partials) -> dict:
    return accumulate(copy.deepcopy(partials))


def test_the_partials_disagree_on_categories(partials):
    orders = {tuple(p["hists"]["weight"].axes["systematic"]) for p in partials if p}
    assert len(orders) == N_PARTIALS
    assert len({frozenset(order) for order in orders}) > 1


def test_in_memory(partials, expected):
    assert_same_by_label(merge_serial(partials), expected)


def test_spill_files(partials, expected, tmp_path):
    refs = [spill(p, tmp_path, KEY) for p in partials]
    for ref, value in zip(refs, partials, strict=True):
        assert_same_by_label(load_spilled(ref, KEY), value)
    assert_same_by_label(merge_stream(refs, KEY), expected)
    assert_same_by_label(merge_stream(refs[::-1], KEY), expected)


def test_spill_files_read_in_many_pieces(monkeypatch, partials, expected, tmp_path):
    from coffea_hpc.reduction import _spillfile

    monkeypatch.setattr(_spillfile, "_PIECE", 40)  # a buffer spans pieces, cut unevenly
    assert_same_by_label(merge_stream([spill(p, tmp_path, KEY) for p in partials], KEY), expected)


def test_merge_tasks(partials, expected, tmp_path):
    refs = [spill(p, tmp_path / "spill", KEY) for p in partials]
    halves = [MergeSpilled(tuple(refs[:4]), str(tmp_path / "spill"), KEY)(),
              MergeSpilled(tuple(refs[4:]), str(tmp_path / "spill"), KEY)()]
    assert_same_by_label(merge_stream([r.value for r in halves], KEY), expected)


@pytest.mark.mpi
@pytest.mark.skipif(not HAS_MPI, reason="no mpiexec (pip install 'coffea-hpc[mpi]')")
@pytest.mark.parametrize(("ranks", "suffix"), [(2, ".coffea"), (4, ".cspill"), (4, ".coffea")])
def test_mpi(partials, expected, tmp_path, ranks, suffix):
    from coffea_hpc.reduction.mpi_job import run_mpi_merge
    from coffea_hpc.reduction.spill import save_spilled

    for i, value in enumerate(partials):
        path = tmp_path / "in" / f"p{i}{suffix}"
        path.parent.mkdir(exist_ok=True)
        if suffix == ".cspill":
            save_spilled(value, path, KEY)
        else:
            output.save(value, path)
    out = tmp_path / "merged.coffea"
    stats = run_mpi_merge([tmp_path / "in"], out, ranks=ranks, key=KEY,
                          trust_coffea_files=suffix == ".coffea", timeout=120)
    assert stats.ranks == ranks
    assert_same_by_label(output.load(out), expected)


@pytest.mark.mpi
@pytest.mark.skipif(not HAS_MPI, reason="no mpiexec (pip install 'coffea-hpc[mpi]')")
def test_cli_under_mpiexec(partials, tmp_path):
    """``mpiexec -n 2 coffea-hpc merge P1 P2 -o OUT --mpi`` on partials saved by coffea."""
    from coffea.util import load, save

    paths = [tmp_path / "p1.coffea", tmp_path / "p2.coffea"]
    for path, value in zip(paths, partials[1:3], strict=True):
        save(value, str(path))
    out = tmp_path / "merged.coffea"
    cli = Path(sys.executable).with_name("coffea-hpc")
    proc = subprocess.run([str(MPIEXEC if MPIEXEC.exists() else "mpiexec"), "-n", "2", str(cli),
                           "merge", *map(str, paths), "-o", str(out), "--mpi",
                           "--trust-coffea-files"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert_same_by_label(load(str(out)), accumulate(copy.deepcopy(partials[1:3])))


@pytest.mark.parametrize("merge", ["memory", "spill"])
def test_other_axis_differences_are_one_line_naming_the_place(tmp_path, merge):
    def value(bins: int) -> dict:
        h = hist.Hist(_growth(hist.axis.StrCategory, "dataset"),
                      hist.axis.Regular(bins, 0, 1, name="x"), storage=hist.storage.Weight())
        return {"ttbar": {"mass": h.fill(dataset=["a"], x=[0.5])}}

    values = [value(4), value(5)]
    with pytest.raises(MergeError) as err:
        if merge == "memory":
            merge_serial(values)
        else:
            merge_stream([spill(v, tmp_path, KEY) for v in values], KEY)
    assert "\n" not in str(err.value)
    if merge == "spill":
        assert str(err.value) == ("output['ttbar']['mass']: histograms with different axes "
                                  "cannot be merged")


def test_growth_is_not_assumed_for_fixed_categories(tmp_path):
    """Fixed category axes with other labels are different binnings, as hist says."""
    values = [{"h": hist.Hist(hist.axis.StrCategory(labels, name="c"), storage="weight")}
              for labels in (["a", "b"], ["b", "a"])]
    with pytest.raises(MergeError, match=r"output\['h'\]: histograms with different axes"):
        merge_stream([spill(v, tmp_path, KEY) for v in values], KEY)


def test_spill_sizes_count_what_is_not_a_histogram():
    ids = {f"run1:lumi{i // 100}:event{i * 7919}" for i in range(200_000)}
    size = sum(len(s) for s in ids)
    assert size <= serialized_size(ids) <= 2 * size + 64 * len(ids)
    column = column_accumulator(np.arange(1_000_000, dtype=np.float64))
    assert 8e6 <= serialized_size({"c": column}) <= 8.1e6
    jagged = ak.Array([[1.0, 2.0, 3.0], [], [4.0]] * 100_000)
    assert jagged.nbytes <= serialized_size([jagged]) <= jagged.nbytes + 1024
    assert serialized_size(value_accumulator(list, ["x" * 1000] * 100)) >= 100_000
    assert serialized_size(b"x" * 10**6) >= 10**6
    mean = hist.Hist(hist.axis.Regular(1000, 0, 1), storage=hist.storage.Mean())
    assert serialized_size({"a": {"b": mean}}) >= mean.view(flow=True).nbytes


def test_spill_size_stays_cheap():
    """Called after every chunk: a million event IDs must not cost a pass over them."""
    value = {"ids": {f"run1:lumi{i // 100}:event{i * 7919}" for i in range(1_000_000)},
             "runs": list(range(1_000_000))}
    gc.collect()  # a collection of the million strings is not the function's cost
    times = []
    for _ in range(3):
        start = time.perf_counter()
        serialized_size(value)
        times.append(time.perf_counter() - start)
    assert min(times) < 0.02


def test_growth_keeps_the_flow_bin_of_an_empty_fixed_axis(tmp_path):
    """A fixed category axis with no label still has its overflow bin, which holds entries:
    growing the other axis must carry them over."""
    def value(labels: list[str]) -> dict:
        h = hist.Hist(hist.axis.StrCategory([], name="fixed"),
                      _growth(hist.axis.StrCategory, "systematic"), storage=hist.storage.Weight())
        return {"h": h.fill(fixed=["x"] * len(labels), systematic=labels,
                            weight=np.arange(1.0, len(labels) + 1))}

    values = [value(["nominal"]), value(["up", "nominal"])]
    merged = merge_stream([spill(v, tmp_path, KEY) for v in values], KEY)
    assert_same_by_label(merged, accumulate(copy.deepcopy(values)))
    assert merged["h"].sum(flow=True).value == 1 + 1 + 2
