"""The MPI tree-merge, run for real with mpiexec (mpich from PyPI)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from coffea_hpc import output
from coffea_hpc.errors import MergeError
from coffea_hpc.reduction import merge_stream
from coffea_hpc.reduction.buffers import fold_buffers, raw_view, skeleton
from coffea_hpc.reduction.mpi import run_mpi_merge
from tests.helpers import assert_same
from tests.reduction.conftest import synthetic_partial

pytestmark = pytest.mark.mpi

MPIEXEC = Path(sys.executable).with_name("mpiexec")
if not MPIEXEC.exists() and shutil.which("mpiexec") is None:
    pytest.skip("no mpiexec (pip install 'coffea-hpc[mpi]')", allow_module_level=True)


@pytest.fixture(scope="module")
def serial(partial_files):
    return merge_stream(partial_files)


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_mpi_merge_equals_serial(partial_files, serial, tmp_path, ranks):
    out = tmp_path / "merged.coffea"
    stats = run_mpi_merge([partial_files[0].parent], out, ranks=ranks, timeout=120)
    assert_same(output.load(out), serial)
    assert stats.ranks == ranks and stats.inputs == len(partial_files)
    assert stats.bytes_read == sum(p.stat().st_size for p in partial_files)
    assert len(stats.extra["peak_rss_per_rank"]) == ranks


def test_more_ranks_than_partials(partial_files, tmp_path):
    out = tmp_path / "merged.coffea"
    run_mpi_merge(partial_files[:3], out, ranks=4, timeout=120)
    assert_same(output.load(out), merge_stream(partial_files[:3]))


def test_a_failing_merge_is_reported_in_one_line(tmp_path):
    bad = tmp_path / "bad.coffea"
    bad.write_bytes(b"not a coffea file")
    with pytest.raises(MergeError, match=r"the MPI merge failed \(exit"):
        run_mpi_merge([bad], tmp_path / "out.coffea", ranks=2, timeout=120)
    with pytest.raises(MergeError, match="not found"):
        run_mpi_merge([bad], tmp_path / "out.coffea", ranks=2, launcher="no-such-mpiexec")


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
            self.queue = []

        def send(self, obj, dest, tag):
            self.queue.append(obj)

        def recv(self, source, tag):
            return self.queue.pop(0)

        def Send(self, buf, dest, tag):
            assert buf.size <= 1000
            self.queue.append(buf.copy())

        def Recv(self, buf, source, tag):
            buf[...] = self.queue.pop(0)

    comm = Loopback()
    value = {"a": np.arange(4_500, dtype=np.float64), "b": synthetic_partial(5)}
    mpi_module._send(comm, value, dest=0)
    total = mpi_module._receive_into(comm, {"a": np.ones(4_500)}, source=1)
    np.testing.assert_array_equal(total["a"], np.arange(4_500) + 1)
    assert_same(total["b"], value["b"])
