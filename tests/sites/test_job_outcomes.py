"""``coffea-hpc status`` tells how a submitted job ended, on the real local Slurm cluster.

That cluster has no accounting database, so ``sacct`` cannot answer: the state comes from
``scontrol show job`` while Slurm still knows the job, and is kept in the job's record for
after. A job that runs past its time limit takes a minute at least (Slurm's limits are
whole minutes), so every case is submitted at once and waited for together.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from coffea_hpc.cli.app import main
from coffea_hpc.sites import resolve_site
from coffea_hpc.sites.submit import _state_dir, job_record, job_state, render_job, submit_job
from tests.sites.conftest import slurm_diagnosis

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _submit(tmp_path, name: str, command: str, walltime: str = "00:10:00") -> str:
    site = resolve_site("local-slurm")
    out = tmp_path / name
    job = render_job(site, ["x.py:P", "-f", "fileset.json", "-o", str(out)], out,
                     walltime=walltime, job_name=name)
    job = {k: v.replace("exec ", f"{command} #", 1) for k, v in job.items()}
    return submit_job(site, job, out).job_id


def test_status_tells_completed_failed_timeout_and_cancelled(slurm_cluster, tmp_path, capsys):
    jobs = {
        # a job that ignores the SIGTERM sent before its limit (--signal) runs into it
        "TIMEOUT": _submit(tmp_path, "timeout", "trap '' TERM; sleep 600",
                           walltime="00:01:00"),
        "FAILED": _submit(tmp_path, "fails", "exit 3"),
        "COMPLETED": _submit(tmp_path, "completes", "true"),
        "CANCELLED": _submit(tmp_path, "cancelled", "sleep 600"),
    }
    time.sleep(1)
    assert main(["cancel", jobs["CANCELLED"]]) == 0
    deadline = time.monotonic() + 180
    states = {}
    while time.monotonic() < deadline and len(states) < len(jobs):
        for expected, job_id in jobs.items():
            state = job_state(job_id)
            if state.final:
                states[expected] = state
        time.sleep(2)
    assert {k: v.state for k, v in states.items()} == {k: k for k in jobs}, \
        slurm_diagnosis(slurm_cluster)
    assert states["FAILED"].exit_code == "3:0"
    capsys.readouterr()
    assert main(["status", jobs["TIMEOUT"]]) == 0
    assert capsys.readouterr().out.startswith("TIMEOUT")
    # the record keeps the ending for when Slurm has forgotten the job (MinJobAge)
    record = json.loads((_state_dir() / f"{jobs['FAILED']}.json").read_text())
    assert (record["state"], record["exit_code"]) == ("FAILED", "3:0")
    assert job_record(jobs["FAILED"]).state == "FAILED"
    sacct = subprocess.run(["sacct", "-j", jobs["FAILED"]], capture_output=True, text=True)
    assert sacct.returncode != 0 or not sacct.stdout.strip()  # why scontrol is asked


def test_submit_wait_fails_unless_the_job_completed(slurm_cluster, tmp_path, monkeypatch,
                                                    capsys):
    from coffea_hpc.cli import sites

    job_id = _submit(tmp_path, "fails-wait", "exit 4")
    with pytest.raises(sites.typer.Exit) as stopped:
        sites._wait(job_id)
    assert stopped.value.exit_code == 1
    assert "FAILED (exit code 4:0" in capsys.readouterr().err
