"""The run options as command-line flags, shared by ``run`` and ``submit``.

Values are checked by `coffea_hpc.options.RunOptions` (not by the parser), so a bad number
gets the same one-line ``error:`` whether it came from a flag or a run-options file. Only
flags given on the command line override the file (`given`); the defaults shown in
``--help`` are the model's, which a test keeps in step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from coffea_hpc.options import EXECUTORS

__all__ = ["flag_names", "given"]

Processor = Annotated[str, typer.Argument(
    help="The processor: 'path/to/file.py:Name' or 'package.module:Name'.")]
Fileset = Annotated[Path | None, typer.Option(
    "--fileset", "-f", help="Fileset (JSON or YAML); or fileset: in the run options.")]
Output = Annotated[Path | None, typer.Option(
    "--output", "-o", help="Output directory; or output: in the run options.")]
RunOptionsFile = Annotated[Path | None, typer.Option(
    "--run-options", help="A YAML of run options (keys: the flags' names with _ for -); "
                          "flags given here override it.")]
Executor = Annotated[str, typer.Option("--executor", "-e",
                                       help=f"Backend: {', '.join(EXECUTORS)}.")]
Workers = Annotated[int | None, typer.Option(
    "--workers", "-j", help="Local workers (default: one per core); with a site, per node.")]
Chunksize = Annotated[int | None, typer.Option(
    "--chunksize", help="Entries per chunk (default 100000; a prepared fileset keeps its chunks).")]
TargetChunkSeconds = Annotated[float | None, typer.Option(
    "--target-chunk-seconds",
    help="Adapt the chunk size per dataset, from --chunksize on, so chunks last about this "
         "many seconds (measured throughput); remaining entries are re-split, never counted "
         "twice, and a chunk whose worker runs out of memory is retried as two halves.")]
LimitFiles = Annotated[int | None, typer.Option(
    "--limit-files", help="Use only the first N files of each dataset.")]
LimitChunks = Annotated[int | None, typer.Option(
    "--limit-chunks", help="Process at most N chunks of each dataset.")]
Schema = Annotated[str, typer.Option(
    "--schema", help="NanoEvents schema: nanoaod, base, physlite, ... or a dotted path.")]
Retries = Annotated[int, typer.Option(
    "--retries", help="Retries of a chunk whose data failed to read or whose worker died.")]
ProcessorRetries = Annotated[int, typer.Option(
    "--processor-retries",
    help="Retries of a chunk whose processor raised (default 0: a bug fails the same way "
         "again).")]
SkipBad = Annotated[bool, typer.Option(
    "--skip-bad-files/--no-skip-bad-files",
    help="Skip (and report) files that cannot be opened or read.")]
ContinueOnError = Annotated[bool, typer.Option(
    "--continue-on-error/--no-continue-on-error",
    help="Go on past chunks that fail for any reason, the processor's own exceptions "
         "included (by default the run stops at the first chunk that still fails after "
         "its retries); every failure is listed in report.json.")]
AlignClusters = Annotated[bool, typer.Option(
    "--align-clusters/--no-align-clusters",
    help="End chunks on ROOT cluster boundaries (opens every file).")]
ChunksPerTask = Annotated[int | None, typer.Option(
    "--chunks-per-task",
    help="Chunks of one file each task processes and folds before sending one result "
         "(default: enough for two tasks per worker).")]
Reduce = Annotated[str, typer.Option(
    "--reduce",
    help="Reduction: driver (add results as they come), tree (merge tasks on the "
         "workers), mpi (an MPI tree-merge at the end, its ranks started with "
         "processing; the driver merges if MPI fails).")]
FanIn = Annotated[int, typer.Option("--fan-in", help="Partials per merge task (tree).")]
SpillDir = Annotated[Path | None, typer.Option(
    "--spill-dir", help="Where partials are spilled (default OUTPUT/spill).")]
SpillThreshold = Annotated[float, typer.Option(
    "--spill-threshold", help="Spill partials above this many MB (driver mode).")]
MpiRanks = Annotated[int, typer.Option("--mpi-ranks", help="Ranks of the MPI merge.")]
MpiLauncher = Annotated[str | None, typer.Option(
    "--mpi-launcher", help="mpiexec, srun, or a full launcher command (default: mpiexec; "
                           "for submit, the site's: srun under Slurm).")]
Resume = Annotated[bool, typer.Option(
    "--resume/--no-resume",
    help="Continue an interrupted run from the checkpoint in the output directory.")]
CheckpointEvery = Annotated[float, typer.Option(
    "--checkpoint-every",
    help="Most seconds between checkpoints of the running result; one is also written "
         "after every 5% of the chunks (at least a second apart).")]
Test = Annotated[bool, typer.Option(
    "--test/--no-test",
    help="A quick check: one file and two chunks per dataset on the iterative backend, "
         "here, then the output's structure.")]
Site = Annotated[str | None, typer.Option(
    "--site", help="Run on a site preset or file (see 'coffea-hpc sites list').")]
SiteFile = Annotated[Path | None, typer.Option(
    "--site-file", help="A site YAML layered over the preset.")]
Account = Annotated[str | None, typer.Option("--account", help="Batch account / project.")]
Partition = Annotated[str | None, typer.Option("--partition", help="Slurm partition.")]
Qos = Annotated[str | None, typer.Option("--qos", help="Slurm quality of service.")]
Nodes = Annotated[int | None, typer.Option(
    "--nodes", help="Nodes per block (for submit: of the job, default 1).")]
Walltime = Annotated[str | None, typer.Option(
    "--walltime", help="Wall time per block (for submit: of the job), HH:MM:SS.")]
Scaleout = Annotated[int | None, typer.Option(
    "--scaleout", min=1, help="Blocks (batch jobs of --nodes nodes) to run at once.")]
Endpoint = Annotated[str | None, typer.Option(
    "--endpoint", help="Globus Compute endpoint id (globus sites).")]
DaskAddress = Annotated[str | None, typer.Option(
    "--dask-address", help="Scheduler of an existing Dask cluster (with -e dask).")]
InsideAllocation = Annotated[bool, typer.Option(
    "--inside-allocation/--no-inside-allocation",
    help="Run inside a Slurm/PBS job: workers on the job's nodes.")]

_NOT_OPTIONS = {"processor", "run_options", "verbose", "extra", "dry_run", "wait",
                "job_name"}


def given(ctx: typer.Context) -> dict[str, Any]:
    """The run options set on the command line (not the defaults)."""
    out = {}
    for name, value in ctx.params.items():
        if name in _NOT_OPTIONS:
            continue
        source = ctx.get_parameter_source(name)
        if getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT"):
            out[name] = value
    return out


def flag_names(ctx: typer.Context) -> dict[str, str]:
    """Option name -> its long flag, for messages."""
    names = {}
    for param in ctx.command.params:
        longs = [o for o in param.opts if o.startswith("--")]
        if param.name and longs:
            names[param.name] = longs[0]
    return names
UprootOptions = Annotated[str | None, typer.Option(
    "--uproot-options",
    help="Options of every uproot.open, as JSON or YAML text or a file "
         "(e.g. '{timeout: 30, num_workers: 4}').")]
XRootDTimeout = Annotated[float | None, typer.Option(
    "--xrootd-timeout", min=0.0, help="Seconds before an XRootD request gives up.")]
Redirectors = Annotated[list[str] | None, typer.Option(
    "--redirector",
    help="Read /store/... files through this redirector; repeat for fallbacks, in order.")]
MetadataCachePath = Annotated[str | None, typer.Option(
    "--metadata-cache",
    help="Cache of file entries and uuids (default: the user's cache folder; 'off': none).")]
