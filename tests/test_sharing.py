"""Results a group can share; keys, checkpoints and spilled partials only the analyst reads.

Run for real with ordinary users: a collaborator in the project's group, an outsider in
none, and a project directory of that group with mode 2775, as project file systems are set
up. The analyst runs ``coffea-hpc`` under umask 077 (as the test's own user: the Python here
may not be runnable by others); what the collaborator and the outsider can then read is
what the kernel lets them, not what the test computes from mode bits. Needs root to create
the users (skipped otherwise).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from coffea_hpc import output
from coffea_hpc.data.synthetic import SyntheticDataset, generate
from tests.test_signing import ANALYSIS

GROUP = "coffeahpc-share"
PEER, OUTSIDER = "coffeahpc-peer", "coffeahpc-outsider"


def _ensure_users() -> None:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("creating users needs root and useradd")
    subprocess.run(["groupadd", "-f", GROUP], check=True, capture_output=True)
    for user, groups in ((PEER, [GROUP]), (OUTSIDER, [])):
        try:
            pwd.getpwnam(user)
        except KeyError:
            done = subprocess.run(["useradd", "--no-create-home", "--user-group",
                                   *(["-G", ",".join(groups)] if groups else []), user],
                                  capture_output=True, text=True)
            if done.returncode != 0 and "already exists" not in done.stderr:
                pytest.skip(f"useradd failed: {done.stderr.strip()}")


def can_read(user: str, path: Path) -> bool:
    """Whether ``user``, with its groups, can read ``path`` (the kernel says)."""
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                           "cat", str(path)], capture_output=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"}).returncode == 0


@pytest.fixture(scope="module")
def project() -> Iterator[Path]:
    """A group's project directory (2775, group ``coffeahpc-share``), with data and the
    analysis readable by all three users."""
    _ensure_users()
    root = Path(tempfile.mkdtemp(prefix="coffeahpc-share-"))
    try:
        root.chmod(0o755)
        fileset = generate(root / "data", events_per_file=3_000,
                           datasets=(SyntheticDataset("DY", "dy", 1, {"is_mc": True}),),
                           basket_entries=1_000)
        fileset.save(root / "data" / "fileset.json")
        for path in [root / "data", *(root / "data").rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        (root / "code").mkdir(mode=0o755)
        (root / "code" / "analysis.py").write_text(ANALYSIS)
        (root / "code" / "analysis.py").chmod(0o644)
        group = root / "project"
        group.mkdir()
        os.chown(group, 0, grp.getgrnam(GROUP).gr_gid)
        group.chmod(0o2775)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_as_analyst(project: Path, out: Path, *more: str) -> subprocess.CompletedProcess[str]:
    """``coffea-hpc run`` under umask 077: a user who keeps everything private by default."""
    return subprocess.run(
        [sys.executable, "-m", "coffea_hpc.cli.app", "run",
         f"{project / 'code' / 'analysis.py'}:Analysis", "--fileset",
         str(project / "data" / "fileset.json"), "-o", str(out), "--executor", "iterative",
         "--chunksize", "1000", "--retries", "0", *more],
        capture_output=True, text=True, timeout=180, preexec_fn=lambda: os.umask(0o077))


def test_results_in_a_group_directory_are_the_groups(project):
    group_dir = project / "project"
    out = group_dir / "zpeak"
    proc = run_as_analyst(project, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gid = grp.getgrnam(GROUP).gr_gid
    # the group directory is left as it was; the output directory joins its group
    assert stat.S_IMODE(group_dir.stat().st_mode) == 0o2775 and group_dir.stat().st_gid == gid
    assert out.stat().st_gid == gid and out.stat().st_mode & stat.S_ISGID
    for name in ("output.coffea", "report.json", "prepared.json"):
        assert (out / name).stat().st_gid == gid, name
        assert can_read(PEER, out / name), name
        assert not can_read(OUTSIDER, out / name), name
    # the run folder and its key stay the analyst's alone, whatever the directory
    assert stat.S_IMODE((out / ".coffea-hpc").stat().st_mode) == 0o700
    assert stat.S_IMODE((out / ".coffea-hpc" / "key").stat().st_mode) == 0o600
    assert not can_read(PEER, out / ".coffea-hpc" / "key")


def test_checkpoints_and_spilled_partials_stay_private(project):
    out = project / "project" / "failed"
    (project / "code" / "bug").touch()
    try:
        proc = run_as_analyst(project, out, "--reduce", "tree", "--fan-in", "100")
    finally:
        (project / "code" / "bug").unlink()
    assert proc.returncode == 1, proc.stderr[-3000:]
    spilled = list((out / "spill").glob("*.cspill"))
    assert spilled
    assert stat.S_IMODE((out / "spill").stat().st_mode) == 0o700
    for private in (out / "checkpoint.coffea", *spilled):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    assert not can_read(PEER, out / "checkpoint.coffea")
    assert not can_read(PEER, spilled[0])
    assert can_read(PEER, out / "report.json")  # what failed is for the group to see


def test_outside_a_group_directory_results_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        out = output.shared_dir(tmp_path / "a" / "b")
        output.save({"n": 1}, out / "output.coffea")
        output.write_json({"n": 1}, out / "report.json")
        os.umask(0o077)
        strict = output.shared_dir(tmp_path / "c")
        output.save({"n": 1}, strict / "output.coffea")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "output.coffea").stat().st_mode) == 0o644
    assert stat.S_IMODE((out / "report.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(strict.stat().st_mode) == 0o700
    assert stat.S_IMODE((strict / "output.coffea").stat().st_mode) == 0o600


def test_a_private_folder_someone_else_made_is_refused(project, tmp_path):
    from coffea_hpc.errors import UserError

    theirs = tmp_path / "spill"
    theirs.mkdir()
    os.chown(theirs, pwd.getpwnam(PEER).pw_uid, -1)
    with pytest.raises(UserError, match="belongs to another user"):
        output.private_dir(theirs)


STAND_IN_SBATCH = """#!/bin/sh
# sbatch as a login node's answers it: takes the script, prints the job id
echo "$@" >> "$(dirname "$0")/submitted"
echo 4242
"""


def test_submitted_job_scripts_stay_private_while_results_follow_the_umask(project,
                                                                           tmp_path):
    """`coffea-hpc submit` writes OUT/submit (the job script names the account); the job's
    run then writes its results beside it. Under umask 022 in the group's directory the
    results are for everyone the umask lets in; the job script is the analyst's alone."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(STAND_IN_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    out = project / "project" / "batch"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "XDG_STATE_HOME": str(tmp_path / "state")}
    submitted = subprocess.run(
        [sys.executable, "-m", "coffea_hpc.cli.app", "submit",
         f"{project / 'code' / 'analysis.py'}:Analysis", "--fileset",
         str(project / "data" / "fileset.json"), "-o", str(out), "--site", "perlmutter-cpu",
         "--account", "m4242_private"],
        capture_output=True, text=True, timeout=120, env=env,
        preexec_fn=lambda: os.umask(0o022))
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    script = out / "submit" / "driver.sbatch"
    assert str(script) in (bin_dir / "submitted").read_text()  # the job was handed over
    assert "m4242_private" in script.read_text()

    ran = subprocess.run(
        [sys.executable, "-m", "coffea_hpc.cli.app", "run",
         f"{project / 'code' / 'analysis.py'}:Analysis", "--fileset",
         str(project / "data" / "fileset.json"), "-o", str(out), "--executor", "iterative",
         "--chunksize", "1000", "--retries", "0"],
        capture_output=True, text=True, timeout=180, preexec_fn=lambda: os.umask(0o022))
    assert ran.returncode == 0, ran.stderr[-3000:]

    job_files = list((out / "submit").iterdir())
    assert {p.name for p in job_files} >= {"driver.sbatch", "run-options.yaml"}
    assert stat.S_IMODE((out / "submit").stat().st_mode) == 0o700
    for path in job_files:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
        assert not can_read(PEER, path) and not can_read(OUTSIDER, path), path
    for name in ("output.coffea", "report.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
        assert can_read(PEER, out / name) and can_read(OUTSIDER, out / name), name
    assert "m4242_private" not in (out / "report.json").read_text()
