"""What runs on a worker: process a batch of chunks into one `Result`.

State kept per worker process, so that it is paid once and not per chunk: the unpickled
processor (by digest), the open files and their NanoEvents forms. Each chunk's failure is
caught and returned as data, so one bad chunk does not throw away the rest of its batch.

None of that state may grow with the files a worker has seen: the files are a small LRU
(`EventsBuilder`), and what a closed file leaves behind (cycles: uproot's model of the tree,
the schema) is freed by full collections made here (`_OldGarbage`), since with the thresholds
of `_fewer_gc_pauses` Python itself would hardly ever make one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import uproot
from coffea.nanoevents import schemas

from coffea_hpc.data.chunks import Chunk
from coffea_hpc.data.ranges import EntryRanges
from coffea_hpc.errors import ReadError, UserError
from coffea_hpc.processing.events import EventsBuilder, NoReadableLocationError
from coffea_hpc.processing.formcache import FormCache
from coffea_hpc.processing.measure import ChunkProbe
from coffea_hpc.processing.processor import ProcessorHandle, run_processor
from coffea_hpc.processing.result import Failure, RemoteError, Result
from coffea_hpc.reduction.spill import SpilledRef, SpillPolicy, SpillSet, serialized_size
from coffea_hpc.reduction.spill import spill as spill_value

__all__ = ["SCHEMAS", "freeze_startup_objects", "process_chunks", "resolve_schema"]

SCHEMAS = {
    "nanoaod": "NanoAODSchema",
    "base": "BaseSchema",
    "physlite": "PHYSLITESchema",
    "delphes": "DelphesSchema",
    "treemaker": "TreeMakerSchema",
    "pfnano": "PFNanoAODSchema",
}

_BUILDER: EventsBuilder | None = None

_OWN_CODE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
"""coffea-hpc's folder: its frames are left out of the tracebacks shown to analysts."""

_UPROOT = os.path.dirname(os.path.abspath(uproot.__file__)) + os.sep
_MISTAKES = (TypeError, AttributeError, NameError, ImportError, AssertionError, KeyError)
"""Raised in uproot, these mean the code asked for something wrong, not that data is bad."""


def _as_read_error(exc: Exception, chunk: Chunk) -> Exception:
    """``exc`` as a `ReadError` if it is the data that failed, not the processor.

    An OSError is one already. Otherwise the innermost frame says where it failed: inside
    uproot (deserialising, decompressing, interpreting a basket) it is the file; anywhere
    else — the processor, awkward, coffea — it is the analysis.
    """
    if isinstance(exc, (OSError, *_MISTAKES)):
        return exc
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is None or not frame.tb_frame.f_code.co_filename.startswith(_UPROOT):
        return exc
    error = ReadError(f"cannot read {chunk.filename}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error.with_traceback(exc.__traceback__)


def resolve_schema(name: str) -> type[schemas.BaseSchema]:
    """A schema by short name (``nanoaod``, ``base``, ...) or dotted path to a class."""
    short = SCHEMAS.get(name.lower())
    if short is not None:
        return getattr(schemas, short)
    module_name, sep, attr = name.replace(":", ".").rpartition(".")
    if not sep:
        raise UserError(
            f"unknown schema {name!r}: use one of {', '.join(SCHEMAS)} or a dotted path "
            "such as 'mypackage.schemas.MySchema'"
        )
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise UserError(f"cannot load schema {name!r}: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, schemas.BaseSchema)):
        raise UserError(f"schema {name!r} is not a coffea BaseSchema subclass")
    return cls


def builder(uproot_options: Mapping[str, Any] | None = None,
            form_cache: str | None = None) -> EventsBuilder:
    """This process's builder, for these uproot options: a run with other options (another
    timeout, handler) gets a new one, and the files the old one kept are closed. With
    ``form_cache`` (a folder), forms are kept there between runs."""
    global _BUILDER
    options = dict(uproot_options or {})
    if _BUILDER is not None and _BUILDER.uproot_options != options:
        _BUILDER.close()
        _BUILDER = None
    if _BUILDER is None:
        _BUILDER = EventsBuilder(uproot_options=options)
    kept = _BUILDER.form_cache
    if form_cache is None:
        _BUILDER.form_cache = None
    elif kept is None or str(kept.directory) != form_cache:
        _BUILDER.form_cache = FormCache(form_cache)
    return _BUILDER


class _OldGarbage:
    """When to collect the oldest generation, which holds what closed files left behind.

    A file stays open across several chunks, so its objects reach the oldest generation;
    closed, they are garbage there, and with the thresholds of `_fewer_gc_pauses` (and
    CPython's rule of not collecting it before pending objects reach a quarter of the
    long-lived ones) a worker reading many files grew by megabytes per file, until a
    collection that took seconds. A full collection visits the live heap (coffea, numba, the
    open files: tenths of a second) and the garbage (a NanoAOD file's model of its tree,
    ~10^5 objects). Visiting the garbage costs the same however it is batched; only the visits
    of the live heap add up with frequency. So one runs after a chunk when the last one was
    long enough ago that visiting the live heap takes at most ``share`` of the time, or when
    ``max_files`` files were closed since (a bound for workers whose live heap is so large
    that collections are rare).
    """

    def __init__(self, *, share: float = 0.05, max_files: int = 64) -> None:
        self.share = share
        self.max_files = max_files
        self._at = -float("inf")
        self._live_cost = 0.0
        self._closed = 0

    def after_chunk(self, files_closed: int) -> None:
        now = time.perf_counter()
        if now - self._at < self._live_cost / self.share \
                and files_closed - self._closed < self.max_files:
            return
        found = gc.collect()
        self._at = time.perf_counter()
        live = len(gc.get_objects())
        self._live_cost = (self._at - now) * live / max(live + found, 1)
        self._closed = files_closed


_OLD_GARBAGE = _OldGarbage()


def freeze_startup_objects() -> None:
    """Leave what a worker process starts with out of every later collection.

    Meant for processes that only run work, as they start: the imports of coffea, awkward
    and numba are ~10^5 objects that live as long as the process, and every full collection
    would visit them again (most of its cost on small files). In a process forked from a
    server that preloaded them, visiting them also writes to the pages it shares with its
    siblings, so each worker ends up with a private copy.
    """
    gc.freeze()


@contextlib.contextmanager
def _fewer_gc_pauses() -> Iterator[None]:
    """Raise the first GC threshold while processing.

    Building NanoEvents for real NanoAOD allocates ~10^5 short-lived objects per chunk; at
    Python's default threshold that triggers collections of the whole heap (coffea, numba and
    awkward are large) several times per chunk, which costs more than building the chunk.
    """
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], 100_000), before[1], max(before[2], 100))
    try:
        yield
    finally:
        gc.set_threshold(*before)


