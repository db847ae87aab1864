"""``coffea-hpc sites ...``, ``submit``, ``status``, ``logs`` and ``cancel``."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]

console = Console(stderr=True)
out = Console()

sites_app = typer.Typer(help="Site presets and your own sites.", no_args_is_help=True)

SiteFile = Annotated[Path | None, typer.Option("--site-file", help="A site YAML layered on top.")]
RunOptions = Annotated[Path | None, typer.Option(
    "--run-options", help="A YAML of option overrides layered on top.")]
Account = Annotated[str | None, typer.Option(help="Batch account / project.")]
Nodes = Annotated[int | None, typer.Option(
    min=1, help="Nodes (per block; for submit, of the job).")]
Walltime = Annotated[str | None, typer.Option(help="Wall time, HH:MM:SS.")]


def _site(name: str | None, site_file: Path | None, run_options: Path | None,
          **overrides: Any) -> Any:
    from coffea_hpc.sites import resolve_site

    return resolve_site(name, site_file=site_file, run_options=run_options, overrides=overrides)


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
    name: Annotated[str, typer.Argument(help="Site name or YAML file.")],
    site_file: SiteFile = None,
    run_options: RunOptions = None,
    account: Account = None,
    nodes: Nodes = None,
    walltime: Walltime = None,
) -> None:
    """The effective configuration of a site, all layers applied."""
    import yaml

    site = _site(name, site_file, run_options, account=account, nodes=nodes, walltime=walltime)
    typer.echo(yaml.safe_dump(site.model_dump(mode="json"), sort_keys=False, width=1000),
               nl=False)


@sites_app.command("check")
def check_site(
    name: Annotated[str, typer.Argument(help="Site name or YAML file.")],
    site_file: SiteFile = None,
    run_options: RunOptions = None,
    account: Account = None,
    probe: Annotated[bool, typer.Option(
        help="Start one worker through the site and compare its environment.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the probe.")] = 300.0,
    run_dir: Annotated[Path, typer.Option(help="Where Parsl logs go.")] = Path(
        "coffea-hpc-check"),
) -> None:
    """Check a site: scheduler commands, account, interchange address, a worker, versions."""
    from coffea_hpc.sites.check import check_site as run_checks

    site = _site(name, site_file, run_options, account=account, scaleout=1)
    failed = False
    for check in run_checks(site, run_dir, probe=probe, timeout=timeout):
        label, style = {True: ("ok", "green"), False: ("FAIL", "red"), None: ("--", "dim")}[
            check.ok]
        console.print(f"[{style}]{label:>4}[/{style}]  {check.name}: {check.detail}",
                      highlight=False)
        if check.ok is False:
            failed = True
            if check.fix:
                console.print(f"      fix: {check.fix}", highlight=False)
    if failed:
        raise typer.Exit(1)


def submit(
    processor: Annotated[str, typer.Argument(help="The processor, as for 'run'.")],
    fileset: Annotated[Path, typer.Option("--fileset", "-f", help="Fileset (JSON or YAML).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory.")],
    site: Annotated[str, typer.Option(help="Site to submit to.")],
    site_file: SiteFile = None,
    run_options: RunOptions = None,
    account: Account = None,
    nodes: Nodes = None,
    walltime: Walltime = None,
    chunksize: Annotated[int | None, typer.Option(min=1)] = None,
    schema: Annotated[str | None, typer.Option()] = None,
    skip_bad_files: Annotated[bool, typer.Option("--skip-bad-files")] = False,
    reduce: Annotated[str | None, typer.Option(help="driver, tree or mpi.")] = None,
    resume: Annotated[bool, typer.Option(help="Resume the run in OUTPUT.")] = False,
    extra: Annotated[str, typer.Option(help="More 'coffea-hpc run' options, quoted.")] = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the job script only.")] = False,
    wait: Annotated[bool, typer.Option(help="Wait for the job to finish.")] = False,
) -> None:
    """Submit the whole run as one batch job that starts workers inside its allocation."""
    import shlex

    from coffea_hpc.errors import UserError
    from coffea_hpc.sites.submit import render_job, submit_job

    cfg = _site(site, site_file, run_options, account=account, walltime=walltime)
    if not fileset.exists():
        raise UserError(f"fileset file {str(fileset)!r} does not exist")
    args = [processor if not Path(processor.rpartition(":")[0]).exists()
            else str(Path(processor.rpartition(":")[0]).resolve()) + ":"
            + processor.rpartition(":")[2],
            "--fileset", str(fileset.resolve()), "-o", str(output.resolve())]
    for flag, value in (("--chunksize", chunksize), ("--schema", schema), ("--reduce", reduce)):
        if value is not None:
            args += [flag, str(value)]
    if skip_bad_files:
        args.append("--skip-bad-files")
    if resume:
        args.append("--resume")
    for option, path in (("--site-file", site_file), ("--run-options", run_options)):
        if path is not None:
            args += [option, str(path.resolve())]
    args += shlex.split(extra)
    job = render_job(cfg, args, output, nodes=nodes, walltime=walltime)
    if dry_run:
        for name, text in job.items():
            if len(job) > 1:
                typer.echo(f"# ---- {name}")
            typer.echo(text, nl=False)
        return
    record = submit_job(cfg, job, output)
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
    from coffea_hpc.sites.submit import job_state, status

    while True:
        state = job_state(job_id)
        if state.final or state.state == "UNKNOWN":
            console.print(f"job {job_id}: {status(job_id)}", highlight=False)
            if state.state != "COMPLETED":
                raise typer.Exit(1)
            return
        time.sleep(2)


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
