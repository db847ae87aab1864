"""``coffea_hpc.run`` and ``coffea_hpc.submit``: what ``coffea-hpc run`` and ``submit`` do,
from Python, with the same options (`coffea_hpc.options.RunOptions`) and the same names.

Each keyword left at None takes its value from ``run_options`` (a run-options YAML) or else
the default, exactly as an unset command-line flag does. Three keywords keep the names the
library has always used: ``backend`` (``--executor``; also takes a `Backend` object),
``output_dir`` (``--output``) and ``checkpoint_interval`` (``--checkpoint-every``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from coffea_hpc.errors import UserError
from coffea_hpc.options import RunOptions
from coffea_hpc.output import PARSL_RUN_NAME

if TYPE_CHECKING:
    from coffea_hpc.backends import Backend, ErrorPolicy
    from coffea_hpc.data.fileset import Fileset
    from coffea_hpc.progress import Reporter
    from coffea_hpc.reduction import Reduction
    from coffea_hpc.runner import RunOutcome
    from coffea_hpc.sites.submit import JobRecord

__all__ = ["Submission", "run", "submit"]

log = logging.getLogger(__name__)

RENAMED = {"executor": "backend", "output": "output_dir", "checkpoint_every": "checkpoint_interval"}
"""Command-line option -> its keyword here, where the names differ."""


def run(
    processor: Any,
    fileset: Fileset | Mapping[str, Any] | str | Path | None = None,
    *,
    output_dir: str | Path | None = None,
    backend: Backend | str | None = None,
    workers: int | None = None,
    chunksize: int | None = None,
    target_chunk_seconds: float | None = None,
    limit_files: int | None = None,
    limit_chunks: int | None = None,
    schema: str | None = None,
    retries: int | None = None,
    processor_retries: int | None = None,
    skip_bad_files: bool | None = None,
    continue_on_error: bool | None = None,
    align_clusters: bool | None = None,
    chunks_per_task: int | None = None,
    reduce: str | None = None,
    fan_in: int | None = None,
    spill_dir: str | Path | None = None,
    spill_threshold: float | None = None,
    mpi_ranks: int | None = None,
    mpi_launcher: str | None = None,
    resume: bool | None = None,
    checkpoint_interval: float | None = None,
    test: bool | None = None,
    site: str | None = None,
    site_file: str | Path | None = None,
    run_options: str | Path | None = None,
    account: str | None = None,
    partition: str | None = None,
    qos: str | None = None,
    nodes: int | None = None,
    walltime: str | None = None,
    scaleout: int | None = None,
    endpoint: str | None = None,
    dask_address: str | None = None,
    inside_allocation: bool | None = None,
    uproot_options: Mapping[str, Any] | str | None = None,
    xrootd_timeout: float | None = None,
    redirector: Sequence[str] | None = None,
    metadata_cache: str | Path | bool | None = None,
    policy: ErrorPolicy | None = None,
    reduction: Reduction | None = None,
    reporter: Reporter | None = None,
) -> RunOutcome:
    """Run ``processor`` over ``fileset`` as ``coffea-hpc run`` does, on this machine or
    on a site (``site="perlmutter-cpu", account=...``), and return the outcome.

    ``policy`` (an `ErrorPolicy`) and ``reduction`` (a `Reduction`) replace the options
    they stand for (retries and the two skip flags; reduce and its settings)."""
    given = _given(locals())
    # a Fileset or mapping, a Backend object: used as they are, not run options
    given["fileset"] = fileset if isinstance(fileset, str | Path) else None
    given["backend"] = backend if isinstance(backend, str) else None
    if metadata_cache is not None:  # a path; False: none (the command line's "off")
        given["metadata_cache"] = {True: None, False: "off"}.get(metadata_cache,  # type: ignore[arg-type]
                                                                  str(metadata_cache))
    options = RunOptions.layered(run_options, _renamed(given), _keywords())
    return _run_with(processor, options, fileset=fileset, backend=backend, policy=policy,
                     reduction=reduction, reporter=reporter)


def _given(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords of a call that are run options (None: not given)."""
    known = {*RunOptions.option_keys(), *RENAMED.values()}
    return {k: v for k, v in arguments.items() if k in known}


