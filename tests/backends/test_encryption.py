"""Worker traffic is encrypted and authenticated (Parsl's CurveZMQ), on a real local HTEx.

An encrypted run gives the output an unencrypted one gives (the run's own workers are let
in); its certificates sit in the run's private Parsl directory; and a client that is not the
run's own cannot complete a handshake with the interchange's worker port, whether it speaks
plaintext or CurveZMQ with keys of its own. The unencrypted interchange accepting the same
plaintext client shows the probe can tell the difference.
"""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from coffea_hpc.backends.parsl import LOCAL_LABEL, ParslBackend, local_htex_config
from coffea_hpc.runner import run
from tests.helpers import assert_same

_FAILED = {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
           zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_DISCONNECTED}


def handshake(port: int, server_key: bytes | None = None, timeout: float = 10.0) -> str:
    """``succeeded`` or ``failed``: what a ZMQ client gets from ``127.0.0.1:port``,
    in plaintext, or with CurveZMQ keys of its own when ``server_key`` is given."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if server_key is not None:
        public, secret = zmq.curve_keypair()
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = server_key
    monitor = sock.get_monitor_socket()
    try:
        sock.connect(f"tcp://127.0.0.1:{port}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not monitor.poll(200):
                continue
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return "succeeded"
            if event in _FAILED:
                return "failed"
        return "failed"  # no handshake in time: the server never answered it
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)
        ctx.term()


def _backend(tmp_path: Path, encrypted: bool) -> ParslBackend:
    name = "encrypted" if encrypted else "plain"
    return ParslBackend(local_htex_config(1, tmp_path / name, encrypted=encrypted), workers=1)


def test_an_encrypted_run_gives_the_same_output(fileset, dimuon, tmp_path):
    outputs = {}
    for encrypted in (True, False):
        outcome = run(dimuon, fileset, backend=_backend(tmp_path, encrypted), chunksize=1_500,
                      limit_chunks=1)
        outputs[encrypted] = outcome.output
    assert_same(outputs[True], outputs[False])
    certificates = list((tmp_path / "encrypted").rglob("certificates"))
    assert certificates and not list((tmp_path / "plain").rglob("certificates"))
    assert stat.S_IMODE(certificates[0].stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "encrypted").stat().st_mode) == 0o700


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plaintext"])
def test_only_the_runs_own_workers_can_talk_to_the_interchange(tmp_path, encrypted):
    with _backend(tmp_path, encrypted) as backend:
        executor = backend.dfk.executors[LOCAL_LABEL]
        port = executor.worker_port
        if not encrypted:  # the control: the same probe gets through to a plain interchange
            assert handshake(port) == "succeeded"
            return
        assert handshake(port, timeout=5) == "failed"
        server_key = (Path(executor.cert_dir) / "server.key").read_bytes()
        public = zmq.auth.load_certificate(str(Path(executor.cert_dir) / "server.key"))[0]
        assert public in server_key
        assert handshake(port, server_key=public, timeout=5) == "failed"  # not the run's keys
