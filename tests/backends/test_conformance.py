"""Every backend keeps the same contract and gives the same histograms.

One suite, parametrised over the real backends (a thread, a process pool, a Parsl
HighThroughputExecutor on loopback, a Dask LocalCluster): results must agree with each other,
with every chunking, and with a direct count over the files.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import awkward as ak
import psutil
import pytest
import uproot

from coffea_hpc.backends import ErrorPolicy, TaskStatus, make_backend
from coffea_hpc.backends.protocol import Backend, Task
from coffea_hpc.data.chunks import chunks_of
from coffea_hpc.errors import BackendError, ChunkFailedError
from coffea_hpc.examples.dimuon import DimuonProcessor
from coffea_hpc.processing.preprocess import preprocess
from coffea_hpc.processing.processor import ProcessorHandle
from coffea_hpc.processing.workload import Workload
from tests.helpers import assert_same

BACKENDS = ["iterative", "futures", "parsl", "dask"]


class FlakyProcessor(DimuonProcessor):
    """Fails the first attempt at chosen chunks (remembered through marker files), so a
    retry, or a second computation of the remaining work, succeeds."""

    def __init__(self, fail_starts: set[int], marker_dir: Path, how: str = "raise"):
        self.fail_starts = fail_starts
        self.marker_dir = str(marker_dir)
        self.how = how

    def process(self, events):
        meta = events.metadata
        if meta["entrystart"] in self.fail_starts:
            marker = Path(self.marker_dir) / f"{Path(meta['filename']).stem}-{meta['dataset']}-" \
                                               f"{meta['entrystart']}"
            if not marker.exists():
                marker.touch()
                if self.how == "exit":
                    os._exit(3)  # the worker process dies, as with an OOM kill
                raise RuntimeError(f"injected failure at {meta['entrystart']}")
        return super().process(events)


class AlwaysFails(DimuonProcessor):
    def process(self, events):
        if events.metadata["entrystart"] == 0 and events.metadata["dataset"] == "TTTo2L2Nu":
            raise ValueError("broken analysis code")
        return super().process(events)


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    options = {"run_dir": tmp_path_factory.mktemp("parsl")} if request.param == "parsl" else {}
    with make_backend(request.param, workers=2, **options) as b:
        yield b


@pytest.fixture(scope="module")
def reference(fileset):
    """The iterative backend's result at one chunk size: what every other run must equal."""
    with make_backend("iterative") as b:
        prepared = preprocess(fileset, b, chunksize=1_000).fileset
        return _compute(b, DimuonProcessor(), prepared).result()


def _compute(backend: Backend, processor, prepared, policy=None, **kw) -> Task:
    work = Workload(ProcessorHandle.wrap(processor), chunks_of(prepared), **kw)
    return backend.compute(work, policy)


@pytest.mark.parametrize(("chunksize", "per_task"), [(1_000, 1), (700, 3), (5_000, 1)])
def test_same_histograms_on_every_backend_and_chunking(backend, fileset, reference, chunksize,
                                                       per_task):
    prepared = preprocess(fileset, backend, chunksize=chunksize).fileset
    result = _compute(backend, DimuonProcessor(), prepared, chunks_per_task=per_task).result()
    assert_same(result.value, reference.value)
    assert result.processed == reference.processed
    assert result.processed.n_entries == prepared.n_entries
    assert not result.failures


def test_totals_equal_a_direct_uproot_count(reference, fileset):
    """The cut flow agrees with the same selection done by hand on the raw branches."""
    for ds in fileset:
        all_events = two_muons = 0
        for f in ds.files:
            arrays = uproot.open(f.path)["Events"].arrays(
                ["Muon_pt", "Muon_eta", "Muon_tightId"])
            good = (arrays.Muon_pt > 10) & (abs(arrays.Muon_eta) < 2.4) & arrays.Muon_tightId
            all_events += len(arrays)
            two_muons += int(ak.sum(ak.sum(good, axis=1) >= 2))
        flow = reference.value["cutflow"][ds.name]
        assert flow["all"] == all_events
        assert flow["two muons"] == two_muons
        counts = reference.value["mass_counts"][{"dataset": ds.name}]
        assert counts.sum(flow=True) == flow["opposite sign"]