def _renamed(given: Mapping[str, Any]) -> dict[str, Any]:
    back = {v: k for k, v in RENAMED.items()}
    return {back.get(k, k): v for k, v in given.items()}


def _keywords() -> dict[str, str]:
    return {k: f"{RENAMED.get(k, k)}=" for k in RunOptions.option_keys()}


def _run_with(processor: Any, options: RunOptions, *, fileset: Any = None, backend: Any = None,
              policy: ErrorPolicy | None = None, reduction: Reduction | None = None,
              reporter: Reporter | None = None) -> RunOutcome:
    """The one path of a run, from the command line and from Python."""
    if options.test:
        options = options.for_test()
    if fileset is None or isinstance(fileset, str | Path):
        if options.fileset is None:
            raise UserError("no fileset: pass --fileset FILE or set fileset: in the run options")
        fileset = options.fileset
    if backend is None or isinstance(backend, str):
        backend = _backend(options)
    with contextlib.ExitStack() as early:
        lock = None
        if backend == "futures":
            from coffea_hpc.backends._forkserver import start_forkserver

            start_forkserver()  # its workers' imports go on beside the driver's, just below
        elif backend == "parsl":
            backend, lock, fileset = _local_parsl_first(processor, fileset, options, early)
        from coffea_hpc.reduction import Reduction
        from coffea_hpc.runner import run as run_analysis

        reduction = reduction or Reduction(
            mode=options.reduce, fan_in=options.fan_in,
            spill_dir=str(options.spill_dir) if options.spill_dir else None,
            spill_bytes=int(options.spill_threshold * 1024**2), mpi_ranks=options.mpi_ranks,
            mpi_launcher=options.mpi_launcher or "mpiexec")
        return run_analysis(
            processor, fileset, backend=backend, workers=options.workers,
            output_dir=options.output, chunksize=options.chunksize,
            target_chunk_seconds=options.target_chunk_seconds, schema=options.schema_name,
            limit_files=options.limit_files, limit_chunks=options.limit_chunks,
            align_clusters=options.align_clusters, policy=policy or _policy(options),
            chunks_per_task=options.chunks_per_task, reduction=reduction, resume=options.resume,
            checkpoint_interval=options.checkpoint_every, reporter=reporter,
            run_options=options.model_dump(mode="json", by_alias=True),
            uproot_options=options.uproot_options, xrootd_timeout=options.xrootd_timeout,
            redirectors=options.redirector or (),
            metadata_cache=options.metadata_cache if options.metadata_cache is not None else True,
            output_lock=lock)


def _local_parsl_first(processor: Any, fileset: Any, options: RunOptions,
                       stack: contextlib.ExitStack) -> tuple[Any, Any, Any]:
    """Start a local Parsl pool now, before the driver imports the analysis and coffea.

    The pool is a chain of processes, each started by the one before and each importing
    Parsl (interchange, worker pool, its manager process, the workers): seconds, most of
    the wait for a small run's first chunk. Started first, it comes up beside the driver's
    own imports (~1 s). Its logs go in the output directory, so the directory's lock is
    taken first; and the mistakes found without importing anything (no such fileset or
    processor file) are found first, not after a pool was started for nothing.
    Returns the started backend, the lock (None without an output directory) and the
    fileset, read.
    """
    from coffea_hpc.backends import make_backend
    from coffea_hpc.checkpoint import OutputLock
    from coffea_hpc.data.fileset import load_fileset
    from coffea_hpc.output import shared_dir
    from coffea_hpc.processing.processor import check_processor_spec

    if isinstance(processor, str):
        check_processor_spec(processor)
    fileset = load_fileset(fileset)
    lock, where = None, {}
    if options.output is not None:
        out_dir = shared_dir(options.output)
        lock = stack.enter_context(OutputLock(out_dir))
        where = {"run_dir": out_dir / PARSL_RUN_NAME}
    backend = stack.enter_context(make_backend("parsl", workers=options.workers, **where))
    return backend, lock, fileset


