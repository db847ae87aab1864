"""An MPI merge job started ahead of its merge, for real with mpiexec (mpich from PyPI)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from coffea_hpc import output
from coffea_hpc.errors import MergeError
from coffea_hpc.reduction import merge_stream
from coffea_hpc.reduction.mpi_job import MpiMergeJob
from tests.helpers import assert_same

pytestmark = pytest.mark.mpi

if not Path(sys.executable).with_name("mpiexec").exists() and shutil.which("mpiexec") is None:
    pytest.skip("no mpiexec (pip install 'coffea-hpc[mpi]')", allow_module_level=True)


def _ranks(launcher_pid: int) -> list[psutil.Process]:
    """The Python processes the launcher started (under hydra's proxy)."""
    return [p for p in psutil.Process(launcher_pid).children(recursive=True)
            if "coffea_hpc.reduction.mpi" in " ".join(p.cmdline())]


def _gone(procs: list[psutil.Process], timeout: float) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return not alive


def test_waiting_ranks_sleep_then_merge(partial_files, tmp_path):
    """Ranks that wait for their inputs must not spin (they would take the cores the run's
    workers are using); handed the inputs, they give the serial merge's output."""
    with MpiMergeJob(2) as job:
        assert job.ready(timeout=60)
        ranks = _ranks(job._proc.pid)
        assert len(ranks) == 2
        before = sum(sum(p.cpu_times()[:2]) for p in ranks)
        time.sleep(2)
        busy = sum(sum(p.cpu_times()[:2]) for p in ranks) - before
        assert busy < 0.4, f"waiting ranks used {busy:.2f} CPU-seconds in 2 s"
        out = tmp_path / "merged.coffea"
        stats = job.merge([partial_files[0].parent], out, key=None, trust_coffea_files=True,
                          timeout=120)
    assert_same(output.load(out), merge_stream(partial_files, None, trust_coffea_files=True))
    assert stats.ranks == 2 and stats.inputs == len(partial_files)
    with pytest.raises(MergeError, match="used or cancelled already"):
        job.merge(partial_files, out, key=None, trust_coffea_files=True)


def test_an_unused_job_leaves_no_process():
    with MpiMergeJob(2) as job:
        assert job.ready(timeout=60)
        ranks = _ranks(job._proc.pid)
    assert job._proc.returncode == 0  # the ranks exited cleanly, not killed
    assert _gone(ranks, timeout=5)


def test_ranks_exit_when_the_driver_is_killed(tmp_path):
    """A driver killed while its merge job waits must not leave ranks behind."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from coffea_hpc.reduction.mpi_job import MpiMergeJob
        job = MpiMergeJob(2)
        assert job.ready(timeout=60)
        print(job._proc.pid, flush=True)
        time.sleep(600)
    """))
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parents[2])
    try:
        launcher = int(driver.stdout.readline())
        ranks = _ranks(launcher)
        assert len(ranks) == 2
        driver.kill()
        driver.wait()
        assert _gone(ranks, timeout=20), "ranks outlived their driver"
        assert _gone([psutil.Process(launcher)], timeout=10)
    except psutil.NoSuchProcess:
        pass  # already gone: what the test wants
    finally:
        driver.kill()


def test_a_job_that_cannot_start_says_why(tmp_path):
    fake = tmp_path / "fake-mpiexec"
    fake.write_text("#!/bin/sh\necho 'fake-mpiexec: no MPI here' >&2\nexit 3\n")
    fake.chmod(0o755)
    with MpiMergeJob(2, launcher=str(fake)) as job:
        assert not job.ready(timeout=30)
        with pytest.raises(MergeError, match=r"failed \(exit 3\): fake-mpiexec: no MPI here"):
            job.merge([], tmp_path / "out.coffea", key=None, trust_coffea_files=True)


def test_ranks_that_never_start_are_given_up_on(tmp_path):
    """A launcher that waits forever (a job step queued behind the workers' step) must not
    hang the run: the merge gives up, naming what the launcher said."""
    fake = tmp_path / "fake-srun"
    fake.write_text("#!/bin/sh\necho 'srun: Job step creation temporarily disabled, retrying'"
                    " >&2\nexec sleep 600\n")
    fake.chmod(0o755)
    job = MpiMergeJob(2, launcher=str(fake))
    launcher = psutil.Process(job._proc.pid)
    with pytest.raises(MergeError, match=r"did not start within 2 s: .*temporarily disabled"):
        job.merge([], tmp_path / "out.coffea", key=None, start_timeout=2)
    assert _gone([launcher], timeout=5)


def test_a_launcher_that_keeps_standard_input_from_rank_0_is_named(tmp_path, partial_files):
    """Inputs travel on rank 0's standard input; a launcher that does not forward it must
    be named as the cause, not reported as a failed merge with no reason."""
    mpiexec = Path(sys.executable).with_name("mpiexec")
    deaf = tmp_path / "deaf-mpiexec"
    deaf.write_text(f'#!/bin/sh\nexec {mpiexec if mpiexec.exists() else "mpiexec"} "$@" '
                    "< /dev/null\n")
    deaf.chmod(0o755)
    with MpiMergeJob(2, launcher=str(deaf)) as job, pytest.raises(
            MergeError, match="does not pass standard input on to rank 0"):
        job.merge(partial_files, tmp_path / "out.coffea", key=None, trust_coffea_files=True,
                  timeout=60)


def test_a_rank_error_the_launcher_never_forwarded_still_reaches_the_driver(tmp_path,
                                                                            partial_files):
    """``MPI_Abort`` can end every rank before the launcher forwards what the failing rank
    printed; the reason must still reach the driver (here the launcher drops it always)."""
    mpiexec = Path(sys.executable).with_name("mpiexec")
    lossy = tmp_path / "lossy-mpiexec"
    lossy.write_text("#!/bin/bash\nset -o pipefail\n"
                     f'{mpiexec if mpiexec.exists() else "mpiexec"} "$@" 2>&1 '
                     "| grep --line-buffered -v -e '^error (rank' -e 'Abort('\n")
    lossy.chmod(0o755)
    bad = tmp_path / "in" / "zz.coffea"
    bad.parent.mkdir()
    bad.write_bytes(b"not a pickle")
    with MpiMergeJob(2, launcher=str(lossy)) as job, pytest.raises(
            MergeError, match=rf"failed \(exit \d+\): error \(rank \d\): .*{bad.name}"):
        job.merge([*partial_files, bad], tmp_path / "out.coffea", key=None,
                  trust_coffea_files=True, timeout=60)
    assert not list(tmp_path.glob(".out.coffea.mpi-error-*"))
