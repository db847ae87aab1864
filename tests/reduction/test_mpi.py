"""The MPI tree-merge, run for real with mpiexec (mpich from PyPI)."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from coffea_hpc import output
from coffea_hpc._signing import RunKey
from coffea_hpc.errors import MergeError
from coffea_hpc.reduction import load_spilled, merge_stream
from coffea_hpc.reduction.buffers import fold_buffers, raw_view, skeleton
from coffea_hpc.reduction.mpi_job import run_mpi_merge
from tests.helpers import assert_same, processes_mentioning
from tests.reduction.conftest import synthetic_partial

pytestmark = pytest.mark.mpi
KEY = RunKey.ephemeral()

MPIEXEC = Path(sys.executable).with_name("mpiexec")
if not MPIEXEC.exists() and shutil.which("mpiexec") is None:
    pytest.skip("no mpiexec (pip install 'coffea-hpc[mpi]')", allow_module_level=True)


@pytest.fixture(scope="module")
def serial(partial_files):
    return merge_stream(partial_files, None, trust_coffea_files=True)


@pytest.mark.parametrize(("ranks", "name"), [(1, "merged.coffea"), (2, "merged.coffea"),
                                           (4, "merged.coffea"), (2, "merged.cspill")])
def test_mpi_merge_equals_serial(partial_files, serial, tmp_path, ranks, name):
    """In coffea's format, or as a spill file (what a run's driver reads back)."""
    out = tmp_path / name
    stats = run_mpi_merge([partial_files[0].parent], out, ranks=ranks, key=KEY,
                          trust_coffea_files=True, timeout=120)
    assert_same(load_spilled(out, KEY, trust_coffea_files=True), serial)
    if name.endswith(".cspill"):  # a run's, read back by its driver: private
        assert out.stat().st_mode & 0o077 == 0
    assert stats.ranks == ranks and stats.inputs == len(partial_files)
    assert stats.bytes_read == sum(p.stat().st_size for p in partial_files)
    assert len(stats.extra["peak_rss_per_rank"]) == ranks


def test_more_ranks_than_partials(partial_files, tmp_path):
    out = tmp_path / "merged.coffea"
    run_mpi_merge(partial_files[:3], out, ranks=4, key=None, trust_coffea_files=True,
                  timeout=120)
    assert_same(output.load(out), merge_stream(partial_files[:3], None, trust_coffea_files=True))


def test_a_failing_merge_is_reported_in_one_line(tmp_path):
    bad = tmp_path / "bad.coffea"
    bad.write_bytes(b"not a coffea file")
    with pytest.raises(MergeError, match=r"the MPI merge failed \(exit"):
        run_mpi_merge([bad], tmp_path / "out.coffea", ranks=2, key=None,
                      trust_coffea_files=True, timeout=120)
    with pytest.raises(MergeError, match="not found"):
        run_mpi_merge([bad], tmp_path / "out.coffea", ranks=2, key=None,
                      launcher="no-such-mpiexec")


def test_buffers_cover_histogram_storage_exactly():
    value = synthetic_partial(3)
    skel, buffers = skeleton(value)
    h = value["dataset0"]["pt"]
    assert any(np.shares_memory(b, raw_view(h)) for b in buffers)
    def read(slot, target, add):
        if add:
            target += buffers[slot.index]
        else:
            target[...] = buffers[slot.index]

    rebuilt = fold_buffers(None, skel, read)
    assert_same(rebuilt, value)
    doubled = fold_buffers(rebuilt, skel, read)
    assert doubled["dataset0"]["pt"].sum().value == 2 * value["dataset0"]["pt"].sum().value


def test_large_buffers_go_in_pieces(monkeypatch, tmp_path):
    """Arrays longer than one message are split; shrink the piece size to test that."""
    import coffea_hpc.reduction.mpi as mpi_module

    monkeypatch.setattr(mpi_module, "PIECE", 1000)

    class Loopback:  # a two-rank exchange inside one process: what is sent is received
        def __init__(self):
            self.queues = collections.defaultdict(list)

        def send(self, obj, dest, tag):
            self.queues[tag].append(obj)

        def recv(self, source, tag):
            return self.queues[tag].pop(0)

        def Iprobe(self, source, tag):
            return bool(self.queues[tag])

        def Send(self, buf, dest, tag):
            assert buf.size <= 1000
            self.queues[tag].append(buf.copy())

        def Recv(self, buf, source, tag):
            buf[...] = self.queues[tag].pop(0)

    comm = Loopback()
    value = {"a": np.arange(4_500, dtype=np.float64), "b": synthetic_partial(5)}
    comm.send(None, dest=1, tag=mpi_module._TAG_GO)  # the receiver is ready
    mpi_module._send(comm, value, dest=0)
    total = mpi_module._receive_into(comm, {"a": np.ones(4_500)}, source=1)
    np.testing.assert_array_equal(total["a"], np.arange(4_500) + 1)
    assert_same(total["b"], value["b"])


@pytest.mark.parametrize(("n_files", "size"), [(64, 2), (64, 4), (3, 4), (10, 16)])
def test_shares_cover_every_input_once_balanced_by_size(tmp_path, n_files, size):
    from coffea_hpc.reduction.mpi import _share

    paths = []
    for i in range(n_files):
        path = tmp_path / f"p{i:03d}.cspill"
        path.write_bytes(b"x" * (1000 + i))
        paths.append(path)
    shares = [_share(paths, rank, size) for rank in range(size)]
    assert sorted(p for share in shares for p in share) == paths
    loads = [sum(p.stat().st_size for p in share) for share in shares]
    assert max(loads) - min(loads) <= max(p.stat().st_size for p in paths)


def _big_partial(seed: int, bins: int = 60_000) -> dict:
    """~1 MB of random storage: sent with MPI's rendezvous protocol, so a sender blocks
    inside ``Send`` until its receiver takes it."""
    import hist

    h = hist.Hist(hist.axis.Regular(bins, 0, 1, name="x"), storage=hist.storage.Weight())
    view = raw_view(h)
    view[:] = np.random.default_rng(seed).random(view.size)
    return {"h": h}


@pytest.mark.parametrize("command", ["cli", "module"])
@pytest.mark.parametrize("fault", ["truncated", "incompatible"])
def test_a_failing_rank_ends_every_rank_promptly(tmp_path, command, fault):
    """One rank fails while the others merge, wait for it, or send to it: every rank must
    end within seconds, the error named, nothing left running.

    ``truncated``: the last rank's share is a partial cut short, it fails reading it while
    the others are busy with theirs. ``incompatible``: the last partial has another binning;
    rank 2 fails adding it while rank 3 is inside its send and rank 0 waits for rank 2.
    """
    paths = [output.save(_big_partial(i), tmp_path / f"p{i}.coffea") for i in range(3)]
    last = tmp_path / "p3.coffea"  # the smallest file: the last rank's share
    if fault == "truncated":
        output.save(_big_partial(3, bins=40_000), last)
        last.write_bytes(last.read_bytes()[:-1000])
    else:
        output.save(_big_partial(3, bins=50_000), last)
    paths.append(last)
    out = tmp_path / "merged.coffea"
    exe = str(MPIEXEC) if MPIEXEC.exists() else "mpiexec"
    program = ([str(Path(sys.executable).with_name("coffea-hpc")), "merge"] if command == "cli"
               else [sys.executable, "-m", "coffea_hpc.reduction.mpi"])
    extra = [*(["--mpi"] if command == "cli" else []), "--trust-coffea-files"]
    proc = subprocess.Popen([exe, "-n", "4", *program, *map(str, paths), "-o", str(out),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.terminate()  # mpiexec passes it on to the ranks
        _, stderr = proc.communicate(timeout=30)
        pytest.fail(f"the ranks were still running 30 s after one failed: {stderr[-500:]}")
    assert proc.returncode != 0
    if fault == "truncated":
        assert f"error (rank 3): partial {str(last)!r} cannot be read: EOFError" in stderr
    else:
        assert ("error (rank 2): output['h']: histograms with different axes cannot be merged"
                in stderr)
    deadline = time.monotonic() + 10  # mpiexec returns as the last ranks are exiting
    while processes_mentioning(str(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(str(out)), "a rank outlived the failure"
    assert not out.exists()
