"""Site tests: golden-file helpers and a real one-node Slurm cluster on localhost."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("golden")


def normalise(text: str) -> str:
    """Take out what differs between machines: interpreter path, object ids, folders."""
    text = text.replace(sys.executable, "PYTHON")
    text = text.replace(str(Path(sys.executable).with_name("python3")), "PYTHON")
    text = re.sub(r" at 0x[0-9a-f]+", "", text)
    return text


def check_golden(name: str, text: str) -> None:
    """Compare with ``golden/NAME``; ``UPDATE_GOLDEN=1`` rewrites the file instead."""
    path = GOLDEN / name
    text = normalise(text)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
        return
    assert path.exists(), f"no golden file {path}: run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{name} differs from its golden file (UPDATE_GOLDEN=1 " \
                                     "regenerates it; review the diff)"


def _slurm_missing() -> str | None:
    for cmd in ("slurmctld", "slurmd", "munged", "sbatch"):
        if shutil.which(cmd) is None:
            return f"{cmd} not installed (apt-get install slurm-wlm munge; scripts/test.sh " \
                   "does it as root)"
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    """A one-node Slurm cluster for the session; SLURM_CONF points at it."""
    reason = _slurm_missing()
    if reason:
        pytest.skip(reason)
    # short path: the munge socket lives in it (sockets have a ~100-character path limit)
    state = Path(tempfile.mkdtemp(prefix="coffea-hpc-slurm-"))
    script = ROOT / "scripts" / "local-slurm.sh"
    env = {**os.environ, "LOCAL_SLURM_PORT": os.environ.get("LOCAL_SLURM_PORT", "6917")}
    started = subprocess.run([str(script), "start", str(state)], capture_output=True,
                             text=True, env=env, timeout=120)
    if started.returncode != 0:
        subprocess.run([str(script), "stop", str(state)], check=False)
        pytest.fail(f"local Slurm did not start: {started.stderr[-2000:]}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    # job records (~/.local/state/coffea-hpc/jobs, keyed by job id) of this cluster only:
    # another cluster on this machine numbers its jobs from 1 too
    previous_state = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(state / "xdg-state")
    try:
        _wait_for_a_job_to_run(state)
        yield state
    finally:
        subprocess.run(["scancel", "--user", str(os.getuid())], check=False,
                       capture_output=True)
        subprocess.run([str(script), "stop", str(state)], check=False, timeout=60)
        for name, value in (("SLURM_CONF", previous), ("XDG_STATE_HOME", previous_state)):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(state, ignore_errors=True)


def slurm_diagnosis(state: Path) -> str:
    """What Slurm says about its node, its queue and itself, for failure messages."""
    parts = []
    for cmd in (["sinfo", "-N", "-o", "%N %T %C %m %E"], ["squeue", "-o", "%i %T %R"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        parts.append(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    for log in ("slurmctld.log", "slurmd.log"):
        path = state / "log" / log
        if path.exists():
            parts.append(f"--- {log}\n" + "\n".join(path.read_text().splitlines()[-15:]))
    return "\n".join(parts)


def _wait_for_a_job_to_run(state: Path, timeout: float = 60) -> None:
    """Fail fast, with Slurm's own explanation, if the cluster cannot run a job."""
    import time

    proc = subprocess.run(["sbatch", "--parsable", "--wrap", "true", "-o", "/dev/null"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"sbatch failed: {proc.stderr}\n{slurm_diagnosis(state)}")
    job = proc.stdout.strip().split(";")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
        if not queue.stdout.strip():
            return
        time.sleep(0.5)
    pytest.fail(f"a trivial job did not run within {timeout:.0f} s\n{slurm_diagnosis(state)}")
