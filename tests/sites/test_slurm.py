"""The two ways to run on Slurm, on a real one-node Slurm cluster on localhost.

``run --site local-slurm``: Parsl's SlurmProvider submits a pilot job whose workers connect
back to this driver. ``submit --site local-slurm``: the whole driver runs inside a batch job
and starts its workers with srun. Both must give the output of a local run.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from coffea.util import load

from coffea_hpc.cli.app import main
from coffea_hpc.examples.dimuon import DimuonProcessor
from coffea_hpc.metrics import read_chunks
from coffea_hpc.runner import run
from coffea_hpc.sites import resolve_site
from coffea_hpc.sites.check import check_site
from coffea_hpc.sites.submit import job_record, job_state, render_job
from tests.helpers import assert_same, processes_mentioning, still_running, write_slow_processor
from tests.sites.conftest import slurm_diagnosis

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def local_output(fileset):
    return run(DimuonProcessor(), fileset, backend="iterative", chunksize=1_500).output


def _squeue() -> str:
    return subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip()


def _drained(job_id: str = "", timeout: float = 60) -> bool:
    """Whether the job (or every job) has left the queue; cancelled jobs complete first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = _squeue()
        if (job_id and job_id not in queue) or not queue:
            return True
        time.sleep(0.5)
    return False


