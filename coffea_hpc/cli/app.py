"""The ``coffea-hpc`` command. It parses, calls the library and reports; no logic lives here.

Errors the user can fix (`UserError`) print as one line and exit 2, without a traceback;
a chunk that stops the run prints what failed and where the partial results are (exit 1);
Ctrl-C saves what was done and says how to resume (exit 130); so does SIGTERM (exit 143),
which is how a batch system stops a job (``scancel``, the time limit) before killing it.
"""

from __future__ import annotations

import errno
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from coffea_hpc._text import count, one_line
from coffea_hpc.cli import _options as opt
from coffea_hpc.errors import ChunkFailedError, CoffeaHPCError, UserError
from coffea_hpc.options import EXECUTORS, TEST_CHUNKS

__all__ = ["app", "main"]

app = typer.Typer(
    name="coffea-hpc",
    help="Run coffea processors over ROOT filesets, from a laptop to any HPC centre.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = RichHandler(console=console, show_path=False, show_time=verbose > 1)
    handler.setLevel(level)  # Parsl logs DEBUG to its own file and lets records propagate
    handler.set_name("coffea-hpc-cli")
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "coffea-hpc-cli"]
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))
    logging.getLogger("coffea_hpc").setLevel(level)
    logging.captureWarnings(True)
    if verbose < 2:
        for noisy in ("py.warnings", "distributed", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        # Parsl logs every failed task with its own traceback at ERROR (a worker lost and
        # retried: WorkerLost); coffea-hpc reports each failure itself (one line per error,
        # tracebacks in report.json), and Parsl's full log stays in the run directory's
        # parsl.log. Starting Parsl sets its logger back to DEBUG for that file, so the
        # terminal's handler filters Parsl's records as well
        logging.getLogger("parsl").setLevel(logging.CRITICAL)
        handler.addFilter(_below_critical_from_parsl)


def _below_critical_from_parsl(record: logging.LogRecord) -> bool:
    """False (not shown) for a record of Parsl's under CRITICAL."""
    return record.levelno >= logging.CRITICAL or not (
        record.name == "parsl" or record.name.startswith("parsl."))


Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True,
                                     help="More logging (-vv: debug).")]
Workers = Annotated[int | None, typer.Option("--workers", "-j", min=1,
                                             help="Local workers (default: one per core).")]
Executor = Annotated[str, typer.Option("--executor", "-e",
                                       help=f"Backend: {', '.join(EXECUTORS)}.")]
Chunksize = Annotated[int | None, typer.Option(
    "--chunksize", min=1,
    help="Entries per chunk (default 100000; a prepared fileset keeps its chunks).")]
SkipBad = Annotated[bool, typer.Option(
    "--skip-bad-files", help="Skip (and report) files that cannot be opened or read.")]
AlignClusters = Annotated[bool, typer.Option(
    "--align-clusters", help="End chunks on ROOT cluster boundaries (opens every file).")]
def _policy(retries: int, skip_bad_files: bool, continue_on_error: bool = False) -> Any:
    from coffea_hpc.backends import ErrorPolicy

    if continue_on_error:
        return ErrorPolicy.continue_on_error(max_retries=retries)
    if skip_bad_files:
        return ErrorPolicy.skip_bad_files(max_retries=retries)
    return ErrorPolicy(max_retries=retries)


def _check_executor(name: str) -> str:
    if name not in EXECUTORS:
        raise UserError(f"unknown executor {name!r}: choose one of {', '.join(EXECUTORS)}")
    return name


