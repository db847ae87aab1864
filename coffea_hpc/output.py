"""Files a run leaves behind, and how they are written.

``output.coffea`` is coffea's own save format (lz4-compressed cloudpickle), so
``coffea.util.load`` and existing plotting scripts read it unchanged. Every file is written
to a temporary name beside it and renamed (`atomic_write`), so a killed driver or a full disk
never leaves half a file or a stray temporary behind.

Results are for sharing, secrets are not. The output directory (`shared_dir`) is created as
the user's umask says, and an existing one keeps its mode, group and setgid bit;
``output.coffea``, ``report.json`` and ``prepared.json`` (``share=True``) follow the umask
too. A group's directory (setgid, as project file systems set them up) says more than a
umask: what is made in it takes its group and is readable by the group as far as the
directory is, even under umask 077. What must stay the user's alone is private
whatever the umask: the run folder ``.coffea-hpc`` (key, lock, certificates), spill folders,
submit scripts (`private_dir`, mode 700) and checkpoints (mode 600).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import cloudpickle
import lz4.frame

__all__ = ["OUTPUT_NAME", "REPORT_NAME", "RemoteOutput", "atomic_write", "load", "private_dir",
           "save", "shared_dir", "write_json"]

OUTPUT_NAME = "output.coffea"
REPORT_NAME = "report.json"
CHECKPOINT_NAME = "checkpoint.coffea"
PREPARED_NAME = "prepared.json"
PARSL_RUN_NAME = "parsl"
"""Parsl's run folder (its logs, the CurveZMQ certificates) in the output directory."""


@dataclass(frozen=True)
class RemoteOutput:
    """An output too large to bring back, left where it was made (e.g. a Globus endpoint)."""

    location: str
    nbytes: int


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) with owner-only permissions on the last level; an
    existing one is made private, and refused if it belongs to someone else (who could
    then read or plant what goes in it)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if hasattr(os, "getuid"):
        st = path.stat()
        if st.st_uid != os.getuid():
            from coffea_hpc.errors import UserError

            raise UserError(f"{path} belongs to another user (uid {st.st_uid}): coffea-hpc "
                            "keeps private files there; remove it or choose another directory")
    os.chmod(path, 0o700)
    return path


def shared_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) for results: as the umask says; inside a group's
    (setgid) directory also open to that group as far as the directory is, with its group and
    setgid bit. An existing directory is left as it is (mode, group, setgid bit)."""
    path = Path(path)
    missing = []
    here = path
    while not here.exists() and here.parent != here:
        missing.append(here)
        here = here.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:  # made by another process meanwhile: it is theirs to set
            continue
        parent = folder.parent.stat().st_mode
        mode = 0o777 & ~_umask()
        if parent & stat.S_ISGID:  # a group's directory: its group may enter, as the parent
            mode |= stat.S_ISGID | (parent & 0o050)
        os.chmod(folder, mode)
    if not path.is_dir():
        path.mkdir()  # the error a file in the way gives
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _shared_mode(folder: Path) -> tuple[int, int | None]:
    """The mode and group of a result written into ``folder``: as the umask allows; in a
    group's (setgid) directory also readable by the group if the directory is, so a strict
    umask does not lock collaborators out of results, and owned by that group."""
    st = folder.stat()
    mode = 0o666 & ~_umask()
    if not st.st_mode & stat.S_ISGID:
        return mode, None
    return mode | (st.st_mode & 0o040), st.st_gid


@contextlib.contextmanager
def atomic_write(path: str | Path, *, mode: int = 0o600,
                 share: bool = False) -> Iterator[IO[bytes]]:
    """A file that appears at ``path`` whole, or not at all.

    What is written goes to a temporary file beside ``path`` (created with ``mode``, less
    the umask; with ``share``, readable as its folder is, see `_shared_mode`), is flushed
    to the disk and renamed over ``path``; if anything fails the temporary file is removed
    and ``path`` keeps what it held. An `OSError` names ``path`` itself: the one line a full
    disk gives should say which output, not a temporary name.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     0o600 if share else mode)
        try:
            if share:
                _share(fd, path.parent)
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


def _share(fd: int, folder: Path) -> None:
    mode, group = _shared_mode(folder)
    if group is not None and os.fstat(fd).st_gid != group:
        with contextlib.suppress(OSError):  # only a member of that group may give it
            os.fchown(fd, -1, group)
    os.fchmod(fd, mode)


def save(obj: Any, path: str | Path, *, share: bool = True) -> Path:
    """Write ``obj`` in coffea's format, atomically; a result to share (`atomic_write`)
    unless ``share`` is false."""
    path = Path(path)
    # coffea.util.save writes exactly this (an lz4 frame around one cloudpickle, through
    # fsspec); written here directly because importing coffea.util (awkward, uproot, fsspec)
    # costs ~0.6 s in every merge task and MPI rank
    with atomic_write(path, share=share) as raw, lz4.frame.open(raw, "wb") as out:
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


def write_json(obj: Any, path: str | Path, *, share: bool = True) -> Path:
    """Write ``obj`` as JSON, atomically (a report is read while the run goes on).

    Written piece by piece as it is encoded: indented JSON is encoded in pure Python, one
    small string per token, and the report of a run over 10^5 files held whole as those
    pieces, then as one string and its bytes, was the driver's largest allocation (~120 MB).
    """
    path = Path(path)
    with atomic_write(path, share=share) as raw:
        out = io.TextIOWrapper(raw, encoding="utf-8")
        try:
            json.dump(obj, out, indent=1, default=_jsonable)
            out.write("\n")
            out.flush()
        finally:
            out.detach()  # atomic_write syncs and closes the file itself
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, set | frozenset | tuple):
        return sorted(obj) if isinstance(obj, set | frozenset) else list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    return repr(obj)
