"""The command line: runs end to end, and user mistakes give one line, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from coffea.util import load

from coffea_hpc.cli.app import main
from tests.helpers import assert_same


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_run_writes_output_and_summary(capsys, fileset_path, tmp_path):
    code, text = _run(capsys, "run", "coffea_hpc.examples.dimuon:DimuonProcessor",
                      "--fileset", str(fileset_path), "-o", str(tmp_path / "a"),
                      "--executor", "iterative", "--chunksize", "1500")
    assert code == 0, text
    assert "coffea-hpc run: complete" in text and "12,000 events" in text
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["status"] == "complete" and report["events"] == 12_000

    # a prepared fileset from `preprocess` gives the same output
    code, text = _run(capsys, "preprocess", str(fileset_path), "-o", str(tmp_path / "p.json"),
                      "--chunksize", "1500", "--executor", "iterative")
    assert code == 0, text
    assert "4 files, 12,000 entries, 8 chunks" in text
    code, text = _run(capsys, "run", "coffea_hpc.examples.dimuon:DimuonProcessor",
                      "--fileset", str(tmp_path / "p.json"), "-o", str(tmp_path / "b"),
                      "--executor", "iterative")
    assert code == 0, text
    assert_same(load(tmp_path / "b" / "output.coffea"), load(tmp_path / "a" / "output.coffea"))


def test_skip_bad_files_reports_them(capsys, fileset, tmp_path):
    spec = {"DY": [fileset.datasets["DYJetsToLL"].files[0].path, str(tmp_path / "gone.root")]}
    path = tmp_path / "fs.json"
    path.write_text(json.dumps(spec))
    code, text = _run(capsys, "run", "coffea_hpc.examples.dimuon:count_muons", "-f", str(path),
                      "-o", str(tmp_path / "o"), "-e", "iterative", "--skip-bad-files")
    assert code == 0, text
    assert "skipped" in text and "gone.root" in text and "no such file" in text
    assert load(tmp_path / "o" / "output.coffea")["events"] == 3_000


@pytest.fixture
def damaged_fileset(fileset, tmp_path):
    """A good dataset, and one of two files each with a basket zeroed in the middle: they
    open and preprocess, and fail only when a chunk reads that basket."""
    import shutil

    from tests.helpers import damage_basket

    source = fileset.datasets["DYJetsToLL"].files
    bad = []
    for i in range(2):
        path = tmp_path / f"damaged_{i}.root"
        shutil.copy(source[1].path, path)
        damage_basket(path, basket=1 + i)
        bad.append(str(path))
    spec = {"good": [source[0].path], "bad": bad}
    path = tmp_path / "damaged.json"
    path.write_text(json.dumps(spec))
    return path, bad


@pytest.mark.parametrize("executor", ["futures", "parsl"])
def test_a_file_that_fails_to_read_is_given_up_once_as_a_whole(capsys, damaged_fileset,
                                                                tmp_path, executor):
    """With --skip-bad-files, the first chunk of a damaged file that fails is retried; when
    it fails again the file is given up: its other chunks are not tried (no retry per
    chunk), and each file is one line of the summary and one row of report.json. What was
    read of it is kept, and the good dataset's output is untouched."""
    spec, bad = damaged_fileset
    code, text = _run(capsys, "run", "coffea_hpc.examples.dimuon:DimuonProcessor", "-f",
                      str(spec), "-o", str(tmp_path / "o"), "-e", executor, "--workers", "2",
                      "--chunksize", "500", "--retries", "1", "--skip-bad-files")
    assert code == 0, text
    lines = text.splitlines()
    assert "Traceback" not in text and not any(x.startswith("failed") for x in lines), text
    skipped = [line for line in text.splitlines() if line.startswith("skipped ")]
    assert sorted(line.split()[1] for line in skipped) == sorted(bad), text
    assert all("ReadError: cannot read" in line for line in skipped), text

    report = json.loads((tmp_path / "o" / "report.json").read_text())
    rows = {row["file"]: row for row in report["skipped_files"]}
    assert set(rows) == set(bad) and {r["stage"] for r in rows.values()} == {"processing"}
    for path in bad:
        attempts = sorted(f["attempts"] for f in report["failed_chunks"] if f["file"] == path)
        assert attempts[-1] == 2 and set(attempts[:-1]) <= {0}, (path, attempts)
        assert rows[path]["chunks_failed"] == len(attempts) and rows[path]["chunks"] == 6

    output = load(tmp_path / "o" / "output.coffea")
    bad_ds = next(d for d in report["datasets"] if d["name"] == "bad")
    assert output["cutflow"]["bad"]["all"] == bad_ds["processed"] < bad_ds["entries"]
    code, text = _run(capsys, "run", "coffea_hpc.examples.dimuon:DimuonProcessor", "-f",
                      str(spec), "-o", str(tmp_path / "clean"), "-e", "iterative",
                      "--chunksize", "500", "--skip-bad-files")
    clean = load(tmp_path / "clean" / "output.coffea")
    assert_same(output["cutflow"]["good"], clean["cutflow"]["good"])
    assert_same(output["mass"][{"dataset": "good"}], clean["mass"][{"dataset": "good"}])