@app.command()
def run(
    ctx: typer.Context,
    processor: opt.Processor,
    fileset: opt.Fileset = None,
    output: opt.Output = None,
    run_options: opt.RunOptionsFile = None,
    executor: opt.Executor = "parsl",
    workers: opt.Workers = None,
    chunksize: opt.Chunksize = None,
    target_chunk_seconds: opt.TargetChunkSeconds = None,
    limit_files: opt.LimitFiles = None,
    limit_chunks: opt.LimitChunks = None,
    schema: opt.Schema = "nanoaod",
    retries: opt.Retries = 1,
    processor_retries: opt.ProcessorRetries = 0,
    skip_bad_files: opt.SkipBad = False,
    continue_on_error: opt.ContinueOnError = False,
    align_clusters: opt.AlignClusters = False,
    chunks_per_task: opt.ChunksPerTask = None,
    reduce: opt.Reduce = "driver",
    fan_in: opt.FanIn = 8,
    spill_dir: opt.SpillDir = None,
    spill_threshold: opt.SpillThreshold = 256.0,
    mpi_ranks: opt.MpiRanks = 2,
    mpi_launcher: opt.MpiLauncher = None,
    resume: opt.Resume = False,
    checkpoint_every: opt.CheckpointEvery = 60.0,
    test: opt.Test = False,
    site: opt.Site = None,
    site_file: opt.SiteFile = None,
    account: opt.Account = None,
    partition: opt.Partition = None,
    qos: opt.Qos = None,
    nodes: opt.Nodes = None,
    walltime: opt.Walltime = None,
    scaleout: opt.Scaleout = None,
    endpoint: opt.Endpoint = None,
    dask_address: opt.DaskAddress = None,
    inside_allocation: opt.InsideAllocation = False,
    uproot_options: opt.UprootOptions = None,
    xrootd_timeout: opt.XRootDTimeout = None,
    redirector: opt.Redirectors = None,
    metadata_cache: opt.MetadataCachePath = None,
    verbose: Verbose = 0,
) -> None:
    """Run PROCESSOR over a fileset and write OUTPUT/output.coffea and OUTPUT/report.json."""
    _setup_logging(verbose)
    from coffea_hpc.api import _run_with
    from coffea_hpc.cli.progress import RichReporter, summary_table
    from coffea_hpc.options import RunOptions

    options = RunOptions.layered(run_options, opt.given(ctx), opt.flag_names(ctx))
    if options.output is None:
        raise UserError("no output directory: pass -o DIR or set output: in the run options")
    if options.test:
        where = f" (not on site {options.site})" if options.site else ""
        console.print(f"test mode: one file and {TEST_CHUNKS} chunks per dataset, on the "
                      f"iterative backend here{where}", highlight=False)
    outcome = _run_with(processor, options, reporter=RichReporter(console))
    console.print(summary_table(outcome.report))
    unreadable = {f["file"] for f in outcome.report["skipped_files"]
                  if f.get("stage") == "processing"}  # one line per file, below
    chunk_failures = [f for f in outcome.report["failed_chunks"] if f.get("file") not in unreadable]
    for error, chunks in _by_error(chunk_failures).items():
        more = f" and {count(len(chunks) - 1, 'more chunk')}" if len(chunks) > 1 else ""
        console.print(f"[red]failed[/red] {chunks[0]}{more}: {one_line(error)}", highlight=False,
                      soft_wrap=True)
    for skipped in outcome.report["skipped_files"]:
        missing = (f" ({skipped['chunks_failed']} of {count(skipped['chunks'], 'chunk')} not read)"
                   if "chunks_failed" in skipped else "")
        console.print(f"[yellow]skipped[/yellow] {skipped['file']}{missing}: "
                      f"{one_line(skipped['error'])}", highlight=False, soft_wrap=True)
    if options.test:
        from coffea_hpc.cli.structure import structure

        out.print(structure(outcome.output))
    if outcome.remote is not None:
        console.print(f"output: too large to bring back; it is on the remote side at "
                      f"{outcome.remote.location}")
    else:
        console.print(f"output: {outcome.output_path}")


