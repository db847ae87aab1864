"""A stand-in for ``globus_compute_sdk.Executor`` and the service behind it.

The Globus Compute cloud service cannot be reached from here, so the Globus backend is tested
against this stand-in, which keeps the SDK Executor's interface (``submit(fn, *args) ->
concurrent.futures.Future``, ``shutdown``) and the service's documented behaviour:

- tasks are sent in batches of at most ``batch_size`` per API call, and at most
  ``api_burst_limit`` calls are made per ``api_burst_window_s`` seconds (the SDK's client-side
  rate limiting: the stand-in waits, as the SDK does, and records every call);
- a batch whose serialized payload exceeds ``max_payload_bytes`` is refused as a whole;
- a result whose serialized size exceeds ``max_result_bytes`` is refused;
- the "endpoint" is a pool of worker processes, so functions and arguments really travel
  pickled, and can be told to report other package versions, fail tasks, or lose results.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cloudpickle


class ServiceRefused(RuntimeError):
    """What the service answers to a request over its limits."""


@dataclass
class Call:
    at: float
    tasks: int
    payload_bytes: int


def _pretend_versions(overrides: dict[str, str]) -> None:
    """Pool initializer: make the endpoint report other versions."""
    if not overrides:
        return
    import coffea_hpc.sites.check as check

    real = check.environment_versions
    check.environment_versions = lambda: {**real(), **overrides}


def _endpoint_run(payload: bytes, max_result_bytes: int, fail: bool) -> bytes:
    fn, args, kwargs = cloudpickle.loads(payload)
    if fail:
        raise RuntimeError("endpoint worker lost (injected)")
    result = cloudpickle.dumps(fn(*args, **kwargs))
    if len(result) > max_result_bytes:
        raise ServiceRefused(f"task result of {len(result)} bytes exceeds the service's limit "
                             f"of {max_result_bytes} bytes")
    return result


@dataclass
class StandInExecutor:
    endpoint_id: str
    batch_size: int = 128
    api_burst_limit: int = 4
    api_burst_window_s: float = 16
    user_endpoint_config: dict[str, Any] | None = None
    max_payload_bytes: int = 10 * 1024**2
    max_result_bytes: int = 10 * 1024**2
    workers: int = 2
    endpoint_versions: dict[str, str] = field(default_factory=dict)
    fail_tasks: set[int] = field(default_factory=set)
    lose_tasks: set[int] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        context = multiprocessing.get_context("forkserver")
        self._pool = ProcessPoolExecutor(self.workers, mp_context=context,
                                         initializer=_pretend_versions,
                                         initargs=(dict(self.endpoint_versions),))
        self._queue: list[tuple[int, bytes, Future]] = []
        self._lock = threading.Condition()
        self._count = 0
        self._closed = False
        self._sender = threading.Thread(target=self._send_batches, daemon=True)
        self._sender.start()

    # -- the SDK Executor interface -------------------------------------------------------

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        payload = cloudpickle.dumps((fn, args, kwargs))
        with self._lock:
            if self._closed:
                raise RuntimeError("executor is shut down")
            index = self._count
            self._count += 1
            self._queue.append((index, payload, future))
            self._lock.notify()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            if cancel_futures:
                for _, _, future in self._queue:
                    future.cancel()
                self._queue.clear()
            self._lock.notify()
        self._sender.join()
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    # -- the service ----------------------------------------------------------------------

    def _send_batches(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._lock.wait()
                if not self._queue and self._closed:
                    return
                self._lock.wait(0.02)  # let a batch fill, as the SDK does
                batch = self._queue[:self.batch_size]
                del self._queue[:self.batch_size]
            self._respect_rate_limit()
            size = sum(len(p) for _, p, _ in batch)
            self.calls.append(Call(time.monotonic(), len(batch), size))
            if size > self.max_payload_bytes:
                for _, _, future in batch:
                    future.set_exception(ServiceRefused(
                        f"submission payload of {size} bytes exceeds the service's limit of "
                        f"{self.max_payload_bytes} bytes"))
                continue
            for index, payload, future in batch:
                if index in self.lose_tasks:
                    continue  # the result never comes back
                if future.set_running_or_notify_cancel():
                    inner = self._pool.submit(_endpoint_run, payload, self.max_result_bytes,
                                              index in self.fail_tasks)
                    inner.add_done_callback(lambda f, out=future: _deliver(f, out))

    def _respect_rate_limit(self) -> None:
        while True:
            now = time.monotonic()
            recent = [c for c in self.calls if now - c.at < self.api_burst_window_s]
            if len(recent) < self.api_burst_limit:
                return
            time.sleep(self.api_burst_window_s - (now - recent[0].at) + 0.001)


def _deliver(inner: Future, outer: Future) -> None:
    if inner.cancelled():
        outer.cancel()
    elif inner.exception() is not None:
        outer.set_exception(inner.exception())
    else:
        outer.set_result(cloudpickle.loads(inner.result()))
