"""uproot options as analysts give them, and that they reach preprocessing and the workers
(a server that never answers is given up on after the timeout asked for, on a worker
process too)."""

from __future__ import annotations

import json
import time

import pytest
import uproot

from coffea_hpc.errors import UserError
from coffea_hpc.processing.remote import open_options, parse_uproot_options, read_options


@pytest.mark.parametrize("text", ['{"timeout": 30, "num_workers": 4}',
                                  "{timeout: 30, num_workers: 4}",
                                  "timeout: 30\nnum_workers: 4\n"])
def test_json_and_yaml_give_the_same_options(text):
    assert parse_uproot_options(text) == {"timeout": 30, "num_workers": 4}


def test_options_from_a_file(tmp_path):
    path = tmp_path / "uproot.yaml"
    path.write_text("timeout: 12\nhandler: uproot.source.file.MemmapSource\n")
    options = parse_uproot_options(str(path))
    assert options["timeout"] == 12
    assert open_options("/data/a.root", options)["handler"] is uproot.source.file.MemmapSource


@pytest.mark.parametrize("text, words", [
    ("{timeout: [", "not valid JSON or YAML"),
    ("[1, 2]", "must be a mapping"),
    ("{handler: uproot.NoSuchSource}", "cannot load 'uproot.NoSuchSource'"),
    ("{handler: 3}", "dotted class path"),
])
def test_bad_options_are_one_line_errors(text, words):
    with pytest.raises(UserError, match=words) as info:
        parse_uproot_options(text)
    assert "\n" not in str(info.value)


def test_the_xrootd_timeout_wins_and_is_whole_seconds():
    assert read_options('{timeout: 60}', 2.4) == {"timeout": 2}
    assert read_options(None, 0.2) == {"timeout": 1}
    with pytest.raises(UserError, match="must be positive"):
        read_options(None, 0)


def test_root_urls_get_uprootss_xrootd_source_unless_told_otherwise():
    from uproot.source.xrootd import XRootDSource

    assert open_options("root://host//store/a.root", {})["handler"] is XRootDSource
    assert "handler" not in open_options("/data/a.root", {})
    chosen = open_options("root://host//a.root", {"handler": "uproot.source.fsspec.FSSpecSource"})
    assert chosen["handler"] is uproot.source.fsspec.FSSpecSource


_CLIENT_SETTINGS = """
import json
from XRootD.client import EnvGetInt
from coffea_hpc.processing.remote import open_options
names = ["TimeoutResolution", "ConnectionWindow", "StreamErrorWindow"]
seen = []
for options in ({"timeout": 2}, {}, {"timeout": 500}):
    open_options("root://host//a.root", options)
    seen.append([EnvGetInt(n) for n in names])
print(json.dumps(seen))
"""


@pytest.mark.parametrize("env", [{}, {"XRD_CONNECTIONWINDOW": "7"}])
def test_the_xrootd_client_forgets_a_dead_server_within_a_minute(env):
    """Its defaults refuse a server for 30 minutes once connection retries are spent, which
    would turn a restart of a few seconds into failed chunks; a setting the analyst made in
    the environment stays theirs."""
    pytest.importorskip("XRootD.client")
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _CLIENT_SETTINGS], capture_output=True,
                          text=True, env=os.environ | env, timeout=60, check=True)
    with_2, without, with_500 = json.loads(proc.stdout)
    window = 7 if env else 2
    assert with_2 == [1, window, 2]
    assert without == [15, 7 if env else 120, 60]
    assert with_500 == [1, 7 if env else 120, 60]


@pytest.mark.parametrize("how", ["--xrootd-timeout", "--uproot-options"])
def test_a_silent_server_times_out_on_futures_workers(how, tmp_path, capsys):
    pytest.importorskip("XRootD.client", reason="pip install 'coffea-hpc[xrootd]'")
    from coffea_hpc.cli.app import main
    from tests.xrootd_server import SilentServer

    with SilentServer() as silent:
        url = f"root://localhost:{silent.port}//data/nano.root"
        # preprocessed already: the file is first opened by a worker, to process it
        fileset = tmp_path / "fileset.json"
        fileset.write_text(json.dumps({"d": {"files": {url: {
            "object_path": "Events", "num_entries": 10, "uuid": "u", "steps": [[0, 10]]}}}}))
        timeout = ["--xrootd-timeout", "2"] if how == "--xrootd-timeout" \
            else ["--uproot-options", "{timeout: 2}"]
        started = time.monotonic()
        code = main(["run", "coffea_hpc.examples.dimuon:DimuonProcessor", "-f", str(fileset),
                     "-o", str(tmp_path / "out"), "-e", "futures", "-j", "1", "--retries", "0",
                     "--continue-on-error", *timeout])
        elapsed = time.monotonic() - started
    text = "".join(capsys.readouterr())
    assert code == 0, text
    assert elapsed < 40, f"took {elapsed:.0f} s"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    [failed] = report["failed_chunks"]
    assert failed["file"] == url and "expired" in failed["error"].lower()
    assert report["reads"]["failed_locations"][0]["location"] == url
