"""The contract every backend keeps.

A `Backend` is a context manager that owns some compute (a thread, a process pool, a Parsl
DataFlowKernel, a Dask cluster, a Globus Compute endpoint). ``compute(work)`` hands it a
`Computable` and returns a `Task` at once. The task adds up the `Result` of each element as
it arrives; at any time ``partial_result()`` gives what is done and the work that remains,
and ``partial + backend.compute(remaining).result()`` equals the full result.

Because every backend honours this, a processor never changes when the backend does, and one
parametrised test suite checks them all.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from coffea_hpc.processing.result import Result

__all__ = [
    "Backend",
    "Computable",
    "ErrorPolicy",
    "Task",
    "TaskProgress",
    "TaskStatus",
    "WorkElement",
]


@runtime_checkable
class WorkElement(Protocol):
    """One schedulable piece of a computation, run where the backend puts it.

    ``keys`` name the units (chunks, files) it covers; the `Result` it returns lists, as
    failures, any of those keys it could not do. It must pickle.
    """

    @property
    def keys(self) -> tuple[Hashable, ...]: ...

    @property
    def weight(self) -> int:
        """Events (or other units) it represents, for progress bars."""
        ...

    def __call__(self) -> Result: ...


@runtime_checkable
class Computable(Protocol):
    """A computation as a sequence of elements that can be restricted to some keys."""

    def __iter__(self) -> Iterator[WorkElement]: ...

    def __len__(self) -> int:
        """The number of keys (chunks, files) in the computation."""
        ...

    def keys(self) -> Sequence[Hashable]: ...

    def subset(self, keys: Iterable[Hashable]) -> Computable:
        """The same computation restricted to ``keys`` (order kept)."""
        ...


class TaskStatus(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class TaskProgress:
    """A snapshot for progress bars: keys and weight (events) done, failed, in total."""

    total: int
    done: int
    failed: int
    total_weight: int
    done_weight: int
    retries: int = 0
    """Retries launched so far."""
    retrying: int = 0
    """Keys that failed at least once and are being tried again now."""
    workers: int | None = None
    """Workers connected to the backend now, where it can tell (see `watch`)."""
    blocks: tuple[int, int] | None = None
    """Batch jobs of workers (pending, running), where the backend has them."""
    cores: int | None = None
    """The backend's slots, for events/s per core where connected workers are unknown."""


@dataclass(frozen=True, kw_only=True)
class ErrorPolicy:
    """What to do when a unit of work fails.

    Failures are of three kinds, each with its retry budget: a unit whose data failed to
    read (an `OSError`) or whose worker died is retried up to ``max_retries`` times (a
    storage server or a node has bad moments); an exception raised by the processor is
    retried ``processor_retries`` times, none by default: a bug fails the same way again,
    and a retry would only delay the message. Errors matching ``cancel_on`` stop the task
    at once. A unit that still fails afterwards is recorded as failed (and the task goes
    on) if its error matches ``continue_on``; otherwise the task stops with
    `ChunkFailedError`, keeping what it had computed.

    A unit that failed to read its data (an `OSError`: a storage server restarting, a
    timeout) is retried after ``io_retry_delay`` seconds, doubled at each attempt up to
    ``io_retry_delay_max``: retried at once, a whole retry budget is spent within the
    second a server takes to come back. Other errors are retried at once.
    """

    max_retries: int = 1
    processor_retries: int = 0
    continue_on: tuple[type[BaseException], ...] = ()
    cancel_on: tuple[type[BaseException], ...] = (KeyboardInterrupt, MemoryError)
    io_retry_delay: float = 0.5
    io_retry_delay_max: float = 30.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.processor_retries < 0:
            raise ValueError("retries must be >= 0, got max_retries="
                             f"{self.max_retries}, processor_retries={self.processor_retries}")
        if self.io_retry_delay < 0 or self.io_retry_delay_max < self.io_retry_delay:
            raise ValueError("need 0 <= io_retry_delay <= io_retry_delay_max, got "
                             f"{self.io_retry_delay} and {self.io_retry_delay_max}")

    def io_retry_wait(self, attempts: int) -> float:
        """Seconds to wait before attempt ``attempts + 1`` of a unit whose data failed to
        read."""
        return min(self.io_retry_delay * 2 ** max(attempts - 1, 0), self.io_retry_delay_max)

    def budget(self, kind: str) -> int:
        """The retries a unit gets for a failure of ``kind`` (see `Failure.kind`)."""
        return self.processor_retries if kind == "processor" else self.max_retries

    @classmethod
    def skip_bad_files(cls, *, max_retries: int = 1, processor_retries: int = 0) -> ErrorPolicy:
        """Go on past files that cannot be opened or read (the ``--skip-bad-files`` flag)."""
        return cls(max_retries=max_retries, processor_retries=processor_retries,
                   continue_on=(OSError,))

    @classmethod
    def continue_on_error(cls, *, max_retries: int = 1,
                          processor_retries: int = 0) -> ErrorPolicy:
        """Go on past any chunk that fails, the processor's own exceptions included (the
        ``--continue-on-error`` flag); every failure is listed in the report."""
        return cls(max_retries=max_retries, processor_retries=processor_retries,
                   continue_on=(Exception,))


@runtime_checkable
class Task(Protocol):
    """A running computation. Every method is safe to call from one thread at a time."""

    def done(self) -> bool: ...

    def status(self) -> TaskStatus: ...

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the task ends or ``timeout`` seconds pass; return `done()`."""
        ...

    def result(self) -> Result:
        """The full result. Raises `ChunkFailedError` if the error policy stopped the task."""
        ...

    def partial_result(self) -> tuple[Result, Computable]:
        """What is done so far, and the work not done (unfinished or failed)."""
        ...

    def progress(self) -> TaskProgress: ...

    def cancel(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    """Owns compute for the duration of a ``with`` block."""

    name: str

    def __enter__(self) -> Backend: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    @property
    def workers(self) -> int:
        """How many elements it can run at once (for choosing batch sizes)."""
        ...

    def compute(self, work: Computable, policy: ErrorPolicy | None = None, *,
                reducer: object | None = None) -> Task:
        """Start ``work``; ``reducer`` merges partial results while it runs."""
        ...
