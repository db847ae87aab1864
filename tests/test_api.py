"""``coffea_hpc.run`` and ``coffea_hpc.submit`` do what ``coffea-hpc run`` and ``submit`` do:
every command-line option has its keyword (found by introspecting the Typer app), the
defaults agree with `RunOptions`, and the two give the same job files and the same run."""

from __future__ import annotations

import inspect
import json
import subprocess

import pytest
import typer
import yaml

import coffea_hpc
from coffea_hpc.api import RENAMED, captured_environment
from coffea_hpc.cli.app import app, main
from coffea_hpc.errors import SiteError, UserError
from coffea_hpc.options import RunOptions

PROCESSOR = "coffea_hpc.examples.dimuon:DimuonProcessor"
CLI_ONLY = {"verbose"}  # logging: Python has the logging module


def _command(name: str):
    return typer.main.get_command(app).commands[name]


@pytest.mark.parametrize("command", ["run", "submit"])
def test_every_option_of_the_command_has_a_keyword(command):
    api = getattr(coffea_hpc, command)
    keywords = inspect.signature(api).parameters
    params = [p for p in _command(command).params if p.name not in CLI_ONLY]
    assert len(params) > 25
    missing = [p.name for p in params if RENAMED.get(p.name, p.name) not in keywords]
    assert not missing, f"coffea_hpc.{command} has no keyword for {missing}"
    for param in params:  # and every keyword is typed
        assert keywords[RENAMED.get(param.name, param.name)].annotation is not inspect._empty


@pytest.mark.parametrize("command", ["run", "submit"])
def test_the_command_lines_defaults_are_the_run_options_defaults(command):
    defaults = RunOptions()
    for param in _command(command).params:
        if param.name in RunOptions.option_keys() and param.name != "schema":
            assert param.default == getattr(defaults, param.name), param.name
        elif param.name == "schema":
            assert param.default == defaults.schema_name


def test_every_run_option_is_a_flag_of_run():
    flags = {p.name for p in _command("run").params}
    keys = set(RunOptions.option_keys()) - {"site_config"}  # a mapping: files only
    assert keys <= flags, keys - flags


def test_run_from_python_with_a_run_options_file(fileset_path, tmp_path):
    options = tmp_path / "run.yaml"
    options.write_text(yaml.safe_dump({"executor": "iterative", "chunksize": 3000,
                                       "limit_files": 1}))
    outcome = coffea_hpc.run(PROCESSOR, fileset_path, output_dir=tmp_path / "out",
                             run_options=options, chunksize=1500)
    assert outcome.report["options"]["chunksize"] == 1500
    assert outcome.report["options"]["executor"] == "iterative"
    assert [d["chunks"] for d in outcome.report["datasets"]] == [2, 2, 2]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["options"] == outcome.report["options"]


def test_run_from_python_on_a_site(fileset_path, tmp_path):
    """A site from Python as from the command line: the local preset, a real Parsl HTEx."""
    outcome = coffea_hpc.run(PROCESSOR, str(fileset_path), site="local", workers=2,
                             chunksize=3000, output_dir=tmp_path)
    assert outcome.report["backend"] == "parsl" and outcome.report["workers"] == 2
    assert outcome.report["options"]["site"] == "local"
    assert outcome.result.processed.n_entries == 12_000


def test_mistakes_from_python_name_the_keyword(fileset_path):
    with pytest.raises(UserError, match="chunksize= 0: input should be greater"):
        coffea_hpc.run(PROCESSOR, fileset_path, chunksize=0)
    with pytest.raises(UserError, match="account= needs a site"):
        coffea_hpc.run(PROCESSOR, fileset_path, account="m1")
    with pytest.raises(SiteError, match="needs an account"):
        coffea_hpc.run(PROCESSOR, fileset_path, site="perlmutter-cpu")
    with pytest.raises(UserError, match="--executor futures cannot run on a site"):
        coffea_hpc.run(PROCESSOR, fileset_path, site="local", backend="futures")


