"""``coffea-hpc submit``: one batch job that runs the whole analysis inside its allocation.

The job script is rendered from a template in ``templates/`` (``string.Template``; every
scheduler directive lives there), written next to the output, and handed to the scheduler's
own submit command. A small record of the job (script, log, output) is kept under
``~/.local/state/coffea-hpc/jobs`` so ``status``, ``logs`` and ``cancel`` need only its id;
once ``status`` has seen how the job ended, the record keeps that too, for when the
scheduler has forgotten the job (`coffea_hpc.sites.jobstate`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from string import Template

from coffea_hpc import output as files
from coffea_hpc._resources import resource_dir
from coffea_hpc.errors import SiteError
from coffea_hpc.sites.jobstate import JobState, query
from coffea_hpc.sites.schema import SiteConfig, walltime_seconds

__all__ = [
    "SCHEDULERS",
    "JobRecord",
    "cancel",
    "job_record",
    "job_state",
    "render_job",
    "status",
    "submit_job",
    "wait",
]


SIGNAL_LEAD = 120
"""Seconds before the time limit at which the driver is asked to stop (SIGTERM)."""

JOB_FLAVOURS = {"espresso": 20 * 60, "microcentury": 3_600, "longlunch": 2 * 3_600,
                "workday": 8 * 3_600, "tomorrow": 86_400, "testmatch": 3 * 86_400,
                "nextweek": 7 * 86_400}
"""CERN HTCondor's ``+JobFlavour`` names and the runtime limit (s) of each."""
_MAX_RUNTIME = re.compile(r"^\s*\+MaxRuntime\s*=\s*(\d+)\s*$", re.MULTILINE | re.IGNORECASE)
_FLAVOUR = re.compile(r"^\s*\+JobFlavour\s*=\s*\"?(\w+)\"?\s*$", re.MULTILINE | re.IGNORECASE)


@dataclass(frozen=True)
class Scheduler:
    """The commands of one batch system."""

    name: str
    template: str
    submit: tuple[str, ...]
    status: tuple[str, ...]
    cancel: tuple[str, ...]
    job_id: str  # a regular expression with one group

    def require(self) -> None:
        for cmd in {self.submit[0], self.status[0], self.cancel[0]}:
            if shutil.which(cmd) is None:
                raise SiteError(f"{cmd!r} not found: submitting to {self.name} needs its "
                                "client commands on PATH (run this on a login node)")


SCHEDULERS = {
    "slurm": Scheduler("slurm", "slurm/driver.sbatch", ("sbatch", "--parsable"),
                       ("squeue", "-h", "-o", "%T", "-j"), ("scancel",), r"^(\d+)"),
    "pbs": Scheduler("pbs", "pbs/driver.pbs", ("qsub",), ("qstat", "-f"), ("qdel",),
                     r"^(\S+)"),
    "condor": Scheduler("condor", "condor/driver.sub", ("condor_submit", "-terse"),
                        ("condor_q", "-af", "JobStatus"), ("condor_rm",), r"^(\d+)\.\d+"),
}


@dataclass(frozen=True)
class JobRecord:
    scheduler: str
    job_id: str
    script: str
    log: str
    output: str
    site: str
    state: str = ""
    """How the job ended, once a status query has seen it (COMPLETED, TIMEOUT, ...)."""
    exit_code: str = ""


def _state_dir() -> Path:
    root = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state"))
    return files.private_dir(root / "coffea-hpc" / "jobs")


def render(template: str, **values: object) -> str:
    text = (resource_dir("templates") / template).read_text()
    try:
        return Template(text).substitute({k: str(v) for k, v in values.items()})
    except KeyError as err:
        raise SiteError(f"template {template!r} needs a value for {err.args[0]!r}") from None


def driver_command(site: SiteConfig, run_args: Sequence[str]) -> str:
    """The command the job runs: this interpreter, the same coffea-hpc, inside the job."""
    return " ".join(shlex.quote(a) for a in (
        sys.executable, "-m", "coffea_hpc.cli.app", "run", *run_args,
        "--site", site.name, "--inside-allocation"))


