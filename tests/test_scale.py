"""The driver at the size of a real analysis: 10^5 prepared files load, chunk, run and
checkpoint within the memory target, with the workers replaced by a stand-in whose
elements complete at once (``benchmarks/scale.py --backend sim``), so that only the driver
is measured. Its speed is the benchmark's business; here only its memory is held to the
target, since that is what stops a run on a login node."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEMORY_TARGET = 10**9  # 1 GB at 10^5 files


@pytest.mark.timeout(600)
def test_a_hundred_thousand_prepared_files_stay_within_the_driver_memory_target(tmp_path):
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--files", "100000",
         "--chunks-per-file", "1", "--backend", "sim", "--json", str(out)],
        capture_output=True, text=True, timeout=580)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (row,) = json.loads(out.read_text())["results"]
    assert row["files"] == 100_000 and row["chunks"] == 100_000
    assert row["checkpoint_s"] is not None  # a checkpoint was written at this size
    assert row["driver_peak_rss_bytes"] <= MEMORY_TARGET, row
