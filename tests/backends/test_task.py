"""How a task feeds a backend, counted exactly with stand-in backends that run elements in
this process: chunks lost with their block run again at no retry cost, up to a cap, and
past it spend retries like any failure (real blocks ending are tested on the local Slurm
cluster, tests/sites/test_slurm.py); work in flight stays within the backend's window, and
elements are made as the window asks for them."""

from __future__ import annotations

import collections
from concurrent.futures import Future

import pytest

from coffea_hpc.backends import ErrorPolicy
from coffea_hpc.backends._task import FREE_RESUBMISSIONS
from coffea_hpc.backends.iterative import IterativeBackend
from coffea_hpc.backends.protocol import WorkElement
from coffea_hpc.data.chunks import chunks_of
from coffea_hpc.errors import ChunkFailedError
from coffea_hpc.examples.dimuon import DimuonProcessor
from coffea_hpc.processing.preprocess import preprocess
from coffea_hpc.processing.processor import ProcessorHandle
from coffea_hpc.processing.workload import Workload
from tests.helpers import assert_same


class BlockEnded(RuntimeError):
    """What a backend with batch blocks raises for an element whose block ended."""


class EndingBlocks(IterativeBackend):
    """Runs elements here, except that the element holding the chunk starting at ``entry``
    of ``filename`` is lost with its block the first ``losses`` times it is submitted."""

    def __init__(self, filename: str, entry: int, losses: int) -> None:
        super().__init__()
        self.target = (filename, entry)
        self.losses = losses
        self.submitted: collections.Counter[tuple[str, int]] = collections.Counter()

    @property
    def lost_on(self) -> tuple[type[BaseException], ...]:
        return (BlockEnded,)

    def submit(self, element: WorkElement) -> Future:
        starts = {(key[1], key[3]) for key in element.keys}
        self.submitted.update(starts)
        if self.target in starts and self.submitted[self.target] <= self.losses:
            lost: Future = Future()
            lost.set_exception(BlockEnded("the block's walltime ended"))
            return lost
        return super().submit(element)


@pytest.fixture(scope="module")
def prepared(fileset):
    with IterativeBackend() as backend:
        return preprocess(fileset, backend, chunksize=1_000).fileset


def _run(backend: EndingBlocks, prepared, policy: ErrorPolicy):
    work = Workload(ProcessorHandle.wrap(DimuonProcessor()), chunks_of(prepared))
    return backend.compute(work, policy)


def test_chunks_lost_with_their_block_rerun_without_spending_retries(prepared):
    first = prepared.files[0][1].path
    with IterativeBackend() as plain:
        reference = _run(plain, prepared, ErrorPolicy(max_retries=0)).result()
    with EndingBlocks(first, 1_000, losses=FREE_RESUBMISSIONS) as backend:
        task = _run(backend, prepared, ErrorPolicy(max_retries=0))
        result = task.result()
    assert not result.failures and task.progress().retries == 0
    assert result.metrics["lost_to_ended_blocks"] == FREE_RESUBMISSIONS
    assert backend.submitted[(first, 1_000)] == FREE_RESUBMISSIONS + 1
    assert_same(result.value, reference.value)
    assert result.processed == reference.processed


@pytest.mark.parametrize("retries", [0, 2])
def test_past_the_cap_a_lost_chunk_spends_retries_then_fails_as_a_worker_failure(prepared,
                                                                                retries):
    """A node that kills whatever runs on it must not loop forever."""
    first = prepared.files[0][1].path
    with EndingBlocks(first, 1_000, losses=10**6) as backend:
        task = _run(backend, prepared, ErrorPolicy(max_retries=retries, processor_retries=5))
        with pytest.raises(ChunkFailedError, match="walltime ended") as info:
            task.result()
    assert backend.submitted[(first, 1_000)] == FREE_RESUBMISSIONS + 1 + retries
    assert info.value.failure.kind == "worker"
    assert info.value.failure.attempts == retries + 1


