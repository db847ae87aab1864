"""One `Task` implementation for every backend whose submit returns a future.

Backends differ in where an element runs; what happens when it comes back — fold it into the
running sum, retry what failed, record what is skipped, stop when the policy says so — is the
same everywhere and lives here. Futures report through a queue, and all state changes happen
in the thread that calls into the task, so no locks guard the running sum.

Elements are submitted lazily, at most ``window`` at a time (a few per worker), not all at
once: work in flight stays proportional to the workers, not to the fileset, and when a chunk
fails in a way that would stop the run, nothing new starts until its retry has answered. A
processor that raises on every chunk is then called a handful of times, as coffea's Runner
stops at the first exception, instead of once or twice for every chunk of the fileset.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any, Protocol

from coffea_hpc.backends.protocol import (
    Computable,
    ErrorPolicy,
    TaskProgress,
    TaskStatus,
    WorkElement,
)
from coffea_hpc.data.ranges import EntryRanges
from coffea_hpc.errors import ChunkFailedError, MergeError, OverlapError
from coffea_hpc.processing.changes import Changes
from coffea_hpc.processing.result import Failure, RemoteError, Result, merge_values

__all__ = ["FREE_RESUBMISSIONS", "FutureLike", "FutureTask", "Reducer"]

log = logging.getLogger(__name__)


class FutureLike(Protocol):
    """What concurrent.futures, Parsl, Dask and Globus Compute futures have in common."""

    def add_done_callback(self, fn: Callable[[Any], object]) -> None: ...

    def result(self, timeout: float | None = None) -> Any: ...

    def cancel(self) -> bool: ...


Submit = Callable[[WorkElement], FutureLike]

Observer = Callable[["Settled"], None]


class Settled:
    """An element as it came back, for an observer (`FutureTask.observe`): which element,
    when the driver submitted it, its result or the error it died of, and how often each of
    its keys had failed before."""

    __slots__ = ("attempts", "element", "error", "result", "submitted", "token")

    def __init__(self, element: WorkElement, token: int, submitted: float | None,
                 result: Result | None, error: RemoteError | None,
                 attempts: dict[Hashable, int]) -> None:
        self.element = element
        self.token = token
        self.submitted = submitted
        self.result = result
        self.error = error
        self.attempts = attempts


class Reducer(Protocol):
    """Merges partial results while the task runs (see `coffea_hpc.reduction.tree`).

    ``merges`` takes inputs out of the running sum and returns elements that merge them;
    ``inputs`` gives back what an element took, for snapshots and when a merge fails.
    """

    def merges(self, acc: Result) -> list[WorkElement]: ...

    def inputs(self, element: WorkElement) -> Any: ...


class FutureTask:
    """Runs a `Computable` through a ``submit`` function, honouring an `ErrorPolicy`."""

    def __init__(
        self,
        work: Computable,
        submit: Submit,
        policy: ErrorPolicy | None = None,
        *,
        reducer: Reducer | None = None,
        submit_merge: Submit | None = None,
        window: int | None = None,
        lost_on: tuple[type[BaseException], ...] = (),
    ) -> None:
        """``window``: how many elements may be in flight at once (None: no limit, for
        services that queue and batch on their side). ``lost_on``: exceptions meaning the
        element's workers went away with their block (walltime, preemption, ``scancel``):
        its chunks run again without spending a retry, up to `FREE_RESUBMISSIONS` times."""
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._work = work
        self._window = window
        self._submit = submit
        self._submit_merge = submit_merge or submit
        self._policy = policy or ErrorPolicy()
        self._lost_on = lost_on
        self._losses: dict[Hashable, int] = {}
        self._reducer = reducer
        self._garbage: list[Any] = []
        self._acc = Result()
        self._changes = Changes()
        """What of ``_acc`` changed since a checkpoint took the changes (`take_changes`)."""
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._inflight: dict[int, tuple[WorkElement, FutureLike]] = {}
        self._merging: set[int] = set()
        self._next_token = 0
        self._arrivals = 0
        """Tokens taken off the queue so far: `wait_for_news` tells news by it."""
        self._submitted: dict[int, float] = {}
        self._observer: Observer | None = None
        self._attempts: dict[Hashable, int] = {}
        self._done = _KeySet()
        self._failed: dict[Hashable, Failure] = {}
        self._total_weight = 0
        self._done_weight = 0
        self._retries = 0
        self._status = TaskStatus.PENDING
        self._stop: ChunkFailedError | None = None
        self._total = len(work)
        self._started = time.monotonic()
        self._backlog = _Backlog(work)
        self._probing: set[Hashable] = set()
        """Keys whose failure would stop the task, being retried: nothing new starts meanwhile."""
        self._adaptive = bool(getattr(work, "adaptive", False))
        """Work cut into chunks as it is submitted (`AdaptiveWorkload`): its chunk count
        is an estimate, and what is done is checked by entry ranges, not by keys."""
        self._learn: Callable[[Any], None] | None = getattr(work, "learn", None)
        self._file_of: Callable[[Hashable], Hashable] | None = getattr(work, "file_of", None)
        self._file_probes: dict[Hashable, Hashable] = {}
        """File -> the one chunk of it being retried after a read error."""
        self._held: dict[Hashable, list[WorkElement]] = {}
        """File -> its elements that wait for that retry's verdict."""
        self._bad_files: dict[Hashable, RemoteError] = {}
        """Files given up as a whole: their chunks are not tried again."""
        total_weight = getattr(work, "total_weight", None)
        self._total_weight = total_weight if total_weight is not None else \
            sum(element.weight for element in work)
        self._fill()
        if not self._inflight:
            self._status = TaskStatus.COMPLETE

    # -- the Task protocol ---------------------------------------------------------------

    def done(self) -> bool:
        self._drain(block=False)
        return self._status in (TaskStatus.COMPLETE, TaskStatus.FAILED, TaskStatus.CANCELLED)

    def status(self) -> TaskStatus:
        self._drain(block=False)
        return self._status

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._inflight and self._status is TaskStatus.RUNNING:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            self._drain(block=True, timeout=left)
        return self.done()

    @property
    def arrivals(self) -> int:
        """Results (and ends of retry waits) taken in so far: `wait_for_news` waits for
        this to pass a count."""
        return self._arrivals

    def wait_for_news(self, timeout: float, *, since: int, quiet: float = 0.0) -> bool:
        """Like `wait`, but back once more than ``since`` `arrivals` are in, though not
        before ``quiet`` seconds: progress is shown when a result arrives, and a stream of
        results in steps. Returns `done()`."""
        deadline = time.monotonic() + timeout
        if self.wait(timeout=min(quiet, timeout)):
            return True
        while self._arrivals == since and self._inflight \
                and self._status is TaskStatus.RUNNING:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._drain(block=True, timeout=left)
        return self.done()

    def result(self) -> Result:
        self.wait()
        if self._stop is not None:
            raise self._stop
        if self._status is TaskStatus.CANCELLED:
            raise ChunkFailedError(
                "the task was cancelled", partial=self._acc, remaining=self._remaining()
            )
        return self._acc

    def partial_result(self) -> tuple[Result, Computable]:
        self._drain(block=False)
        if self._inflight:  # the sum goes on growing in place: the caller gets a copy
            snapshot = copy.deepcopy(self._acc).without_failures()
            self._add_merging(snapshot)
            return snapshot, self._remaining()
        return self.current_result(), self._remaining()

    def current_result(self) -> Result:
        """What is done so far, not copied: it stays as it is only until the task next
        takes in a result, which happens in the calls of the thread that waits on it. What
        a checkpoint needs, written from that thread: `partial_result`'s copy of a large
        output would double the driver's memory, and its remaining work is a walk over
        every chunk."""
        self._drain(block=False)
        snapshot = self._acc.without_failures()
        self._add_merging(snapshot)
        return snapshot

    def _add_merging(self, snapshot: Result) -> None:
        """Inputs of merges under way are still part of the sum (added, not in place)."""
        for token in self._merging:
            snapshot.value = merge_values(
                snapshot.value, self._reducer.inputs(self._inflight[token][0]))  # type: ignore[union-attr]

    def take_changes(self) -> Changes:
        """What of `current_result` changed since this was last called: a checkpoint
        writes that much, not the whole sum."""
        return self._changes.take()

    def take_garbage(self) -> list[Any]:
        """Inputs of finished merges: safe to delete once no checkpoint refers to them."""
        garbage, self._garbage = self._garbage, []
        return garbage

    def progress(self) -> TaskProgress:
        self._drain(block=False)
        return TaskProgress(
            total=max(len(self._work), len(self._done)) if self._adaptive else self._total,
            done=len(self._done),
            failed=len(self._failed),
            total_weight=self._total_weight,
            done_weight=self._done_weight,
            retries=self._retries,
            retrying=sum(1 for key in self._attempts
                         if key not in self._done and key not in self._failed),
        )

    def cancel(self) -> None:
        self._keep_finished()
        self._forget_inflight()
        self._backlog.clear()
        if self._status in (TaskStatus.PENDING, TaskStatus.RUNNING):
            self._status = TaskStatus.CANCELLED

    def observe(self, observer: Observer) -> None:
        """Call ``observer`` with every chunk element as it comes back (before its result
        is added in), from the thread that calls into the task. Metrics hook in here."""
        self._observer = observer

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    # -- internals -----------------------------------------------------------------------

    def _mark_done(self, element: WorkElement, keys: list[Hashable]) -> None:
        """Progress counts events as elements report them: per-key state is the set of
        keys done, nothing more, so a million chunks cost the driver little memory."""
        new = sum(self._done.add(key) for key in keys)
        self._done_weight += element.weight // max(len(element.keys), 1) * new

    def _fill(self) -> None:
        """Submit waiting elements while the window has room and no failure is in doubt."""
        while not self._probing and self._status in (TaskStatus.PENDING, TaskStatus.RUNNING):
            # room first, then the next element: adaptive work cuts its chunks as late as it can
            if self._window is not None and \
                    len(self._inflight) - len(self._merging) >= self._window:
                return
            if not self._backlog:
                return
            element = self._backlog.popleft()
            if self._file_of is not None and element.keys:
                file = self._file_of(element.keys[0])
                if file in self._bad_files:
                    self._give_up(element.keys, self._bad_files[file], element)
                    continue
                if file in self._file_probes:
                    self._held.setdefault(file, []).append(element)
                    continue
            self._launch(element)

    def _launch(self, element: WorkElement, *, merge: bool = False) -> None:
        token = self._next_token
        self._next_token += 1
        if merge:
            self._merging.add(token)
        else:
            self._submitted[token] = time.time()
        try:
            future = (self._submit_merge if merge else self._submit)(element)
        except Exception as exc:  # submission itself failed: treat like a failed element
            self._inflight[token] = (element, _failed_future(exc))
            self._queue.put(token)
            return
        self._inflight[token] = (element, future)
        self._status = TaskStatus.RUNNING
        future.add_done_callback(lambda _f, t=token: self._queue.put(t))

    def _launch_later(self, element: WorkElement, delay: float) -> None:
        """Submit ``element`` after ``delay`` seconds. It holds its place in flight
        meanwhile; a timer only wakes the driver thread, which submits it (`_drain`)."""
        token = self._next_token
        self._next_token += 1
        self._inflight[token] = (element, _Waiting(delay, lambda: self._queue.put(token)))
        self._status = TaskStatus.RUNNING

    def _drain(self, *, block: bool, timeout: float | None = None) -> None:
        # back within a slice of time, whatever is left: results that arrive as fast as
        # they are taken in would otherwise keep the caller from showing progress and
        # writing checkpoints until the very end
        until = time.monotonic() + _DRAIN_SLICE
        while self._inflight:
            if not block and time.monotonic() > until:
                return
            try:
                token = self._queue.get(block=block, timeout=timeout)
            except queue.Empty:
                return
            self._arrivals += 1
            block = False  # after one arrival, take only what is already there
            entry = self._inflight.pop(token, None)
            if entry is None:  # cancelled and forgotten
                continue
            if isinstance(entry[1], _Waiting):  # a retry's wait is over
                self._launch(entry[0])
                continue
            if token in self._merging:
                self._merging.discard(token)
                self._settle_merge(*entry)
            else:
                self._settle(*entry, token=token)
            self._schedule_merges()
            if self._status is not TaskStatus.RUNNING:
                return
            self._fill()
        if self._status is TaskStatus.RUNNING and not self._inflight:
            self._complete()

    def _settle(self, element: WorkElement, future: FutureLike, *, token: int = -1) -> None:
        try:
            result: Result = future.result()
            errors = {f.key: f.error for f in result.failures}
            died = None
        except BaseException as exc:  # the element died as a whole (worker lost, cancelled
            # by someone else: what the task cancels itself never comes back here)
            result = Result()
            died = RemoteError.from_exception(exc)
            errors = dict.fromkeys(element.keys, died)
        self._tell(element, token, None if died else result, died)
        try:
            self._acc.absorb(result.without_failures())
        except MergeError as err:
            self._unmergeable(element, err)
            return
        self._changes.note(result)
        unattempted = set(result.unattempted)
        self._mark_done(element, [k for k in element.keys
                                  if k not in errors and k not in unattempted])
        self._probing.difference_update(element.keys)
        if unattempted:
            self._backlog.extendleft(reversed(list(self._work.subset(unattempted))))
        retry: list[Hashable] = []
        delay = 0.0
        labels = dict(zip(element.keys, getattr(element, "labels", ()), strict=False))
        errors = self._resubmit_lost(errors)
        errors = self._split_out_of_memory(errors)
        for key, error in errors.items():
            label = labels.get(key, str(key))
            kind = _kind(error, died)
            file = self._file_of(key) if self._file_of is not None and kind == "io" else None
            if file in self._bad_files:  # was under way when its file was given up
                self._give_up([key], self._bad_files[file], element)
                continue
            if file is not None and self._file_probes.get(file, key) != key:
                # another chunk of this file is being retried: its verdict is this one's
                self._held.setdefault(file, []).extend(self._work.subset([key]))
                continue
            attempts = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempts
            if error.matches(self._policy.cancel_on):
                self._halt(key, error, attempts, label, kind)
                return
            if attempts <= self._policy.budget(kind):
                log.info("retrying %s after %s (attempt %d)", label, error.summary(), attempts)
                retry.append(key)
                if kind == "io":
                    delay = max(delay, self._policy.io_retry_wait(attempts))
                if file is not None:
                    self._file_probes[file] = key
                if not error.matches(self._policy.continue_on):
                    self._probing.add(key)
            elif error.matches(self._policy.continue_on):
                log.info("skipping %s: %s", label, error.summary())  # summed up at the end
                failure = Failure(key, error, attempts, label, kind)
                self._failed[key] = failure
                self._acc.failures = (*self._acc.failures, failure)
                if file is not None:
                    self._give_up_file(file, error)
            else:
                self._halt(key, error, attempts, label, kind)
                return
        self._end_probes(element.keys, retry)
        if retry:
            self._retries += len(retry)
            for element_again in self._work.subset(retry):
                if delay > 0:
                    self._launch_later(element_again, delay)
                else:
                    self._launch(element_again)

    def _resubmit_lost(self, errors: dict[Hashable, RemoteError]) -> dict[Hashable, RemoteError]:
        """Chunks whose block ended under them go back to the queue at no cost: the end of
        a block (its walltime, a preemption, ``scancel``) is how batch systems work, not a
        fault of the chunk. Past `FREE_RESUBMISSIONS` losses (a node that kills whatever
        runs on it) they spend retries like any failure. Returns the errors left to judge."""
        if not self._lost_on:
            return errors
        lost = [k for k, e in errors.items() if e.matches(self._lost_on)
                and self._losses.get(k, 0) < FREE_RESUBMISSIONS]
        if not lost:
            return errors
        for key in lost:
            self._losses[key] = self._losses.get(key, 0) + 1
        log.info("%d chunks lost with their block; they run again (no retry spent)", len(lost))
        self._count("lost_to_ended_blocks", len(lost))
        self._backlog.extendleft(reversed(list(self._work.subset(lost))))
        rerun = set(lost)
        return {k: e for k, e in errors.items() if k not in rerun}

    def _count(self, metric: str, n: int) -> None:
        counted = Result(metrics={metric: n})
        self._acc.absorb(counted)
        self._changes.note(counted)

    def _split_out_of_memory(self, errors: dict[Hashable, RemoteError]
                             ) -> dict[Hashable, RemoteError]:
        """Adaptive work: a chunk whose worker ran out of memory (a `MemoryError`, or its
        process died under it) goes back to the front of the queue as its two halves, at no
        retry's cost, and the dataset's chunks are never cut that big again. A chunk that
        cannot be split further (`AdaptiveWorkload.split`) is left to the error policy, as
        every failure is with a fixed chunking. Returns the errors left to judge."""
        split = getattr(self._work, "split", None)
        if split is None:
            return errors
        from coffea_hpc.processing.adaptive import out_of_memory

        halves: list[WorkElement] = []
        left: dict[Hashable, RemoteError] = {}
        for key, error in errors.items():
            parts = split(key) if out_of_memory(error.type_names) else []
            if parts:
                log.warning("%s ran out of memory (%s): retrying it as two halves",
                            key[1:] if isinstance(key, tuple) else key, error.summary())
                halves.extend(parts)
            else:
                left[key] = error
        if halves:
            self._count("out_of_memory_splits", len(halves) // 2)
            self._backlog.extendleft(reversed(halves))
        return left

    def _end_probes(self, keys: tuple[Hashable, ...], retried: list[Hashable]) -> None:
        """A file's retried chunk that came back with anything but another retry ends the
        wait of its file's other chunks: they go back to the front of the queue."""
        if not self._file_probes or self._file_of is None:
            return
        for key in keys:
            file = self._file_of(key)
            if self._file_probes.get(file) == key and key not in retried:
                del self._file_probes[file]
                self._backlog.extendleft(reversed(self._held.pop(file, [])))

    def _give_up_file(self, file: Hashable, error: RemoteError) -> None:
        """A file whose chunk failed to read on every attempt is not read again: its other
        chunks, waiting or queued, fail with the same error without being tried (one line
        per file in the summary, not one retry per chunk). Chunks of it that had been read
        are kept: the report lists exactly the entry ranges that are missing."""
        self._bad_files[file] = error
        self._file_probes.pop(file, None)
        for element in self._held.pop(file, []):
            self._give_up(element.keys, error, element)
        # its chunks still queued are given up as they come out of the queue (`_fill`)

    def _give_up(self, keys: tuple[Hashable, ...] | list[Hashable], error: RemoteError,
                 element: WorkElement) -> None:
        labels = dict(zip(element.keys, getattr(element, "labels", ()), strict=False))
        for key in keys:
            if key in self._failed or key in self._done:
                continue
            failure = Failure(key, error, self._attempts.get(key, 0), labels.get(key, str(key)),
                              "io")
            self._failed[key] = failure
            self._acc.failures = (*self._acc.failures, failure)

    def _tell(self, element: WorkElement, token: int, result: Result | None,
              error: RemoteError | None) -> None:
        submitted = self._submitted.pop(token, None)
        if self._learn is not None and result is not None:
            try:  # adaptive work sizes the chunks it cuts next from these rows
                self._learn(result.chunk_rows)
            except Exception as err:
                log.warning("sizing chunks failed: %s: %s", type(err).__name__, err)
        if self._observer is None:
            return
        try:
            self._observer(Settled(element, token, submitted, result, error, self._attempts))
        except Exception as err:  # measuring must never stop the work it measures
            log.warning("recording metrics failed: %s: %s", type(err).__name__, err)

    def _unmergeable(self, element: WorkElement, err: MergeError) -> None:
        """A result that cannot be added to the others (outputs of different types or
        binnings) stops the task. An in-place merge may have changed part of the running
        sum before it failed, so none of it is kept: it would count those entries twice
        after a resume."""
        key = element.keys[0]
        labels = getattr(element, "labels", None)
        dataset = f" (dataset {key[0]!r})" if isinstance(key, tuple) and key else ""
        overlap = isinstance(err, OverlapError)  # found before anything was added
        what = "an overlapping result" if overlap else "its output cannot be added to the others'"
        if not overlap:
            self._forget_inflight()  # what finished meanwhile might not add up either
            self._acc = Result()
            self._changes.lose_track()
            self._done.clear()
            self._done_weight = 0
        message = f"{what}{dataset}: {err}"
        self._halt(key, RemoteError((type(err).__name__,), message), 1,
                   labels[0] if labels else None)

    def _complete(self) -> None:
        """Finish, after checking that every key is either done or recorded as failed."""
        if self._adaptive:  # every span's entries counted, or in a chunk recorded as failed
            covered = copy.deepcopy(self._acc.processed)
            for key in self._failed:
                if isinstance(key, tuple) and len(key) == 5:
                    covered.update(EntryRanges.of(key[:3], key[3], key[4]))
            missing = self._work.uncovered(covered)  # type: ignore[attr-defined]
        elif len(self._done) + sum(k not in self._done for k in self._failed) == self._total:
            missing = []  # every key answered (done and failed keys are the work's own):
            # listing the work's keys to check them one by one is 10^6 tuples at the end
        else:
            every = self._work.keys()
            missing = [k for k in every if k not in self._done and k not in self._failed]
        if missing:  # a backend lost track of work: never report it as complete
            error = RemoteError(("RuntimeError",), f"{len(missing)} units of work were never "
                                "answered by the backend")
            self._halt(missing[0], error, self._attempts.get(missing[0], 0))
            return
        self._status = TaskStatus.COMPLETE

    def _settle_merge(self, element: WorkElement, future: FutureLike) -> None:
        assert self._reducer is not None
        try:
            result: Result = future.result()
        except BaseException as exc:
            log.warning("a merge task failed (%s); its inputs will be merged at the end",
                        RemoteError.from_exception(exc).summary())
            self._acc.value = merge_values(self._acc.value, self._reducer.inputs(element))
            self._changes.lose_track()
            return
        self._acc.absorb(result)
        self._changes.note(result)
        self._garbage.append(self._reducer.inputs(element))

    def _schedule_merges(self) -> None:
        if self._reducer is None or self._status is not TaskStatus.RUNNING:
            return
        for element in self._reducer.merges(self._acc):
            self._launch(element, merge=True)

    def _halt(self, key: Hashable, error: RemoteError, attempts: int,
              label: str | None = None, kind: str = "") -> None:
        label = label or str(key)
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        self._status = TaskStatus.FAILED
        self._keep_finished()
        self._forget_inflight()
        self._backlog.clear()
        self._failed[key] = Failure(key, error, attempts, label, kind)
        stop = ChunkFailedError(
            f"{label}: {error.summary()}{tries}",
            partial=self._acc.without_failures(),
            remaining=self._remaining(),
            failures=(*self._acc.failures, self._failed[key]),
        )
        stop.failure = self._failed[key]  # type: ignore[attr-defined]
        self._stop = stop

    def _keep_finished(self) -> None:
        """Fold in elements that finished cleanly while the failure was coming in: work
        already done is kept, not redone after a resume."""
        for token, (element, future) in list(self._inflight.items()):
            if token in self._merging:
                continue
            done = getattr(future, "done", None)
            if done is None or not done():
                continue
            try:
                result: Result = future.result()
            except BaseException:
                continue
            if result.failures:
                continue
            del self._inflight[token]
            self._tell(element, token, result, None)
            self._acc.absorb(result)
            self._changes.note(result)
            self._mark_done(element, list(element.keys))

    def _forget_inflight(self) -> None:
        """Cancel what has not started; results of what has are ignored when they come.

        Merges under way give their inputs back to the sum: they stay on storage until a
        merge that the task saw finish has replaced them.
        """
        for token, (element, future) in self._inflight.items():
            with contextlib.suppress(NotImplementedError):  # Parsl's AppFuture cannot cancel
                future.cancel()
            if token in self._merging and self._reducer is not None:
                self._acc.value = merge_values(self._acc.value, self._reducer.inputs(element))
                self._changes.lose_track()
        self._inflight.clear()
        self._merging.clear()
        self._submitted.clear()

    def _remaining(self) -> Computable:
        if self._adaptive:  # the spans less the ledger, cut afresh: never overlapping
            return self._work.rest(self._acc.processed)  # type: ignore[attr-defined]
        every = self._work.keys()
        return self._work.subset(k for k in every if k not in self._done)


_DRAIN_SLICE = 0.1
"""Seconds one call takes in results for, at most, once the first has arrived."""


class _KeySet:
    """The keys of finished chunks, in a sixth of a set's memory.

    A chunk's key is (dataset, file, tree, start, stop); a set would hold a fresh 5-tuple
    per chunk (~170 bytes each with its slot: 170 MB at 10^6 chunks, the driver's largest
    per-chunk cost). Here a file's chunks share one entry, a map of start to stop whose
    numbers are the chunk's own objects. Other keys (a stand-in backend's) go to a set.
    """

    __slots__ = ("_files", "_len", "_other")

    def __init__(self) -> None:
        self._files: dict[Hashable, dict[int, int]] = {}
        self._other: set[Hashable] = set()
        self._len = 0

    def add(self, key: Hashable) -> bool:
        """Add ``key``; whether it was not there yet."""
        if _is_chunk_key(key):
            stops = self._files.setdefault(key[:3], {})  # type: ignore[index]
            stop = stops.get(key[3], _ABSENT)  # type: ignore[index]
            if stop is _ABSENT:
                stops[key[3]] = key[4]  # type: ignore[index]
                self._len += 1
                return True
            if stop == key[4]:  # type: ignore[index]
                return False
            # a second range from one start (never, for a ledger's): kept beside
        if key in self._other:
            return False
        self._other.add(key)
        self._len += 1
        return True

    def __contains__(self, key: object) -> bool:
        if _is_chunk_key(key):
            stops = self._files.get(key[:3])  # type: ignore[index]
            if stops is not None and stops.get(key[3], None) == key[4]:  # type: ignore[index]
                return True
        return bool(self._other) and key in self._other

    def __len__(self) -> int:
        return self._len

    def clear(self) -> None:
        self._files.clear()
        self._other.clear()
        self._len = 0


_ABSENT = object()


def _is_chunk_key(key: object) -> bool:
    return type(key) is tuple and len(key) == 5


class _Backlog:
    """Elements still to submit: those put back (retries, the unattempted rest of a batch,
    chunks of a block that ended) first, then the rest of the work, made as the window asks
    for them, so a run of a million chunks never holds a million elements at once."""

    def __init__(self, work: Computable) -> None:
        self._front: deque[WorkElement] = deque()
        self._rest: Iterator[WorkElement] = iter(work)

    def __bool__(self) -> bool:
        if self._front:
            return True
        for element in self._rest:
            self._front.append(element)
            return True
        return False

    def popleft(self) -> WorkElement:
        if not self:
            raise IndexError("no element left")
        return self._front.popleft()

    def extendleft(self, elements: Iterable[WorkElement]) -> None:
        self._front.extendleft(elements)

    def clear(self) -> None:
        self._front.clear()
        self._rest = iter(())


FREE_RESUBMISSIONS = 3
"""How often a chunk may be lost with its block before the loss counts as its failure."""


class _Waiting:
    """Stands in flight for an element whose retry waits (`FutureTask._launch_later`)."""

    def __init__(self, delay: float, wake: Callable[[], None]) -> None:
        self._timer = threading.Timer(delay, wake)
        self._timer.daemon = True
        self._timer.start()

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        raise NotImplementedError  # never submitted: the timer wakes the task instead

    def done(self) -> bool:
        return False  # nothing to keep when the task stops: the element never ran

    def result(self, timeout: float | None = None) -> Any:
        raise RuntimeError("a waiting retry has no result")

    def cancel(self) -> bool:
        self._timer.cancel()
        return True


class _FailedFuture:
    def __init__(self, exc: BaseException) -> None:
        self._exc = exc

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        fn(self)

    def result(self, timeout: float | None = None) -> Any:
        raise self._exc

    def cancel(self) -> bool:
        return False


def _failed_future(exc: BaseException) -> _FailedFuture:
    return _FailedFuture(exc)


def _kind(error: RemoteError, died: RemoteError | None) -> str:
    """Which retry budget a failure spends (`Failure.kind`): an `OSError` is reading's
    (or a service's) wherever it was raised; any other error that ended the element as a
    whole, its worker's."""
    if error.matches((OSError,)):
        return "io"
    return "worker" if died is not None else "processor"
