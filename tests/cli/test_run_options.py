"""Run options through the real command line: a YAML of every run parameter, flags over it,
the effective options in report.json, one-line errors for what is wrong in it, and
``--test``."""

from __future__ import annotations

import json

import pytest
import yaml
from coffea.util import load

from coffea_hpc.cli.app import main

PROCESSOR = "coffea_hpc.examples.dimuon:DimuonProcessor"


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _write(path, data) -> str:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def test_a_run_options_file_sets_the_run_and_flags_override_it(capsys, fileset_path, tmp_path):
    options = _write(tmp_path / "run.yaml", {
        "fileset": str(fileset_path), "output": "out",  # relative to the file
        "executor": "iterative", "chunksize": 3000, "retries": 0, "limit_files": 1,
        "skip_bad_files": True})
    code, text = _run(capsys, "run", PROCESSOR, "--run-options", options, "--chunksize", "1500",
                      "--no-skip-bad-files")
    assert code == 0, text
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    effective = report["options"]
    assert effective["chunksize"] == 1500 and effective["skip_bad_files"] is False  # flags win
    assert effective["executor"] == "iterative" and effective["retries"] == 0  # from the file
    assert effective["output"] == str(tmp_path / "out")
    assert report["backend"] == "iterative"
    # one file per dataset (limit_files) in 1500-entry chunks (the flag, not the file's 3000)
    assert [(d["files"], d["chunks"]) for d in report["datasets"]] == [(1, 2)] * 3
    assert load(tmp_path / "out" / "output.coffea")["cutflow"]


@pytest.mark.parametrize(
    ("content", "flags", "message"),
    [
        ({"chunksize": 1000, "chunk_size": 5}, [],
         "{file}: unknown key 'chunk_size' (did you mean 'chunksize'?)"),
        ({"skip-bad-files": True}, [], "{file}: unknown key 'skip-bad-files' (did you mean "
                                       "'skip_bad_files'?)"),
        ({"provider": {"walltime": "01:00:00"}}, [],
         "{file}: unknown key 'provider': site settings go under site_config: provider:"),
        ({"account": "m1"}, [], "{file}: account needs a site: pass --site NAME"),
        ({"site_config": {"provider": {"qos": "debug"}}}, [], "{file}: site_config needs a site"),
        ({"chunksize": 0}, [], "{file}: chunksize: input should be greater than or equal to 1 "
                               "(got 0)"),
        ({"reduce": "fast"}, [], "{file}: reduce: unknown reduce 'fast'; choose one of driver, "
                                 "tree, mpi"),
        ("chunksize: 10\nretries: [1\nschema: base\n", [],
         "{file}: not valid YAML at line 3, column 7: expected ',' or ']', but got ':'"),
        ({}, ["--chunksize", "0"], "--chunksize 0: input should be greater than or equal to 1"),
        ({}, ["--retries", "-1"], "--retries -1: input should be greater than or equal to 0"),
        ({}, ["--walltime", "2h"], "--walltime '2h': '2h' is not a wall time like 01:30:00"),
        ({}, ["--account", "m1"], "--account needs a site"),
        ({}, ["--chunksize", "many"], "invalid value for '--chunksize'"),
        ({"site": "nowhere"}, [], "unknown site 'nowhere'"),
    ],
    ids=["unknown-key", "dashes", "site-key", "site-flag-without-site",
         "site-config-without-site", "zero-chunksize", "bad-choice", "yaml-syntax",
         "flag-zero-chunksize", "flag-negative-retries", "flag-walltime", "flag-without-site",
         "flag-not-a-number", "unknown-site"],
)
def test_mistakes_in_run_options_are_one_line(capsys, fileset_path, tmp_path, content, flags,
                                              message):
    options = _write(tmp_path / "run.yaml", content)
    code, text = _run(capsys, "run", PROCESSOR, "-f", str(fileset_path), "-o",
                      str(tmp_path / "out"), "--run-options", options, *flags)
    lines = [line for line in text.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, text
    assert lines[0].startswith("error: ") and message.format(file=options) in lines[0], text
    assert not (tmp_path / "out").exists()  # nothing started


def test_output_and_fileset_may_come_from_the_file_only(capsys, fileset_path, tmp_path):
    options = _write(tmp_path / "run.yaml", {"executor": "iterative"})
    code, text = _run(capsys, "run", PROCESSOR, "--run-options", options, "-f",
                      str(fileset_path))
    assert code == 2 and "error: no output directory: pass -o DIR or set output:" in text
    code, text = _run(capsys, "run", PROCESSOR, "--run-options", options, "-o",
                      str(tmp_path / "o"))
    assert code == 2 and "error: no fileset: pass --fileset FILE or set fileset:" in text


def test_test_mode_runs_one_file_and_two_chunks_here_and_shows_the_structure(
        capsys, fileset_path, tmp_path):
    """Even when the run options name a site (that would need an account): --test stays on
    this machine, on the iterative backend."""
    options = _write(tmp_path / "run.yaml", {
        "fileset": str(fileset_path), "output": str(tmp_path / "out"), "site": "perlmutter-cpu",
        "chunksize": 500, "executor": "parsl"})
    code, text = _run(capsys, "run", PROCESSOR, "--run-options", options, "--test")
    assert code == 0, text
    assert "test mode: one file and 2 chunks per dataset" in text
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["backend"] == "iterative" and report["options"]["test"] is True
    assert [(d["files"], d["chunks"], d["processed"]) for d in report["datasets"]] == \
        [(1, 2, 1000)] * 3
    flat = " ".join(text.replace("│", " ").split())  # the tree wraps long lines
    assert "mass: Hist(dataset: StrCategory[" in flat
    assert "mass: Regular(120 bins, 30 to 150)) storage=Weight" in flat
    assert "njet: Hist(" in flat and "Integer(15 bins, 0 to 15)" in flat
    assert "cutflow: dict (3 keys)" in flat and "Z window: int" in flat


def test_sites_show_a_preset_that_still_needs_an_account(capsys):
    code, text = _run(capsys, "sites", "show", "perlmutter-cpu")
    assert code == 0, text
    assert "account: null  # REQUIRED: --account NAME" in text
    assert "still needs an account" in text
    code, text = _run(capsys, "sites", "show", "perlmutter-cpu", "--account", "m42")
    assert code == 0 and "account: m42" in text and "REQUIRED" not in text


def test_sites_show_takes_site_settings_from_run_options(capsys, tmp_path):
    options = _write(tmp_path / "run.yaml", {"account": "m7", "walltime": "00:20:00",
                                             "site_config": {"provider": {"qos": "debug"}}})
    code, text = _run(capsys, "sites", "show", "perlmutter-cpu", "--run-options", options,
                      "--walltime", "00:10:00")
    assert code == 0, text
    shown = yaml.safe_load(text.split("site 'perlmutter-cpu'")[0])
    assert shown["provider"]["account"] == "m7" and shown["provider"]["qos"] == "debug"
    assert shown["provider"]["walltime"] == "00:10:00"  # the flag over the file


def test_sites_check_leaves_nothing_in_the_current_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, text = _run(capsys, "sites", "check", "local", "--timeout", "120")
    assert code == 0, text
    assert "worker probe" in text
    assert list(tmp_path.iterdir()) == []
