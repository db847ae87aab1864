"""One `Task` implementation for every backend whose submit returns a future.

Backends differ in where an element runs; what happens when it comes back — fold it into the
running sum, retry what failed, record what is skipped, stop when the policy says so — is the
same everywhere and lives here. Futures report through a queue, and all state changes happen
in the thread that calls into the task, so no locks guard the running sum.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import queue
import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from coffea_hpc.backends.protocol import (
    Computable,
    ErrorPolicy,
    TaskProgress,
    TaskStatus,
    WorkElement,
)
from coffea_hpc.errors import ChunkFailedError
from coffea_hpc.processing.result import Failure, RemoteError, Result, merge_values

__all__ = ["FutureLike", "FutureTask", "Reducer"]

log = logging.getLogger(__name__)


class FutureLike(Protocol):
    """What concurrent.futures, Parsl, Dask and Globus Compute futures have in common."""

    def add_done_callback(self, fn: Callable[[Any], object]) -> None: ...

    def result(self, timeout: float | None = None) -> Any: ...

    def cancel(self) -> bool: ...


Submit = Callable[[WorkElement], FutureLike]


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
    ) -> None:
        self._work = work
        self._submit = submit
        self._submit_merge = submit_merge or submit
        self._policy = policy or ErrorPolicy()
        self._reducer = reducer
        self._garbage: list[Any] = []
        self._acc = Result()
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._inflight: dict[int, tuple[WorkElement, FutureLike]] = {}
        self._merging: set[int] = set()
        self._next_token = 0
        self._attempts: dict[Hashable, int] = {}
        self._done: set[Hashable] = set()
        self._failed: dict[Hashable, Failure] = {}
        self._labels: dict[Hashable, str] = {}
        self._weights: dict[Hashable, int] = {}
        self._retries = 0
        self._status = TaskStatus.PENDING
        self._stop: ChunkFailedError | None = None
        self._all_keys = list(work.keys())
        self._started = time.monotonic()
        for element in work:
            self._remember(element)
            self._launch(element)
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
        finished = not self._inflight
        snapshot = self._acc if finished else copy.deepcopy(self._acc)
        for token in self._merging:  # inputs of merges under way are still part of the sum
            snapshot.value = merge_values(
                snapshot.value, self._reducer.inputs(self._inflight[token][0]))  # type: ignore[union-attr]
        return snapshot.without_failures(), self._remaining()

    def take_garbage(self) -> list[Any]:
        """Inputs of finished merges: safe to delete once no checkpoint refers to them."""
        garbage, self._garbage = self._garbage, []
        return garbage

    def progress(self) -> TaskProgress:
        self._drain(block=False)
        return TaskProgress(
            total=len(self._all_keys),
            done=len(self._done),
            failed=len(self._failed),
            total_weight=sum(self._weights.values()),
            done_weight=sum(self._weights.get(k, 0) for k in self._done),
            retries=self._retries,
        )

    def cancel(self) -> None:
        self._keep_finished()
        self._forget_inflight()
        if self._status in (TaskStatus.PENDING, TaskStatus.RUNNING):
            self._status = TaskStatus.CANCELLED

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    # -- internals -----------------------------------------------------------------------

    def _remember(self, element: WorkElement) -> None:
        keys = element.keys
        share = element.weight // max(len(keys), 1)
        label = getattr(element, "labels", None)
        for i, key in enumerate(keys):
            self._weights.setdefault(key, share)
            if label is not None:
                self._labels.setdefault(key, label[i])

    def _launch(self, element: WorkElement, *, merge: bool = False) -> None:
        token = self._next_token
        self._next_token += 1
        if merge:
            self._merging.add(token)
        try:
            future = (self._submit_merge if merge else self._submit)(element)
        except Exception as exc:  # submission itself failed: treat like a failed element
            self._inflight[token] = (element, _failed_future(exc))
            self._queue.put(token)
            return
        self._inflight[token] = (element, future)
        self._status = TaskStatus.RUNNING
        future.add_done_callback(lambda _f, t=token: self._queue.put(t))

    def _drain(self, *, block: bool, timeout: float | None = None) -> None:
        while self._inflight:
            try:
                token = self._queue.get(block=block, timeout=timeout)
            except queue.Empty:
                return
            block = False  # after one arrival, take only what is already there
            entry = self._inflight.pop(token, None)
            if entry is None:  # cancelled and forgotten
                continue
            if token in self._merging:
                self._merging.discard(token)
                self._settle_merge(*entry)
            else:
                self._settle(*entry)
            self._schedule_merges()
            if self._status is not TaskStatus.RUNNING:
                return
        if self._status is TaskStatus.RUNNING and not self._inflight:
            self._complete()

    def _settle(self, element: WorkElement, future: FutureLike) -> None:
        try:
            result: Result = future.result()
            errors = {f.key: f.error for f in result.failures}
        except BaseException as exc:  # the element died as a whole (worker lost, cancelled
            # by someone else: what the task cancels itself never comes back here)
            result = Result()
            error = RemoteError.from_exception(exc)
            errors = dict.fromkeys(element.keys, error)
        self._acc.absorb(result.without_failures())
        self._done.update(k for k in element.keys if k not in errors)
        retry: list[Hashable] = []
        for key, error in errors.items():
            attempts = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempts
            label = self._labels.get(key, str(key))
            if error.matches(self._policy.cancel_on):
                self._halt(key, error, attempts)
                return
            if attempts <= self._policy.max_retries:
                log.info("retrying %s after %s (attempt %d)", label, error.summary(), attempts)
                retry.append(key)
            elif error.matches(self._policy.continue_on):
                log.warning("skipping %s: %s", label, error.summary())
                failure = Failure(key, error, attempts, label)
                self._failed[key] = failure
                self._acc.failures = (*self._acc.failures, failure)
            else:
                self._halt(key, error, attempts)
                return
        if retry:
            self._retries += len(retry)
            for element_again in self._work.subset(retry):
                self._launch(element_again)

    def _complete(self) -> None:
        """Finish, after checking that every key is either done or recorded as failed."""
        missing = [k for k in self._all_keys if k not in self._done and k not in self._failed]
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
            return
        self._acc.absorb(result)
        self._garbage.append(self._reducer.inputs(element))

    def _schedule_merges(self) -> None:
        if self._reducer is None or self._status is not TaskStatus.RUNNING:
            return
        for element in self._reducer.merges(self._acc):
            self._launch(element, merge=True)

    def _halt(self, key: Hashable, error: RemoteError, attempts: int) -> None:
        label = self._labels.get(key, str(key))
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        self._status = TaskStatus.FAILED
        self._keep_finished()
        self._forget_inflight()
        self._failed[key] = Failure(key, error, attempts, label)
        stop = ChunkFailedError(
            f"{label}: {error.summary()}{tries}",
            partial=self._acc.without_failures(),
            remaining=self._remaining(),
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
            self._acc.absorb(result)
            self._done.update(element.keys)

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
        self._inflight.clear()
        self._merging.clear()

    def _remaining(self) -> Computable:
        return self._work.subset(k for k in self._all_keys if k not in self._done)


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
