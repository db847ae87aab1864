"""Globus Compute: chunks run on a remote endpoint, the driver stays on a laptop.

Elements go through ``globus_compute_sdk.Executor`` (which batches submissions into API calls
and rate-limits them client-side; the sizes here are conservative), so the Task protocol,
progress, retries and partial results are the same as everywhere else. What differs is the
service in the middle, and its limits:

- a task's result must stay small (the service refuses results above a few MB): on the
  endpoint, a result above ``max_result_bytes`` is spilled to the endpoint's storage and
  only a reference comes back; spilled partials are merged there, by remote merge tasks, and
  the final output comes back only if it fits — otherwise the run reports where it is;
- the endpoint must run the same software: the first task compares Python and package
  versions with the laptop's and stops the run, naming what differs;
- a submission request has a payload limit, and a refused request stops the SDK's executor
  for good: tasks are measured as they are submitted and the executor's batch size lowered
  so that a full batch of the heaviest task seen stays under half the limit (the other half
  absorbs the serializers' differences); a task that alone exceeds that is refused here,
  saying what to do instead;
- a task can be lost (an endpoint restarted, a result that never came back): when the
  endpoint has answered nothing for ``task_timeout`` seconds, what it still owes fails and
  the error policy retries it (a fixed deadline per task would fail the thousands of tasks
  that simply wait their turn in a long run);
- credentials are the SDK's own (its login flow and token storage); nothing here reads,
  prints or logs a token;
- what comes back is sealed on the endpoint with the run's key (which travels with each task)
  and unpickled here only if its tag verifies, and spilled partials on the endpoint's storage
  are signed the same way: a result or file that did not come from this run is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Any

import cloudpickle

from coffea_hpc._signing import RunKey
from coffea_hpc.backends._base import PoolBackend
from coffea_hpc.backends.protocol import WorkElement
from coffea_hpc.errors import RemoteEnvironmentError, UserError
from coffea_hpc.extras import require
from coffea_hpc.output import RemoteOutput
from coffea_hpc.processing.result import Result

__all__ = ["DEFAULT_MAX_RESULT_BYTES", "GlobusBackend", "ServiceLimitError", "TaskLost",
           "ensure_logged_in"]

log = logging.getLogger(__name__)

MB = 1000**2

DEFAULT_MAX_RESULT_BYTES = 4 * 1024**2
"""Below the per-task result limit the service documents (the smallest published is 5 MB)."""

DEFAULT_MAX_REQUEST_BYTES = 10 * MB
"""The payload limit of one submission request, as the service documents it today."""

VERSIONS_THAT_MUST_MATCH = ("python", "coffea-hpc", "coffea", "awkward", "uproot", "cloudpickle")
"""Python's minor version and the packages whose objects travel between the two sides."""


class ServiceLimitError(UserError):
    """A task that cannot fit the service's request limit whatever the batching."""