def test_partial_result_plus_remaining_equals_full(backend, fileset, reference, tmp_path):
    prepared = preprocess(fileset, backend, chunksize=1_000).fileset
    flaky = FlakyProcessor({1_000, 2_000}, tmp_path)
    policy = ErrorPolicy(max_retries=0, continue_on=(RuntimeError,))
    task = _compute(backend, flaky, prepared, policy)
    assert task.wait(timeout=120)
    assert task.status() is TaskStatus.COMPLETE
    partial, remaining = task.partial_result()
    n_failed = len(task.result().failures)
    assert n_failed == 2 * 4  # two starts in each of the four files
    assert len(remaining) == n_failed
    assert partial.processed.n_entries + remaining.n_entries == prepared.n_entries
    rest = backend.compute(remaining).result()
    assert_same((partial + rest).value, reference.value)
    assert (partial + rest).processed == reference.processed


def test_retries_recover_from_transient_failures(backend, fileset, reference, tmp_path):
    prepared = preprocess(fileset, backend, chunksize=1_000).fileset
    # the processor raised: its own budget is spent, not the one for reads and dead workers
    task = _compute(backend, FlakyProcessor({0}, tmp_path), prepared,
                    ErrorPolicy(max_retries=0, processor_retries=1))
    result = task.result()
    assert task.progress().retries == 4
    assert not result.failures
    assert_same(result.value, reference.value)


def test_a_failure_that_persists_stops_and_keeps_the_partial(backend, fileset, reference):
    prepared = preprocess(fileset, backend, chunksize=1_000).fileset
    task = _compute(backend, AlwaysFails(), prepared, ErrorPolicy(max_retries=1))
    with pytest.raises(ChunkFailedError, match="broken analysis code") as info:
        task.result()
    assert "TTTo2L2Nu/nano_0.root:Events[0:1000]" in str(info.value)
    assert task.status() is TaskStatus.FAILED
    partial, remaining = info.value.partial, info.value.remaining
    assert partial.processed.n_entries + remaining.n_entries == prepared.n_entries
    fixed = Workload(ProcessorHandle.wrap(DimuonProcessor()), remaining.chunks)
    finished = backend.compute(fixed).result()
    assert_same((partial + finished).value, reference.value)


def test_a_dead_worker_is_replaced_and_its_chunk_retried(backend, fileset, reference, tmp_path):
    if backend.name == "iterative":
        pytest.skip("the iterative backend runs in the test process itself")
    prepared = preprocess(fileset, backend, chunksize=1_000).fileset
    task = _compute(backend, FlakyProcessor({2_000}, tmp_path, how="exit"), prepared,
                    ErrorPolicy(max_retries=2))
    result = task.result()
    assert not result.failures
    assert_same(result.value, reference.value)


def test_compute_outside_a_with_block_is_refused():
    backend = make_backend("iterative")
    with pytest.raises(BackendError, match="with"):
        backend.compute(Workload(ProcessorHandle.wrap(DimuonProcessor()), []))


@pytest.mark.parametrize("name", ["futures", "parsl", "dask"])
def test_backends_leave_no_process_behind(name, tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    options = {"run_dir": tmp_path} if name == "parsl" else {}
    with pytest.raises(RuntimeError, match="boom"), make_backend(name, workers=1, **options):
        raise RuntimeError("boom")
    leftovers = [
        p for p in psutil.Process().children(recursive=True)
        if p.pid not in before and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    ]
    for p in leftovers:  # give slow exits a moment before calling them leaks
        with contextlib.suppress(psutil.TimeoutExpired):
            p.wait(timeout=10)
    alive = [p for p in leftovers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
             and not _stdlib_singleton(p)]
    assert not alive, [p.cmdline() for p in alive]


def _stdlib_singleton(process: psutil.Process) -> bool:
    """multiprocessing's resource tracker and forkserver: one per interpreter, started on
    first use and kept until it exits; they run no work."""
    command = " ".join(process.cmdline())
    return "multiprocessing.resource_tracker" in command or "multiprocessing.forkserver" in \
        command
