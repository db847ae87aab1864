"""Checkpoints a resumed run can trust, one run per output directory, checkpoints by work
done, and a full disk that costs nothing but a rerun.

Every test runs the real thing: ``coffea-hpc run`` as a process where the command line's
answer matters, the library where only the outcome does, and a real (small) tmpfs for the
full disk.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import lz4.frame
import pytest
from coffea.util import load

from coffea_hpc.backends import ErrorPolicy
from coffea_hpc.checkpoint import Checkpointer, open_checkpoint, write_checkpoint
from coffea_hpc.errors import ChunkFailedError, UserError
from coffea_hpc.processing.changes import Changes
from coffea_hpc.processing.result import Result
from coffea_hpc.runner import run
from tests.helpers import write_slow_processor

ANALYSIS = '''
import time
from pathlib import Path

import awkward as ak
import hist
from coffea import processor

HERE = Path(__file__).parent
BINS = {bins}
DELAY = {delay}
CHANNELS = {{"ee", "emu", "mumu", "tautau"}}  # a set: pickles in a per-process order


class Analysis(processor.ProcessorABC):
    """Fails on the chunk at entry 2000 while HERE/bug exists; logs each chunk to HERE/calls."""

    def __init__(self):
        self.systematics = {{"nominal", "jesUp", "jesDown", "jerUp", "jerDown"}}

    def process(self, events):
        meta = events.metadata
        if meta["entrystart"] == 2000 and (HERE / "bug").exists():
            raise KeyError("Muon_ptt")
        time.sleep(DELAY)
        h = hist.Hist.new.Reg(BINS, 0, 200, name="pt").Int64()
        h.fill(pt=ak.flatten(events.Muon.pt))
        with open(HERE / "calls", "a") as log:
            log.write(f"{{meta['dataset']}}-{{Path(meta['filename']).stem}}-{{meta['entrystart']}}\\n")
        return {{"pt": h, "entries": len(events), "channels": len(CHANNELS)}}

    def postprocess(self, accumulator):
        return accumulator
'''


def write_analysis(folder: Path, *, bins: int = 50, delay: float = 0.0) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "analysis.py").write_text(ANALYSIS.format(bins=bins, delay=delay))
    return f"{folder / 'analysis.py'}:Analysis"


def calls(folder: Path) -> list[str]:
    path = folder / "calls"
    return path.read_text().splitlines() if path.exists() else []


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coffea_hpc.cli.app", *args],
                          capture_output=True, text=True, timeout=timeout)


def run_args(processor: str, fileset_path: Path, out: Path, *more: str) -> list[str]:
    return ["run", processor, "--fileset", str(fileset_path), "-o", str(out),
            "--executor", "iterative", "--chunksize", "1000", "--retries", "0", *more]


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The command's whole answer, which must be a single ``error:`` line."""
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text[-3000:]
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, text[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory, fileset_path):
    """An output directory a real run left after a chunk failed: a checkpoint to resume."""
    root = tmp_path_factory.mktemp("failed")
    processor = write_analysis(root / "code")
    (root / "code" / "bug").touch()
    out = root / "out"
    proc = cli(*run_args(processor, fileset_path, out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (out / "checkpoint.coffea").exists()
    return out


def copy_of(out: Path, where: Path) -> Path:
    return Path(shutil.copytree(out, where / "out"))


# -- a damaged checkpoint --------------------------------------------------------------


def test_a_checkpoint_is_private_and_still_coffeas_format(failed_run):
    path = failed_run / "checkpoint.coffea"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct((failed_run / ".coffea-hpc").stat().st_mode & 0o777) == "0o700"
    assert oct((failed_run / ".coffea-hpc" / "key").stat().st_mode & 0o777) == "0o600"
    saved = load(path)  # coffea.util.load passes over the checksum
    assert isinstance(saved, Result) and 0 < saved.processed.n_entries < 12_000


@pytest.mark.parametrize("damage", ["empty", "header only", "half", "random bytes"])
def test_a_damaged_checkpoint_is_refused_in_one_line(failed_run, fileset_path, tmp_path,
                                                     damage):
    out = copy_of(failed_run, tmp_path)
    path = out / "checkpoint.coffea"
    data = path.read_bytes()
    damaged = {"empty": b"", "header only": data[:4096], "half": data[:len(data) // 2],
               "random bytes": random.Random(1).randbytes(len(data))}[damage]
    path.write_bytes(damaged)
    processor = f"{failed_run.parent / 'code' / 'analysis.py'}:Analysis"
    before = calls(failed_run.parent / "code")

    proc = cli(*run_args(processor, fileset_path, out, "--resume"))
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert line.startswith(f"error: checkpoint {path} is damaged (")
    assert line.endswith("): rerun without --resume to start afresh")
    assert path.read_bytes() == damaged  # nothing lost, nothing rewritten
    assert calls(failed_run.parent / "code") == before


def test_no_single_bit_flip_is_ever_loaded(failed_run, tmp_path):
    out = copy_of(failed_run, tmp_path)
    path = out / "checkpoint.coffea"
    data = path.read_bytes()
    saved = open_checkpoint(path)
    assert saved is not None and saved.load().processed.n_entries > 0  # the intact one loads

    rng = random.Random(2024)
    positions = rng.sample(range(4096), 100) + rng.sample(range(4096, len(data)), 200)
    for position in positions:
        flipped = bytearray(data)
        flipped[position] ^= 1 << rng.randrange(8)
        path.write_bytes(flipped)
        with pytest.raises(UserError, match=r"is damaged \(") as info:
            open_checkpoint(path)
        assert "rerun without --resume" in str(info.value), position


class Plant:
    """Creates a file when unpickled: what a planted checkpoint would do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("form", ["coffea format", "behind a genuine header"])
def test_a_planted_pickle_is_never_unpickled(failed_run, fileset_path, tmp_path, form):
    planted = lz4.frame.compress(pickle.dumps(Plant(tmp_path / "planted")))
    load_works = tmp_path / "control"
    (tmp_path / "control.coffea").write_bytes(
        lz4.frame.compress(pickle.dumps(Plant(load_works))))
    load(tmp_path / "control.coffea")
    assert load_works.exists()  # the plant works on whoever unpickles it

    out = copy_of(failed_run, tmp_path)
    path = out / "checkpoint.coffea"
    header = path.read_bytes()[:4096]
    path.write_bytes(planted if form == "coffea format" else header + planted)
    processor = f"{failed_run.parent / 'code' / 'analysis.py'}:Analysis"
    proc = cli(*run_args(processor, fileset_path, out, "--resume"))
    assert proc.returncode == 2
    assert "is damaged (" in one_error_line(proc)
    assert not (tmp_path / "planted").exists()


def test_a_checkpoint_from_another_output_directory_is_refused(failed_run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(failed_run, elsewhere)
    shutil.rmtree(elsewhere / ".coffea-hpc")
    with pytest.raises(UserError, match=r"cannot be verified \(its key .* is missing\)"):
        open_checkpoint(elsewhere / "checkpoint.coffea")

    # a directory with its own key: the copied checkpoint's checksum is not of that key
    write_checkpoint(Result(), elsewhere / "other.coffea", {})
    with pytest.raises(UserError, match=r"is damaged \(checksum mismatch\)"):
        open_checkpoint(elsewhere / "checkpoint.coffea")


# -- a checkpoint of another analysis ---------------------------------------------------


def test_resume_after_changing_the_binning_is_refused_before_any_chunk(fileset_path, tmp_path):
    code = tmp_path / "code"
    processor = write_analysis(code, bins=50)
    (code / "bug").touch()
    out = tmp_path / "out"
    assert cli(*run_args(processor, fileset_path, out)).returncode == 1
    checkpoint = (out / "checkpoint.coffea").read_bytes()
    done = calls(code)
    saved = {f"{ds}-{Path(fn).stem}-{start}" for (ds, fn, _), spans in
             load(out / "checkpoint.coffea").processed for a, b in spans
             for start in range(a, b, 1_000)}
    assert 0 < len(saved) <= len(done) < 12
    (code / "bug").unlink()  # the analyst fixes the bug, and changes the binning too

    write_analysis(code, bins=40)
    proc = cli(*run_args(processor, fileset_path, out, "--resume"))
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert line.startswith("error: the processor changed since the checkpoint was written "
                           "(processor digest ")
    assert line.endswith("): rerun without --resume, or resume with the original processor")
    assert calls(code) == done  # refused before any chunk ran
    assert (out / "checkpoint.coffea").read_bytes() == checkpoint

    # the unchanged file in a new process resumes: the digest does not vary by process
    write_analysis(code, bins=50)
    proc = cli(*run_args(processor, fileset_path, out, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = calls(code)
    assert len(set(after)) == 12 and all(after.count(chunk) == 1 for chunk in saved)
    output = load(out / "output.coffea")
    assert output["entries"] == 12_000 and len(output["pt"].axes[0]) == 50


DIGEST = """
import sys
from coffea_hpc.checkpoint import processor_digest
from coffea_hpc.processing.processor import ProcessorHandle, load_processor
print(processor_digest(ProcessorHandle.wrap(load_processor(sys.argv[1]))))
"""


def test_the_processor_digest_is_the_same_in_every_process(tmp_path):
    processor = write_analysis(tmp_path / "a", bins=50)

    def digest(seed: str) -> str:
        env = {**os.environ, "PYTHONHASHSEED": seed}
        return subprocess.run([sys.executable, "-c", DIGEST, processor], env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    assert digest("1") == digest("2") == digest("3")
    first = digest("1")
    write_analysis(tmp_path / "a", bins=51)
    assert digest("1") != first


SHARING = """
class Labels:
    def __init__(self, shared):
        word = "muon pt"
        self.title = word
        self.axis = word if shared else "".join(list(word))  # equal, not the same object
        self.nested = {"a": [word, 1], "b": (2, 3)}
        pair = [5, 6]  # one object referred to twice: a memo reference after the strings
        self.first = pair
        self.second = pair

    def process(self, events):
        return {"n": len(events)}
"""


def test_the_processor_digest_ignores_whether_equal_strings_were_shared(tmp_path):
    """Pickle writes a string shared by two attributes once and refers to it, and equal
    strings that are not the same object twice; which happens depends on the process
    (interning, what ran before), not on the analysis. Every reference after it shifted
    and a --resume in the same notebook was refused as a changed processor."""
    import importlib.util

    from coffea_hpc.checkpoint import processor_digest
    from coffea_hpc.processing.processor import ProcessorHandle

    path = tmp_path / "labels_analysis.py"
    path.write_text(SHARING)
    spec = importlib.util.spec_from_file_location("labels_analysis", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["labels_analysis"] = module
    try:
        spec.loader.exec_module(module)
        shared, distinct = (ProcessorHandle.wrap(module.Labels(flag)) for flag in (True, False))
        assert shared.payload != distinct.payload  # the pickles do differ
        assert processor_digest(shared) == processor_digest(distinct)
        changed = module.Labels(True)
        changed.nested["b"] = (2, 4)
        assert processor_digest(ProcessorHandle.wrap(changed)) != processor_digest(shared)
    finally:
        del sys.modules["labels_analysis"]


class Recording:
    """Logs each chunk it processes; fails at entry 1000 while a flag file exists."""

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)

    def process(self, events):
        folder = Path(self.folder)
        if events.metadata["entrystart"] == 1000 and (folder / "bug").exists():
            raise KeyError("Muon_ptt")
        with open(folder / "calls", "a") as log:
            log.write(f"{events.metadata['entrystart']}\n")
        return {"entries": len(events)}


@pytest.mark.parametrize("change, message", [
    ({"limit_files": 1}, r"^the fileset changed since the checkpoint was written \(its "
                         r"datasets.*: rerun without --resume, or resume with the original "
                         r"fileset$"),
    ({"schema": "base"}, r"^the schema changed .*\(--schema nanoaod → base\)"),
    ({"chunksize": 700}, r"^the chunking changed .*\(--chunksize 1000 → 700\)"),
    ({"limit_chunks": 2}, r"^the chunking changed .*\(--limit-chunks unset → 2\)"),
    ({"processor": "other", "chunksize": 700},
     r"^the processor and the chunking changed .*\(processor digest \w+ → \w+; --chunksize "
     r"1000 → 700\)"),
], ids=["fileset", "schema", "chunksize", "limit-chunks", "processor and chunking"])
def test_resume_with_another_setup_is_refused_naming_it(fileset, tmp_path, change, message):
    (tmp_path / "bug").touch()
    out = tmp_path / "out"
    options = {"backend": "iterative", "chunksize": 1_000, "output_dir": out,
               "policy": ErrorPolicy(max_retries=0)}
    processor = Recording(tmp_path)
    with pytest.raises(ChunkFailedError):
        run(processor, fileset, **options)
    done = calls(tmp_path)
    (tmp_path / "bug").unlink()
    if change.pop("processor", None):
        processor = Recording(tmp_path / "elsewhere")
    with pytest.raises(UserError, match=message):
        run(processor, fileset, **{**options, **change}, resume=True)
    assert calls(tmp_path) == done

    outcome = run(Recording(tmp_path), fileset, **options, resume=True)  # as it was: resumes
    assert outcome.output["entries"] == 12_000


def test_resume_with_another_coffea_hpc_version_is_refused(fileset, tmp_path):
    out = tmp_path / "out"
    (tmp_path / "bug").touch()
    with pytest.raises(ChunkFailedError):
        run(Recording(tmp_path), fileset, backend="iterative", chunksize=1_000, output_dir=out,
            policy=ErrorPolicy(max_retries=0))
    saved = open_checkpoint(out / "checkpoint.coffea")
    assert saved is not None
    provenance, result = {**saved.provenance, "version": "0.0.1"}, saved.load()
    write_checkpoint(result, out / "checkpoint.coffea", provenance)
    with pytest.raises(UserError, match=r"^coffea-hpc changed since the checkpoint was written "
                                        r"\(version 0\.0\.1 → .*resume with coffea-hpc 0\.0\.1$"):
        run(Recording(tmp_path), fileset, backend="iterative", chunksize=1_000, output_dir=out,
            resume=True)


# -- one run per output directory ----------------------------------------------------------


def test_a_second_run_into_the_same_directory_is_refused_at_once(fileset_path, tmp_path):
    slow = write_slow_processor(tmp_path / "slow.py", 1.0)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "coffea_hpc.cli.app", "run", slow, "--fileset",
            str(fileset_path), "-o", str(out), "--executor", "iterative", "--chunksize", "1000"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = out / ".coffea-hpc" / "lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads(lock.read_text())["pid"] == first.pid

    started = time.monotonic()
    second = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    assert first.poll() is None, "the first run ended before the second was refused"
    line = one_error_line(second)
    assert line == (f"error: output directory {out} is in use by another run (pid {first.pid} "
                    f"on host {socket.gethostname()}, started "
                    f"{json.loads(lock.read_text())['started']}): wait for it to end, or "
                    "choose another output directory")
    assert time.monotonic() - started < 30

    log = first.communicate(timeout=120)[0]
    assert first.returncode == 0, log[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete" and report["metrics"]["chunks"] == 12
    assert not lock.exists()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lock_left_by_a_dead_run_is_taken_over(fileset, tmp_path, caplog):
    out = tmp_path / "out"
    (out / ".coffea-hpc").mkdir(parents=True)
    pid = dead_pid()
    (out / ".coffea-hpc" / "lock").write_text(json.dumps(
        {"host": socket.gethostname(), "pid": pid, "started": "yesterday"}))
    caplog.set_level("WARNING", logger="coffea_hpc")
    outcome = run(Recording(tmp_path), fileset, backend="iterative", chunksize=1_000,
                  output_dir=out)
    assert outcome.output["entries"] == 12_000
    assert f"taking over the lock left in {out} by pid {pid} (no longer running)" in caplog.text
    assert not (out / ".coffea-hpc" / "lock").exists()


def test_a_lock_from_another_host_is_refused_naming_it(fileset, tmp_path):
    out = tmp_path / "out"
    (out / ".coffea-hpc").mkdir(parents=True)
    lock = out / ".coffea-hpc" / "lock"
    lock.write_text(json.dumps({"host": "node042.example", "pid": 4242, "started": "today"}))
    with pytest.raises(UserError, match=r"in use by a run on host node042\.example \(pid 4242, "
                                        r"started today\).*delete .*lock$"):
        run(Recording(tmp_path), fileset, backend="iterative", chunksize=1_000, output_dir=out)
    assert sorted(p.name for p in out.iterdir()) == [".coffea-hpc"]  # nothing done
    assert json.loads(lock.read_text())["host"] == "node042.example"  # and the lock kept


def test_one_process_cannot_run_twice_into_one_directory(fileset, tmp_path):
    from coffea_hpc.checkpoint import OutputLock

    out = tmp_path / "out"
    with OutputLock(out), pytest.raises(UserError, match="in use by another run in this process"):
        run(Recording(tmp_path), fileset, backend="iterative", chunksize=1_000, output_dir=out)


# -- checkpoints by work done ----------------------------------------------------------------


def test_a_driver_killed_early_keeps_most_of_what_it_did(fileset_path, tmp_path):
    """With the default interval (a minute), a driver killed a few seconds in still has a
    checkpoint of most of the chunks it finished: checkpoints follow the work done."""
    code = tmp_path / "code"
    processor = write_analysis(code, delay=0.4)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "coffea_hpc.cli.app",
            *run_args(processor, fileset_path, out)]
    args[args.index("--chunksize") + 1] = "400"
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    prepared = out / "prepared.json"
    deadline = time.monotonic() + 60
    while not prepared.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    mapping = json.loads(prepared.read_text())
    total = sum(len(f["steps"]) for ds in mapping.values() for f in ds["files"].values())
    assert total >= 30
    while len(calls(code)) < 0.2 * total and time.monotonic() < deadline:
        time.sleep(0.02)
    driver.kill()
    driver.communicate(timeout=60)
    done = set(calls(code))
    assert 0.2 * total <= len(done) < 0.5 * total

    resumed = cli(*args[3:], "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = calls(code)
    assert len(set(after)) == total
    again = [chunk for chunk in done if after.count(chunk) > 1]
    kept = len(done) - len(again)
    assert kept > len(done) / 2, f"{kept} of {len(done)} finished chunks kept"
    assert load(out / "output.coffea")["entries"] == 12_000


# -- a full disk --------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs: a full disk in miniature (needs root; skipped otherwise)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_pages: int) -> Path:
    """Fill ``disk`` but for ``leave_pages`` pages."""
    filler = disk / "filler"
    block = b"\0" * 4096
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(block)
        except OSError:
            pass
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave_pages * 4096))
    return filler


@pytest.mark.parametrize("executor, pages, fails", [
    ("iterative", 0, ".coffea-hpc/lock"), ("iterative", 1, ".coffea-hpc/key"),
    ("iterative", 2, "prepared.json"), ("iterative", 3, "checkpoint.coffea"),
    ("iterative", 6, "checkpoint.coffea"), ("futures", 2, "prepared.json"),
    ("futures", 6, "checkpoint.coffea output.coffea report.json"),
], ids=["lock", "key", "prepared", "first-checkpoint", "later-checkpoint",
        "futures-prepared", "futures-later-files"])
def test_a_full_disk_is_one_line_and_rerun_with_resume_completes(fileset_path, tmp_path,
                                                                 small_disk, executor, pages,
                                                                 fails):
    """With that many pages free, writing that file fails first (six pages: a later
    checkpoint, the first one kept); each is one line, leaves no temporary file, loses
    nothing that was saved, and the rerun with --resume completes. On futures the pool's
    workers are stopped and the same holds; two workers finish chunks in pairs, so with six
    pages the disk fills at a checkpoint, or later, as the output or the report is written
    (whichever it is, the same must hold)."""
    slow = write_slow_processor(tmp_path / "slow.py", 0.2)
    out = small_disk / "out"
    filler = fill(small_disk, pages)
    args = ["run", slow, "--fileset", str(fileset_path), "-o", str(out), "--executor",
            executor, "--chunksize", "1000", "--checkpoint-every", "0",
            *(["--workers", "2"] if executor == "futures" else [])]
    proc = cli(*args)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert line in {f"error: no space left on {out / name}: free space and rerun with --resume"
                    for name in fails.split()}, line
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")
                 or p.name.startswith((".report", ".prepared", ".checkpoint", ".output"))]
    assert leftovers == []
    if (out / "prepared.json").exists():
        json.loads((out / "prepared.json").read_text())  # whole, or not there
    if (out / "report.json").exists():
        json.loads((out / "report.json").read_text())
    if executor == "iterative":
        assert (out / "checkpoint.coffea").exists() is (pages == 6)
    if (out / "checkpoint.coffea").exists():
        saved = open_checkpoint(out / "checkpoint.coffea")
        assert saved is not None and saved.entries > 0
        saved.close()

    filler.unlink()  # the analyst frees space
    resumed = cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete" and report["events"] == 12_000
    assert not (out / "checkpoint.coffea").exists()


def test_a_disk_that_fills_under_parsl_gives_one_line_not_a_flood_of_log_errors(
        fileset_path, tmp_path, small_disk):
    """Parsl's own log (OUT/parsl/.../parsl.log) is the first file to hit the full disk: it
    stops being written with one warning, where each of Parsl's log records used to print a
    20-line '--- Logging error ---' block; the run still ends on its one `error:` line, and
    the rerun with --resume completes."""
    slow = write_slow_processor(tmp_path / "slow.py", 0.1)
    out = small_disk / "out"
    filler = fill(small_disk, 20)  # room for the lock, the key, and part of Parsl's log
    args = ["run", slow, "--fileset", str(fileset_path), "-o", str(out), "--executor",
            "parsl", "--workers", "2", "--chunksize", "500"]
    proc = cli(*args)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    assert "Logging error" not in text and "Traceback" not in text, text[-3000:]
    assert len(text.splitlines()) < 15, text[-3000:]
    assert "Parsl's log" in text and "cannot be written" in text, text[-3000:]
    line = one_error_line(proc)
    assert line.startswith("error: no space left on ") and line.endswith(
        ": free space and rerun with --resume"), line

    filler.unlink()
    resumed = cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "complete" and report["events"] == 12_000


def test_checkpoints_write_the_running_sum_as_it_stands_without_copying_it(
        fileset, tmp_path, monkeypatch):
    """A checkpoint taken while chunks are in flight is written from the driver's running
    sum itself, not from a copy (which would double the driver's memory for a large output)
    nor with a walk over every remaining chunk; what it holds always covers exactly the
    entries its ledger says."""
    from coffea_hpc import checkpoint as checkpoint_module
    from coffea_hpc.backends._task import FutureTask
    from tests.helpers import write_slow_processor

    copies: list[str] = []
    for name in ("partial_result", "_remaining"):
        real = getattr(FutureTask, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):
            copies.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(FutureTask, name, spy)
    written: list[tuple[str, int, int]] = []
    real_write = checkpoint_module._write_signed
    out = tmp_path / "out"

    def record(payload, path, **kwargs):
        size = real_write(payload, path, **kwargs)
        # what a resume would load now: the checkpoint and the updates that follow it
        saved = open_checkpoint(out / "checkpoint.coffea").load()
        counted = sum(flow["all"] for flow in saved.value["cutflow"].values())
        kind = "whole" if isinstance(payload, Result) else "update"
        written.append((kind, counted, saved.processed.n_entries))
        return size

    monkeypatch.setattr(checkpoint_module, "_write_signed", record)
    slow = write_slow_processor(tmp_path / "slow.py", 0.05)
    outcome = run(slow, fileset, backend="futures", workers=2, chunksize=100,
                  chunks_per_task=1, output_dir=out, checkpoint_interval=0.2)
    assert outcome.report["status"] == "complete"
    total = sum(flow["all"] for flow in outcome.output["cutflow"].values())
    midway = [entries for _, _, entries in written if entries < total]
    assert len(midway) >= 2, written
    assert {kind for kind, _, _ in written} == {"whole", "update"}, written
    assert all(counted == entries for _, counted, entries in written), written
    assert copies == [], copies
    assert not (out / ".coffea-hpc" / "updates").exists() or \
        not any((out / ".coffea-hpc" / "updates").iterdir())  # a complete run leaves none


def test_the_chunking_digest_hashed_in_slices_is_that_of_the_whole_list(monkeypatch):
    # a resume compares this digest with the checkpoint's: hashing 10^6 keys a slice at a
    # time must give what hashing them all at once gives, at any slice boundary
    import hashlib

    from coffea_hpc import checkpoint
    from coffea_hpc.data.chunks import Chunk

    chunks = [Chunk("ds", f"/d/f{i // 4}.root", "Events", 10 * i, 10 * i + 10)
              for i in range(23)]

    def whole(record):
        text = json.dumps(record, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    keys = [list(c.key) for c in chunks]
    for batch in (1, 5, 23, 10_000):
        monkeypatch.setattr(checkpoint, "_DIGEST_BATCH", batch)
        assert checkpoint.chunks_digest(chunks) == whole(keys)
        assert checkpoint.chunks_digest(chunks, target_seconds=30) == whole(
            {"ranges": keys, "target_chunk_seconds": 30.0})
        assert checkpoint.chunks_digest([]) == whole([])
    moved = [*chunks[:-1], Chunk("ds", chunks[-1].filename, "Events", 220, 231)]
    assert checkpoint.chunks_digest(moved) != checkpoint.chunks_digest(chunks)


def test_with_spilled_partials_a_checkpoint_holds_references_not_the_output(fileset_path,
                                                                             tmp_path):
    from coffea_hpc.reduction.spill import SpillSet

    # large outputs spill: the partials are on storage already, and a checkpoint writes
    # only what refers to them, so its cost does not grow with the output's size
    processor = write_analysis(tmp_path / "code", bins=200_000)  # 1.6 MB per histogram
    (tmp_path / "code" / "bug").touch()
    out = tmp_path / "out"
    proc = cli(*run_args(processor, fileset_path, out, "--spill-threshold", "0"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    partials = sorted((out / "spill").glob("partial-*"))
    assert len(partials) >= 2
    saved = open_checkpoint(out / "checkpoint.coffea").load()
    assert isinstance(saved.value, SpillSet) and saved.value.value is None  # nothing inline
    assert {Path(ref.path).name for ref in saved.value.refs} <= {p.name for p in partials}
    assert len(saved.value.refs) >= 2
    checkpoint = (out / "checkpoint.coffea").stat().st_size
    assert checkpoint < min(p.stat().st_size for p in partials), checkpoint

    (tmp_path / "code" / "bug").unlink()
    again = cli(*run_args(processor, fileset_path, out, "--spill-threshold", "0", "--resume"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert sum(c.endswith("-2000") for c in calls(tmp_path / "code")) >= 1


# -- checkpoints that cost what changed -------------------------------------------------------

PER_DATASET = '''
import time
from pathlib import Path

import awkward as ak
import hist
from coffea import processor

HERE = Path(__file__).parent


class PerDataset(processor.ProcessorABC):
    """coffea's own layout: one entry per dataset, holding its histograms and counts."""

    def process(self, events):
        meta = events.metadata
        dataset = meta["dataset"]
        time.sleep(0.25)
        h = hist.Hist.new.Reg(20_000, 0, 200, name="pt").Weight()
        h.fill(pt=ak.flatten(events.Muon.pt))
        with open(HERE / "calls", "a") as log:
            log.write(f"{dataset}-{Path(meta['filename']).stem}-{meta['entrystart']}\\n")
        muons = int(ak.sum(ak.num(events.Muon)))
        return {dataset: {"pt": h, "entries": len(events)},
                "cutflow": {dataset: {"all": len(events), "muons": muons}}}

    def postprocess(self, accumulator):
        return accumulator
'''


def _per_dataset_result(dataset: str, i: int) -> Result:
    import hist
    import numpy as np

    from coffea_hpc.data.ranges import EntryRanges

    h = hist.Hist.new.Reg(20_000, 0, 1, name="x").Weight()
    h.fill(np.random.default_rng(i).random(5_000))
    return Result(value={dataset: {"x": h, "n": 1}, "cutflow": {dataset: {"all": 10}}},
                  processed=EntryRanges.of((dataset, f"/{dataset}/f{i}.root", "Events"), 0, 10),
                  metrics={"read_from": {(f"/{dataset}/f{i}.root", "local")}, "chunks": 1})


def _checkpointed(out: Path, results: list[Result], every: int) -> tuple[Result, Checkpointer]:
    """Fold ``results`` as a task does, checkpointing every ``every`` of them as a run
    does; returns the running sum and the checkpointer."""
    total, changes = Result(), Changes()
    checkpointer = Checkpointer(out / "checkpoint.coffea", provenance={"processor": "p"})
    for i, result in enumerate(results, 1):
        total.absorb(result)
        changes.note(result)
        if i % every == 0:
            snapshot = total.without_failures()
            if not checkpointer.write_update(snapshot, changes.take()):
                checkpointer.write(snapshot)
    return total, checkpointer


def _update_with(checkpointer: Checkpointer, total: Result, results: list[Result]) -> bool:
    """Fold ``results`` into ``total`` and checkpoint what they changed, as an update."""
    changes = Changes()
    for result in results:
        total.absorb(result)
        changes.note(result)
    return checkpointer.write_update(total.without_failures(), changes)


def test_an_update_holds_what_changed_and_a_resume_applies_it(tmp_path):
    from tests.helpers import assert_same

    out = tmp_path / "out"
    out.mkdir()
    # four datasets done, then chunks of a fifth: the update after them holds that
    # dataset's entries, its ledger and metrics, not the other four
    results = [_per_dataset_result(f"ds{i // 3}", i) for i in range(12)]
    total, checkpointer = _checkpointed(out, results, every=12)  # one whole checkpoint
    more = [_per_dataset_result("ds4", i) for i in range(12, 15)]
    assert _update_with(checkpointer, total, more)
    whole = (out / "checkpoint.coffea").stat().st_size
    updates = sorted((out / ".coffea-hpc" / "updates").iterdir())
    assert len(updates) == 1 and updates[0].stat().st_mode & 0o777 == 0o600
    assert updates[0].stat().st_size < 0.4 * whole, (updates[0].stat().st_size, whole)

    saved = open_checkpoint(out / "checkpoint.coffea")
    assert saved.entries == total.processed.n_entries == 150
    loaded = saved.load()
    assert list(loaded.value) == list(total.value)  # the output's order, too
    assert_same(loaded.value, total.value)
    assert loaded.processed == total.processed
    assert loaded.metrics == total.metrics


def test_updates_go_whole_again_once_they_add_up_to_the_checkpoint(tmp_path):
    from tests.helpers import assert_same

    out = tmp_path / "out"
    out.mkdir()
    results = [_per_dataset_result(f"ds{i // 4}", i) for i in range(40)]
    total, checkpointer = _checkpointed(out, results, every=2)
    folder = out / ".coffea-hpc" / "updates"
    generation = open_checkpoint(out / "checkpoint.coffea").generation
    left = sorted(p.name for p in folder.iterdir())
    assert all(name.startswith(f"{generation}.") for name in left), left  # older ones gone
    assert sum((folder / name).stat().st_size for name in left) <= 2 * (
        out / "checkpoint.coffea").stat().st_size
    assert_same(open_checkpoint(out / "checkpoint.coffea").load().value, total.value)
    checkpointer.clear()
    assert not (out / "checkpoint.coffea").exists() and not any(folder.iterdir())


@pytest.mark.parametrize("harm", ["flip", "remove-first", "stale"])
def test_a_damaged_or_missing_update_is_refused_and_a_stale_one_ignored(tmp_path, harm):
    out = tmp_path / "out"
    out.mkdir()
    results = [_per_dataset_result(f"ds{i % 5}", i) for i in range(10)]
    total, checkpointer = _checkpointed(out, results[:4], every=4)  # whole
    folder = out / ".coffea-hpc" / "updates"
    for part in (results[4:6], results[6:8]):
        assert _update_with(checkpointer, total, part)
    first, second = sorted(folder.iterdir(), key=lambda p: int(p.name.split(".")[1]))
    if harm == "flip":
        data = bytearray(second.read_bytes())
        data[-20] ^= 0x04
        second.write_bytes(bytes(data))
        with pytest.raises(UserError, match=rf"checkpoint update {second} is damaged "
                                            r"\(checksum mismatch\): rerun without --resume"):
            open_checkpoint(out / "checkpoint.coffea")
    elif harm == "remove-first":
        first.unlink()
        with pytest.raises(UserError, match=r"checkpoint update .*\.1 is missing \(later ones "
                                            r"are there\): rerun without --resume"):
            open_checkpoint(out / "checkpoint.coffea")
    else:  # left by an older checkpoint (a crash between writing one and tidying up)
        from tests.helpers import assert_same

        kept = [shutil.copy(update, tmp_path / update.name) for update in (first, second)]
        for result in results[8:]:
            total.absorb(result)
        checkpointer.write(total.without_failures())  # whole: those updates are now old
        assert not any(folder.iterdir())
        for copy in kept:
            shutil.copy(copy, folder)
        loaded = open_checkpoint(out / "checkpoint.coffea").load()
        assert_same(loaded.value, total.value)
        assert loaded.processed == total.processed


def test_a_killed_driver_resumes_from_its_checkpoint_and_updates(fileset, fileset_path,
                                                                  tmp_path):
    """A per-dataset analysis checkpointing after every chunk writes updates; the driver
    killed among them resumes from the checkpoint and its updates, redoes almost nothing
    and ends with what an uninterrupted run gives."""
    from tests.helpers import assert_same

    code = tmp_path / "code"
    code.mkdir()
    (code / "analysis.py").write_text(PER_DATASET)
    processor = f"{code / 'analysis.py'}:PerDataset"
    out = tmp_path / "out"
    args = [sys.executable, "-m", "coffea_hpc.cli.app",
            *run_args(processor, fileset_path, out, "--checkpoint-every", "0")]
    args[args.index("--chunksize") + 1] = "500"
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    folder = out / ".coffea-hpc" / "updates"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None and \
            len(list(folder.glob("*"))) < 2:
        time.sleep(0.02)
    driver.kill()
    driver.communicate(timeout=60)
    assert len(list(folder.glob("*"))) >= 2, "no updates were written before the kill"
    done = set(calls(code))
    saved = open_checkpoint(out / "checkpoint.coffea")
    assert saved.updates and saved.entries > 0
    saved.close()

    resumed = cli(*args[3:], "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = calls(code)
    assert len(set(after)) == 24
    again = [chunk for chunk in done if after.count(chunk) > 1]
    assert len(again) <= 2, again  # at most what was under way when it was killed
    reference = run(f"{code / 'analysis.py'}:PerDataset", fileset, backend="iterative",
                    chunksize=3_000)
    assert_same(load(out / "output.coffea"), reference.output)
    assert not any(folder.iterdir())