def _policy(options: RunOptions) -> ErrorPolicy:
    from coffea_hpc.backends import ErrorPolicy

    budgets = {"max_retries": options.retries, "processor_retries": options.processor_retries}
    if options.continue_on_error:
        return ErrorPolicy.continue_on_error(**budgets)
    if options.skip_bad_files:
        return ErrorPolicy.skip_bad_files(**budgets)
    return ErrorPolicy(**budgets)


def _backend(options: RunOptions) -> Any:
    """The executor's name, or a backend object where a site or Dask address says more."""
    if options.test:
        return "iterative"
    set_executor = "executor" in options.model_fields_set
    if options.dask_address is not None:
        if options.executor != "dask":
            raise UserError("--dask-address needs --executor dask")
        from coffea_hpc.backends import make_backend

        return make_backend("dask", address=options.dask_address)
    if options.site is None and not options.inside_allocation:
        return options.executor
    if set_executor and options.executor != "parsl":
        raise UserError(f"--executor {options.executor} cannot run on a site: a site's "
                        "workers run under Parsl (drop --executor, or --site to run here)")
    from coffea_hpc.sites import site_backend

    return site_backend(
        options.site, site_file=options.site_file, site_config=options.site_config,
        overrides=options.site_overrides(), inside_allocation=options.inside_allocation,
        run_dir=(options.output / PARSL_RUN_NAME) if options.output else None)


@dataclass(frozen=True)
class Submission:
    """A batch job: its files (name -> text) and, unless it was a dry run, its record."""

    files: dict[str, str]
    record: JobRecord | None = None


def submit(
    processor: str,
    fileset: str | Path | None = None,
    *,
    output_dir: str | Path | None = None,
    site: str | None = None,
    site_file: str | Path | None = None,
    run_options: str | Path | None = None,
    account: str | None = None,
    partition: str | None = None,
    qos: str | None = None,
    nodes: int | None = None,
    walltime: str | None = None,
    endpoint: str | None = None,
    backend: str | None = None,
    workers: int | None = None,
    chunksize: int | None = None,
    target_chunk_seconds: float | None = None,
    limit_files: int | None = None,
    limit_chunks: int | None = None,
    schema: str | None = None,
    retries: int | None = None,
    processor_retries: int | None = None,
    skip_bad_files: bool | None = None,
    continue_on_error: bool | None = None,
    align_clusters: bool | None = None,
    chunks_per_task: int | None = None,
    reduce: str | None = None,
    fan_in: int | None = None,
    spill_dir: str | Path | None = None,
    spill_threshold: float | None = None,
    mpi_ranks: int | None = None,
    mpi_launcher: str | None = None,
    resume: bool | None = None,
    checkpoint_interval: float | None = None,
    extra: str = "",
    job_name: str = "coffea-hpc",
    dry_run: bool = False,
    wait: bool = False,
) -> Submission:
    """Submit the whole run as one batch job, as ``coffea-hpc submit`` does: the job runs
    ``coffea-hpc run --inside-allocation`` with these options, written next to its script
    as ``OUTPUT/submit/run-options.yaml``. ``nodes`` and ``walltime`` are the job's;
    ``wait=True`` returns once the job has left the queue."""
    given = _given(locals())
    options = RunOptions.layered(run_options, _renamed(given), _keywords())
    job = _submit_with(processor, options, extra=extra, job_name=job_name, dry_run=dry_run)
    if wait and job.record is not None:
        from coffea_hpc.sites.submit import wait as wait_for

        wait_for(job.record.job_id)
    return job


