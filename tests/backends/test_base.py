"""What every local pool shares: a script that starts a run at its top level, outside its
``__main__`` guard, is told so in one line before any worker starts (each worker would
import the script and run it again); guarded, the same script runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coffea_hpc.backends.iterative import IterativeBackend

_SCRIPT = """\
import coffea_hpc

def main():
    coffea_hpc.run("coffea_hpc.examples.dimuon:DimuonProcessor", {fileset!r},
                   backend={backend!r}, workers=2, limit_chunks=2)
    print("RUN DONE")

{call}
"""


@pytest.mark.parametrize("backend", ["futures", "dask"])
def test_a_script_that_runs_a_pool_unguarded_is_told_so_in_one_line(fileset_path, tmp_path,
                                                                     backend):
    # the pool's workers import the script again; unguarded, each would start the run again
    # and the pool would break as if its workers were killed for memory
    unguarded = tmp_path / "analysis.py"
    unguarded.write_text(_SCRIPT.format(fileset=str(fileset_path), backend=backend,
                                        call="main()"))
    done = subprocess.run([sys.executable, str(unguarded)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert f"{unguarded}:8 starts a {backend} run outside an 'if __name__ ==" in last
    assert "WorkerDied" not in done.stderr and "bootstrapping phase" not in done.stderr

    guarded = tmp_path / "guarded.py"
    guarded.write_text(_SCRIPT.format(fileset=str(fileset_path), backend=backend,
                                      call='if __name__ == "__main__":\n    main()'))
    done = subprocess.run([sys.executable, str(guarded)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "RUN DONE" in done.stdout


def test_a_start_is_reported_only_while_the_backend_runs():
    """A run given a started backend counts that start in its report; once the backend is
    closed (a run closes what it was given) the start is not counted again by the next run."""
    backend = IterativeBackend()
    assert backend.start_seconds is None
    with backend:
        assert backend.start_seconds is not None and backend.start_seconds >= 0
    assert backend.start_seconds is None