@app.command()
def preprocess(
    fileset: Annotated[Path, typer.Argument(help="Fileset (JSON or YAML).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Prepared fileset to write.")],
    chunksize: Chunksize = None,
    align_clusters: AlignClusters = False,
    executor: Executor = "futures",
    workers: Workers = None,
    skip_bad_files: SkipBad = False,
    retries: Annotated[int, typer.Option(min=0, help="Retries per file.")] = 1,
    uproot_options: opt.UprootOptions = None,
    xrootd_timeout: opt.XRootDTimeout = None,
    redirector: opt.Redirectors = None,
    metadata_cache: opt.MetadataCachePath = None,
    verbose: Verbose = 0,
) -> None:
    """Open every file once, record entries and uuid, and split into chunks."""
    _setup_logging(verbose)
    from coffea_hpc.backends import make_backend
    from coffea_hpc.cli.progress import RichReporter
    from coffea_hpc.processing.preprocess import preprocess as prep
    from coffea_hpc.processing.remote import read_options
    from coffea_hpc.runner import load_fileset, metadata_cache_for

    read_opts = read_options(uproot_options, xrootd_timeout)
    fs = load_fileset(fileset).with_redirectors(redirector or [])
    cache = metadata_cache_for(metadata_cache, read_opts)
    run_dir = output.parent / f".{output.stem}-parsl" if executor == "parsl" else None
    options = {"run_dir": run_dir} if run_dir else {}
    with make_backend(_check_executor(executor), workers=workers, **options) as backend:
        outcome = prep(fs, backend, chunksize=chunksize, align_clusters=align_clusters,
                       policy=_policy(retries, skip_bad_files), reporter=RichReporter(console),
                       uproot_options=read_opts, cache=cache)
    outcome.fileset.save(output)
    n_chunks = sum(len(f.steps or ()) for _, f in outcome.fileset.files)
    console.print(
        f"{count(len(outcome.fileset.files), 'file')}, "
        f"{count(outcome.fileset.n_entries, 'entry', thousands=True)}, "
        f"{count(n_chunks, 'chunk')} -> {output}"
    )
    for failure in outcome.skipped:
        console.print(f"[yellow]skipped[/yellow] {one_line(failure.describe())}", highlight=False,
                      soft_wrap=True)


@app.command()
def demo(
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Where data and output go.")] = Path("coffea-hpc-demo"),
    events: Annotated[int, typer.Option(min=1, help="Events per generated file.")] = 50_000,
    executor: Executor = "parsl",
    workers: Workers = None,
    chunksize: Annotated[int, typer.Option(min=1, help="Entries per chunk.")] = 25_000,
    verbose: Verbose = 0,
) -> None:
    """Generate a small synthetic NanoAOD dataset and run the example dimuon analysis on it."""
    _setup_logging(verbose)
    from coffea_hpc.cli.progress import RichReporter, summary_table
    from coffea_hpc.data.synthetic import generate
    from coffea_hpc.runner import run as run_analysis

    with console.status("generating synthetic NanoAOD"):
        fs = generate(output / "data", events_per_file=events)
    fileset_path = fs.save(output / "fileset.json")
    console.print(f"fileset: {fileset_path} ({count(len(fs.files), 'file')})")
    outcome = run_analysis(
        "coffea_hpc.examples.dimuon:DimuonProcessor",
        fs,
        backend=_check_executor(executor),
        workers=workers,
        output_dir=output / "output",
        chunksize=chunksize,
        reporter=RichReporter(console),
    )
    console.print(summary_table(outcome.report))
    _show_demo_result(outcome.output)
    console.print(f"output: {outcome.output_path}  (load it with coffea.util.load)")