def test_submit_from_python_writes_the_job_the_command_line_writes(fileset_path, tmp_path,
                                                                   capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = dict(site="perlmutter-cpu", account="m42", chunksize=2000, reduce="mpi",
                walltime="02:00:00")
    job = coffea_hpc.submit(PROCESSOR, fileset_path, output_dir=tmp_path / "out",
                            dry_run=True, **args)
    assert job.record is None
    assert main(["submit", PROCESSOR, "-f", str(fileset_path), "-o", str(tmp_path / "out"),
                 "--site", "perlmutter-cpu", "--account", "m42", "--chunksize", "2000",
                 "--reduce", "mpi", "--walltime", "02:00:00", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    for name, text in job.files.items():
        assert f"# ---- {name}\n{text}" in printed
    script = job.files["driver.sbatch"]
    assert "#SBATCH --time=02:00:00" in script and "#SBATCH --nodes=1" in script
    assert f"--run-options {tmp_path / 'out' / 'submit' / 'run-options.yaml'}" in script
    options = yaml.safe_load(job.files["run-options.yaml"])
    assert options["chunksize"] == 2000 and options["reduce"] == "mpi"
    assert options["mpi_launcher"] == "srun"  # Slurm's launcher for the MPI merge
    assert options["fileset"] == str(fileset_path) and "walltime" not in options
    polaris = coffea_hpc.submit(PROCESSOR, fileset_path, output_dir=tmp_path / "out",
                                site="polaris", account="p", dry_run=True, reduce="mpi")
    assert yaml.safe_load(polaris.files["run-options.yaml"])["mpi_launcher"] == "mpiexec"


def test_the_submitting_environment_is_captured():
    venv = captured_environment({"VIRTUAL_ENV": "/home/a b/venv"})
    assert "export VIRTUAL_ENV='/home/a b/venv'" in venv
    assert "export PATH='/home/a b/venv'/bin:\"$PATH\"" in venv
    conda = captured_environment({"CONDA_PREFIX": "/opt/conda/envs/ana"})
    assert "export CONDA_PREFIX=/opt/conda/envs/ana" in conda


def test_loaded_modules_are_captured_unless_the_site_sets_up_its_own(tmp_path):
    env = {"LOADEDMODULES": "PrgEnv-gnu/8.5.0:python/3.11", "VIRTUAL_ENV": "/v"}
    lines = captured_environment(env).splitlines()
    load = next(line for line in lines if line.startswith("module load"))
    assert load.startswith("module load PrgEnv-gnu/8.5.0 python/3.11 || ")
    assert lines.index(load) < lines.index("export VIRTUAL_ENV=/v")  # modules first
    assert "module" not in captured_environment(env, modules=False)
    script = tmp_path / "job.sh"  # a module that fails to load is not fatal
    script.write_text("set -euo pipefail\nmodule() { return 1; }\n"
                      + captured_environment(env) + "\necho reached\n")
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert done.returncode == 0 and "reached" in done.stdout, done.stderr
    assert "not every module loaded" in done.stderr


_PROBE = '''
from pathlib import Path

import psutil

from coffea_hpc.examples.dimuon import DimuonProcessor



def _interchange_running() -> bool:
    for child in psutil.Process().children(recursive=True):
        try:
            if "interchange" in " ".join(child.cmdline()):
                return True
        except psutil.Error:  # a zombie left by another test, a process gone meanwhile
            pass
    return False


Path({marker!r}).write_text(str(_interchange_running()))


class Probe(DimuonProcessor):
    pass
'''


def test_a_local_parsl_pool_starts_before_the_analysis_is_imported(fileset_path, tmp_path):
    """The pool's chain of processes comes up beside the driver's imports (it is most of a
    small run's wait): the analysis, imported by the driver, finds Parsl's interchange
    already running."""
    marker = tmp_path / "interchange-running"
    (tmp_path / "probe.py").write_text(_PROBE.format(marker=str(marker)))
    outcome = coffea_hpc.run(f"{tmp_path / 'probe.py'}:Probe", fileset_path, backend="parsl",
                             workers=1, chunksize=6_000, output_dir=tmp_path / "out")
    assert marker.read_text() == "True"
    assert outcome.result.processed.n_entries == 12_000
    assert outcome.report["stages_s"]["start"] > 0  # the early start, still reported
    assert (tmp_path / "out" / "parsl").is_dir()


def test_a_local_parsl_run_checks_what_it_can_before_starting_the_pool(fileset_path, tmp_path):
    """A missing processor file or fileset, or an output directory another run holds, is
    said at once, and no pool is started (none of its logs in the output directory)."""
    from coffea_hpc.checkpoint import OutputLock

    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"processor file .*nope\.py.* does not exist"):
        coffea_hpc.run(f"{tmp_path / 'nope.py'}:Nope", fileset_path, backend="parsl",
                       output_dir=out)
    with pytest.raises(UserError, match=r"fileset file .* does not exist"):
        coffea_hpc.run(PROCESSOR, tmp_path / "none.json", backend="parsl", output_dir=out)
    with OutputLock(out), pytest.raises(UserError, match="in use by another run"):
        coffea_hpc.run(PROCESSOR, fileset_path, backend="parsl", output_dir=out)
    assert not (out / "parsl").exists()