def wire_size(obj: Any) -> int:
    """Bytes ``obj`` takes on its way through the service: pickled, then base64-encoded."""
    encoded = 4 * ((len(cloudpickle.dumps(obj)) + 2) // 3)
    return encoded + encoded // 76 + 1


# -- what runs on the endpoint ------------------------------------------------------------


def remote_versions() -> dict[str, str]:
    """The endpoint's Python and package versions."""
    from coffea_hpc.sites.check import environment_versions

    return environment_versions()


def remote_delete(paths: list[str]) -> int:
    """Delete merged-away partials on the endpoint; returns how many were there."""
    removed = 0
    for path in paths:
        try:
            os.unlink(_expand(path))
            removed += 1
        except FileNotFoundError:
            pass
    return removed


_RESULT = b"globus-result"
"""What a sealed result is for: its tag cannot pass for a spill file's or a checkpoint's."""


def run_capped(element: WorkElement, remote_dir: str, max_result_bytes: int,
               key: RunKey) -> bytes:
    """Run ``element`` on the endpoint; spill its value there if the result is too big.
    The result comes back sealed with ``key``."""
    result = element()
    if not isinstance(result, Result) or result.value is None:
        return key.seal(cloudpickle.dumps(result), _RESULT)
    payload = cloudpickle.dumps(result)
    if len(payload) <= max_result_bytes:
        return key.seal(payload, _RESULT)
    from coffea_hpc.reduction.spill import spill

    result.value = spill(result.value, _expand(remote_dir), key)
    return key.seal(cloudpickle.dumps(result), _RESULT)


def remote_finish(value: Any, remote_dir: str, max_result_bytes: int,
                  processor: Any, key: RunKey) -> bytes:
    """Merge spilled partials on the endpoint; bring the sum back if it fits, else write the
    postprocessed output there and return where it is (sealed with ``key``)."""
    from coffea_hpc import output
    from coffea_hpc.processing.processor import postprocess
    from coffea_hpc.reduction.merge import resolve

    merged = resolve(value, key, delete=True)
    payload = cloudpickle.dumps(merged)
    if len(payload) <= max_result_bytes:
        for leftover in Path(_expand(remote_dir)).glob("partial-*"):
            leftover.unlink(missing_ok=True)  # orphans of merges cut short in earlier attempts
        return key.seal(payload, _RESULT)
    final = postprocess(processor.load(), merged)
    directory = output.private_dir(_expand(remote_dir))
    for leftover in directory.glob("partial-*"):
        leftover.unlink(missing_ok=True)
    path = output.save(final, directory / output.OUTPUT_NAME)
    return key.seal(cloudpickle.dumps(RemoteOutput(str(path), path.stat().st_size)), _RESULT)


class UnverifiedResult(RemoteEnvironmentError):
    """A result that does not verify with the run's key; it was not unpickled."""


def _open_result(sealed: Any, key: RunKey, endpoint_id: str) -> Any:
    payload = key.open(sealed, _RESULT)
    if payload is None:
        raise UnverifiedResult(f"a result from endpoint {endpoint_id} is not sealed with this "
                               "run's key: refusing to unpickle it")
    return cloudpickle.loads(payload)


class _Opened(Future):
    """The result of ``inner``, opened (`_open_result`) once it arrives; cancelling it
    cancels ``inner``."""

    def __init__(self, inner: Future, key: RunKey, endpoint_id: str) -> None:
        super().__init__()
        self._inner = inner
        inner.add_done_callback(lambda done: self._arrived(done, key, endpoint_id))

    def _arrived(self, inner: Future, key: RunKey, endpoint_id: str) -> None:
        with contextlib.suppress(InvalidStateError):
            if inner.cancelled():
                super().cancel()
            elif inner.exception() is not None:
                self.set_exception(inner.exception())
            else:
                try:
                    value = _open_result(inner.result(), key, endpoint_id)
                except Exception as err:
                    self.set_exception(err)
                else:
                    self.set_result(value)

    def cancel(self) -> bool:
        self._inner.cancel()
        return super().cancel()


def _expand(path: str) -> str:
    return os.path.expanduser(os.path.expandvars(path))


# -- the driver side ----------------------------------------------------------------------


def ensure_logged_in() -> Any:
    """The SDK's Globus app, refusing (without prompting) when no login is stored."""
    sdk = require("globus_compute_sdk", "globus backend", extra="globus")
    from globus_compute_sdk.sdk.auth.globus_app import get_globus_app

    app = get_globus_app()
    if app.login_required():
        raise RemoteEnvironmentError(
            "not logged in to Globus Compute: run 'coffea-hpc globus login' once (or set "
            "GLOBUS_COMPUTE_CLIENT_ID and GLOBUS_COMPUTE_CLIENT_SECRET for a client identity)"
        )
    del sdk
    return app


def _sdk_executor(endpoint_id: str, **options: Any) -> Any:
    from globus_compute_sdk import Client, Executor
    from globus_sdk import GlobusAPIError, GlobusError

    try:
        app = ensure_logged_in()
        return Executor(endpoint_id=endpoint_id, client=Client(app=app), **options)
    except GlobusAPIError as err:  # the service's words can quote the request: not shown
        raise RemoteEnvironmentError(
            f"Globus refused the login or the endpoint (HTTP {err.http_status}, {err.code}): "
            "check 'coffea-hpc globus login', the client identity and --endpoint") from None
    except GlobusError as err:
        raise RemoteEnvironmentError(
            f"cannot reach Globus ({type(err).__name__}): check this machine's network "
            "connection to globus.org") from None


class GlobusBackend(PoolBackend):
    name = "globus"

    def __init__(
        self,
        endpoint_id: str,
        *,
        remote_dir: str = "~/coffea-hpc",
        workers: int = 64,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        batch_size: int = 64,
        api_burst_limit: int = 4,
        api_burst_window_s: int = 16,
        user_endpoint_config: Mapping[str, Any] | None = None,
        check_versions: bool = True,
        task_timeout: float | None = 6 * 3600.0,
        executor_factory: Callable[..., Any] | None = None,
    ) -> None:
        """``executor_factory(endpoint_id=..., **options)`` makes the executor; by default the
        SDK's ``Executor`` with the stored login. ``remote_dir`` is on the endpoint.

        ``task_timeout``: once the endpoint has answered nothing for this many seconds,
        the tasks it still owes (each submitted at least that long ago) count as lost and
        fail, so the error policy retries them instead of the run waiting forever.
        ``max_request_bytes``: the service's payload limit per submission request.
        """
        super().__init__()
        if not endpoint_id:
            raise RemoteEnvironmentError("the globus backend needs an endpoint id: pass "
                                         "--endpoint UUID (globus-compute-endpoint list)")
        self.endpoint_id = endpoint_id
        self.remote_storage = remote_dir.rstrip("/")
        self._run_dir = self.remote_storage
        self._workers = workers
        self.max_result_bytes = max_result_bytes
        self._batch_size = batch_size
        self._max_request_bytes = max_request_bytes
        self._heaviest = 0
        self._options = {"batch_size": batch_size, "api_burst_limit": api_burst_limit,
                         "api_burst_window_s": api_burst_window_s}
        if user_endpoint_config:
            self._options["user_endpoint_config"] = dict(user_endpoint_config)
        self._check_versions = check_versions
        self._factory = executor_factory or _sdk_executor
        self._executor: Any = None
        self._watchdog = _Watchdog(task_timeout) if task_timeout else None
        self._key = RunKey.ephemeral()

    @classmethod
    def from_site(cls, site: Any, *, run_dir: Path | None = None) -> GlobusBackend:
        ex = site.executor
        return cls(ex.endpoint_id or "", remote_dir=ex.remote_dir or "~/coffea-hpc",
                   workers=site.workers(os.cpu_count() or 1),
                   user_endpoint_config=ex.endpoint_config)

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def window(self) -> int | None:
        """No limit: the service takes a few submissions per ten seconds, so tasks go in
        large batches and queue on the endpoint, not one per returned result."""
        return None

    def use_spill_directory(self, directory: str, key: RunKey | None = None) -> None:
        """The run's own folder under ``remote_dir``: spills and the output go there, signed
        with ``key`` (the output directory's, so that a resumed run can verify them)."""
        self._run_dir = directory
        if key is not None:
            self._key = key

    def discard(self, values: list[Any]) -> None:
        """Delete merged-away spilled partials on the endpoint (no need to wait)."""
        from coffea_hpc.reduction.spill import SpilledRef, SpillSet

        paths = [ref.path for v in values
                 for ref in (v.refs if isinstance(v, SpillSet) else (v,))
                 if isinstance(ref, SpilledRef)]
        if paths:
            self._executor.submit(remote_delete, paths)

    def submit(self, element: WorkElement) -> Future:
        args = (element, self._run_dir, self.max_result_bytes, self._key)
        self._fit_batches(wire_size(args), element)
        future = self._executor.submit(run_capped, *args)
        if self._watchdog:
            future = self._watchdog.watch(future)
        return _Opened(future, self._key, self.endpoint_id)

    def _fit_batches(self, size: int, element: WorkElement) -> None:
        """Lower the executor's batch size so that a full batch of the heaviest task seen
        stays within half the request limit (the SDK reads it afresh for every batch)."""
        if size <= self._heaviest:
            return
        budget = self._max_request_bytes // 2
        if size > budget:
            raise ServiceLimitError(
                f"a {type(element).__name__} task takes {size / MB:.1f} MB on its way to the "
                f"endpoint, and the service takes at most {self._max_request_bytes / MB:.0f} MB "
                "per request (coffea-hpc keeps a task under half of that): the processor and "
                "everything it holds travel with every task, so load large inputs "
                "(corrections, models) on the workers from files on the endpoint's storage")
        self._heaviest = size
        batch = max(1, min(self._batch_size, budget // size))
        if batch != getattr(self._executor, "batch_size", batch):
            log.info("tasks of %.2f MB: at most %d per submission request", size / MB, batch)
            self._executor.batch_size = batch

    def finish(self, value: Any, processor: Any) -> Any:
        """Resolve spilled partials on the endpoint (see `remote_finish`)."""
        from coffea_hpc.reduction.spill import SpilledRef, SpillSet

        if not isinstance(value, SpilledRef | SpillSet):
            return value
        future = self._executor.submit(remote_finish, value, self._run_dir,
                                       self.max_result_bytes, processor, self._key)
        return _open_result(future.result(), self._key, self.endpoint_id)

    def _start(self) -> None:
        self._executor = self._factory(endpoint_id=self.endpoint_id, **self._options)
        if self._watchdog is not None:
            self._watchdog.start()
        if self._check_versions:
            try:
                self._compare_versions()
            except BaseException:
                self._close()
                raise

    def _compare_versions(self) -> None:
        from coffea_hpc.sites.check import environment_versions

        theirs = self._executor.submit(remote_versions).result(timeout=600)
        mine = environment_versions()
        differ = [f"{k} {mine[k]} here, {theirs.get(k, 'missing')} on the endpoint"
                  for k in VERSIONS_THAT_MUST_MATCH if theirs.get(k) != mine.get(k)]
        if differ:
            raise RemoteEnvironmentError(
                f"endpoint {self.endpoint_id} runs other software: {'; '.join(differ)} "
                "(install the same versions in the endpoint's environment)")

    def _close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
        if self._executor is not None:
            try:
                self._executor.shutdown(wait=False, cancel_futures=True)
            finally:
                self._executor = None


class TaskLost(RuntimeError):
    """A remote task that was never answered."""


class _Watchdog:
    """Wraps futures; fails those still unanswered when the endpoint goes quiet."""

    def __init__(self, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = timeout
        self._pending: list[tuple[float, Future, Future]] = []
        self._last_answer = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, inner: Future) -> Future:
        outer: Future = Future()
        with self._lock:
            self._pending.append((time.monotonic(), inner, outer))
        inner.add_done_callback(lambda done: self._answered(done, outer))
        return outer

    def start(self) -> None:
        self._stop.clear()
        self._last_answer = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="coffea-hpc-globus-watchdog",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _answered(self, inner: Future, outer: Future) -> None:
        self._last_answer = time.monotonic()
        with contextlib.suppress(InvalidStateError):  # the watchdog answered first
            if inner.cancelled():
                outer.cancel()
            elif inner.exception() is not None:
                outer.set_exception(inner.exception())  # type: ignore[arg-type]
            else:
                outer.set_result(inner.result())

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            now = time.monotonic()
            with self._lock:
                self._pending = [p for p in self._pending if not p[2].done()]
                if now - self._last_answer < self.timeout:
                    continue
                lost = [p for p in self._pending if now - p[0] >= self.timeout]
                self._pending = [p for p in self._pending if now - p[0] < self.timeout]
            for _, inner, outer in lost:
                with contextlib.suppress(InvalidStateError):  # the answer came just now
                    outer.set_exception(TaskLost(
                        f"no answer from the endpoint for {self.timeout:.0f} s while it "
                        "answered nothing else either (endpoint restarted, result lost)"))
                inner.cancel()  # after: its cancellation must not read as the answer
