"""Retries of chunks whose data failed to read wait, doubling each time; others do not.

A storage server that restarts refuses connections for a few seconds: retried at once, a
chunk spends its whole retry budget within that time and the run fails for nothing."""

from __future__ import annotations

import time
from collections.abc import Hashable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise

import pytest

from coffea_hpc.backends import ErrorPolicy
from coffea_hpc.backends._task import FutureTask
from coffea_hpc.errors import ChunkFailedError
from coffea_hpc.processing.result import Result


@dataclass
class Attempts:
    """When each attempt of each key started; the first ``fail`` attempts raise ``error``."""

    error: type[Exception]
    fail: int
    started: dict[Hashable, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Element:
    key: Hashable
    log: Attempts

    @property
    def keys(self) -> tuple[Hashable, ...]:
        return (self.key,)

    @property
    def weight(self) -> int:
        return 1

    def __call__(self) -> Result:
        times = self.log.started.setdefault(self.key, [])
        times.append(time.monotonic())
        if len(times) <= self.log.fail:
            raise self.log.error(f"attempt {len(times)} of {self.key} failed")
        return Result(value={"n": 1})


@dataclass(frozen=True)
class Work:
    names: tuple[Hashable, ...]
    log: Attempts

    def __iter__(self) -> Iterator[Element]:
        return (Element(k, self.log) for k in self.names)

    def __len__(self) -> int:
        return len(self.names)

    def keys(self) -> tuple[Hashable, ...]:
        return self.names

    def subset(self, keys: Iterable[Hashable]) -> Work:
        wanted = set(keys)
        return Work(tuple(k for k in self.names if k in wanted), self.log)


def run(log: Attempts, policy: ErrorPolicy, n: int = 3) -> Result:
    with ThreadPoolExecutor(2) as pool:
        return FutureTask(Work(tuple(range(n)), log), lambda e: pool.submit(e),
                          policy, window=2).result()


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in pairwise(times)]


def test_a_read_error_is_retried_after_a_wait_that_doubles():
    log = Attempts(OSError, fail=3)
    result = run(log, ErrorPolicy(max_retries=3, io_retry_delay=0.2))
    assert result.value == {"n": 3}
    for times in log.started.values():
        waited = gaps(times)
        assert len(waited) == 3
        assert waited[0] >= 0.2 and waited[1] >= 0.4 and waited[2] >= 0.8, waited


def test_the_wait_stops_growing_at_its_cap():
    log = Attempts(OSError, fail=4)
    run(log, ErrorPolicy(max_retries=4, io_retry_delay=0.1, io_retry_delay_max=0.15), n=1)
    waited = gaps(log.started[0])
    assert all(w >= 0.1 for w in waited) and max(waited) < 1.0, waited


def test_an_error_of_the_processor_is_retried_at_once():
    log = Attempts(ValueError, fail=1)
    result = run(log, ErrorPolicy(max_retries=1, io_retry_delay=5.0))
    assert result.value == {"n": 3}
    assert all(gaps(times)[0] < 2.0 for times in log.started.values())


def test_a_waiting_retry_is_dropped_when_the_task_is_cancelled():
    log = Attempts(OSError, fail=5)
    with ThreadPoolExecutor(1) as pool:
        task = FutureTask(Work((0,), log), lambda e: pool.submit(e),
                          ErrorPolicy(max_retries=5, io_retry_delay=0.3), window=1)
        task.wait(timeout=0.1)
        task.cancel()
        time.sleep(0.5)
        with pytest.raises(ChunkFailedError, match="cancelled"):
            task.result()
    assert len(log.started[0]) == 1


def test_a_budget_spent_on_read_errors_still_stops_the_run():
    log = Attempts(OSError, fail=10)
    with pytest.raises(ChunkFailedError, match="after 3 attempts"):
        run(log, ErrorPolicy(max_retries=2, io_retry_delay=0.05), n=1)


def test_the_delays_are_checked():
    with pytest.raises(ValueError, match="io_retry_delay"):
        ErrorPolicy(io_retry_delay=2.0, io_retry_delay_max=1.0)