def _show_demo_result(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="dimuon analysis", title_justify="left")
    for col in ("dataset", "events", "2 muons", "opposite sign", "Z window", "peak [GeV]"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    mass = result["mass"]
    for name, flow in sorted(result["cutflow"].items()):
        peak = float("nan")  # a dataset no event of which passed has no category
        if name in mass.axes["dataset"] and mass[{"dataset": name}].values().sum() > 0:
            h = mass[{"dataset": name}]
            peak = h.axes[0].centers[h.values().argmax()]
        table.add_row(name, f"{flow['all']:,}", f"{flow['two muons']:,}",
                      f"{flow['opposite sign']:,}", f"{flow['Z window']:,}", f"{peak:.1f}")
    out.print(table)


def _by_error(failures: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Failed chunks grouped by their error: one line per distinct error, not per chunk."""
    grouped: dict[str, list[str]] = {}
    for failure in failures:
        grouped.setdefault(failure["error"], []).append(failure["chunk"])
    return grouped


def _register_subcommands() -> None:
    from coffea_hpc.cli import globus, merge, report, sites

    for module in (sites, merge, globus, report):
        module.register(app)


_register_subcommands()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn coffea-hpc errors into one-line messages."""
    terminated = threading.Event()

    def on_sigterm(signum: int, frame: Any) -> None:
        # stop as Ctrl-C does: checkpoint and report written, workers and Parsl's
        # interchange shut down, before the batch system's SIGKILL follows; once only, so
        # a second SIGTERM does not break off the shutdown itself
        if not terminated.is_set():
            terminated.set()
            raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main_thread else None
    try:
        code = _main(argv)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    if code == 130:
        what = "terminated" if terminated.is_set() else "interrupted"
        console.print(f"{what}: what was done is saved; rerun with --resume to continue")
        return 143 if terminated.is_set() else 130
    return code


def _main(argv: list[str] | None) -> int:
    try:
        code = app(args=argv, standalone_mode=False)
    except UserError as err:
        console.print(f"[bold red]error:[/bold red] {err}", highlight=False, soft_wrap=True)
        return 2
    except ChunkFailedError as err:
        console.print(f"[bold red]failed:[/bold red] {one_line(str(err))}", highlight=False,
                      soft_wrap=True)
        failure = getattr(err, "failure", None)
        if failure is not None and failure.error.matches((OSError,)):
            console.print("the data could not be read: --skip-bad-files goes on without the "
                          "files that fail to read, and lists them", highlight=False,
                          soft_wrap=True)
        _after_failure(err, "the failing chunk, its error and traceback")
        return 1
    except KeyboardInterrupt:
        return 130
    except CoffeaHPCError as err:
        console.print(f"[bold red]error:[/bold red] {err}", highlight=False, soft_wrap=True)
        _after_failure(err, "what failed")
        return 1
    except OSError as err:
        line = _environment_error(err, argv)
        if line is None:
            raise
        logging.getLogger(__name__).debug("the error in full", exc_info=True)
        console.print(f"[bold red]error:[/bold red] {line}", highlight=False, soft_wrap=True)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        console.print("aborted")
        return 1
    except typer.BadParameter as err:  # a bad value, as one line like every user error
        ctx = getattr(err, "ctx", None)
        command = " ".join(["coffea-hpc", *_command_names(ctx)])
        message = _lower_first(err.format_message()).rstrip(".")
        console.print(f"[bold red]error:[/bold red] {message} (see '{command} --help')",
                      highlight=False, soft_wrap=True)
        return 2
    except typer.TyperException as err:  # usage errors, in non-standalone mode
        show = getattr(err, "show", None)
        if show is None:
            raise
        show()
        return int(getattr(err, "exit_code", 2))
    return code if isinstance(code, int) else 0  # click turns Ctrl-C into 130


def _command_names(ctx: Any) -> list[str]:
    names = []
    while ctx is not None and ctx.parent is not None:
        names.insert(0, ctx.info_name)
        ctx = ctx.parent
    return names


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


_NO_SPACE = {errno.ENOSPC: "no space left on", errno.EDQUOT: "disk quota exceeded on"}
_NOT_ALLOWED = (errno.EACCES, errno.EPERM, errno.EROFS)


def _environment_error(err: OSError, argv: list[str] | None) -> str | None:
    """The line for a file the system would not let coffea-hpc write (a full disk, a quota,
    a permission); None for anything else, which keeps its traceback. Every file is
    written atomically, so after such a failure what was saved before is intact."""
    if err.filename is None or err.errno not in (*_NO_SPACE, *_NOT_ALLOWED):
        return None
    args = sys.argv[1:] if argv is None else argv
    command = next((a for a in args if not a.startswith("-")), "")
    again = "rerun with --resume" if command == "run" else "rerun"
    if err.errno in _NO_SPACE:
        return f"{_NO_SPACE[err.errno]} {err.filename}: free space and {again}"
    return f"{err.strerror.lower() if err.strerror else 'not allowed'}: {err.filename}"


def _after_failure(err: Exception, details: str) -> None:
    """What to do next: resume only when something was saved to resume from."""
    report = getattr(err, "report_path", None)
    where = f"; {details} are in {report}" if report else ""
    if getattr(err, "resumable", False):
        console.print(f"what was done is saved: fix the cause and rerun with --resume{where}",
                      highlight=False, soft_wrap=True)
    elif report:
        console.print(f"nothing was saved to resume from: fix the cause and rerun{where}",
                      highlight=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
