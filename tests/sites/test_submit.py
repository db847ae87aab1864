"""Driver job scripts: rendered for every preset with a batch system (golden files), and
syntactically valid; PBS and HTCondor have no server here, so their scripts are checked as
text, while Slurm's are also accepted by a real sbatch in test_slurm.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from coffea_hpc.api import captured_environment
from coffea_hpc.errors import SiteError
from coffea_hpc.sites import resolve_site
from coffea_hpc.sites.allocation import detect_allocation, site_inside
from coffea_hpc.sites.submit import render_job
from tests.sites.conftest import check_golden

BATCH_PRESETS = ["local-slurm", "perlmutter-cpu", "perlmutter-gpu", "polaris", "frontier",
                 "lxplus-condor", "generic-slurm", "generic-pbs", "generic-condor"]
RUN_ARGS = ["analysis.py:Proc", "--fileset", "/data/fileset.json", "-o", "/out/run"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", BATCH_PRESETS)
def test_driver_scripts_match_golden(name, in_tmp):
    site = resolve_site(name, overrides={"account": "ACCOUNT"})
    files = render_job(site, RUN_ARGS, Path("/out/run"), analysis_dir=Path("/home/me/analysis"),
                       environment=captured_environment({"VIRTUAL_ENV": "/home/me/venv"}))
    for filename, text in files.items():
        text = text.replace(str(in_tmp), "WORKDIR")
        check_golden(f"submit-{name}-{filename}", text)
        if filename.endswith((".sbatch", ".pbs", ".sh")):
            assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
            assert "--inside-allocation" in text and f"--site {name}" in text


MPI_LAUNCHERS = {"perlmutter-cpu": "srun", "polaris": "mpiexec", "frontier": "srun"}


@pytest.mark.parametrize("name", sorted(MPI_LAUNCHERS))
def test_mpi_reduction_jobs_use_the_sites_launcher(name, in_tmp, monkeypatch):
    """`submit --reduce mpi`: the job's run options name the site's MPI launcher (srun
    under Slurm on Perlmutter and Frontier, Cray PALS's mpiexec on Polaris), and the job
    script is the site's usual one (golden files)."""
    import yaml

    import coffea_hpc

    for variable in ("LOADEDMODULES", "CONDA_PREFIX"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("VIRTUAL_ENV", "/home/me/venv")
    (in_tmp / "fileset.json").write_text('{"ds": {"files": ["/data/a.root"]}}')
    job = coffea_hpc.submit("coffea_hpc.examples.dimuon:DimuonProcessor", "fileset.json",
                            output_dir="run", site=name, account="ACCOUNT", reduce="mpi",
                            mpi_ranks=8, dry_run=True)
    assert job.record is None  # nothing was submitted
    for filename, text in job.files.items():
        check_golden(f"submit-mpi-{name}-{filename}", text.replace(str(in_tmp), "WORKDIR"))
    options = yaml.safe_load(job.files["run-options.yaml"])
    assert options["reduce"] == "mpi" and options["mpi_ranks"] == 8
    assert options["mpi_launcher"] == MPI_LAUNCHERS[name]


def test_directives_follow_the_site(in_tmp):
    site = resolve_site("polaris", overrides={"account": "proj"})
    text = render_job(site, RUN_ARGS, Path("/o"), nodes=8, walltime="00:30:00")["driver.pbs"]
    assert "#PBS -l select=8:ncpus=64:ngpus=4" in text
    assert "#PBS -l walltime=00:30:00" in text and "#PBS -A proj" in text
    assert "#PBS -q debug" in text and "#PBS -l filesystems=home:eagle" in text
    slurm = render_job(resolve_site("perlmutter-cpu", overrides={"account": "m1"}), RUN_ARGS,
                       Path("/o"))["driver.sbatch"]
    for line in ("#SBATCH --account=m1", "#SBATCH --constraint=cpu", "#SBATCH --qos=regular",
                 "#SBATCH --nodes=1", "#SBATCH --signal=B:TERM@120"):
        assert line in slurm
    # PBS has no early signal: the driver is stopped by timeout two minutes before the limit
    assert "exec timeout --signal=TERM 1680s " in text


def test_htcondor_jobs_stop_the_driver_before_the_slots_runtime_limit(in_tmp):
    """HTCondor sends no signal ahead of the runtime limit: the wrapper runs the driver under
    `timeout`, two minutes short of the limit that +MaxRuntime or +JobFlavour sets."""
    def files(name, walltime=None, **config):
        site = resolve_site(name, overrides={"account": "A"}, site_config=config or None)
        return render_job(site, RUN_ARGS, Path("/o"), walltime=walltime)

    lxplus = files("lxplus-condor")  # +JobFlavour "workday" (8 h), submit walltime 08:00:00
    assert "+MaxRuntime = 28800" in lxplus["driver.sub"]
    assert "exec timeout --signal=TERM 28680s " in lxplus["driver.sh"]
    # a flavour shorter than the wall time limits the slot: the shorter one counts
    short = files("lxplus-condor", walltime="10:00:00",
                  provider={"scheduler_options": '+JobFlavour = "longlunch"'})
    assert "+MaxRuntime = 36000" in short["driver.sub"]
    assert "exec timeout --signal=TERM 7080s " in short["driver.sh"]
    # the last flavour of the submit file is the one HTCondor keeps
    longer = files("lxplus-condor", walltime="24:00:00",
                   submit={"directives": '+JobFlavour = "tomorrow"'})
    assert "exec timeout --signal=TERM 86280s " in longer["driver.sh"]
    # the site's own +MaxRuntime is kept, not written twice
    own = files("generic-condor", submit={"directives": "+MaxRuntime = 1800"})
    assert own["driver.sub"].count("+MaxRuntime") == 1
    assert "exec timeout --signal=TERM 1680s " in own["driver.sh"]
    # a job shorter than twice the lead is stopped halfway, not as it starts
    tiny = files("generic-condor", walltime="00:03:00")
    assert "exec timeout --signal=TERM 90s " in tiny["driver.sh"]
    for job in (lxplus, short, own, tiny):
        assert subprocess.run(["bash", "-n"], input=job["driver.sh"], text=True).returncode == 0


def test_sites_without_a_batch_system_cannot_submit():
    with pytest.raises(SiteError, match="no batch system to submit to"):
        render_job(resolve_site("local"), RUN_ARGS, Path("/o"))


def test_allocations_are_found_in_the_environment(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn1\nn2\nn3\n")
    assert detect_allocation({"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "4"}).nodes == 4
    pbs = detect_allocation({"PBS_JOBID": "9.pbs", "PBS_NODEFILE": str(nodefile)})
    assert (pbs.scheduler, pbs.nodes) == ("pbs", 3)
    with pytest.raises(SiteError, match="no Slurm or PBS job found"):
        detect_allocation({})


def test_inside_an_allocation_workers_use_its_nodes():
    base = resolve_site("perlmutter-cpu", overrides={"account": "m1"})
    multi = site_inside(base, detect_allocation({"SLURM_JOB_ID": "5",
                                                 "SLURM_JOB_NUM_NODES": "16"}))
    assert multi.provider.type == "local" and multi.provider.launcher == "srun"
    assert multi.provider.nodes_per_block == 16 and multi.provider.launcher_overrides == "-c 256"
    assert multi.executor.interface == "hsn0" and not multi.executor.loopback
    single = site_inside(base, detect_allocation({"SLURM_JOB_ID": "5",
                                                  "SLURM_JOB_NUM_NODES": "1"}))
    assert single.executor.loopback
    pbs = site_inside(None, detect_allocation({"PBS_JOBID": "1"}))
    assert pbs.provider.launcher == "mpiexec"


def test_the_local_slurm_script_is_perlmutters_apart_from_the_sites_name(in_tmp):
    """What the Slurm tests run under a real sbatch (local-slurm) is the script a Slurm
    centre gets: the same lines, apart from the site's name and its own directives."""
    def script(name: str) -> list[str]:
        site = resolve_site(name, overrides={"account": "A"})
        text = render_job(site, RUN_ARGS, Path("/o"), walltime="01:00:00",
                          environment=captured_environment({"VIRTUAL_ENV": "/v"}))
        return text["driver.sbatch"].replace(name, "SITE").splitlines()

    local, perlmutter = script("local-slurm"), script("perlmutter-cpu")
    centre_only = [line for line in perlmutter if line not in local]
    assert centre_only == ["#SBATCH --qos=regular", "#SBATCH --constraint=cpu"]
    assert [line for line in perlmutter if line not in centre_only] == local
    assert script("generic-slurm") == local
