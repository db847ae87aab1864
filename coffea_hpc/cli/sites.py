"""``coffea-hpc sites ...``, ``submit``, ``status``, ``logs`` and ``cancel``."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from coffea_hpc.cli import _options as opt

__all__ = ["register"]

console = Console(stderr=True)
out = Console()

sites_app = typer.Typer(help="Site presets and your own sites.", no_args_is_help=True)

def _site(name: str | None, ctx: typer.Context, run_options: Path | None,
          require_account: bool = True, **fixed: Any) -> Any:
    """The site the command line and a run-options file describe, layered as ``run``
    layers it."""
    from coffea_hpc.options import RunOptions
    from coffea_hpc.sites import resolve_site

    given = {k: v for k, v in opt.given(ctx).items() if k in RunOptions.option_keys()}
    options = RunOptions.layered(run_options, {**given, "site": name}, opt.flag_names(ctx))
    return resolve_site(options.site, site_file=options.site_file,
                        site_config=options.site_config,
                        overrides={**options.site_overrides(), **fixed},
                        require_account=require_account,
                        site_config_source=f"{run_options}: site_config")


@sites_app.command("list")
def list_sites() -> None:
    """The sites you can name with --site."""
    import yaml

    from coffea_hpc.sites import known_sites

    table = Table(title="sites", title_justify="left")
    for col in ("name", "scheduler", "executor", "description"):
        table.add_column(col)
    for path in sorted(set(known_sites().values()), key=lambda p: p.stem):
        name = path.stem
        data = yaml.safe_load(path.read_text()) or {}
        aliases = data.get("aliases") or []
        table.add_row(name + (f" ({', '.join(aliases)})" if aliases else ""),
                      (data.get("provider") or {}).get("type", "local"),
                      (data.get("executor") or {}).get("type", "htex"),
                      data.get("description", ""))
    out.print(table)


@sites_app.command("show")
def show_site(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Site name or YAML file.")],
    site_file: opt.SiteFile = None,
    run_options: opt.RunOptionsFile = None,
    account: opt.Account = None,
    nodes: opt.Nodes = None,
    walltime: opt.Walltime = None,
) -> None:
    """The effective configuration of a site, all layers applied; what it still needs to
    run (an account) is marked."""
    import yaml

    site = _site(name, ctx, run_options, require_account=False)
    text = yaml.safe_dump(site.model_dump(mode="json"), sort_keys=False, width=1000)
    missing = site.requires_account and not site.provider.account
    if missing:
        text = text.replace("  account: null\n", "  account: null  # REQUIRED: --account NAME "
                            "or provider.account in a site file\n", 1)
    typer.echo(text, nl=False)
    if missing:
        console.print(f"site {site.name!r} still needs an account (allocation/project) to run: "
                      "pass --account NAME", highlight=False)


@sites_app.command("check")
def check_site(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Site name or YAML file.")],
    site_file: opt.SiteFile = None,
    run_options: opt.RunOptionsFile = None,
    account: opt.Account = None,
    probe: Annotated[bool, typer.Option(
        help="Start one worker through the site and compare its environment.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the probe.")] = 300.0,
    run_dir: Annotated[Path | None, typer.Option(
        help="Where Parsl logs go (default: a temporary folder, removed unless a check "
             "fails).")] = None,
) -> None:
    """Check a site: scheduler commands, account, interchange address, a worker, versions."""
    import shutil
    import tempfile

    from coffea_hpc.sites.check import check_site as run_checks

    site = _site(name, ctx, run_options, scaleout=1)
    folder = run_dir or Path(tempfile.mkdtemp(prefix="coffea-hpc-check-"))
    failed = False
    for check in run_checks(site, folder, probe=probe, timeout=timeout):
        label, style = {True: ("ok", "green"), False: ("FAIL", "red"), None: ("--", "dim")}[
            check.ok]
        console.print(f"[{style}]{label:>4}[/{style}]  {check.name}: {check.detail}",
                      highlight=False)
        if check.ok is False:
            failed = True
            if check.fix:
                console.print(f"      fix: {check.fix}", highlight=False)
    if failed:
        if run_dir is None:
            console.print(f"      logs: {folder}", highlight=False)
        raise typer.Exit(1)
    if run_dir is None:
        shutil.rmtree(folder, ignore_errors=True)


def submit(
    ctx: typer.Context,
    processor: opt.Processor,
    fileset: opt.Fileset = None,
    output: opt.Output = None,
    site: opt.Site = None,
    run_options: opt.RunOptionsFile = None,
    site_file: opt.SiteFile = None,
    account: opt.Account = None,
    partition: opt.Partition = None,
    qos: opt.Qos = None,
    nodes: opt.Nodes = None,
    walltime: opt.Walltime = None,
    endpoint: opt.Endpoint = None,
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
    extra: Annotated[str, typer.Option(help="More 'coffea-hpc run' options, quoted.")] = "",
    job_name: Annotated[str, typer.Option("--job-name", help="The batch job's name.")] = (
        "coffea-hpc"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the job's files only.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait for the job to finish.")] = False,
) -> None:
    """Submit the whole run as one batch job that starts workers inside its allocation."""
    from coffea_hpc.api import _submit_with
    from coffea_hpc.options import RunOptions

    options = RunOptions.layered(run_options, opt.given(ctx), opt.flag_names(ctx))
    job = _submit_with(processor, options, extra=extra, job_name=job_name, dry_run=dry_run)
    if job.record is None:
        for name, text in job.files.items():
            typer.echo(f"# ---- {name}")
            typer.echo(text, nl=False)
        return
    record = job.record
    console.print(f"submitted job {record.job_id} to {record.scheduler} (site {record.site})",
                  highlight=False)
    console.print(f"  script: {record.script}\n  log:    {record.log}\n  output: "
                  f"{record.output}\n  follow: coffea-hpc status {record.job_id}; "
                  f"coffea-hpc logs {record.job_id} -f", highlight=False)
    out.print(record.job_id)
    if wait:
        _wait(record.job_id)


def _wait(job_id: str) -> None:
    """Until the job ends; exit 1 unless it COMPLETED."""
    from coffea_hpc.sites.submit import status as status_line
    from coffea_hpc.sites.submit import wait as wait_for

    state = wait_for(job_id)
    console.print(f"job {job_id}: {status_line(job_id)}", highlight=False)
    if state.state != "COMPLETED":
        raise typer.Exit(1)


def status(job_id: Annotated[str, typer.Argument(help="Job id from 'submit'.")]) -> None:
    """The batch system's state of a submitted job, and how it ended: COMPLETED, FAILED,
    TIMEOUT, OUT_OF_MEMORY or CANCELLED."""
    from coffea_hpc.sites.submit import status as job_status

    out.print(job_status(job_id), highlight=False)


def logs(
    job_id: Annotated[str, typer.Argument(help="Job id from 'submit'.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
) -> None:
    """Print the driver log of a submitted job."""
    from coffea_hpc.errors import UserError
    from coffea_hpc.sites.submit import job_record

    log = Path(job_record(job_id).log)
    if not log.exists():
        raise UserError(f"the log {str(log)!r} does not exist yet (is the job still queued?)")
    if follow:
        subprocess.run(["tail", "-n", "+1", "-f", str(log)], check=False)
    else:
        typer.echo(log.read_text(), nl=False)


def cancel(job_id: Annotated[str, typer.Argument(help="Job id from 'submit'.")]) -> None:
    """Cancel a submitted job (its checkpoint stays; rerun with --resume)."""
    from coffea_hpc.sites.submit import cancel as cancel_job

    cancel_job(job_id)
    console.print(f"cancelled {job_id}")


def register(app: typer.Typer) -> None:
    app.add_typer(sites_app, name="sites")
    app.command()(submit)
    app.command()(status)
    app.command()(logs)
    app.command()(cancel)
