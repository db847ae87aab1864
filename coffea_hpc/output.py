"""Files a run leaves behind, and how they are written.

``output.coffea`` is coffea's own save format (lz4-compressed cloudpickle), so
``coffea.util.load`` and existing plotting scripts read it unchanged. Every file is written
to a temporary name beside it and renamed (`atomic_write`), so a killed driver or a full disk
never leaves half a file or a stray temporary behind, and run directories are created
private to the user (mode 700): they may hold analysis results before publication.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import cloudpickle
import lz4.frame

__all__ = ["OUTPUT_NAME", "REPORT_NAME", "RemoteOutput", "atomic_write", "load", "private_dir",
           "save", "write_json"]

OUTPUT_NAME = "output.coffea"
REPORT_NAME = "report.json"
CHECKPOINT_NAME = "checkpoint.coffea"
PREPARED_NAME = "prepared.json"


@dataclass(frozen=True)
class RemoteOutput:
    """An output too large to bring back, left where it was made (e.g. a Globus endpoint)."""

    location: str
    nbytes: int


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) with owner-only permissions on the last level."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


@contextlib.contextmanager
def atomic_write(path: str | Path, *, mode: int = 0o600) -> Iterator[IO[bytes]]:
    """A file that appears at ``path`` whole, or not at all.

    What is written goes to a temporary file beside ``path`` (created with ``mode``, less
    the umask), is flushed to the disk and renamed over ``path``; if anything fails the
    temporary file is removed and ``path`` keeps what it held. An `OSError` names ``path``
    itself: the one line a full disk gives should say which output, not a temporary name.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as err:
        if err.errno is None or err.filename not in (None, str(tmp)):
            raise  # not this file's, or already named
        raise OSError(err.errno, err.strerror, str(path)) from err


def save(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` in coffea's format, atomically."""
    path = Path(path)
    # coffea.util.save writes exactly this (an lz4 frame around one cloudpickle, through
    # fsspec); written here directly because importing coffea.util (awkward, uproot, fsspec)
    # costs ~0.6 s in every merge task and MPI rank
    with atomic_write(path) as raw, lz4.frame.open(raw, "wb") as out:
        cloudpickle.dump(obj, _SlicedWriter(out))
    return path


class _SlicedWriter:
    """Hands a file big writes in slices.

    Pickle writes a histogram's storage in one call; lz4 would compress it into one block
    as large again, so saving a GB-scale output would cost another GB of memory. Slices keep
    that to a few MiB; what the file holds is the same.
    """

    _SLICE = 4 * 1024**2

    def __init__(self, out: Any) -> None:
        self._out = out

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), self._SLICE):
            self._out.write(view[start:start + self._SLICE])
        return len(view)


def load(path: str | Path) -> Any:
    """Read a file in coffea's format (what ``coffea.util.load`` reads)."""
    with lz4.frame.open(str(path), "rb") as src:
        return cloudpickle.load(src)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as JSON, atomically (a report is read while the run goes on)."""
    path = Path(path)
    text = json.dumps(obj, indent=1, default=_jsonable) + "\n"
    with atomic_write(path) as out:
        out.write(text.encode())
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, set | frozenset | tuple):
        return sorted(obj) if isinstance(obj, set | frozenset) else list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return repr(obj)