class Counting(IterativeBackend):
    """Counts the elements in flight at each submission, and how many the work had made."""

    def __init__(self, made: list[int]) -> None:
        super().__init__()
        self.made = made
        self.in_flight: list[int] = []
        self.ahead: list[int] = []
        self._futures: list[Future] = []

    def submit(self, element: WorkElement) -> Future:
        self._futures = [f for f in self._futures if not f.done()]
        future = super().submit(element)
        self._futures.append(future)
        self.in_flight.append(len(self._futures))
        self.ahead.append(self.made[0] - len(self.in_flight))
        return future


class CountedWorkload(Workload):
    def __init__(self, *args, made: list[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._made = made

    def _element(self, batch):
        self._made[0] += 1
        return super()._element(batch)


def test_in_flight_work_stays_within_the_window_and_elements_are_made_as_it_asks(fileset):
    """A run of a million chunks must never hold a million elements, nor submit them all
    to the backend at once."""
    made = [0]
    with Counting(made) as backend:
        chunks = chunks_of(preprocess(fileset, backend, chunksize=100).fileset)
        backend.in_flight, backend.ahead = [], []  # the chunks' submissions only
        work = CountedWorkload(ProcessorHandle.wrap(DimuonProcessor()), chunks, made=made)
        result = backend.compute(work, ErrorPolicy()).result()
    assert len(backend.in_flight) == len(chunks) == result.metrics["chunks"]
    assert max(backend.in_flight) <= backend.window
    assert max(backend.ahead) <= 1  # made, not yet submitted: the one the queue peeked at


def test_the_done_set_answers_as_a_set_would():
    from coffea_hpc.backends._task import _KeySet

    done, truth = _KeySet(), set()
    keys = [("ds", f"f{i % 3}", "Events", 10 * i, 10 * i + 10) for i in range(12)]
    keys += [("ds", "f0", "Events", 0, 5),  # another range from a start already done
             ("ds", "f1", "Events", 10, 20),  # a start done in another file
             "not-a-chunk", ("short", 1)]
    for key in keys + keys[:4]:  # the first ones twice
        assert done.add(key) is (key not in truth)
        truth.add(key)
        assert len(done) == len(truth)
    probes = [*keys, ("ds", "f0", "Events", 0, 11), ("ds", "f9", "Events", 0, 10),
              ("ds", "f0", "Friends", 0, 10), "other", ("short", 2)]
    assert [p in done for p in probes] == [p in truth for p in probes]
    done.clear()
    assert len(done) == 0 and not any(p in done for p in probes)


class AtOnce(IterativeBackend):
    """Elements complete as they are submitted, with what a worker would send: results
    arrive as fast as the driver takes them in, as from a large pool."""

    def submit(self, element: WorkElement) -> Future:
        from coffea_hpc.data.ranges import EntryRanges
        from coffea_hpc.processing.result import Result

        ranges = EntryRanges()
        for chunk in element.chunks:
            ranges.update(EntryRanges.of((chunk.dataset, chunk.filename, chunk.treename),
                                         chunk.entrystart, chunk.entrystop))
        done: Future = Future()
        done.set_result(Result(value={"n": len(element.chunks)}, processed=ranges))
        return done


def test_results_arriving_without_pause_still_let_progress_and_checkpoints_through(prepared):
    """A driver taking in results as fast as they come must still come up for air: the
    progress display and the checkpoints run between its turns, not only at the end."""
    import time

    from coffea_hpc.progress import watch

    with AtOnce() as backend:
        chunks = chunks_of(preprocess(prepared, backend, chunksize=20).fileset)  # known files
        work = Workload(ProcessorHandle.wrap(DimuonProcessor()), chunks, chunks_per_task=1)
        task = backend.compute(work)
        task.observe(lambda settled: time.sleep(0.005))  # ≥ 3 s for 600 elements
        ticks: list[int] = []
        result = watch(task, "processing", None,
                       on_tick=lambda t: ticks.append(t.progress().done))
    assert result.value["n"] == len(chunks) == 600
    assert len(ticks) >= 3 and ticks[0] < len(chunks), ticks