def test_a_file_that_fails_to_read_stops_the_run_and_says_how_to_go_on(capsys,
                                                                     damaged_fileset,
                                                                     tmp_path):
    spec, bad = damaged_fileset
    code, text = _run(capsys, "run", "coffea_hpc.examples.dimuon:DimuonProcessor", "-f",
                      str(spec), "-o", str(tmp_path / "o"), "-e", "iterative",
                      "--chunksize", "500")
    assert code == 1
    assert "Traceback" not in text
    failed = [line for line in text.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and "ReadError" in failed[0] and bad[0] in failed[0], text
    assert "--skip-bad-files" in text and "--resume" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "coffea_hpc.examples.dimuon:DimuonProcessor", "-f", "{missing}"],
         "does not exist"),
        (["run", "nowhere/ana.py:Proc", "-f", "{fileset}"],
         "processor file 'nowhere/ana.py' does not exist"),
        (["run", "coffea_hpc.examples.dimuon:Nope", "-f", "{fileset}"], "has no attribute 'Nope'"),
        (["run", "coffea_hpc.examples.dimuon:DimuonProcessor", "-f", "{fileset}", "-e", "spark"],
         "--executor: unknown executor 'spark'; choose one of iterative, futures, parsl, dask"),
        (["run", "coffea_hpc.examples.dimuon:DimuonProcessor", "-f", "{fileset}",
          "--schema", "nosuch"], "unknown schema 'nosuch'"),
        (["run", "coffea_hpc.examples.dimuon:DimuonProcessor", "-f", "{malformed}"],
         "dataset 'ds': missing key 'files'"),
        (["preprocess", "{missing}", "-o", "{out}/p.json"], "does not exist"),
    ],
    ids=["no-fileset", "no-processor-file", "no-attribute", "executor", "schema", "malformed",
         "preprocess-missing"],
)
def test_user_mistakes_are_one_line(capsys, fileset_path, tmp_path, args, message):
    malformed = tmp_path / "bad.yaml"
    malformed.write_text("ds:\n  metadata: {}\n")
    values = {"missing": str(tmp_path / "nope.json"), "fileset": str(fileset_path),
              "malformed": str(malformed), "out": str(tmp_path)}
    argv = [a.format(**values) for a in args]
    if argv[0] == "run":
        argv += ["-o", str(tmp_path / "out")]
    code, text = _run(capsys, *argv)
    assert code == 2
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("error:") and message in " ".join(text.split()), text
    assert "Traceback" not in text


def test_usage_errors_come_from_the_parser(capsys):
    code, text = _run(capsys, "run")
    assert code == 2 and text.startswith("error: missing argument 'processor'") and \
        "coffea-hpc run --help" in text and len(text.strip().splitlines()) == 1, text


