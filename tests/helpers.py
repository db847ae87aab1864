"""What the tests share: what "the same result" means across backends, a progress
reporter that remembers what it was shown, and a processor slow enough to be stopped.

Counts (integer storages, counters, sets) must be bit-identical; floating-point sums may differ
only by summation order, so they are compared with a tight relative tolerance. The order of a
growth category axis's labels depends on which chunk came first (in coffea's Runner too), so
histograms are compared label by label; so are column accumulators, whose order is the merge
order.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Set
from typing import Any

import hist
import numpy as np

FLOAT_RTOL = 1e-12

_CATEGORIES = (hist.axis.StrCategory, hist.axis.IntCategory)


def assert_same(a: Any, b: Any, path: str = "output") -> None:
    """Recursively compare two processor outputs."""
    if isinstance(a, Mapping):
        assert isinstance(b, Mapping), f"{path}: {type(b).__name__} is not a mapping"
        assert set(a) == set(b), f"{path}: keys differ: {sorted(set(a) ^ set(b))}"
        for key in a:
            assert_same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, hist.Hist):
        assert isinstance(b, hist.Hist), f"{path}: {type(b).__name__} is not a Hist"
        _assert_same_hist(a, b, path)
    elif isinstance(a, Set):
        assert a == b, f"{path}: sets differ"
    elif isinstance(a, float | np.floating):
        assert b == a or abs(b - a) <= FLOAT_RTOL * max(abs(a), abs(b)), f"{path}: {a} != {b}"
    elif isinstance(a, np.ndarray):
        np.testing.assert_allclose(a, b, rtol=FLOAT_RTOL, err_msg=path)
    elif type(a).__name__ == "column_accumulator":
        assert type(b).__name__ == "column_accumulator", f"{path}: {type(b).__name__}"
        np.testing.assert_array_equal(np.sort(a.value, axis=0), np.sort(b.value, axis=0),
                                      err_msg=path)
    elif type(a).__name__ == "value_accumulator":
        assert type(b).__name__ == "value_accumulator", f"{path}: {type(b).__name__}"
        assert_same(a.value, b.value, f"{path}.value")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _assert_same_hist(a: hist.Hist, b: hist.Hist, path: str) -> None:
    assert len(a.axes) == len(b.axes), f"{path}: {len(a.axes)} axes != {len(b.axes)}"
    assert type(a.storage_type()) is type(b.storage_type()), f"{path}: storages differ"
    categories = []
    for i, (x, y) in enumerate(zip(a.axes, b.axes, strict=True)):
        if isinstance(x, _CATEGORIES):
            assert type(x) is type(y) and x.name == y.name, f"{path}: axis {i} differs"
            assert set(x) == set(y), f"{path}: categories of {x.name!r} differ: " \
                                     f"{sorted(set(x) ^ set(y), key=str)}"
            categories.append((i, list(x)))
        else:
            assert x == y, f"{path}: axis {i} differs"
    for labels in itertools.product(*(values for _, values in categories)):
        where = {i: hist.loc(label) for (i, _), label in zip(categories, labels, strict=True)}
        _assert_same_view(_values(a[where] if where else a), _values(b[where] if where else b),
                          f"{path}{list(labels) if labels else ''}")


def _values(selected: Any) -> np.ndarray:
    """Bin contents as an array; selecting every axis of a histogram gives one bin's
    accumulator (an int, a float, a WeightedSum, a Mean...)."""
    if isinstance(selected, hist.Hist):
        return np.asarray(selected.view(flow=True))
    fields = [f for f in ("value", "variance", "count", "sum_of_weights",
                          "sum_of_weights_squared") if hasattr(selected, f)]
    if not fields:
        return np.asarray(selected)
    return np.array([tuple(getattr(selected, f) for f in fields)],
                    dtype=[(f, np.float64) for f in fields])


def _assert_same_view(va: np.ndarray, vb: np.ndarray, path: str) -> None:
    if va.dtype.names:  # weighted and mean storages: sums of floats
        for field in va.dtype.names:
            np.testing.assert_allclose(va[field], vb[field], rtol=FLOAT_RTOL,
                                       err_msg=f"{path}.{field}")
    elif np.issubdtype(va.dtype, np.integer):
        np.testing.assert_array_equal(va, vb, err_msg=path)
    else:
        np.testing.assert_allclose(va, vb, rtol=FLOAT_RTOL, err_msg=path)


class RecordingReporter:
    """A progress reporter that keeps the worker and block counts it was shown, per stage."""

    def __init__(self) -> None:
        self.workers: dict[str, list[int | None]] = {}
        self.blocks: dict[str, list[tuple[int, int] | None]] = {}
        self._label = ""

    def start(self, label: str, total: int, unit: str) -> None:
        self._label = label
        self.workers[label] = []
        self.blocks[label] = []

    def update(self, progress: Any) -> None:
        self.workers[self._label].append(progress.workers)
        self.blocks[self._label].append(progress.blocks)

    finish = update


def write_slow_processor(path: Any, seconds_per_chunk: float) -> str:
    """Write a processor file whose chunks take at least ``seconds_per_chunk``, for tests
    that stop a run halfway; returns its ``'file.py:Slow'`` name."""
    path.write_text(
        "import time\n"
        "from coffea_hpc.examples.dimuon import DimuonProcessor\n\n"
        "class Slow(DimuonProcessor):\n"
        "    def process(self, events):\n"
        f"        time.sleep({seconds_per_chunk})\n"
        "        return super().process(events)\n")
    return f"{path}:Slow"


def processes_mentioning(*words: str) -> list[Any]:
    """Running processes whose command line contains every one of ``words`` (a run's
    output directory, ``process_worker_pool``, ...): what a stopped run must not leave."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if all(word in line for word in words):
            found.append(proc)
    return found


