"""How batch jobs ended, read from each scheduler's own words (the Slurm cases also run on
the real local cluster, in test_job_outcomes.py; PBS and HTCondor cannot run here, so their
output is parsed from samples of what qstat -x -f and condor_history print)."""

from __future__ import annotations

import subprocess

import pytest

from coffea_hpc.sites.jobstate import parse_pbs, parse_sacct, parse_scontrol, query

PBS = """Job Id: 1234.pbs01
    Job_Name = coffea-hpc
    job_state = {state}
    queue = workq
{extra}
"""


@pytest.mark.parametrize(("state", "extra", "expected"), [
    ("F", "    Exit_status = 0\n    comment = Job run at Mon and finished", "COMPLETED"),
    ("F", "    Exit_status = 2\n    comment = Job run at Mon and failed", "FAILED"),
    ("F", "    Exit_status = -29\n    comment = Job run at Mon and failed", "TIMEOUT"),
    ("F", "    Exit_status = 271\n    comment = job killed: walltime 152 exceeded limit 120",
     "TIMEOUT"),
    ("F", "    Exit_status = -27\n    comment = job killed: mem 9gb exceeded limit 8gb",
     "OUT_OF_MEMORY"),
    ("F", "    Exit_status = 265\n    comment = job killed: mem 9gb exceeded limit 8gb",
     "OUT_OF_MEMORY"),
    ("F", "    Exit_status = 271\n    comment = Job deleted by user", "CANCELLED"),
    ("C", "    exit_status = 1", "FAILED"),  # Torque
    ("R", "", "RUNNING"),
    ("Q", "", "PENDING"),
])
def test_pbs_endings(state, extra, expected):
    parsed = parse_pbs(PBS.format(state=state, extra=extra))
    assert parsed.state == expected
    assert parsed.final == (state in "FC")


@pytest.mark.parametrize(("line", "expected"), [
    ("COMPLETED|0:0|None", "COMPLETED"), ("FAILED|3:0|NonZeroExitCode", "FAILED"),
    ("TIMEOUT|0:15|TimeLimit", "TIMEOUT"), ("OUT_OF_MEMORY|0:125|OutOfMemory", "OUT_OF_MEMORY"),
    ("CANCELLED by 0|0:15|None", "CANCELLED"), ("RUNNING|0:0|None", "RUNNING"),
])
def test_sacct_lines(line, expected):
    assert parse_sacct(line + "\n").state == expected


def test_scontrol_says_what_sacct_cannot_without_accounting():
    """sacct fails on a cluster without slurmdbd; scontrol still knows the finished job."""
    answers = {
        "sacct": subprocess.CompletedProcess([], 1, "", "Slurm accounting storage is disabled"),
        "scontrol": subprocess.CompletedProcess(
            [], 0, "JobId=42 JobName=coffea-hpc JobState=TIMEOUT Reason=TimeLimit "
            "Dependency=(null) ExitCode=0:15 RunTime=00:01:24\n", ""),
    }
    state = query("slurm", "42", run=lambda cmd: answers[cmd[0]])
    assert (state.state, state.exit_code, state.source) == ("TIMEOUT", "0:15", "scontrol")
    assert state.describe() == "TIMEOUT (exit code 0:15; TimeLimit)"
    assert parse_scontrol("JobId=1 JobState=OUT_OF_MEMORY Reason=OutOfMemory").final


def test_condor_history_after_the_queue_forgot():
    answers = {"condor_q": subprocess.CompletedProcess([], 0, "", ""),
               "condor_history": subprocess.CompletedProcess([], 0, "4 1\n", "")}
    assert query("condor", "7", run=lambda cmd: answers[cmd[0]]).state == "FAILED"
