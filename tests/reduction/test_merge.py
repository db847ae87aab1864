"""Serial, streaming, tree and MPI merges agree on the same partials."""

from __future__ import annotations

import os
import stat

import pytest

from coffea_hpc import output
from coffea_hpc._signing import RunKey
from coffea_hpc.backends import make_backend
from coffea_hpc.errors import MergeError
from coffea_hpc.processing.result import Result
from coffea_hpc.reduction import SpillSet, load_spilled, merge_serial, merge_stream, spill
from coffea_hpc.reduction.merge import MergeSpilled, MergeStats, resolve
from coffea_hpc.reduction.spill import serialized_size
from tests.helpers import assert_same
from tests.reduction.conftest import synthetic_partial

KEY = RunKey.ephemeral()


@pytest.fixture(scope="module")
def serial(partial_files):
    return merge_serial(output.load(p) for p in partial_files)


def test_streaming_merge_equals_serial_and_reports(partial_files, serial):
    stats = MergeStats()
    merged = merge_stream(partial_files, None, stats=stats, trust_coffea_files=True)
    assert_same(merged, serial)
    assert stats.inputs == len(partial_files)
    assert stats.bytes_read == sum(p.stat().st_size for p in partial_files)
    assert stats.peak_rss_bytes > 0 and stats.wall_time_s > 0


def test_merges_never_mutate_their_inputs(partial_files):
    values = [output.load(p) for p in partial_files[:3]]
    before = [v["dataset0"]["pt"].values().sum() if "dataset0" in v else 0 for v in values]
    merge_serial(values)
    after = [v["dataset0"]["pt"].values().sum() if "dataset0" in v else 0 for v in values]
    assert before == after


def test_spill_round_trip_is_private(tmp_path):
    value = synthetic_partial(1)
    ref = spill(value, tmp_path / "spill", KEY)
    assert stat.S_IMODE(os.stat(ref.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "spill").st_mode) == 0o700
    assert ref.nbytes == os.path.getsize(ref.path)
    assert_same(load_spilled(ref, KEY), value)
    assert serialized_size(value) > 400 * 12 * 5 * 16


def test_spilled_buffers_longer_than_a_piece_come_back_whole(monkeypatch, tmp_path):
    """Buffers are written in pieces; shrink the piece so one array spans several, unevenly."""
    import numpy as np

    from coffea_hpc.reduction import _spillfile

    monkeypatch.setattr(_spillfile, "_PIECE", 24)  # 3 float64 per piece
    value = {**synthetic_partial(0), "a": np.arange(10, dtype=np.float64),
             "b": np.arange(7, dtype=np.int64)}
    path = tmp_path / f"x{_spillfile.SPILL_SUFFIX}"
    _spillfile.write_spill_file(value, path, KEY)
    assert_same(_spillfile.read_spill_file(path, KEY), value)
    doubled = _spillfile.fold_spill_file(_spillfile.read_spill_file(path, KEY), path, KEY)
    assert_same(doubled, merge_serial([value, value]))


def test_a_truncated_spill_file_is_an_error_not_a_short_sum(tmp_path):
    import numpy as np

    from coffea_hpc.reduction import _spillfile

    path = tmp_path / f"x{_spillfile.SPILL_SUFFIX}"
    _spillfile.write_spill_file({"a": np.arange(1000.0)}, path, KEY)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        _spillfile.read_spill_file(path, KEY)


def test_references_add_up_with_values(tmp_path):
    a, b = synthetic_partial(1), synthetic_partial(2)
    ref = spill(a, tmp_path, KEY)
    pool = Result(value=ref) + Result(value=b)
    assert isinstance(pool.value, SpillSet) and len(pool.value) == 1
    assert_same(resolve(pool.value, KEY), merge_serial([a, b]))


def test_merge_tasks_on_a_real_parsl_executor(partial_files, serial, tmp_path):
    spill_dir = tmp_path / "spill"
    refs = [spill(output.load(p), spill_dir, KEY) for p in partial_files]
    with make_backend("parsl", workers=2, run_dir=tmp_path / "parsl") as backend:
        halves = [MergeSpilled(tuple(refs[:7]), str(spill_dir), KEY),
                  MergeSpilled(tuple(refs[7:]), str(spill_dir), KEY)]
        merged_refs = [backend.submit(el).result().value for el in halves]
    assert not any(os.path.exists(r.path) for r in refs)  # inputs replaced by outputs
    assert_same(merge_stream(merged_refs, KEY), serial)


def test_incompatible_partials_name_the_place(tmp_path):
    import hist

    a = {"ds": {"h": hist.Hist.new.Reg(4, 0, 1).Double()}}
    b = {"ds": {"h": hist.Hist.new.Reg(5, 0, 1).Double()}}
    with pytest.raises(MergeError):
        merge_serial([a, b])
    with pytest.raises(MergeError, match="is missing"):
        merge_stream([tmp_path / "gone.coffea"], KEY, trust_coffea_files=True)