def _submit_with(processor: str, options: RunOptions, *, extra: str = "",
                 job_name: str = "coffea-hpc", dry_run: bool = False) -> Submission:
    from coffea_hpc.sites import resolve_site
    from coffea_hpc.sites.submit import render_job, submit_job

    if options.site is None:
        raise UserError("submit needs a site: pass --site NAME (see 'coffea-hpc sites list') "
                        "or set site: in the run options")
    if options.fileset is None or options.output is None:
        what = "--fileset FILE" if options.fileset is None else "-o OUTPUT"
        raise UserError(f"submit needs {what} (or {what.split()[0].lstrip('-')}: in the run "
                        "options)")
    if not options.fileset.exists():
        raise UserError(f"fileset file {str(options.fileset)!r} does not exist")
    site = resolve_site(options.site, site_file=options.site_file,
                        site_config=options.site_config,
                        overrides={k: v for k, v in options.site_overrides().items()
                                   if k not in ("nodes", "workers")})
    output = options.output.resolve()
    job_options = options.model_copy(update={
        "fileset": options.fileset.resolve(), "output": output,
        "site_file": options.site_file.resolve() if options.site_file else None,
        "spill_dir": options.spill_dir.resolve() if options.spill_dir else None,
        "inside_allocation": False, "test": False, "nodes": None, "walltime": None,
        "executor": "parsl"})  # a laptop's executor in a shared file: the job runs Parsl
    if options.mpi_launcher is None:
        job_options = job_options.model_copy(update={"mpi_launcher": _mpi_launcher(site)})
    options_path = output / "submit" / "run-options.yaml"
    text = yaml.safe_dump(job_options.given(), sort_keys=False)
    args = [_absolute(processor), "--run-options", str(options_path), *shlex.split(extra)]
    files = render_job(site, args, output, nodes=options.nodes, walltime=options.walltime,
                       job_name=job_name, analysis_dir=_analysis_dir(processor),
                       environment=captured_environment(
                           modules=not (site.submit.setup or site.provider.worker_init)))
    files["run-options.yaml"] = "# written by `coffea-hpc submit`: the job's run options\n" + text
    if dry_run:
        return Submission(files)
    return Submission(files, submit_job(site, files, output))


def _mpi_launcher(site: Any) -> str:
    """The MPI launcher of the site's batch system: srun under Slurm, else mpiexec (on
    Polaris, Cray PALS's)."""
    return "srun" if site.provider.resolved_launcher == "srun" else "mpiexec"


def _absolute(processor: str) -> str:
    """A processor file named relative to here, made absolute for the job."""
    path, sep, name = processor.rpartition(":")
    if sep and Path(path).exists():
        return f"{Path(path).resolve()}:{name}"
    return processor


def _analysis_dir(processor: str) -> Path:
    """The folder the analysis lives in: the processor file's, or this one."""
    path = processor.rpartition(":")[0]
    return Path(path).resolve().parent if path and Path(path).is_file() else Path.cwd()


def captured_environment(environ: Mapping[str, str] | None = None, *,
                         modules: bool = True) -> str:
    """Shell lines that put the job in the environment ``submit`` ran from: the modules
    loaded then (``LOADEDMODULES``, unless ``modules`` is False because the site's own
    setup loads what it needs), then the active virtualenv or conda environment (by its
    ``bin`` on PATH, which is what activation does and needs no conda shell hook in a batch
    job). A module that does not load is reported in the job's log, not fatal: the Python
    environment, which comes last, is what the driver needs."""
    env = os.environ if environ is None else environ
    lines = []
    loaded = [m for m in env.get("LOADEDMODULES", "").split(":") if m] if modules else []
    if loaded:
        names = " ".join(shlex.quote(m) for m in loaded)
        lines += ["# the modules loaded when `coffea-hpc submit` ran",
                  "set +u  # module scripts read unset variables",
                  f"module load {names} || echo \"coffea-hpc: not every module loaded\" >&2",
                  "set -u"]
    prefix, kind = None, ""
    if env.get("VIRTUAL_ENV"):
        prefix, kind = env["VIRTUAL_ENV"], "VIRTUAL_ENV"
    elif env.get("CONDA_PREFIX"):
        prefix, kind = env["CONDA_PREFIX"], "CONDA_PREFIX"
    elif sys.prefix != sys.base_prefix:
        prefix, kind = sys.prefix, "VIRTUAL_ENV"
    if prefix is not None:
        quoted = shlex.quote(prefix)
        lines += ["# the Python environment `coffea-hpc submit` ran from",
                  f"export {kind}={quoted}",
                  f'export PATH={quoted}/bin:"$PATH"']
    return "\n".join(lines)
