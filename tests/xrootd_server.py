"""Real XRootD servers on localhost for the tests (scripts/local-xrootd.sh), and a server that
accepts connections but never answers."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "local-xrootd.sh"


def xrootd_missing() -> str | None:
    """Why no XRootD server can run here, or None."""
    if shutil.which("xrootd") is None:
        return "xrootd not installed (apt-get install xrootd-server; scripts/test.sh does it " \
               "as root)"
    try:
        import XRootD.client  # noqa: F401
    except ImportError:
        return "the XRootD Python client is not installed (pip install 'coffea-hpc[xrootd]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def served_folder(prefix: str = "coffea-hpc-xrootd-") -> Path:
    """A folder the server's unprivileged user can read (pytest's own are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    return folder


def publish(files: list[Path], base: Path, folder: Path) -> dict[Path, Path]:
    """Copy ``files`` (under ``base``) into ``folder``, readable by everyone; old -> new."""
    out = {}
    for path in files:
        target = folder / path.relative_to(base)
        target.parent.mkdir(parents=True, exist_ok=True)
        for parent in target.parents:
            if parent == folder:
                break
            parent.chmod(0o755)
        shutil.copy2(path, target)
        target.chmod(0o644)
        out[path] = target
    return out


class XRootDServer:
    """``scripts/local-xrootd.sh`` serving ``folder`` on ``port``; stop and start again at
    will (the fault tests do)."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()

    def url(self, path: Path | str) -> str:
        relative = Path(path).relative_to(self.folder) if Path(path).is_absolute() else path
        return f"root://localhost:{self.port}//{relative}"

    def start(self) -> None:
        proc = subprocess.run([str(SCRIPT), "start", str(self.folder), str(self.port)],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"xrootd did not start: {proc.stderr[-2000:]}")

    def stop(self) -> None:
        subprocess.run([str(SCRIPT), "stop", str(self.folder), str(self.port)],
                       capture_output=True, timeout=60, check=False)

    def __enter__(self) -> XRootDServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SilentServer:
    """A TCP listener on localhost that accepts connections and never says a word: what a
    hung storage server looks like to a client."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self._held.append(conn)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._held:
            conn.close()
        self._sock.close()


