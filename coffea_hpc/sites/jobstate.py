"""How a batch job ended: COMPLETED, FAILED, TIMEOUT, OUT_OF_MEMORY or CANCELLED.

``squeue`` forgets a job the moment it ends, which is exactly when the analyst asks how it
went. Each scheduler keeps the answer elsewhere:

- Slurm: ``sacct`` where accounting is on (slurmdbd); without it, ``scontrol show job``
  still knows a finished job for ``MinJobAge`` seconds (300 by default). Once neither
  knows it, the state recorded by an earlier query is all there is
  (`coffea_hpc.sites.submit` keeps it in the job's record).
- PBS Pro: ``qstat -x -f`` shows finished jobs; the ending is read from ``Exit_status``
  (negative values are PBS's own, e.g. -29 the wall-time kill) and the ``comment``.
- HTCondor: ``condor_q``'s JobStatus, and ``condor_history`` for jobs that left the queue.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FINAL", "JobState", "parse_pbs", "parse_sacct", "parse_scontrol", "query"]

FINAL = frozenset({"COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "CANCELLED",
                   "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REMOVED"})
"""States a job does not leave."""

Run = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class JobState:
    state: str
    """The scheduler's state in Slurm's words (PENDING, RUNNING, COMPLETED, TIMEOUT, ...),
    or UNKNOWN when no source knows the job any more."""
    exit_code: str = ""
    reason: str = ""
    source: str = ""
    """Which command said so (sacct, scontrol, qstat, ...)."""

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def describe(self) -> str:
        details = [d for d in (self.exit_code and f"exit code {self.exit_code}",
                               self.reason and self.reason != "None" and self.reason) if d]
        return f"{self.state} ({'; '.join(details)})" if details else self.state


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def query(scheduler: str, job_id: str, run: Run = _run) -> JobState:
    """Ask the scheduler's commands, most informative first."""
    if scheduler == "slurm":
        return _slurm(job_id, run)
    if scheduler == "pbs":
        proc = run(["qstat", "-x", "-f", job_id])
        return parse_pbs(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() \
            else JobState("UNKNOWN", source="qstat")
    if scheduler == "condor":
        return _condor(job_id, run)
    raise ValueError(f"unknown scheduler {scheduler!r}")


def _slurm(job_id: str, run: Run) -> JobState:
    proc = run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,ExitCode,Reason"])
    if proc.returncode == 0 and proc.stdout.strip():
        return parse_sacct(proc.stdout)
    # no accounting (sacct says "Slurm accounting storage is disabled"): the controller
    # remembers the job for MinJobAge seconds after it ends
    proc = run(["scontrol", "show", "job", "-o", job_id])
    if proc.returncode == 0 and "JobState=" in proc.stdout:
        return parse_scontrol(proc.stdout)
    return JobState("UNKNOWN", source="scontrol")


def parse_sacct(text: str) -> JobState:
    """``sacct -X -n -P -o State,ExitCode,Reason``: one line per job allocation."""
    state, exit_code, reason = ([*text.strip().splitlines()[0].split("|"), "", ""])[:3]
    return JobState(_slurm_word(state), exit_code, reason, "sacct")


def parse_scontrol(text: str) -> JobState:
    fields = dict(re.findall(r"(\w+)=(\S*)", text))
    return JobState(_slurm_word(fields.get("JobState", "UNKNOWN")), fields.get("ExitCode", ""),
                    fields.get("Reason", ""), "scontrol")


def _slurm_word(state: str) -> str:
    """'CANCELLED by 0' is CANCELLED; 'OUT_OF_ME+' (sacct's cut) is OUT_OF_MEMORY."""
    word = state.split()[0].rstrip("+") if state.strip() else "UNKNOWN"
    return next((f for f in FINAL if f.startswith(word)), word) if state.endswith("+") else word


_PBS_STATES = {"Q": "PENDING", "H": "HELD", "W": "PENDING", "T": "PENDING", "R": "RUNNING",
               "B": "RUNNING", "E": "COMPLETING", "S": "SUSPENDED", "U": "SUSPENDED"}
_PBS_KILLED = {-29: "TIMEOUT", -27: "OUT_OF_MEMORY", -26: "OUT_OF_MEMORY"}
"""PBS Pro's own exit statuses for its kills: wall time, memory, virtual memory."""


def parse_pbs(text: str) -> JobState:
    """``qstat -x -f`` of one job (PBS Pro; Torque's ``job_state = C`` is read the same)."""
    fields = {k.strip().lower(): v.strip() for k, v in
              re.findall(r"^\s*([\w.]+)\s*=\s*(.*)$", text, re.MULTILINE)}
    letter = fields.get("job_state", "")
    if letter not in ("F", "X", "C"):
        return JobState(_PBS_STATES.get(letter, letter or "UNKNOWN"), source="qstat")
    comment = fields.get("comment", "")
    try:
        code = int(fields.get("exit_status", ""))
    except ValueError:
        code = None
    low = comment.lower()
    if code in _PBS_KILLED:
        state = _PBS_KILLED[code]
    elif "walltime" in low and "exceeded" in low:
        state = "TIMEOUT"
    elif re.search(r"\b(v?mem)\b.*exceeded", low):
        state = "OUT_OF_MEMORY"
    elif code == 0:
        state = "COMPLETED"
    elif "deleted" in low or code in (271, 143):  # qdel: SIGTERM (256 + 15, or 128 + 15)
        state = "CANCELLED"
    else:
        state = "FAILED"
    return JobState(state, "" if code is None else str(code), comment, "qstat")


_CONDOR = {"1": "PENDING", "2": "RUNNING", "3": "REMOVED", "4": "COMPLETED", "5": "HELD",
           "6": "RUNNING", "7": "SUSPENDED"}


def _condor(job_id: str, run: Run) -> JobState:
    for cmd, source in ((["condor_q", job_id, "-af", "JobStatus", "ExitCode"], "condor_q"),
                        (["condor_history", job_id, "-limit", "1", "-af", "JobStatus",
                          "ExitCode"], "condor_history")):
        proc = run(cmd)
        words = proc.stdout.split() if proc.returncode == 0 else []
        if words:
            state = _CONDOR.get(words[0], words[0])
            code = words[1] if len(words) > 1 and words[1] != "undefined" else ""
            if state == "COMPLETED" and code not in ("", "0"):
                state = "FAILED"
            return JobState(state, code, source=source)
    return JobState("UNKNOWN", source="condor_history")