def render_job(
    site: SiteConfig,
    run_args: Sequence[str],
    output_dir: Path,
    *,
    nodes: int | None = None,
    walltime: str | None = None,
    job_name: str = "coffea-hpc",
    analysis_dir: Path | None = None,
    environment: str = "",
) -> dict[str, str]:
    """The files of the job (name -> text): the batch script and, for HTCondor, its wrapper.

    The job starts in ``analysis_dir`` (default: here) after the site's setup lines and
    ``environment`` (shell lines that recreate the submitting Python environment). The
    driver gets SIGTERM `SIGNAL_LEAD` seconds before the time limit, so it checkpoints and
    stops its workers before it is killed: from Slurm (``--signal``), and under PBS and
    HTCondor, which send none ahead of the limit, from ``timeout``."""
    scheduler = site.scheduler
    if scheduler == "none":
        raise SiteError(f"site {site.name!r} has no batch system to submit to (provider "
                        f"{site.provider.type!r}); use 'coffea-hpc run --site {site.name}'")
    pr, sub = site.provider, site.submit
    output_dir = output_dir.resolve()
    log = output_dir / "submit" / f"{job_name}.log"
    common = {
        "site": site.name, "job_name": job_name,
        "workdir": shlex.quote(str(analysis_dir or Path.cwd())),
        "log": str(log), "setup": "\n".join(filter(None, [pr.worker_init, sub.setup])),
        "environment": environment, "command": driver_command(site, run_args),
    }
    wall = walltime or sub.walltime or pr.walltime
    common["signal_lead"] = _signal_lead(wall)
    n = nodes or sub.nodes
    if scheduler == "slurm":
        lines = [f"#SBATCH --{k}={v}" for k, v in (
            ("account", pr.account), ("partition", pr.partition), ("qos", pr.qos),
            ("constraint", pr.constraint)) if v]
        if pr.gpus_per_node:
            lines.append(f"#SBATCH --gpus-per-node={pr.gpus_per_node}")
        lines += [pr.scheduler_options, sub.directives]
        text = render(SCHEDULERS["slurm"].template, nodes=n, walltime=wall,
                      directives="\n".join(filter(None, lines)), **common)
        return {"driver.sbatch": text}
    if scheduler == "pbs":
        select = f":{pr.select_options}" if pr.select_options else ""
        if pr.cores_per_node not in (None, "auto"):
            select = f":ncpus={pr.cores_per_node}{select}"
        lines = [f"#PBS -{k} {v}" for k, v in (("A", pr.account), ("q", pr.queue)) if v]
        lines += [pr.scheduler_options, sub.directives]
        text = render(SCHEDULERS["pbs"].template, nodes=n, walltime=wall, select=select,
                      stop_after=f"{walltime_seconds(wall) - _signal_lead(wall)}s",
                      directives="\n".join(filter(None, lines)), **common)
        return {"driver.pbs": text}
    script = output_dir / "submit" / "driver.sh"
    lines = [pr.scheduler_options, pr.requirements and f"requirements = {pr.requirements}",
             pr.account and f'+AccountingGroup = "{pr.account}"', sub.directives]
    runtime, max_runtime = _condor_runtime("\n".join(filter(None, lines)), wall)
    lines.append(max_runtime)
    cpus = pr.cores_per_node if isinstance(pr.cores_per_node, int) else 1
    memory = f"{pr.mem_per_node or 2} GB"
    common["signal_lead"] = _signal_lead_s(runtime)
    return {
        "driver.sub": render(SCHEDULERS["condor"].template, script=script, cpus=cpus,
                             memory=memory, directives="\n".join(filter(None, lines)),
                             **common),
        "driver.sh": render("condor/driver.sh", runtime=runtime,
                            stop_after=f"{runtime - _signal_lead_s(runtime)}s", **common),
    }


def _condor_runtime(directives: str, walltime: str) -> tuple[int, str]:
    """The HTCondor slot's runtime limit (s), and the ``+MaxRuntime`` line that sets it
    (empty when the site's own lines do). HTCondor sends no signal ahead of the limit, so
    the driver runs under ``timeout``, which needs the limit: a ``+MaxRuntime`` of the
    site's, else the wall time, written as ``+MaxRuntime``; a ``+JobFlavour`` (CERN) limits
    the slot too, so the shorter of the two counts."""
    given = [int(s) for s in _MAX_RUNTIME.findall(directives)]
    line = ""
    if not given:
        given = [walltime_seconds(walltime)]
        line = f"+MaxRuntime = {given[0]}"
    flavours = [f.lower() for f in _FLAVOUR.findall(directives)]
    limits = given[-1:]  # a submit file's last assignment of an attribute is the one kept
    if flavours and flavours[-1] in JOB_FLAVOURS:
        limits.append(JOB_FLAVOURS[flavours[-1]])
    return min(limits), line