def _wait_until_finished(job_id: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not job_state(job_id).final and time.monotonic() < deadline:
        time.sleep(1)


def test_run_with_pilot_jobs_through_parsls_slurm_provider(slurm_cluster, fileset_path,
                                                           local_output, tmp_path, capsys):
    code = main(["run", "coffea_hpc.examples.dimuon:DimuonProcessor", "-f", str(fileset_path),
                 "-o", str(tmp_path), "--site", "local-slurm", "--chunksize", "1500"])
    text = capsys.readouterr()
    assert code == 0, text.err[-3000:] + slurm_diagnosis(slurm_cluster)
    assert_same(load(tmp_path / "output.coffea"), local_output)
    # the pilot job ran under Slurm, and is gone once the run is over
    scripts = [p for p in (tmp_path / "parsl").rglob("submit_scripts/parsl.*")
               if p.suffix not in (".stdout", ".stderr")]
    assert scripts and "#SBATCH" in scripts[0].read_text()
    # the workers came in through CurveZMQ: the run's certificates, private to the user
    certificates = list((tmp_path / "parsl").rglob("certificates"))
    assert certificates and (certificates[0] / "client.key_secret").exists()
    assert certificates[0].stat().st_mode & 0o077 == 0
    assert _drained(), _squeue()
    # every chunk's row names the pilot job and Parsl block its worker ran in
    rows = read_chunks(tmp_path / "chunks.jsonl")
    assert rows and all(r["job"] and r["block"] is not None for r in rows), rows[:1]


def test_submit_runs_the_driver_inside_an_allocation(slurm_cluster, fileset_path,
                                                     local_output, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["submit", "--site", "local-slurm", "coffea_hpc.examples.dimuon:DimuonProcessor",
                 "-f", str(fileset_path), "-o", str(out), "--chunksize", "1500"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    job_id = printed.out.strip().splitlines()[-1]
    record = job_record(job_id)
    _wait_until_finished(job_id)
    log = (out / "submit" / "coffea-hpc.log").read_text()
    assert (out / "output.coffea").exists(), log[-3000:]
    assert_same(load(out / "output.coffea"), local_output)
    assert f"job {job_id} on 1 node(s)" in log
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete" and report["backend"] == "parsl"
    assert {r["job"] for r in read_chunks(out / "chunks.jsonl")} == {job_id}
    assert job_state(job_id).state == "COMPLETED"
    assert record.log == str(out / "submit" / "coffea-hpc.log")
    code = main(["logs", job_id])
    assert code == 0 and "coffea-hpc run: complete" in capsys.readouterr().out


@pytest.mark.mpi
@pytest.mark.parametrize("launcher", ["mpiexec", "srun --mpi=pmi2"])
def test_submit_with_the_mpi_merge(slurm_cluster, fileset_path, local_output, tmp_path, capsys,
                                   launcher):
    """``--reduce mpi`` inside an allocation whose CPUs the workers' srun step holds: the
    merge's step (srun, or the one mpiexec starts) must run beside it, not queue behind it."""
    out = tmp_path / "out"
    whole_node = tmp_path / "whole-node.yaml"  # two CPUs, for srun's two tasks
    whole_node.write_text("submit:\n  directives: '#SBATCH --exclusive'\n")
    code = main(["submit", "--site", "local-slurm", "--site-file", str(whole_node),
                 "coffea_hpc.examples.dimuon:DimuonProcessor", "-f", str(fileset_path),
                 "-o", str(out), "--chunksize", "1500", "--reduce", "mpi",
                 "--extra", f"--mpi-ranks 2 --mpi-launcher '{launcher}'"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    job_id = printed.out.strip().splitlines()[-1]
    _wait_until_finished(job_id)
    log = (out / "submit" / "coffea-hpc.log").read_text()
    assert (out / "output.coffea").exists(), log[-3000:] + slurm_diagnosis(slurm_cluster)
    assert_same(load(out / "output.coffea"), local_output)
    merge = json.loads((out / "report.json").read_text())["reduction"]["final_merge"]
    assert merge["ranks"] == 2 and "mpi_error" not in merge, merge


def test_cancel_a_submitted_job(slurm_cluster, fileset_path, tmp_path, capsys):
    site = resolve_site("local-slurm")
    long_job = render_job(site, ["x.py:P", "-f", str(fileset_path), "-o", str(tmp_path)],
                          tmp_path)
    # replace the driver with a sleep, to cancel something that is surely still running
    long_job = {k: v.replace("exec ", "sleep 600 #", 1) for k, v in long_job.items()}
    from coffea_hpc.sites.submit import submit_job

    record = submit_job(site, long_job, tmp_path)
    assert record.job_id in _squeue()
    assert main(["cancel", record.job_id]) == 0
    assert _drained(record.job_id), _squeue()


def test_cancelling_a_running_driver_saves_its_work_and_leaves_nothing(
        slurm_cluster, fileset_path, tmp_path, capsys):
    """scancel sends the driver SIGTERM: it checkpoints, reports, and stops Parsl's
    interchange and workers before Slurm's SIGKILL (an interchange once outlived its job)."""
    slow = write_slow_processor(tmp_path / "slow.py", 1.0)
    out = tmp_path / "out"
    assert main(["submit", "--site", "local-slurm", slow, "-f", str(fileset_path),
                 "-o", str(out), "--chunksize", "1000", "--extra",
                 "--checkpoint-every 0.2"]) == 0
    job_id = capsys.readouterr().out.strip().splitlines()[-1]
    checkpoint = out / "checkpoint.coffea"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), slurm_diagnosis(slurm_cluster)
    ours = processes_mentioning(str(out))
    interchanges = processes_mentioning("interchange")
    assert main(["cancel", job_id]) == 0
    assert _drained(job_id), _squeue()
    alive = still_running(ours + interchanges, timeout=30)
    assert not alive, [" ".join(p.cmdline()) for p in alive]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "interrupted"
    assert 0 < load(checkpoint).processed.n_entries < 12_000


def test_the_doctor_passes_on_a_working_site(slurm_cluster, tmp_path):
    checks = check_site(resolve_site("local-slurm"), tmp_path, timeout=120)
    assert [c.name for c in checks] == ["scheduler commands", "account and queue",
                                        "interchange address", "worker probe", "versions"]
    assert all(c.ok for c in checks), ([(c.name, c.detail) for c in checks],
                                       slurm_diagnosis(slurm_cluster))


def test_the_doctor_names_a_refused_partition(slurm_cluster, tmp_path):
    site = resolve_site("local-slurm", overrides={"partition": "nosuchpartition"})
    checks = check_site(site, tmp_path, probe=False)
    refused = next(c for c in checks if c.name == "account and queue")
    assert refused.ok is False and "partition" in refused.detail.lower()
    assert "provider.account, partition" in refused.fix


def test_the_doctor_names_a_broken_worker_environment(slurm_cluster, tmp_path):
    """A worker_init that breaks the environment: the probe fails and says where to look."""
    site = resolve_site("local-slurm")
    broken = site.model_copy(update={
        "provider": site.provider.model_copy(update={"worker_init": "exit 3"})})
    checks = check_site(broken, tmp_path, timeout=15)
    probe = next(c for c in checks if c.name == "worker probe")
    assert probe.ok is False and "worker_init" in probe.fix


def _blocks_submitted(out) -> int:
    """Blocks Parsl submitted in the run: one job script each, named after the block."""
    return len({p.name.split(".")[2] for p in (out / "parsl").rglob("submit_scripts/parsl.*")})


@pytest.mark.timeout(900)
def test_blocks_that_reach_their_walltime_drain_are_replaced_and_lose_nothing(
        slurm_cluster, fileset_path, local_output, tmp_path, capsys):
    """Blocks of one minute, over three minutes of run, no retries: each block's workers
    stop taking chunks 30 s before its walltime and leave when idle (HTEx drain_period),
    Parsl's strategy starts the next block once its status poll sees the last one gone
    (every 60 s on Slurm), and the run completes with the local run's output. No chunk was
    running when a block ended, so none was lost."""
    slow = write_slow_processor(tmp_path / "slow.py", 3.0)
    out = tmp_path / "out"
    code = main(["run", slow, "-f", str(fileset_path), "-o", str(out), "--site",
                 "local-slurm", "--walltime", "00:01:00", "--chunksize", "200",
                 "--chunks-per-task", "1", "--retries", "0"])
    text = capsys.readouterr()
    assert code == 0, text.err[-3000:] + slurm_diagnosis(slurm_cluster)
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete" and report["failed_chunks"] == []
    assert report["stages_s"]["processing"] >= 90  # 60 chunks x 3 s on 2 workers
    assert _blocks_submitted(out) >= 3, report
    assert report["metrics"]["chunks_lost_to_ended_blocks"] == 0
    assert_same(load(out / "output.coffea"), local_output)
    assert _drained(), _squeue()


def test_a_block_cancelled_mid_run_costs_no_retry(slurm_cluster, fileset_path, local_output,
                                                  tmp_path):
    """Two one-core blocks; ``scancel`` of one under its running chunk: the interchange
    misses its worker's heartbeats, the chunk comes back as lost with its block and runs
    again on the other block without spending a retry (``--retries 0``), and the report
    counts it."""
    import sys

    slow = write_slow_processor(tmp_path / "slow.py", 3.0)
    out = tmp_path / "out"
    site = tmp_path / "two-small-blocks.yaml"
    site.write_text("provider:\n  cores_per_node: 1\nexecutor:\n  max_workers_per_node: 1\n"
                    "  heartbeat_period: 2\n  heartbeat_threshold: 8\n")
    driver = subprocess.Popen(
        [sys.executable, "-m", "coffea_hpc.cli.app", "run", slow, "-f", str(fileset_path),
         "-o", str(out), "--site", "local-slurm", "--site-file", str(site), "--scaleout", "2",
         "--chunksize", "500", "--chunks-per-task", "1", "--retries", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        checkpoint = out / "checkpoint.coffea"  # written once the first chunks are done
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not checkpoint.exists():
            time.sleep(0.2)
        assert checkpoint.exists(), slurm_diagnosis(slurm_cluster)
        running = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i"],
                                 capture_output=True, text=True).stdout.split()
        assert len(running) == 2, slurm_diagnosis(slurm_cluster)
        subprocess.run(["scancel", running[0]], check=True)  # under its running chunk
        text, _ = driver.communicate(timeout=300)
    finally:
        driver.kill()
    assert driver.returncode == 0, text[-3000:] + slurm_diagnosis(slurm_cluster)
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete" and report["failed_chunks"] == []
    assert report["metrics"]["chunks_lost_to_ended_blocks"] >= 1, report["metrics"]
    assert_same(load(out / "output.coffea"), local_output)
    assert _drained(), _squeue()


def test_scaleout_runs_that_many_blocks_at_once_and_progress_shows_them(
        slurm_cluster, fileset, local_output, tmp_path):
    """``--scaleout 2`` with one-core blocks: both blocks start together, both run, and the
    progress the analyst sees counts them and their workers."""
    from coffea_hpc.sites import site_backend
    from tests.helpers import RecordingReporter

    one_core = tmp_path / "one-core.yaml"
    one_core.write_text("provider:\n  cores_per_node: 1\nexecutor:\n  max_workers_per_node: 1\n")
    backend = site_backend("local-slurm", site_file=one_core, overrides={"scaleout": 2},
                           run_dir=tmp_path / "parsl")
    reporter = RecordingReporter()
    slow = write_slow_processor(tmp_path / "slow.py", 1.0)
    outcome = run(slow, fileset, backend=backend, chunksize=500, chunks_per_task=1,
                  reporter=reporter)
    assert_same(outcome.output, local_output)
    seen = reporter.blocks["processing"]
    assert (0, 2) in seen, (seen, slurm_diagnosis(slurm_cluster))
    assert 2 in reporter.workers["processing"], reporter.workers
    assert _drained(), _squeue()
