"""Watching a task: a backend that cannot count its workers does not stop a run, and a
result is shown when it arrives, not at the next poll."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import uproot

from coffea_hpc.backends.futures import FuturesBackend
from coffea_hpc.backends.iterative import IterativeBackend
from coffea_hpc.backends.protocol import WorkElement
from coffea_hpc.data.chunks import chunks_of
from coffea_hpc.examples.dimuon import DimuonProcessor
from coffea_hpc.processing.preprocess import preprocess
from coffea_hpc.processing.processor import ProcessorHandle
from coffea_hpc.processing.workload import Workload
from coffea_hpc.progress import watch
from coffea_hpc.runner import run
from tests.helpers import RecordingReporter


class _CannotCount(FuturesBackend):
    def connected_workers(self) -> int | None:
        raise ConnectionError("the service that knows is gone")


def test_a_failing_worker_count_leaves_the_run_alone(fileset, dimuon):
    recorder = RecordingReporter()
    outcome = run(dimuon, fileset, backend=_CannotCount(2), chunksize=1_000, reporter=recorder)
    assert outcome.report["status"] == "complete"
    on_disk = 0
    for _, f in fileset.files:
        with uproot.open(f.path) as file:
            on_disk += file[f.treename].num_entries
    assert outcome.result.processed.n_entries == on_disk
    assert recorder.workers["processing"]
    assert set(recorder.workers["preprocessing"] + recorder.workers["processing"]) == {None}


class _FlakyOnce:
    """Fails each chunk's first attempt; the retry waits until the test has seen it."""

    def __init__(self, folder) -> None:
        self.folder = str(folder)

    def __call__(self, events):
        import os
        import time

        marker = os.path.join(self.folder, f"{events.metadata['filename'].split('/')[-1]}-"
                                           f"{events.metadata['entrystart']}")
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise OSError("flaky storage")
        deadline = time.monotonic() + 20  # unseen: the assertions below fail, not hang
        while not os.path.exists(os.path.join(self.folder, "release")):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return {"n": len(events)}


class _Seen:
    def __init__(self, release) -> None:
        self.release = release
        self.seen: list[tuple[int, int, int]] = []

    def start(self, label, total, unit) -> None:
        self.label = label

    def update(self, progress) -> None:
        if self.label == "processing":
            self.seen.append((progress.done, progress.failed, progress.retrying))
            if progress.retrying:
                self.release.touch()

    finish = update


def test_progress_counts_chunks_being_retried_apart(fileset, tmp_path):
    seen = _Seen(tmp_path / "release")
    one_file = {"DY": [fileset.datasets["DYJetsToLL"].files[0].path]}
    outcome = run(_FlakyOnce(tmp_path), one_file, backend="futures", workers=2,
                  chunksize=1_000, chunks_per_task=1, schema="base", reporter=seen)
    assert outcome.result.value["n"] == 3_000 and outcome.report["failed_chunks"] == []
    retrying = [s for s in seen.seen if s[2]]
    assert retrying and all(done + failed < 3 for done, failed, _ in retrying), seen.seen
    assert seen.seen[-1] == (3, 0, 0)


class _FirstSoonRestLate(IterativeBackend):
    """Runs elements here, but hands back the first one's result after ``soon`` seconds and
    every other one's after ``late``, as workers that finish at different times would."""

    def __init__(self, soon: float, late: float) -> None:
        super().__init__()
        self.delays = iter([soon])
        self.late = late

    def submit(self, element: WorkElement) -> Future:
        value = super().submit(element).result()
        future: Future = Future()
        timer = threading.Timer(next(self.delays, self.late), future.set_result, [value])
        timer.daemon = True
        timer.start()
        return future


class _Times:
    def __init__(self) -> None:
        self.shown: list[tuple[float, int]] = []

    def start(self, label: str, total: int, unit: str) -> None:
        self.began = time.monotonic()

    def update(self, progress) -> None:
        self.shown.append((time.monotonic() - self.began, progress.done))

    finish = update


def test_a_result_is_shown_when_it_arrives_not_at_the_next_poll(fileset):
    with IterativeBackend() as plain:
        prepared = preprocess(fileset, plain, chunksize=3_000).fileset
    work = Workload(ProcessorHandle.wrap(DimuonProcessor()), chunks_of(prepared))
    times = _Times()
    with _FirstSoonRestLate(soon=1.0, late=4.0) as backend:
        result = watch(backend.compute(work), "processing", times, poll=30.0)
    assert result.processed.n_entries == sum(c.entries for c in chunks_of(prepared))
    first = next(t for t, done in times.shown if done)
    assert first < 2.5, times.shown  # not with the others (4 s), nor at the poll (30 s)


def test_the_last_word_on_workers_is_counted_when_the_task_ends(fileset):
    """Workers are counted every few seconds; a task that ends between two counts (a pool
    that connected and finished at once) must not be reported with the count from before
    its workers came."""
    with IterativeBackend() as plain:
        prepared = preprocess(fileset, plain, chunksize=3_000).fileset
    work = Workload(ProcessorHandle.wrap(DimuonProcessor()), chunks_of(prepared))
    counts = []

    def count() -> int:  # none connected at the first count, two from then on
        counts.append(time.monotonic())
        return 0 if len(counts) == 1 else 2

    recorder = RecordingReporter()
    with IterativeBackend() as backend:
        watch(backend.compute(work), "processing", recorder, workers=count, poll=0.01)
    assert recorder.workers["processing"][-1] == 2, counts
