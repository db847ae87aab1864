"""Nothing coffea-hpc did not write itself is ever unpickled.

A pickle that creates a file when it is loaded is planted where a run reads pickles: over a
spilled partial while the run goes on, over a partial a checkpoint refers to, over the
checkpoint itself, in a spill directory given to ``coffea-hpc merge``, among an MPI merge's
inputs and as a Globus result. Each is refused with one line naming the file, and the file
the pickle would create never appears. Real runs and the real command line throughout.
"""

from __future__ import annotations

import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import lz4.frame
import pytest

from coffea_hpc import output
from coffea_hpc._signing import RunKey, key_path
from coffea_hpc.checkpoint import open_checkpoint
from coffea_hpc.errors import MergeError
from coffea_hpc.reduction import load_spilled, merge_stream, spill
from coffea_hpc.reduction._spillfile import SPILL_SUFFIX

ANALYSIS = '''
import shutil
from pathlib import Path

from coffea import processor

HERE = Path(__file__).parent


class Analysis(processor.ProcessorABC):
    """Fails on the chunk at entry 2000 while HERE/bug exists. While HERE/plant names a
    spill folder, that chunk first copies HERE/planted.cspill over every partial in it,
    as someone who can write to the spill directory could."""

    def process(self, events):
        start = events.metadata["entrystart"]
        if start == 2000 and (HERE / "plant").exists():
            for partial in Path((HERE / "plant").read_text()).glob("*.cspill"):
                shutil.copyfile(HERE / "planted.cspill", partial)
        if start == 2000 and (HERE / "bug").exists():
            raise KeyError("Muon_ptt")
        return {"entries": len(events)}

    def postprocess(self, accumulator):
        return accumulator
'''


