"""No credential or account name ends up in a log, a report or the terminal.

Globus client credentials and an account name are set in the environment, as on a login
node; then a run on a real local Parsl HTEx, a run that fails, a run on a Globus endpoint
that cannot be reached (the SDK tries to log in with those credentials: the real client, up
to the network boundary) and a dry-run submission. Every file under the output
directories (the private run folders and Parsl's logs included, compressed outputs
decompressed) and everything printed is searched for the values. The account may appear in
one place only: the job script the dry-run was asked to print.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from pathlib import Path

import lz4.frame

from tests.test_signing import ANALYSIS

CLIENT_ID = f"5ec7e75e-{secrets.token_hex(2)}-4c55-9d1e-{secrets.token_hex(6)}"
CLIENT_SECRET = f"gcs-{secrets.token_urlsafe(24)}"
ACCOUNT = f"m{secrets.randbelow(10**6):06d}acct"
ENDPOINT = "11111111-2222-3333-4444-555555555555"


def _readable(path: Path) -> list[bytes]:
    data = path.read_bytes()
    texts = [data]
    if path.suffix == ".coffea":
        start = data.find(b"\x04\x22\x4d\x18")  # the LZ4 frame, after a checkpoint's header
        with contextlib.suppress(RuntimeError):
            texts.append(lz4.frame.decompress(data[max(start, 0):]))
    return texts


def test_no_secret_in_files_or_output(tmp_path, fileset_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "analysis.py").write_text(ANALYSIS)
    (tmp_path / "failing").mkdir()
    (tmp_path / "failing" / "analysis.py").write_text(ANALYSIS)
    (tmp_path / "failing" / "bug").touch()
    env = {**os.environ, "GLOBUS_COMPUTE_CLIENT_ID": CLIENT_ID,
           "GLOBUS_COMPUTE_CLIENT_SECRET": CLIENT_SECRET, "SBATCH_ACCOUNT": ACCOUNT,
           "PBS_ACCOUNT": ACCOUNT, "GLOBUS_SDK_SERVICE_URL_AUTH": "http://127.0.0.1:9/"}

    def start(name: str, *args: str) -> tuple[str, subprocess.Popen[str]]:
        return name, subprocess.Popen([sys.executable, "-m", "coffea_hpc.cli.app", *args],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, env=env, cwd=tmp_path)

    common = ["--fileset", str(fileset_path), "--chunksize", "1500"]
    # concurrently: the Globus login spends its time in the SDK's retries
    procs = dict([
        start("globus", "run", f"{code / 'analysis.py'}:Analysis", *common, "-o",
              str(tmp_path / "globus"), "--site", "globus", "--endpoint", ENDPOINT),
        start("parsl", "run", f"{code / 'analysis.py'}:Analysis", *common, "-o",
              str(tmp_path / "parsl"), "--executor", "parsl", "--workers", "1",
              "--limit-files", "1"),
        start("failed", "run", f"{tmp_path / 'failing' / 'analysis.py'}:Analysis", *common,
              "-o", str(tmp_path / "failed"), "--executor", "iterative", "--retries", "0",
              "--chunksize", "1000"),
        start("submit", "submit", f"{code / 'analysis.py'}:Analysis", "-f", str(fileset_path),
              "-o", str(tmp_path / "submitted"), "--site", "local-slurm", "--account",
              ACCOUNT, "--dry-run"),
    ])
    printed = {}
    for name, proc in procs.items():
        printed[name], _ = proc.communicate(timeout=300)
        printed[name] += f"\n[exit {proc.returncode}]"
    assert procs["parsl"].returncode == 0, printed["parsl"][-3000:]
    assert procs["failed"].returncode == 1, printed["failed"][-3000:]
    assert procs["globus"].returncode != 0, printed["globus"][-3000:]
    assert "error: cannot reach Globus" in printed["globus"], printed["globus"][-3000:]
    assert "Traceback" not in "".join(printed.values())
    assert procs["submit"].returncode == 0, printed["submit"][-3000:]
    assert f"#SBATCH --account={ACCOUNT}" in printed["submit"]  # what the dry-run is for

    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent != code
             and p.parent.name != "failing"]
    assert any(".coffea-hpc" in p.parts for p in files)
    assert any(p.name == "parsl.log" for p in files), "Parsl's logs were searched"
    for value in (CLIENT_ID, CLIENT_SECRET, ACCOUNT):
        leaked = [str(p) for p in files if any(value.encode() in t for t in _readable(p))]
        assert not leaked, f"{value} in {leaked}"
        # the dry-run shows the job's files, which name the account: the script and the
        # job's run options (both written private to the user when submitted for real)
        shown = [name for name, text in printed.items()
                 if value in text.replace(f"#SBATCH --account={ACCOUNT}", "")
                 .replace(f"account: {ACCOUNT}", "")]
        assert not shown, f"{value} printed by {shown}"