def still_running(procs: list[Any], timeout: float) -> list[Any]:
    """Of ``procs``, those still running after up to ``timeout`` seconds. A zombie has
    ended: an orphan's last parent is init, which reaps it in its own time (slowly in some
    containers)."""
    import psutil

    def running(proc: Any) -> bool:
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout
    left = [p for p in procs if running(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if running(p)]
    return left


def damage_basket(path: Any, branch: str = "Muon_pt", basket: int = 1) -> tuple[int, int]:
    """Zero one basket of ``branch`` in place (as storage that lost a block returns it),
    leaving the file's directory and the tree's metadata intact: the file opens and
    preprocesses, and fails only when a chunk reads that basket. Returns the basket's entry
    range."""
    import uproot

    with uproot.open(path) as file:
        found = file["Events"][branch]
        seek = int(found.member("fBasketSeek")[basket])
        size = int(found.member("fBasketBytes")[basket])
        entries = found.basket_entry_start_stop(basket)
    with open(path, "r+b") as raw:
        raw.seek(seek)
        raw.write(bytes(size))
    return int(entries[0]), int(entries[1])


def without_branches(source: Any, target: Any, suffix: str) -> None:
    """Copy a NanoAOD file without the branches whose names end in ``suffix``, as a skim
    that drops them does (``Idx``: the cross-references the NanoAOD schema looks for)."""
    import awkward as ak
    import uproot

    with uproot.open(source) as file:
        tree = file["Events"]
        names = list(tree.keys())
        arrays = tree.arrays(names)
    collections = {n[1:] for n in names
                   if n.startswith("n") and any(m.startswith(f"{n[1:]}_") for m in names)}
    columns: dict[str, Any] = {
        c: ak.zip({m.split("_", 1)[1]: arrays[m] for m in names
                   if m.startswith(f"{c}_") and not m.endswith(suffix)})
        for c in sorted(collections)}
    for name in names:
        if name.split("_", 1)[0] not in collections and name[1:] not in collections:
            columns[name] = arrays[name]
    with uproot.recreate(target) as out:
        out.mktree("Events", {k: v.layout.form.type for k, v in columns.items()})
        out["Events"].extend(columns)