def test_console_script_and_demo(tmp_path):
    """The installed entry point runs the demo end to end on generated data."""
    exe = Path(sys.executable).with_name("coffea-hpc")
    proc = subprocess.run([str(exe), "demo", "-o", str(tmp_path), "--events", "4000",
                           "--chunksize", "2000", "--executor", "futures", "--workers", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dimuon analysis" in proc.stdout
    dy = next(line for line in proc.stdout.splitlines() if line.startswith("│ DYJets"))
    peak = float(dy.split("│")[-2])
    assert 85 < peak < 97
    assert (tmp_path / "output" / "output.coffea").exists()


def test_run_on_an_existing_dask_cluster(capsys, fileset_path, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        code, text = _run(capsys, "run", "coffea_hpc.examples.dimuon:count_muons",
                          "-f", str(fileset_path), "-o", str(tmp_path), "-e", "dask",
                          "--dask-address", cluster.scheduler_address)
    assert code == 0, text
    assert load(tmp_path / "output.coffea")["events"] == 12_000


def test_a_processor_bug_is_one_line_without_tracebacks(fileset_path, tmp_path):
    """On Parsl too: no backend traceback, the failing chunk in one line, and no hint to
    resume a run that saved nothing; the traceback is in report.json."""
    from tests.test_runner import BROKEN_ANALYSIS

    (tmp_path / "broken.py").write_text(BROKEN_ANALYSIS)
    done = subprocess.run(
        [str(Path(sys.executable).with_name("coffea-hpc")), "run",
         f"{tmp_path / 'broken.py'}:Broken", "-f", str(fileset_path), "-o",
         str(tmp_path / "out"), "-e", "parsl", "-j", "2", "--chunksize", "500"],
        capture_output=True, text=True, timeout=240, cwd=tmp_path)
    text = done.stdout + done.stderr
    assert done.returncode == 1, text
    assert "Traceback" not in text and "parsl" not in text.lower(), text
    failed = [line for line in text.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and "ValueError: broken analysis code" in failed[0], text
    assert "nothing was saved to resume from" in text and "--resume" not in text
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "in check_muons" in report["failed_chunks"][0]["traceback"]


def test_continue_on_error_prints_one_line_per_distinct_error(capsys, fileset_path, tmp_path):
    from tests.test_runner import BROKEN_ANALYSIS

    (tmp_path / "broken.py").write_text(BROKEN_ANALYSIS)
    code, text = _run(capsys, "run", f"{tmp_path / 'broken.py'}:Broken", "-f",
                      str(fileset_path), "-o", str(tmp_path / "out"), "-e", "iterative",
                      "--chunksize", "1000", "--retries", "0", "--continue-on-error")
    assert code == 0, text
    failed = [line for line in text.splitlines() if line.startswith("failed ")]
    assert len(failed) == 3, text  # one error message per dataset
    assert any("and 5 more chunks" in line and "DYJetsToLL" in line for line in failed), text
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["failed_chunks"]) == 12 and report["status"] == "incomplete"


@pytest.mark.parametrize("command", ["run", "preprocess"])
def test_bad_uproot_options_are_one_line(capsys, fileset_path, tmp_path, command):
    head = ["run", "coffea_hpc.examples.dimuon:DimuonProcessor", "--fileset"] \
        if command == "run" else ["preprocess"]
    code, text = _run(capsys, *head, str(fileset_path), "-o", str(tmp_path / "x"),
                      "--executor", "iterative", "--uproot-options", "{timeout: [")
    assert code == 2
    assert text.startswith("error: --uproot-options: not valid JSON or YAML")
    assert "Traceback" not in text


def _cli(cwd: Path, *argv: str, timeout: float = 240) -> tuple[int, str]:
    """The installed command, as a user runs it: its exit status and all it printed."""
    done = subprocess.run([str(Path(sys.executable).with_name("coffea-hpc")), *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)
    return done.returncode, done.stdout + done.stderr


def _hint_only_with_a_report(text: str, out: Path) -> None:
    """The line pointing at report.json names a report that is there; with no report there
    is no such line."""
    report = out / "report.json"
    pointing = [line for line in text.splitlines() if "report.json" in line]
    if not report.is_file():
        assert pointing == [], text
    for line in pointing:
        assert line.rstrip().endswith(f"are in {report}") and report.is_file(), text


KILLED_WORKER = '''
import os
import signal
from pathlib import Path

from coffea_hpc.examples.dimuon import DimuonProcessor

HERE = Path(__file__).parent


class KilledOnce(DimuonProcessor):
    """The worker process processing the chunk at entry 1000 is killed (as by the OOM
    killer), the first time only."""

    def process(self, events):
        marker = HERE / "killed"
        if events.metadata["entrystart"] == 1000 and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().process(events)
'''


def test_a_lost_parsl_worker_that_is_retried_prints_no_parsl_traceback(fileset_path,
                                                                      tmp_path):
    """Parsl logs the lost worker's task (WorkerLost) with a 27-line traceback at ERROR;
    starting Parsl sets its logger back to DEBUG, so only the terminal handler's filter keeps
    it to parsl.log. The run retries the chunk and completes, as if nothing happened."""
    (tmp_path / "killed.py").write_text(KILLED_WORKER)
    out = tmp_path / "out"
    code, text = _cli(tmp_path, "run", f"{tmp_path / 'killed.py'}:KilledOnce", "-f",
                      str(fileset_path), "-o", str(out), "-e", "parsl", "-j", "2",
                      "--chunksize", "1000")
    assert code == 0, text
    assert (tmp_path / "killed").exists()  # a worker did die
    logs = "".join(p.read_text() for p in out.rglob("parsl.log"))
    assert "WorkerLost" in logs  # Parsl saw it, and its log keeps it
    assert "WorkerLost" not in text and "Traceback" not in text, text
    assert not any(line.lstrip().startswith("ERROR") for line in text.splitlines()), text
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete" and report["events"] == 12_000
    assert report["failed_chunks"] == []


def test_a_futures_run_over_skimmed_nanoaod_prints_no_coffea_warnings(fileset, tmp_path):
    """A skim that dropped the cross-reference branches (Muon_jetIdx...): the NanoAOD
    schema warns once per missing reference, in every worker for every file. The run's
    terminal shows none of them; the output is the same as the unskimmed file's."""
    from tests.helpers import without_branches

    source = fileset.datasets["DYJetsToLL"].files
    skimmed = []
    for i, f in enumerate(source):
        skimmed.append(str(tmp_path / f"skim_{i}.root"))
        without_branches(f.path, skimmed[-1], "Idx")
    spec = tmp_path / "skim.json"
    spec.write_text(json.dumps({"DYJetsToLL": skimmed}))
    out = tmp_path / "out"
    code, text = _cli(tmp_path, "run", "coffea_hpc.examples.dimuon:DimuonProcessor", "-f",
                      str(spec), "-o", str(out), "-e", "futures", "-j", "2",
                      "--chunksize", "500")
    assert code == 0, text
    assert "Warning" not in text and "warnings.warn" not in text, text
    assert len(text.splitlines()) < 30, text
    whole = tmp_path / "whole.json"
    whole.write_text(json.dumps({"DYJetsToLL": [f.path for f in source]}))
    code, text = _cli(tmp_path, "run", "coffea_hpc.examples.dimuon:DimuonProcessor", "-f",
                      str(whole), "-o", str(tmp_path / "whole"), "-e", "iterative",
                      "--chunksize", "500")
    assert code == 0, text
    assert_same(load(out / "output.coffea"), load(tmp_path / "whole" / "output.coffea"))


@pytest.fixture
def bad_files(fileset, tmp_path):
    """A ROOT file cut in half (its header and first baskets intact), and notes saved
    under a ``.root`` name."""
    whole = Path(fileset.datasets["DYJetsToLL"].files[1].path).read_bytes()
    truncated = tmp_path / "truncated.root"
    truncated.write_bytes(whole[: len(whole) // 2])
    text = tmp_path / "notes.root"
    text.write_text("cuts to try next week: muon pt > 30, |eta| < 2.1\n")
    return {"truncated": str(truncated), "text": str(text)}


def _fileset_with(fileset, tmp_path: Path, *bad: str) -> Path:
    spec = {"DY": [fileset.datasets["DYJetsToLL"].files[0].path, *bad],
            "TT": [f.path for f in fileset.datasets["TTTo2L2Nu"].files]}
    path = tmp_path / "with_bad.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_a_bad_file_stops_the_run_named_in_one_line(fileset, tmp_path, bad_files, kind):
    """Without --skip-bad-files: the file is named on one line (uproot's three-line error
    joined), no traceback, and a pointer to report.json only where one was written (the
    text file stops the run at preprocessing, before any report)."""
    bad = bad_files[kind]
    out = tmp_path / "out"
    code, text = _cli(tmp_path, "run", "coffea_hpc.examples.dimuon:DimuonProcessor", "-f",
                      str(_fileset_with(fileset, tmp_path, bad)), "-o", str(out), "-e",
                      "futures", "-j", "2", "--chunksize", "1000")
    assert code == (1 if kind == "truncated" else 2), text
    assert "Traceback" not in text, text
    naming = [line for line in text.splitlines() if bad in line]
    assert len(naming) == 1, text
    assert "expected Chunk of length" in naming[0] and "received" in naming[0], text
    assert (out / "report.json").is_file() is (kind == "truncated")
    _hint_only_with_a_report(text, out)


def test_bad_files_skipped_are_one_line_and_one_report_row_each(fileset, tmp_path,
                                                                bad_files):
    out = tmp_path / "out"
    code, text = _cli(tmp_path, "run", "coffea_hpc.examples.dimuon:DimuonProcessor", "-f",
                      str(_fileset_with(fileset, tmp_path, *bad_files.values())), "-o",
                      str(out), "-e", "futures", "-j", "2", "--chunksize", "1000",
                      "--skip-bad-files")
    assert code == 0, text
    assert "Traceback" not in text, text
    for bad in bad_files.values():
        naming = [line for line in text.splitlines() if bad in line]
        assert len(naming) == 1 and naming[0].startswith("skipped "), text
        assert "received" in naming[0], text  # the whole error, not its first line
    report = json.loads((out / "report.json").read_text())
    rows = [row["file"].removesuffix(":Events") for row in report["skipped_files"]]
    assert sorted(rows) == sorted(bad_files.values()), report["skipped_files"]

    # what could be read is all there: the good files in full, and the truncated file's
    # chunks that could be read
    output = load(out / "output.coffea")
    dy = next(d for d in report["datasets"] if d["name"] == "DY")
    assert output["cutflow"]["TT"]["all"] == 3_000
    assert 3_000 <= output["cutflow"]["DY"]["all"] == dy["processed"] < 6_000
    code, clean_text = _cli(tmp_path, "run", "coffea_hpc.examples.dimuon:DimuonProcessor",
                            "-f", str(_fileset_with(fileset, tmp_path)), "-o",
                            str(tmp_path / "clean"), "-e", "iterative")
    assert code == 0, clean_text
    clean = load(tmp_path / "clean" / "output.coffea")
    assert_same(output["cutflow"]["TT"], clean["cutflow"]["TT"])
    assert_same(output["mass"][{"dataset": "TT"}], clean["mass"][{"dataset": "TT"}])


def test_workers_of_a_local_pool_start_without_the_command_line_app(tmp_path, fileset_path):
    """Each worker of a local process pool imports the command's script again; the
    installed ``coffea-hpc`` script must then cost nothing (not typer, rich and the option
    models before every worker's first chunk)."""
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent("""
        import sys
        from coffea import processor

        class Probe(processor.ProcessorABC):
            def process(self, events):
                return {"chunks": 1, "with_app": int("coffea_hpc.cli.app" in sys.modules)}

            def postprocess(self, accumulator):
                return accumulator
    """))
    command = Path(sys.executable).with_name("coffea-hpc")  # as installed, entry point and all
    done = subprocess.run(
        [str(command), "run", f"{probe}:Probe", "--fileset", str(fileset_path),
         "-o", str(tmp_path / "out"), "--executor", "futures", "--workers", "2",
         "--chunksize", "3000"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    output = load(tmp_path / "out" / "output.coffea")
    assert output["chunks"] == 4 and output["with_app"] == 0


def test_a_futures_run_starts_its_workers_server_before_the_command_line_app(tmp_path,
                                                                               fileset_path):
    """``coffea-hpc run ... --executor futures``: the server the workers are forked from
    starts (and imports coffea) while the command imports its app, not after."""
    script = tmp_path / "as_typed.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from multiprocessing import forkserver

        real = forkserver.ensure_running
        seen = []

        def noting():
            seen.append("typer" in sys.modules)
            real()

        forkserver.ensure_running = noting
        from coffea_hpc.cli import main

        if __name__ == "__main__":
            code = main(["run", "coffea_hpc.examples.dimuon:DimuonProcessor", "--fileset",
                         {str(fileset_path)!r}, "-o", {str(tmp_path / "out")!r},
                         "--executor", "futures", "--workers", "1"])
            print("typer imported at the first start:", seen[0])
            sys.exit(code)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "typer imported at the first start: False" in done.stdout
    assert (tmp_path / "out" / "output.coffea").is_file()


@pytest.mark.parametrize(("argv", "early"), [
    ("run p.py:P --fileset f.json --executor futures", True),
    ("run p.py:P --fileset f.json -e futures -o out", True),
    ("run p.py:P --executor=futures", True),
    ("run p.py:P -efutures", True),
    ("run p.py:P --executor parsl", False),
    ("run p.py:P", False),
    ("run p.py:P --executor futures --test", False),
    ("run p.py:P --executor futures --site=perlmutter", False),
    ("run p.py:P --executor futures --inside-allocation", False),
    ("run --help --executor futures", False),
    ("preprocess f.json --executor futures", False),
])
def test_only_a_run_that_names_futures_starts_the_server_first(argv, early):
    from coffea_hpc.cli import _runs_on_futures

    assert _runs_on_futures(argv.split()) is early