def process_chunks(
    processor: ProcessorHandle,
    chunks: Sequence[Chunk],
    schema: str,
    *,
    metrics: bool = True,
    spill: SpillPolicy | None = None,
    uproot_options: Mapping[str, Any] | None = None,
    form_cache: str | None = None,
) -> Result:
    """Run the processor over ``chunks`` (in order) and fold their outputs.

    With ``spill``, the running sum is written to storage whenever it reaches the policy's
    threshold (and at the end if it is at least that big), and only references are returned.
    The first chunk that fails ends the batch: the chunks after it are returned unattempted,
    so a processor that raises on every chunk is not called for all of them.

    A chunk whose read fails with an I/O error (`OSError`: a timeout, a lost server) is
    tried at the file's next location before it counts as failed; the result says where
    each file was read from (``metrics["read_from"]``) and which locations failed
    (``metrics["failed_locations"]``). ``form_cache``: the folder where NanoEvents forms are
    kept between runs (`coffea_hpc.processing.formcache`), for workers on the driver's machine.
    """
    files = builder(uproot_options, form_cache)
    probe = ChunkProbe(chunks[0], 0)
    try:
        proc = processor.load()
        schemaclass = resolve_schema(schema)
        files.use_schema(schemaclass)  # after the processor's import, which may change it
    except Exception as exc:  # the analyst's code cannot be loaded here: data, not a crash
        error = RemoteError.from_exception(exc, skip_frames_in=_OWN_CODE)
        return Result(failures=(Failure(chunks[0].key, error, label=chunks[0].describe()),),
                      unattempted=tuple(c.key for c in chunks[1:]),
                      chunk_rows=(probe.row("failed", 0, error=error.summary()),))
    acc = Result()
    failures: list[Failure] = []
    spilled: list[SpilledRef] = []
    unattempted: tuple[Any, ...] = ()
    rows: list[dict[str, Any]] = []
    with _fewer_gc_pauses():
        for i, chunk in enumerate(chunks):
            probe = ChunkProbe(chunk, files.bytes_read(chunk.filename, chunk.treename))
            tried: list[str] = []
            try:
                part = _process_at_any_location(files, proc, chunk, schemaclass, metrics,
                                                tried)
                acc.absorb(part)
            except Exception as exc:
                error = RemoteError.from_exception(_as_read_error(exc, chunk),
                                                   skip_frames_in=_OWN_CODE)
                if tried:
                    error = dataclasses.replace(error, location=tried[-1])
                failures.append(Failure(chunk.key, error, label=chunk.describe()))
                unattempted = tuple(c.key for c in chunks[i + 1:])
                rows.append(probe.row("failed", files.bytes_read(chunk.filename,
                                                                 chunk.treename),
                                      error=error.summary()))
                break
            finally:
                acc.absorb(_failed_locations(files))
                _OLD_GARBAGE.after_chunk(files.closed)
            rows.append(_ok_row(probe, part, files))
            if spill is not None and spill.threshold > 0 and acc.value is not None \
                    and serialized_size(acc.value) >= spill.threshold:
                spilled.append(spill_value(acc.value, spill.directory, spill.key))
                acc.value, acc._owned = None, False
    if spill is not None and acc.value is not None \
            and serialized_size(acc.value) >= spill.threshold:
        spilled.append(spill_value(acc.value, spill.directory, spill.key))
        acc.value = None
    if spilled:
        acc.value = SpillSet(tuple(spilled), acc.value)
    acc.failures = tuple(failures)
    acc.unattempted = unattempted
    acc.chunk_rows = tuple(rows)
    return acc


