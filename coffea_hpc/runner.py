"""A whole run: preprocess, process every chunk, merge, write one output.

`run` is what ``coffea-hpc run`` calls and what a notebook calls. It never loses finished
work: progress is checkpointed to the output directory while chunks come in, a failure or an
interrupt writes what was done before re-raising, and ``resume=True`` starts from that
checkpoint and processes only what is missing. The exactly-once ledger in every `Result`
guarantees a resumed run cannot count an entry twice.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import platform
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from coffea_hpc import output as files
from coffea_hpc.backends import Backend, ErrorPolicy, Task, make_backend
from coffea_hpc.checkpoint import (
    Checkpointer,
    OutputLock,
    SavedCheckpoint,
    chunks_digest,
    fileset_digest,
    open_checkpoint,
    processor_digest,
)
from coffea_hpc.data.chunks import Chunk, chunks_of
from coffea_hpc.data.fileset import Fileset, load_fileset
from coffea_hpc.errors import ChunkFailedError, CoffeaHPCError, UserError
from coffea_hpc.metrics import CHUNKS_NAME, ChunkLog
from coffea_hpc.output import RemoteOutput
from coffea_hpc.processing.adaptive import AdaptiveWorkload, ChunkSizer, spans_of
from coffea_hpc.processing.metacache import MetadataCache
from coffea_hpc.processing.preprocess import Preprocessed, preprocess
from coffea_hpc.processing.processor import ProcessorHandle, load_processor, postprocess
from coffea_hpc.processing.remote import read_options
from coffea_hpc.processing.result import Failure, Result
from coffea_hpc.processing.worker import resolve_schema
from coffea_hpc.processing.workload import Workload
from coffea_hpc.progress import Reporter
from coffea_hpc.reduction import Reduction, SpilledRef, SpillSet

__all__ = ["RunOutcome", "auto_chunks_per_task", "load_fileset", "metadata_cache_for", "run"]

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """What a run produced: the postprocessed output, the raw result and the report."""

    output: Any
    result: Result
    report: dict[str, Any]
    output_dir: Path | None = None
    prepared: Fileset | None = None
    remote: RemoteOutput | None = None

    @property
    def output_path(self) -> Path | None:
        if self.remote is not None or self.output_dir is None:
            return None
        return self.output_dir / files.OUTPUT_NAME


def metadata_cache_for(setting: str | Path | bool | None,
                       options: Mapping[str, Any] | None = None) -> MetadataCache | None:
    """The cache a run uses: True (or None) for the default place, False for none, or a
    path; "off" is False, for the command line."""
    if setting is False or str(setting).lower() in {"off", "none", "false"}:
        return None
    timeout = int((options or {}).get("timeout") or 30)
    path = None if setting is True or setting is None else Path(setting)
    return MetadataCache(path, stat_timeout=timeout)


def run(
    processor: Any,
    fileset: Fileset | Mapping[str, Any] | str | Path,
    *,
    backend: Backend | str = "parsl",
    workers: int | None = None,
    output_dir: str | Path | None = None,
    chunksize: int | None = None,
    target_chunk_seconds: float | None = None,
    schema: str = "nanoaod",
    limit_files: int | None = None,
    limit_chunks: int | None = None,
    align_clusters: bool = False,
    policy: ErrorPolicy | None = None,
    chunks_per_task: int | None = None,
    reduction: Reduction | None = None,
    resume: bool = False,
    checkpoint_interval: float = 60.0,
    reporter: Reporter | None = None,
    run_options: Mapping[str, Any] | None = None,
    uproot_options: Mapping[str, Any] | str | Path | None = None,
    xrootd_timeout: float | None = None,
    redirectors: Sequence[str] = (),
    metadata_cache: str | Path | bool = True,
    output_lock: OutputLock | None = None,
) -> RunOutcome:
    """Run ``processor`` over ``fileset`` and return (and, with ``output_dir``, write) the
    postprocessed output.

    ``processor`` is an object or a ``'file.py:Name'``/``'module:Name'`` string; ``backend``
    a started-or-not `Backend` or a name (then ``workers`` sets its size).
    ``uproot_options`` (a mapping, or JSON/YAML text or file) and ``xrootd_timeout``
    (seconds) reach every open of a file, in preprocessing and on the workers;
    ``redirectors`` rewrite ``/store/...`` paths (`Fileset.with_redirectors`);
    ``metadata_cache`` is True (the user's cache folder), False, or the database's path.
    ``target_chunk_seconds``: cut chunks as they are submitted, starting at ``chunksize``
    and sized per dataset from measured throughput to last about that long
    (`coffea_hpc.processing.adaptive`); None keeps the fixed chunking.
    See the command-line help of ``coffea-hpc run`` for the other options.
    ``run_options``, the effective options of the command line or `coffea_hpc.run`, go
    into the report as they are. ``output_lock``: the output directory's lock, taken by a
    caller that started work there before this run (`coffea_hpc.run` starts a local Parsl
    pool, whose logs go there, first); it stays the caller's to release.
    """
    started = time.time()
    if target_chunk_seconds is not None and not target_chunk_seconds > 0:
        raise UserError(f"target_chunk_seconds must be positive, got {target_chunk_seconds}")
    resolve_schema(schema)  # user mistakes first, before any compute starts
    read_opts = read_options(uproot_options, xrootd_timeout)
    proc = load_processor(processor) if isinstance(processor, str) else processor
    handle = ProcessorHandle.wrap(proc)
    fs = load_fileset(fileset).limit(files_per_dataset=limit_files) \
        .with_redirectors(list(redirectors))
    cache = metadata_cache_for(metadata_cache, read_opts)
    out_dir = files.shared_dir(output_dir) if output_dir is not None else None
    if resume and out_dir is not None:
        fs = _known_from(fs, out_dir / files.PREPARED_NAME)
    reduction = reduction or Reduction()
    checkpoint_path = out_dir / files.CHECKPOINT_NAME if out_dir else None
    checkpoint = Checkpointer(checkpoint_path, checkpoint_interval, discard=_delete_spilled)
    lock = OutputLock(out_dir) if out_dir is not None and output_lock is None else None
    if lock is not None:
        lock.acquire()  # before anything in the directory is read or written
    saved: SavedCheckpoint | None = None
    try:
        # what produced a checkpoint must be what resumes it: checked before any chunk runs
        checkpoint.provenance = {"version": _own_version(),
                                 "processor": processor_digest(handle), "schema": schema}
        if resume:  # a damaged checkpoint is refused before anything starts
            saved = open_checkpoint(checkpoint_path)

        stages = _Stages()
        with contextlib.ExitStack() as stack:
            if isinstance(backend, str):
                options = ({"run_dir": out_dir / files.PARSL_RUN_NAME}
                           if backend == "parsl" and out_dir else {})
                backend = make_backend(backend, workers=workers, **options)
            started_before = getattr(backend, "start_seconds", None)
            with stages("start"):
                stack.enter_context(backend)  # type: ignore[arg-type]
            if started_before is not None:  # by the caller, before the run's own imports
                stages.add("start", started_before)
            remote_storage = getattr(backend, "remote_storage", None)
            spill = reduction.spill_policy(out_dir, remote=remote_storage)
            if remote_storage is not None:  # partials, and their cleanup, are the backend's
                backend.use_spill_directory(spill.directory, spill.key)  # type: ignore[union-attr]
                checkpoint.discard = backend.discard  # type: ignore[union-attr]

            with stages("preprocessing"):
                try:
                    prep = preprocess(fs, _preprocessing_backend(backend, fs, stack),
                                      chunksize=chunksize, align_clusters=align_clusters,
                                      policy=policy, reporter=reporter,
                                      uproot_options=read_opts, cache=cache)
                finally:
                    if cache is not None:
                        cache.close()
            if out_dir is not None:
                prep.fileset.save(out_dir / files.PREPARED_NAME)
            every_chunk = chunks_of(prep.fileset, limit_chunks=limit_chunks)
            chunking: dict[str, Any] = {"chunksize": chunksize, "limit_chunks": limit_chunks,
                                        "align_clusters": align_clusters}
            if target_chunk_seconds is not None:
                chunking["target_chunk_seconds"] = target_chunk_seconds
            checkpoint.provenance.update(
                fileset=fileset_digest(prep.fileset),
                chunks=chunks_digest(every_chunk, target_seconds=target_chunk_seconds),
                chunking=chunking)
            if saved is not None:
                saved.check(checkpoint.provenance)
                checkpoint.base = saved.load(spills=None if remote_storage else spill.key)
            work: Workload | AdaptiveWorkload
            forms = _form_cache(cache, backend)
            if target_chunk_seconds is not None:
                # what the fixed chunking would cover, less the checkpoint, cut as it goes
                per_task = chunks_per_task or 1
                sizer = ChunkSizer(_start_size(chunksize, every_chunk), target_chunk_seconds)
                work = AdaptiveWorkload(handle, spans_of(every_chunk, checkpoint.base.processed),
                                        sizer, schema=schema, chunks_per_task=per_task,
                                        spill=spill, uproot_options=read_opts,
                                        form_cache=forms)
            else:
                chunks = _todo(every_chunk, checkpoint.base)
                per_task = chunks_per_task or auto_chunks_per_task(chunks, backend.workers)
                work = Workload(handle, chunks, schema=schema, chunks_per_task=per_task,
                                spill=spill, uproot_options=read_opts, form_cache=forms)

            chunk_log = stack.enter_context(ChunkLog(
                out_dir / CHUNKS_NAME if out_dir else None, append=resume,
                run=datetime.fromtimestamp(started, timezone.utc).isoformat()))
            configuration = {
                "chunksize": chunksize, "target_chunk_seconds": target_chunk_seconds,
                "chunks_per_task": per_task, "schema": schema,
                "align_clusters": align_clusters, "limit_files": limit_files,
                "limit_chunks": limit_chunks, "reduction": reduction.mode,
                "max_retries": (policy or ErrorPolicy()).max_retries,
                "processor_retries": (policy or ErrorPolicy()).processor_retries,
                "resume": resume}

            def report(status: str, result: Result, **kw: Any) -> dict[str, Any]:
                row = _report(status, started, backend, prep, work, result, stages,
                              resumed=checkpoint.base.processed.n_entries, **kw)
                if run_options is not None:
                    row["options"] = dict(run_options)
                row["performance"] = chunk_log.figures(stages.seconds.get("processing"),
                                                       row["workers"])
                row["configuration"] = configuration
                if isinstance(work, AdaptiveWorkload):
                    row["adaptive_chunking"] = {
                        "target_chunk_seconds": target_chunk_seconds,
                        "start_chunksize": work.sizer.start,
                        "out_of_memory_splits": work.splits,
                        "datasets": work.sizer.summary()}
                return row

            # the MPI merge's ranks start now and wait, so the merge begins with the last partial
            merge_job = (stack.enter_context(reduction.merge_job()) if remote_storage is None
                         else None)
            task = backend.compute(work, policy, reducer=reduction.reducer(spill))
            if hasattr(task, "observe"):
                task.observe(chunk_log)
            try:
                with stages("processing"):
                    result = _watch(task, reporter, checkpoint.tick, backend)
            except ChunkFailedError as err:
                if isinstance(err.partial, Result):
                    checkpoint.write(err.partial)
                checkpoint.discard(getattr(task, "take_garbage", list)())
                done = checkpoint.base + _partial(err)
                done.failures = (*done.failures, *err.failures)
                err.resumable = bool(done.processed) and checkpoint_path is not None
                err.report_path = _write_report(out_dir, report("failed", done, error=str(err)))
                raise
            except BaseException as err:
                partial, _ = task.partial_result()
                not_saved = _save_after(err, checkpoint, partial, task)
                interrupted = isinstance(err, KeyboardInterrupt)
                with contextlib.suppress(OSError):  # a full disk: the error says so already
                    _write_report(out_dir, report(
                        "interrupted" if interrupted else "failed", checkpoint.base + partial,
                        error=None if interrupted else f"{type(err).__name__}: {err}"))
                if not_saved is not None:
                    raise not_saved from err  # nothing may say the work was saved
                raise

            total = checkpoint.base + result
            with _kept_for_resume("final_merge", checkpoint, total, out_dir,
                                  lambda status, **kw: report(status, total, **kw)):
                unmerged = total.value
                with stages("final_merge"):
                    if remote_storage is not None:  # merge where the partials are
                        checkpoint.discard(getattr(task, "take_garbage", list)())
                        total.value = backend.finish(  # type: ignore[union-attr]
                            total.value, handle)
                    total.value, merge_stats = reduction.finish(total.value, spill, merge_job)
            stopping = time.perf_counter()  # the backend stops as the block ends
        stages.add("stop", time.perf_counter() - stopping)

        remote = total.value if isinstance(total.value, RemoteOutput) else None
        merged, total.value = total.value, unmerged  # a failed write resumes from the partials
        with _kept_for_resume("output", checkpoint, total, out_dir,
                              lambda status, **kw: report(status, total, **kw)), \
                stages("output"):
            final = None if remote else postprocess(proc, merged)
            if out_dir is not None and remote is None:
                files.save(final, out_dir / files.OUTPUT_NAME)
        total.value = merged
        summary = report("complete" if not total.failures else "incomplete", total)
        if summary["metrics"]["chunks_without_output"]:
            n_none = summary["metrics"]["chunks_without_output"]
            log.warning("%d %s returned None from process(): nothing of them is in the "
                        "output (coffea drops them too)", n_none,
                        "chunk" if n_none == 1 else "chunks")
        summary["reduction"] = {"mode": reduction.mode,
                                "merge_tasks": total.metrics.get("merges", 0),
                                "final_merge": merge_stats.as_dict()}
        if remote is not None:
            summary["output_location"] = remote.location
            log.warning("the output (%.1f MB) stays where it was made: %s", remote.nbytes / 1e6,
                        remote.location)
        if out_dir is not None:
            _write_report(out_dir, summary)
            checkpoint.clear()
        if getattr(backend, "remote_storage", None) is None:
            # everything in this run's spill folder is merged now (or orphaned by a merge that
            # was still running when an earlier attempt stopped)
            shutil.rmtree(spill.directory, ignore_errors=True)
        return RunOutcome(final, total, summary, out_dir, prep.fileset, remote)
    finally:
        if saved is not None:
            saved.close()
        if lock is not None:
            lock.release()


SMALL_FILESET = 16
"""Files the driver opens itself for preprocessing, when its workers are on this machine."""


def _form_cache(cache: MetadataCache | None, backend: Backend) -> str | None:
    """Where workers keep NanoEvents forms between runs: beside the metadata cache
    (``metadata.sqlite`` → ``metadata.forms/``), and off with it, for workers on this machine
    only. A remote site's workers would share one folder among thousands, for a saving of a
    tenth of a second per worker."""
    if cache is None or not (getattr(backend, "on_this_machine", False)
                             or getattr(backend, "name", "") == "iterative"):
        return None
    return str(cache.path.with_suffix(".forms"))


def _preprocessing_backend(backend: Backend, fs: Fileset,
                           stack: contextlib.ExitStack) -> Backend:
    """Where to open the files for their entry counts. A few local files take the driver
    milliseconds each, while a pool of workers takes seconds to start and import coffea:
    preprocessed here, they are opened while the workers start (small runs are what
    analysts iterate on all day)."""
    if not getattr(backend, "on_this_machine", False) or len(fs.files) > SMALL_FILESET:
        return backend
    from coffea_hpc.backends.iterative import IterativeBackend

    return stack.enter_context(IterativeBackend())


def _known_from(fs: Fileset, prepared_path: Path) -> Fileset:
    """On resume, the entries and uuids the interrupted run's preprocessing wrote to
    ``prepared.json``, for the files that lack them: no file is opened again for them (a
    file rewritten since is caught by the uuid check, as for any prepared fileset)."""
    if not prepared_path.is_file():
        return fs
    try:
        prepared = Fileset.load(prepared_path)
    except UserError as err:
        log.warning("not reusing %s: %s", prepared_path, err)
        return fs
    known = {(ds.name, f.path, f.treename): f for ds, f in prepared.files}
    datasets = {}
    for name, ds in fs.datasets.items():
        updated = []
        for f in ds.files:
            k = known.get((name, f.path, f.treename))
            if (f.entries is None or f.uuid is None) and k is not None \
                    and k.entries is not None and k.uuid is not None:
                f = f.model_copy(update={"entries": k.entries, "uuid": k.uuid})
            updated.append(f)
        datasets[name] = ds.model_copy(update={"files": tuple(updated)})
    return Fileset(datasets=datasets)


class _Stages:
    """Seconds spent in each stage of a run, for the report. On a batch system, the wait for
    workers shows as start-up and preprocessing time, not as slow processing."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)


@contextlib.contextmanager
def _kept_for_resume(stage: str, checkpoint: Checkpointer, total: Result,
                     out_dir: Path | None, report: Callable[..., dict[str, Any]]) -> Iterator[None]:
    """If the end of a run fails (a merge, writing the output), every chunk is processed
    and nothing of it may be lost: the total (spilled partials by reference) is
    checkpointed, the report says what failed, and ``--resume`` redoes only the end."""
    try:
        yield
    except BaseException as err:
        saved = False
        if checkpoint.path is not None:
            try:
                checkpoint.write_total(total)
                saved = True
            except Exception as again:  # a full disk: the last periodic checkpoint stays
                log.warning("could not checkpoint after the failed %s: %s", stage, again)
        what = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        row = report(status, error=f"{stage.replace('_', ' ')} failed: {what}"
                     if status == "failed" else None)
        row["failed_stage"] = stage
        if isinstance(err, CoffeaHPCError):
            err.resumable = saved  # type: ignore[attr-defined]
            err.report_path = _write_report(out_dir, row)  # type: ignore[attr-defined]
        else:
            _write_report(out_dir, row)
        raise


def _delete_spilled(values: list[Any]) -> None:
    for value in values:
        if isinstance(value, SpilledRef):
            value = SpillSet((value,))
        if isinstance(value, SpillSet):
            for ref in value.refs:
                Path(ref.path).unlink(missing_ok=True)



def auto_chunks_per_task(chunks: list[Chunk], workers: int) -> int:
    """Chunks per task when the user does not say: one when a single worker does everything;
    otherwise as many of a file's chunks as keep at least two tasks per worker.

    A worker pays for opening a file and deriving its form once per file it touches (about
    0.7 s for real NanoAOD); spreading one file's chunks over every worker pays it many times.
    A task never spans two files, so this only groups neighbouring chunks of one file.
    """
    if workers <= 1 or not chunks:
        return 1
    return max(1, len(chunks) // (2 * workers))


def _watch(task: Task, reporter: Reporter | None, tick: Callable[[Task], None],
           backend: Backend) -> Result:
    from coffea_hpc.progress import watch

    return watch(task, "processing", reporter, unit="chunks", on_tick=tick,
                 workers=getattr(backend, "connected_workers", None),
                 blocks=getattr(backend, "blocks", None), cores=backend.workers)


def _partial(err: ChunkFailedError) -> Result:
    return err.partial if isinstance(err.partial, Result) else Result()


def _save_after(err: BaseException, checkpoint: Checkpointer, partial: Result,
                task: Task) -> OSError | None:
    """Checkpoint what a stopped run had; the error of a save that failed, unless the run
    stopped for that very reason (a full disk), when the first error says all."""
    try:
        checkpoint.write(partial)
    except OSError as again:
        if isinstance(err, OSError):
            log.info("could not checkpoint either: %s", again)
            return None
        return again
    # merged-away partials go only once a checkpoint no longer refers to them
    checkpoint.discard(getattr(task, "take_garbage", list)())
    return None


def _own_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("coffea-hpc")
    except PackageNotFoundError:
        from coffea_hpc import __version__

        return __version__


def _start_size(chunksize: int | None, chunks: Sequence[Chunk]) -> int:
    """Adaptive chunking starts from ``--chunksize``, or else from the largest chunk of
    the fixed chunking (a prepared fileset's steps, or the default chunksize)."""
    if chunksize is not None:
        return chunksize
    return max((c.entries for c in chunks), default=1) or 1


def _todo(chunks: list[Chunk], done: Result) -> list[Chunk]:
    """Chunks not already counted in ``done`` (a checkpoint)."""
    if not done.processed:
        return chunks
    out = []
    for c in chunks:
        key = (c.dataset, c.filename, c.treename)
        if done.processed.covers(key, c.entrystart, c.entrystop):
            continue
        if done.processed.overlaps(key, c.entrystart, c.entrystop):
            raise UserError(
                f"the checkpoint covers part of {c.describe()}: the chunking changed since it "
                "was written; resume with the same --chunksize (or start afresh)"
            )
        out.append(c)
    return out


def _report(
    status: str,
    started: float,
    backend: Backend,
    prep: Preprocessed,
    work: Workload | AdaptiveWorkload,
    result: Result,
    stages: _Stages,
    *,
    error: str | None = None,
    resumed: int = 0,
) -> dict[str, Any]:
    """``resumed``: events a checkpoint brought in, counted in the totals but not in the
    rate, which is this run's own."""
    wall = time.time() - started
    metrics = dict(result.metrics)
    entries = result.processed.n_entries
    datasets = []
    chunks_per_dataset = collections.Counter(c.dataset for c in work.chunks)
    for ds in prep.fileset:
        n_chunks = chunks_per_dataset[ds.name]
        processed = sum(sum(b - a for a, b in spans)
                        for (d, _, _), spans in result.processed if d == ds.name)
        datasets.append({"name": ds.name, "files": len(ds.files), "chunks": n_chunks,
                         "entries": sum(f.entries or 0 for f in ds.files),
                         "processed": processed})
    return {
        "status": status,
        "error": error,
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "wall_time_s": round(wall, 3),
        "stages_s": {name: round(s, 3) for name, s in stages.seconds.items()},
        "backend": getattr(backend, "name", type(backend).__name__),
        "workers": getattr(backend, "workers", None),
        "events": entries,
        "events_per_s": round((entries - resumed) / wall, 1) if wall > 0 else None,
        "resumed_events": resumed,
        "datasets": datasets,
        "failed_chunks": [_failure_row(f) for f in result.failures],
        "skipped_files": [
            {"file": f.label or str(f.key), "error": f.error.summary(), "stage": "preprocessing"}
            for f in prep.skipped
        ] + _unreadable_files(result.failures, work),
        "reads": _reads(prep, metrics),
        "processed_ranges": result.processed.to_json(),
        "metrics": {
            "chunks": metrics.get("chunks", 0),
            "build_time_s": round(metrics.get("buildtime", 0.0), 3),
            "process_time_s": round(metrics.get("processtime", 0.0), 3),
            "columns": sorted(metrics.get("columns", ())),
            "chunks_without_output": metrics.get("no_output", 0),
            "chunks_lost_to_ended_blocks": metrics.get("lost_to_ended_blocks", 0),
        },
        "versions": _versions(),
    }


def _unreadable_files(failures: Sequence[Failure],
                      work: Workload | AdaptiveWorkload) -> list[dict[str, Any]]:
    """Files that failed to read while processing, one row each: which chunks of them are
    missing is in ``failed_chunks``; this is the list an analyst acts on."""
    failed: dict[tuple[str, str], list[Failure]] = {}
    for failure in failures:
        key = failure.key
        if isinstance(key, tuple) and len(key) == 5 and failure.error.matches((OSError,)):
            failed.setdefault((key[0], key[1]), []).append(failure)
    if not failed:
        return []
    chunks = collections.Counter((c.dataset, c.filename) for c in work.chunks)
    return [{"file": filename, "dataset": dataset, "error": rows[0].error.summary(),
             "stage": "processing", "chunks_failed": len(rows),
             "chunks": chunks[(dataset, filename)]}
            for (dataset, filename), rows in failed.items()]


def _reads(prep: Preprocessed, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Where each file was read from, and every location that failed (the file was then
    read from its next location, or the chunk failed and is listed in failed_chunks)."""
    read_from: dict[str, list[str]] = {}
    for path, location in sorted(metrics.get("read_from", ())):
        read_from.setdefault(path, []).append(location)
    failed = sorted({*prep.failed_locations, *metrics.get("failed_locations", ())})
    return {
        "files_opened_in_preprocessing": prep.opened,
        "read_from": {path: locs[0] if len(locs) == 1 else locs
                      for path, locs in read_from.items()},
        "failed_locations": [{"file": path, "location": loc, "error": error}
                             for path, loc, error in failed],
    }


_CAUSES = {
    "io": "reading the data failed: storage, network, or a damaged file",
    "processor": "the processor raised",
    "worker": "the process running it died while its block lived: out of memory (a smaller "
              "--chunksize, or more memory per worker) or a crash in compiled code",
}
"""The likely cause of each kind of failure, for the report."""


def _failure_row(failure: Failure) -> dict[str, Any]:
    """A failed chunk as the analyst needs it: where, what (``kind``: ``io``, ``processor`` or
    ``worker``, the retry budget it spent), and the processor's traceback."""
    row: dict[str, Any] = {"chunk": failure.label or str(failure.key)}
    if isinstance(failure.key, tuple) and len(failure.key) == 5:
        dataset, filename, treename, start, stop = failure.key
        row.update(dataset=dataset, file=filename, treename=treename, entrystart=start,
                   entrystop=stop)
    row.update(kind=failure.kind, cause=_CAUSES.get(failure.kind),
               location=failure.error.location or None,
               exception=failure.error.type_name, message=failure.error.message,
               error=failure.error.summary(), attempts=failure.attempts,
               traceback=failure.error.traceback)
    return row


def _write_report(out_dir: Path | None, report: dict[str, Any]) -> Path | None:
    if out_dir is None:
        return None
    return files.write_json(report, out_dir / files.REPORT_NAME)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("coffea-hpc", "coffea", "awkward", "uproot", "parsl", "hist"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