class _Planted:
    """Loading this pickle creates ``marker``: what any code could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def planted(kind: str, marker: Path) -> bytes:
    """The pickle in the shape of each file a run reads."""
    raw = pickle.dumps({"h": _Planted(marker)})
    head = lz4.frame.compress(raw)
    length = struct.pack("<Q", len(head))
    return {
        "raw": raw,
        "coffea": lz4.frame.compress(raw),  # coffea.util.save's format
        "spill": b"CHPCSPL2" + length + head + bytes(32),  # a spill file with a forged tag
        "old-spill": b"CHPCSPL1" + length + head,  # the unsigned format of old versions
    }[kind]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "coffea_hpc.cli.app", *args],
                          capture_output=True, text=True, timeout=180)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text[-3000:]
    return errors[0]


@pytest.fixture
def analysis(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "analysis.py").write_text(ANALYSIS)
    return code


def run_args(code: Path, fileset_path: Path, out: Path, *more: str) -> list[str]:
    return ["run", f"{code / 'analysis.py'}:Analysis", "--fileset", str(fileset_path),
            "-o", str(out), "--executor", "iterative", "--chunksize", "1000", "--retries",
            "0", "--reduce", "tree", "--fan-in", "100", *more]


def test_a_partial_replaced_during_the_run_is_refused(analysis, fileset_path, tmp_path):
    out = tmp_path / "out"
    marker = tmp_path / "pwned"
    (analysis / "planted.cspill").write_bytes(planted("spill", marker))
    (analysis / "plant").write_text(str(out / "spill"))
    proc = cli(*run_args(analysis, fileset_path, out))
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert f"refusing partial '{out / 'spill'}/partial-" in line
    assert "not signed by this run's key" in line
    assert not marker.exists()
    assert not (out / "output.coffea").exists()


@pytest.fixture(scope="module")
def _failed_once(tmp_path_factory, fileset_path) -> tuple[Path, list[str], Path]:
    root = tmp_path_factory.mktemp("failed")
    code = root / "code"
    code.mkdir()
    (code / "analysis.py").write_text(ANALYSIS)
    out = root / "out"
    (code / "bug").touch()
    args = run_args(code, fileset_path, out)
    assert cli(*args).returncode == 1
    (code / "bug").unlink()
    assert (out / "checkpoint.coffea").exists()
    pristine = root / "pristine"
    shutil.copytree(out, pristine)
    return out, args, pristine


@pytest.fixture
def failed_run(_failed_once) -> tuple[Path, list[str]]:
    """A run whose checkpoint refers to spilled partials, as a failed chunk leaves it
    (made once; put back as it was after each test)."""
    out, args, pristine = _failed_once
    yield out, args
    shutil.rmtree(out)
    shutil.copytree(pristine, out)


@pytest.mark.parametrize("kind", ["spill", "old-spill", "coffea"])
def test_resume_refuses_a_partial_of_its_checkpoint_replaced(failed_run, tmp_path, kind):
    out, args = failed_run
    marker = tmp_path / "pwned"
    saved = open_checkpoint(out / "checkpoint.coffea")
    assert saved is not None
    victim = Path(saved.load().value.refs[0].path)  # a partial the checkpoint counts on
    victim.write_bytes(planted(kind, marker))
    proc = cli(*args, "--resume")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert line.startswith(f"error: the checkpoint {out / 'checkpoint.coffea'} refers to a "
                           f"partial that cannot be trusted (refusing partial '{victim}': ")
    assert line.endswith("rerun without --resume to start afresh")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["raw", "coffea"])
def test_resume_refuses_a_planted_checkpoint(failed_run, tmp_path, kind):
    out, args = failed_run
    marker = tmp_path / "pwned"
    (out / "checkpoint.coffea").write_bytes(planted(kind, marker))
    proc = cli(*args, "--resume")
    assert proc.returncode == 2
    assert one_error_line(proc).startswith(
        f"error: checkpoint {out / 'checkpoint.coffea'} is damaged")
    assert not marker.exists()


def test_a_signed_partial_resumes(failed_run, tmp_path):
    """The refusals above are the planted files', not every file's."""
    out, args = failed_run
    proc = cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert output.load(out / "output.coffea") == {"entries": 12_000}


@pytest.mark.parametrize("kind", ["spill", "old-spill", "coffea", "raw"])
def test_merge_refuses_what_is_planted_in_a_spill_directory(tmp_path, kind):
    out = tmp_path / "out"
    key = RunKey.of(out)
    spill_dir = out / "spill"
    spill({"entries": 5}, spill_dir, key)
    marker = tmp_path / "pwned"
    name = {"coffea": "zz.coffea", "raw": "zz.coffea"}.get(kind, f"zz{SPILL_SUFFIX}")
    (spill_dir / name).write_bytes(planted(kind, marker))
    proc = cli("merge", str(spill_dir), "-o", str(tmp_path / "merged.coffea"), "--key-from",
               str(out))
    assert proc.returncode == 1
    assert one_error_line(proc).startswith(f"error: refusing partial '{spill_dir / name}': ")
    assert not marker.exists()
    assert not (tmp_path / "merged.coffea").exists()


def test_merge_reads_coffea_files_only_when_told_they_are_trusted(tmp_path):
    """coffea.util.save files carry no signature: merged when the analyst says so (and
    then a pickle runs, which is why it takes a flag)."""
    from coffea.util import save

    mine = [tmp_path / "a.coffea", tmp_path / "b.coffea"]
    save({"n": 1}, str(mine[0]))
    save({"n": 2}, str(mine[1]))
    merged = tmp_path / "merged.coffea"
    refused = cli("merge", *map(str, mine), "-o", str(merged))
    assert refused.returncode == 1
    assert "--trust-coffea-files" in one_error_line(refused)
    proc = cli("merge", *map(str, mine), "-o", str(merged), "--trust-coffea-files")
    assert proc.returncode == 0, proc.stderr
    assert output.load(merged) == {"n": 3}


def test_spill_files_need_the_key_of_the_run_that_wrote_them(tmp_path):
    mine, other = RunKey.of(tmp_path / "a"), RunKey.of(tmp_path / "b")
    ref = spill({"n": 1}, tmp_path / "a" / "spill", mine)
    assert load_spilled(ref, mine) == {"n": 1}
    with pytest.raises(MergeError, match="not signed by this run's key"):
        load_spilled(ref, other)
    with pytest.raises(MergeError, match="--key-from"):
        load_spilled(ref, None)
    copy = Path(ref.path).with_name(f"partial-copy{SPILL_SUFFIX}")
    shutil.copyfile(ref.path, copy)  # a partial copied under another name is not counted twice
    with pytest.raises(MergeError, match="not signed"):
        merge_stream([ref, copy], mine)


def test_a_tampered_piece_is_refused_before_it_is_added(tmp_path):
    import numpy as np

    key = RunKey.ephemeral()
    ref = spill({"a": np.arange(1000.0)}, tmp_path, key)
    data = bytearray(Path(ref.path).read_bytes())
    data[-40] ^= 0xFF  # inside the last piece
    Path(ref.path).write_bytes(bytes(data))
    with pytest.raises(MergeError, match="a piece is not signed"):
        load_spilled(ref, key)


def test_the_key_is_private_and_refused_otherwise(tmp_path):
    out = tmp_path / "out"
    RunKey.of(out)
    path = key_path(out)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert "secret" not in repr(RunKey.of(out)) and RunKey.of(out).hex() not in repr(
        RunKey.of(out))
    os.chmod(path, 0o644)
    with pytest.raises(Exception, match="must be yours and private"):
        RunKey.of(out)


@pytest.mark.mpi
def test_mpi_ranks_refuse_a_planted_input(tmp_path):
    from coffea_hpc.reduction.mpi_job import run_mpi_merge

    mpiexec = Path(sys.executable).with_name("mpiexec")
    if not mpiexec.exists() and shutil.which("mpiexec") is None:
        pytest.skip("no mpiexec (pip install 'coffea-hpc[mpi]')")
    key = RunKey.ephemeral()
    good = spill({"n": 1}, tmp_path / "in", key)
    marker = tmp_path / "pwned"
    bad = tmp_path / "in" / f"zz{SPILL_SUFFIX}"
    bad.write_bytes(planted("spill", marker))
    with pytest.raises(MergeError, match=f"refusing partial '{bad}': not signed"):
        run_mpi_merge([good.path, bad], tmp_path / "out.coffea", ranks=2, key=key,
                      timeout=120)
    assert not marker.exists()


def test_a_globus_result_is_opened_only_if_sealed_with_the_run_key(tmp_path):
    from coffea_hpc.backends.globus import UnverifiedResult, _open_result, run_capped
    from coffea_hpc.processing.result import Result

    key = RunKey.ephemeral()
    sealed = run_capped(lambda: Result(value={"n": 1}), str(tmp_path), 10**6, key)
    assert _open_result(sealed, key, "E").value == {"n": 1}
    marker = tmp_path / "pwned"
    for forged in (planted("raw", marker), bytes(32) + planted("raw", marker),
                   run_capped(lambda: Result(value={"n": 1}), str(tmp_path), 10**6,
                              RunKey.ephemeral())):
        with pytest.raises(UnverifiedResult, match="not sealed with this run's key"):
            _open_result(forged, key, "E")
    assert not marker.exists()