def _ok_row(probe: ChunkProbe, part: Result, events: EventsBuilder) -> dict[str, Any]:
    chunk = probe.chunk
    columns = sorted(part.metrics.get("columns", ()))
    try:
        per_column = events.column_bytes(chunk, columns)
    except Exception:  # a tree whose metadata is unusual: the chunk's result matters more
        per_column = {}
    return probe.row("ok", events.bytes_read(chunk.filename, chunk.treename),
                     stats=part.metrics, column_bytes=per_column)


def _process_at_any_location(files: EventsBuilder, proc: Any, chunk: Chunk,
                             schemaclass: type, metrics: bool, tried: list[str]) -> Result:
    """Process the chunk, moving to the file's next location when a read fails.

    Events are virtual: the processor's own ``process`` reads the columns, so a storage
    failure surfaces there, as an `OSError` (or an error raised inside uproot, which
    `_as_read_error` takes for the data's), and the chunk is processed again from another
    location (processors are functions of their events, as coffea requires). Whatever
    fails, the file is closed: a retry must not reuse a dead connection. Each location
    that failed is added to ``tried``, for the report.
    """
    failed: set[str] = set()
    attempts: list[tuple[str, str]] = []
    while True:
        try:
            return _process_one(files, proc, chunk, schemaclass, metrics, frozenset(failed))
        except NoReadableLocationError as exc:  # no location left that opens
            if attempts:
                raise NoReadableLocationError(chunk.filename, (*attempts, *exc.attempts)) \
                    from exc
            raise
        except Exception as exc:
            location = files.location(chunk.filename, chunk.treename)
            files.forget(chunk.filename, chunk.treename)
            if location is not None:
                tried.append(location)
            if location is None or not isinstance(_as_read_error(exc, chunk), OSError):
                raise  # the processor's own error, or an open that failed (and was recorded)
            message = f"{type(exc).__name__}: {exc}"
            files.failed.append((chunk.filename, location, message))
            if not chunk.replicas:
                raise
            failed.add(location)
            attempts.append((location, message))
            if len(failed) > len(chunk.replicas):
                raise NoReadableLocationError(chunk.filename, tuple(attempts)) from exc


def _failed_locations(files: EventsBuilder) -> Result:
    failed = files.take_failed()
    return Result(metrics={"failed_locations": set(failed)}) if failed else Result()


def _process_one(files: EventsBuilder, proc: Any, chunk: Chunk, schemaclass: type,
                 metrics: bool, exclude: frozenset[str]) -> Result:
    start = time.perf_counter()
    columns: list[Any] = []
    events = files.events(chunk, schemaclass, access_log=columns if metrics else None,
                          exclude=exclude)
    location = files.location(chunk.filename, chunk.treename)
    built = time.perf_counter()
    out = run_processor(proc, events)
    done = time.perf_counter()
    # coffea drops a None output too, silently; here the chunk is counted as one without
    # output, so the report says how many gave nothing (always, metrics or not)
    stats: dict[str, Any] = {"no_output": 1} if out is None else {}
    stats["read_from"] = {(chunk.filename, location)}
    if metrics:
        stats.update({
            "entries": chunk.entries,
            "chunks": 1,
            "buildtime": built - start,
            "processtime": done - built,
            "columns": {getattr(c, "branch", c) for c in columns},
        })
    return Result(
        value=out,
        processed=EntryRanges.of((chunk.dataset, chunk.filename, chunk.treename),
                                 chunk.entrystart, chunk.entrystop),
        metrics=stats,
    )
