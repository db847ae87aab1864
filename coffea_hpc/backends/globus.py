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
- credentials are the SDK's own (its login flow and token storage); nothing here reads,
  prints or logs a token.
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

from coffea_hpc.backends._base import PoolBackend
from coffea_hpc.backends.protocol import WorkElement
from coffea_hpc.errors import RemoteEnvironmentError
from coffea_hpc.extras import require
from coffea_hpc.output import RemoteOutput
from coffea_hpc.processing.result import Result

__all__ = ["DEFAULT_MAX_RESULT_BYTES", "GlobusBackend", "ensure_logged_in"]

log = logging.getLogger(__name__)

DEFAULT_MAX_RESULT_BYTES = 4 * 1024**2
"""Below the per-task result limit the service documents (the smallest published is 5 MB)."""

VERSIONS_THAT_MUST_MATCH = ("python", "coffea-hpc", "coffea", "awkward", "uproot")


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


def run_capped(element: WorkElement, remote_dir: str, max_result_bytes: int) -> Any:
    """Run ``element`` on the endpoint; spill its value there if the result is too big."""
    result = element()
    if not isinstance(result, Result) or result.value is None:
        return result
    if len(cloudpickle.dumps(result)) <= max_result_bytes:
        return result
    from coffea_hpc.reduction.spill import spill

    result.value = spill(result.value, _expand(remote_dir))
    return result


def remote_finish(value: Any, remote_dir: str, max_result_bytes: int,
                  processor: Any) -> Any:
    """Merge spilled partials on the endpoint; bring the sum back if it fits, else write the
    postprocessed output there and return where it is."""
    from coffea_hpc import output
    from coffea_hpc.processing.processor import postprocess
    from coffea_hpc.reduction.merge import resolve

    merged = resolve(value, delete=True)
    if len(cloudpickle.dumps(merged)) <= max_result_bytes:
        for leftover in Path(_expand(remote_dir)).glob("partial-*"):
            leftover.unlink(missing_ok=True)  # orphans of merges cut short in earlier attempts
        return merged
    final = postprocess(processor.load(), merged)
    directory = output.private_dir(_expand(remote_dir))
    for leftover in directory.glob("partial-*"):
        leftover.unlink(missing_ok=True)
    path = output.save(final, directory / output.OUTPUT_NAME)
    return RemoteOutput(str(path), path.stat().st_size)


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

    app = ensure_logged_in()
    return Executor(endpoint_id=endpoint_id, client=Client(app=app), **options)


class GlobusBackend(PoolBackend):
    name = "globus"

    def __init__(
        self,
        endpoint_id: str,
        *,
        remote_dir: str = "~/coffea-hpc",
        workers: int = 64,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
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

        ``task_timeout``: a task without an answer after this many seconds counts as lost
        (an endpoint restarted, a result that never made it back) and fails, so the error
        policy retries it instead of the run waiting forever.
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
        self._options = {"batch_size": batch_size, "api_burst_limit": api_burst_limit,
                         "api_burst_window_s": api_burst_window_s}
        if user_endpoint_config:
            self._options["user_endpoint_config"] = dict(user_endpoint_config)
        self._check_versions = check_versions
        self._factory = executor_factory or _sdk_executor
        self._executor: Any = None
        self._watchdog = _Watchdog(task_timeout) if task_timeout else None

    @classmethod
    def from_site(cls, site: Any, *, run_dir: Path | None = None) -> GlobusBackend:
        ex = site.executor
        return cls(ex.endpoint_id or "", remote_dir=ex.remote_dir or "~/coffea-hpc",
                   workers=site.workers(os.cpu_count() or 1),
                   user_endpoint_config=ex.endpoint_config)

    @property
    def workers(self) -> int:
        return self._workers

    def use_spill_directory(self, directory: str) -> None:
        """The run's own folder under ``remote_dir``: spills and the output go there."""
        self._run_dir = directory

    def discard(self, values: list[Any]) -> None:
        """Delete merged-away spilled partials on the endpoint (no need to wait)."""
        from coffea_hpc.reduction.spill import SpilledRef, SpillSet

        paths = [ref.path for v in values
                 for ref in (v.refs if isinstance(v, SpillSet) else (v,))
                 if isinstance(ref, SpilledRef)]
        if paths:
            self._executor.submit(remote_delete, paths)

    def submit(self, element: WorkElement) -> Future:
        future = self._executor.submit(run_capped, element, self._run_dir,
                                       self.max_result_bytes)
        return self._watchdog.watch(future) if self._watchdog else future

    def finish(self, value: Any, processor: Any) -> Any:
        """Resolve spilled partials on the endpoint (see `remote_finish`)."""
        from coffea_hpc.reduction.spill import SpilledRef, SpillSet

        if not isinstance(value, SpilledRef | SpillSet):
            return value
        future = self._executor.submit(remote_finish, value, self._run_dir,
                                       self.max_result_bytes, processor)
        return future.result()

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
    """A remote task that gave no answer in time."""


class _Watchdog:
    """Fails futures that stay unanswered longer than ``timeout`` seconds."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._pending: list[tuple[float, Future, Future]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, inner: Future) -> Future:
        outer: Future = Future()

        def relay(done: Future) -> None:
            with contextlib.suppress(InvalidStateError):  # the watchdog answered first
                if done.cancelled():
                    outer.cancel()
                elif done.exception() is not None:
                    outer.set_exception(done.exception())
                else:
                    outer.set_result(done.result())

        with self._lock:
            self._pending.append((time.monotonic() + self.timeout, inner, outer))
        inner.add_done_callback(relay)
        return outer

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="coffea-hpc-globus-watchdog",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            now = time.monotonic()
            with self._lock:
                late = [(i, o) for d, i, o in self._pending if d <= now and not o.done()]
                self._pending = [(d, i, o) for d, i, o in self._pending
                                 if d > now and not o.done()]
            for inner, outer in late:
                with contextlib.suppress(InvalidStateError):  # the answer came just now
                    outer.set_exception(TaskLost(
                        f"no answer from the endpoint after {self.timeout:.0f} s"))
                inner.cancel()  # after: its cancellation must not read as the answer