def _signal_lead(walltime: str) -> int:
    """Seconds before the time limit at which the driver gets SIGTERM: `SIGNAL_LEAD`, or
    half of a job shorter than twice that (a driver stopped as it starts saves nothing)."""
    return _signal_lead_s(walltime_seconds(walltime))


def _signal_lead_s(total: int) -> int:
    return SIGNAL_LEAD if total > 2 * SIGNAL_LEAD else max(total // 2, 1)


def submit_job(site: SiteConfig, job_files: dict[str, str], output_dir: Path) -> JobRecord:
    """Write the job's files under ``output_dir/submit`` and submit the first one."""
    scheduler = SCHEDULERS[site.scheduler]
    scheduler.require()
    # the output directory is for sharing; the job script (account, paths) is not
    folder = files.private_dir(files.shared_dir(output_dir) / "submit")
    paths = []
    for name, text in job_files.items():
        path = folder / name
        path.write_text(text)
        path.chmod(0o700)
        paths.append(path)
    proc = subprocess.run([*scheduler.submit, str(paths[0])], capture_output=True, text=True,
                          cwd=folder, timeout=120)
    if proc.returncode != 0:
        reason = (proc.stderr or proc.stdout).strip().splitlines()
        raise SiteError(f"{scheduler.submit[0]} refused the job: "
                        f"{reason[-1] if reason else 'exit ' + str(proc.returncode)}")
    match = re.search(scheduler.job_id, proc.stdout.strip(), re.MULTILINE)
    if match is None:
        raise SiteError(f"could not read a job id from {scheduler.submit[0]}: "
                        f"{proc.stdout.strip()!r}")
    log = re.search(r"^(?:#SBATCH --output=|#PBS -o |output\s*=\s*)(\S+)",
                    job_files[paths[0].name], re.MULTILINE)
    record = JobRecord(site.scheduler, match.group(1), str(paths[0]),
                       log.group(1) if log else "", str(output_dir.resolve()), site.name)
    (_state_dir() / f"{record.job_id}.json").write_text(json.dumps(asdict(record)))
    return record


def job_record(job_id: str) -> JobRecord:
    path = _state_dir() / f"{job_id}.json"
    if not path.is_file():
        raise SiteError(f"no job {job_id!r} submitted by coffea-hpc from this account "
                        f"(records are in {path.parent})")
    return JobRecord(**json.loads(path.read_text()))


def job_state(job_id: str) -> JobState:
    """The job's state: PENDING, RUNNING, ..., then how it ended (kept in its record once
    seen); UNKNOWN once the scheduler has forgotten a job whose end nobody saw."""
    record = job_record(job_id)
    if record.state:
        return JobState(record.state, record.exit_code, source="record")
    state = query(record.scheduler, record.job_id)
    if state.final:
        path = _state_dir() / f"{record.job_id}.json"
        path.write_text(json.dumps(asdict(replace(record, state=state.state,
                                                  exit_code=state.exit_code))))
    return state


def status(job_id: str) -> str:
    """The state as a line for the analyst."""
    state = job_state(job_id)
    if state.state == "UNKNOWN":
        return ("finished (no longer known to the scheduler, which keeps no accounting; "
                "how it ended was not seen: see 'coffea-hpc logs')")
    return state.describe()


def wait(job_id: str, poll: float = 2.0) -> JobState:
    """Poll the scheduler until the job has ended (or been forgotten); how it ended."""
    while True:
        state = job_state(job_id)
        if state.final or state.state == "UNKNOWN":
            return state
        time.sleep(poll)


def cancel(job_id: str) -> None:
    record = job_record(job_id)
    scheduler = SCHEDULERS[record.scheduler]
    proc = subprocess.run([*scheduler.cancel, record.job_id], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0:
        raise SiteError(f"{scheduler.cancel[0]} {record.job_id} failed: "
                        f"{(proc.stderr or proc.stdout).strip()}")
