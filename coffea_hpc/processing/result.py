"""Results: an accumulated processor output plus the ledger of what it covers.

A `Result` is what every piece of work returns and what every backend adds up. Besides the
processor's own output (merged with coffea's accumulate semantics) it carries the entry
ranges it counted, the chunks that failed (with the error, so nothing is silently dropped)
and run metrics. ``a + b`` never mutates its operands; `Result.absorb` folds in place for
the running sum a driver or worker keeps.
"""

from __future__ import annotations

import copy
import operator
import traceback as tb
from collections.abc import Hashable, Mapping, MutableMapping, MutableSet
from dataclasses import dataclass, field, replace
from typing import Any

from coffea_hpc.data.ranges import EntryRanges
from coffea_hpc.errors import MergeError

__all__ = ["DeferredValue", "Failure", "RemoteError", "Result", "merge_values"]


@dataclass(frozen=True)
class RemoteError:
    """An exception that happened elsewhere, kept as plain data.

    Exceptions raised in user code on a worker may not survive pickling; their type names,
    message and formatted traceback always do, and are enough to decide what to do
    (`matches`) and to tell the user (`summary`).
    """

    type_names: tuple[str, ...]
    message: str
    traceback: str = ""
    location: str = ""
    """Where the chunk's file was being read from when it happened, where known."""

    @classmethod
    def from_exception(cls, exc: BaseException, *, skip_frames_in: str = "") -> RemoteError:
        """``skip_frames_in``: leading frames from files under this folder are left out of
        the traceback (coffea-hpc's own, above the analyst's ``process``)."""
        names = tuple(
            f"{t.__module__}.{t.__qualname__}" if t.__module__ != "builtins" else t.__qualname__
            for t in type(exc).__mro__
            if t is not object
        )
        frames = exc.__traceback__
        while skip_frames_in and frames is not None and frames.tb_next is not None \
                and frames.tb_frame.f_code.co_filename.startswith(skip_frames_in):
            frames = frames.tb_next
        text = "".join(tb.format_exception(type(exc), exc, frames))
        return cls(names, str(exc), text)

    @property
    def type_name(self) -> str:
        return self.type_names[0].rsplit(".", 1)[-1] if self.type_names else "Exception"

    def matches(self, types: tuple[type[BaseException], ...]) -> bool:
        """Whether the original exception was an instance of one of ``types``."""
        wanted = {
            f"{t.__module__}.{t.__qualname__}" if t.__module__ != "builtins" else t.__qualname__
            for t in types
        }
        return any(name in wanted for name in self.type_names)

    def summary(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


@dataclass(frozen=True)
class Failure:
    """A unit of work (a chunk, or a file while preprocessing) that did not succeed."""

    key: Hashable
    error: RemoteError
    attempts: int = 1
    label: str = ""
    kind: str = ""
    """What failed, which decides the retry budget it spent: ``io`` (reading the data),
    ``processor`` (the analyst's code), ``worker`` (the process running it died)."""

    def describe(self) -> str:
        return f"{self.label or self.key}: {self.error.summary()}"


class DeferredValue:
    """A stand-in for an output that lives elsewhere (a partial spilled to storage).

    Adding anything to it defers the merge: subclasses collect what is added and are
    resolved later, where memory allows (`coffea_hpc.reduction`).
    """

    def __add__(self, other: Any) -> Any:
        raise NotImplementedError

    def __radd__(self, other: Any) -> Any:
        return self.__add__(other)


def merge_values(a: Any, b: Any, *, in_place: bool = False) -> Any:
    """coffea's accumulate semantics for two values; ``None`` is the identity."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, DeferredValue):
        return a + b
    if isinstance(b, DeferredValue):
        return b + a
    try:
        return _iadd(a, b) if in_place else _add(a, b)
    except (ValueError, TypeError) as err:
        raise MergeError(f"cannot merge {type(a).__name__} with {type(b).__name__}: {err}") from err


# coffea.processor.accumulator's add and iadd, rule for rule (tests hold them equal). Theirs
# tell addable values apart with a runtime Protocol check, which cost a third of a driver's
# time per chunk at 10^4 chunks; a look-up of ``__add__`` is the same test, made directly.
# Not importing coffea.processor also spares merge-only processes (MPI ranks, merge tasks)
# its ~0.6 s import.


def _add(a: Any, b: Any) -> Any:
    if hasattr(a, "__add__") and hasattr(b, "__add__"):
        return operator.add(a, b)
    if isinstance(a, MutableSet) and isinstance(b, MutableSet):
        return operator.or_(a, b)
    if isinstance(a, MutableMapping) and isinstance(b, MutableMapping):
        if isinstance(b, type(a)):
            out = copy.copy(a)
        elif isinstance(a, type(b)):
            out = copy.copy(b)
        else:
            raise ValueError(f"Cannot add two mappings of incompatible type ({type(a)} vs. "
                             f"{type(b)})")
        out.clear()
        for key in a:  # a's order first, as coffea keeps it
            out[key] = _add(a[key], b[key]) if key in b else copy.deepcopy(a[key])
        for key in b:
            if key not in a:
                out[key] = copy.deepcopy(b[key])
        return out
    raise ValueError(f"Cannot add accumulators of incompatible type ({type(a)} vs. {type(b)})")


def _iadd(a: Any, b: Any) -> Any:
    # plain dicts and sets, the common case, are told apart by their type first: the same
    # rules (neither has ``__add__``), without the abstract-class checks that took a
    # tenth of a driver's time per chunk
    if type(a) is dict and type(b) is dict:
        return _iadd_mapping(a, b)
    if hasattr(a, "__add__") and hasattr(b, "__add__"):
        return operator.iadd(a, b)
    if (type(a) is set or isinstance(a, MutableSet)) and \
            (type(b) is set or isinstance(b, MutableSet)):
        return operator.ior(a, b)
    if isinstance(a, MutableMapping) and isinstance(b, MutableMapping):
        if not isinstance(b, type(a)):
            raise ValueError(f"Cannot add two mappings of incompatible type ({type(a)} vs. "
                             f"{type(b)})")
        return _iadd_mapping(a, b)
    raise ValueError(f"Cannot add accumulators of incompatible type ({type(a)} vs. {type(b)})")


def _iadd_mapping(a: MutableMapping[Any, Any], b: Mapping[Any, Any]) -> MutableMapping[Any, Any]:
    """b's keys only: a running sum keyed by dataset is not walked whole for every chunk."""
    for key in b:
        a[key] = _iadd(a[key], b[key]) if key in a else copy.deepcopy(b[key])
    return a


@dataclass
class Result:
    """An addable partial result.

    ``value`` is the processor's output before ``postprocess`` (``None`` when empty);
    ``processed`` the entries it counted; ``failures`` the work it could not do;
    ``unattempted`` the keys of an element it did not start, because an earlier one failed
    (they go back to the queue at no cost to their retries).
    """

    value: Any = None
    processed: EntryRanges = field(default_factory=EntryRanges)
    failures: tuple[Failure, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)
    unattempted: tuple[Hashable, ...] = ()
    chunk_rows: tuple[dict[str, Any], ...] = field(default=(), repr=False, compare=False)
    """What the worker measured per chunk (`coffea_hpc.processing.measure`): read by the
    driver as the result arrives, never added up (``+`` and `absorb` drop it)."""
    _owned: bool = field(default=False, repr=False, compare=False)
    _owned_metrics: bool = field(default=False, repr=False, compare=False)

    @property
    def is_empty(self) -> bool:
        return self.value is None and not self.processed and not self.failures

    def __add__(self, other: Result) -> Result:
        if not isinstance(other, Result):
            return NotImplemented
        return Result(
            value=merge_values(self.value, other.value),
            processed=self.processed + other.processed,
            failures=self.failures + other.failures,
            metrics=merge_values(self.metrics or None, other.metrics or None) or {},
        )

    def __radd__(self, other: Any) -> Result:
        if other == 0 or other is None:  # sum() starts from 0
            return self
        return NotImplemented

    def absorb(self, other: Result) -> Result:
        """Fold ``other`` into this result in place and return it.

        The first fold copies, so an object the processor handed out (and may still hold)
        is never mutated; later folds reuse the running sum. The metrics are folded in
        place too: among them is the set of files read, which grows with the run, and
        adding it up afresh for every result made a driver's cost per chunk grow with the
        number of files.
        """
        if self.processed is other.processed:
            self.processed = EntryRanges()  # never update a ledger shared with ``other``
        self.processed.update(other.processed)  # checks overlap before any mutation
        if other.value is not None:  # else the value and its ownership stay as they are
            was_empty = self.value is None
            self.value = merge_values(self.value, other.value, in_place=self._owned)
            self._owned = not was_empty
        self._absorb_metrics(other.metrics)
        self.failures = self.failures + other.failures
        return self

    def _absorb_metrics(self, metrics: dict[str, Any]) -> None:
        if not metrics:
            return
        if not self.metrics:
            self.metrics = copy.deepcopy(metrics)  # one result's worth: small
        else:
            if not self._owned_metrics:  # once: it may be a dict someone else holds
                self.metrics = copy.deepcopy(self.metrics)
            self.metrics = merge_values(self.metrics, metrics, in_place=True)
        self._owned_metrics = True

    def without_failures(self) -> Result:
        """This result without its failures, sharing its value and metrics: folding into
        it copies them first, as for anything not its own."""
        return replace(self, failures=(), unattempted=(), chunk_rows=(), _owned=False,
                       _owned_metrics=False)
