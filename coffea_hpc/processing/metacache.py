"""What preprocessing learnt about each file, kept between runs.

Opening a remote file costs a round trip or several (and a redirector's lookup); opening
thousands of them is most of a short run's time, and every new run, ``--resume`` or other
chunk size would pay it again. The entries, uuid and cluster boundaries of a file never
change while the file does not, so they are kept in a small SQLite database, keyed by the
file's location and tree, with what identifies the file's content:

- its uuid, when the fileset already gives one (coffea's prepared layout without steps);
- else its size and modification time, asked of the storage with a stat (no open; for
  XRootD one request per file, made concurrently).

A file rewritten in place with the same size and modification time is still caught: each
chunk checks the file's uuid when it is processed and the run says to preprocess again.
The database is private to the user (0600 in a 0700 folder) and holds nothing but these
numbers; a damaged or unreadable database is ignored with a warning, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coffea_hpc.processing.remote import is_xrootd

__all__ = ["FileIdentity", "MetadataCache", "default_cache_path", "stat_file"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    location TEXT NOT NULL,
    treename TEXT NOT NULL,
    size INTEGER,
    mtime INTEGER,
    uuid TEXT NOT NULL,
    entries INTEGER NOT NULL,
    clusters TEXT,
    PRIMARY KEY (location, treename)
)
"""
_STAT_THREADS = 16


def default_cache_path() -> Path:
    """``$COFFEA_HPC_CACHE_DIR/metadata.sqlite``, else under ``$XDG_CACHE_HOME`` (or
    ``~/.cache``) as the XDG base directory rules say."""
    explicit = os.environ.get("COFFEA_HPC_CACHE_DIR")
    if explicit:
        return Path(explicit) / "metadata.sqlite"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "coffea-hpc" / "metadata.sqlite"


@dataclass(frozen=True)
class FileIdentity:
    """What says a file is the one that was inspected: size and modification time."""

    size: int
    mtime: int


@dataclass(frozen=True)
class CachedInfo:
    entries: int
    uuid: str
    cluster_starts: tuple[int, ...] | None


def stat_file(location: str, timeout: int = 30) -> FileIdentity | None:
    """Size and modification time of a local file or an XRootD URL; None when the storage
    cannot say (the file is then inspected, which reports why)."""
    try:
        if is_xrootd(location):
            return _stat_xrootd(location, timeout)
        if "://" in location:
            return None  # other protocols: no cheap, reliable identity
        st = os.stat(location)
        return FileIdentity(st.st_size, st.st_mtime_ns)
    except Exception as err:
        log.debug("stat %s: %s", location, err)
        return None


def _stat_xrootd(url: str, timeout: int) -> FileIdentity | None:
    from XRootD.client import URL, FileSystem

    parsed = URL(url)
    status, info = FileSystem(f"{parsed.protocol}://{parsed.hostid}").stat(
        parsed.path_with_params, timeout=timeout)
    if not status.ok or info is None:
        return None
    return FileIdentity(int(info.size), int(info.modtime))


class MetadataCache:
    """Entries, uuid and cluster boundaries of files already inspected, by location."""

    def __init__(self, path: str | Path | None = None, *, stat_timeout: int = 30) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.stat_timeout = stat_timeout
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is not None:
            return self._db
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
            db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            db.execute(_SCHEMA)
            db.commit()
        except (OSError, sqlite3.Error) as err:
            log.warning("metadata cache %s unusable (%s): preprocessing opens every file",
                        self.path, err)
            return None
        self._db = db
        return db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def lookup(self, files: Iterable[tuple[str, str, str | None]],
               clusters: bool = False) -> dict[tuple[str, str], CachedInfo]:
        """The cached facts for those of ``(location, treename, uuid or None)`` whose
        identity still matches; files not cached, changed, or whose storage cannot be
        stat'ed are left out (and inspected). With ``clusters``, only entries that know
        their cluster boundaries count."""
        db = self._connect()
        wanted = list(files)
        if db is None or not wanted:
            return {}
        rows: dict[tuple[str, str], tuple[Any, ...]] = {}
        try:
            with self._lock:
                for location, treename, _ in wanted:
                    row = db.execute(
                        "SELECT size, mtime, uuid, entries, clusters FROM files "
                        "WHERE location = ? AND treename = ?", (location, treename)).fetchone()
                    if row is not None and (row[4] is not None or not clusters):
                        rows[(location, treename)] = row
        except sqlite3.Error as err:
            log.warning("metadata cache %s unreadable (%s): ignored", self.path, err)
            return {}
        by_uuid = {(loc, tree) for loc, tree, uuid in wanted
                   if uuid and (loc, tree) in rows and rows[(loc, tree)][2] == uuid}
        to_stat = [key for key in rows if key not in by_uuid]
        identities = dict(zip(to_stat, self._stat_all([loc for loc, _ in to_stat]),
                              strict=True))
        out = {}
        for key, (size, mtime, uuid, entries, cl) in rows.items():
            if key not in by_uuid:
                ident = identities[key]
                if ident is None or (ident.size, ident.mtime) != (size, mtime):
                    continue
            out[key] = CachedInfo(int(entries), str(uuid),
                                  tuple(json.loads(cl)) if cl is not None else None)
        return out

    def store(self, infos: Iterable[tuple[str, str, int, str, tuple[int, ...] | None]]) -> None:
        """Remember ``(location, treename, entries, uuid, cluster_starts)`` of files just
        inspected, with their identity as the storage reports it now."""
        rows = list(infos)
        db = self._connect()
        if db is None or not rows:
            return
        identities = self._stat_all([r[0] for r in rows])
        try:
            with self._lock, db:
                db.executemany(
                    "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(loc, tree, ident.size if ident else None, ident.mtime if ident else None,
                      uuid, entries, json.dumps(list(cl)) if cl is not None else None)
                     for (loc, tree, entries, uuid, cl), ident in zip(rows, identities,
                                                                       strict=True)])
        except sqlite3.Error as err:
            log.warning("metadata cache %s not updated (%s)", self.path, err)

    def _stat_all(self, locations: list[str]) -> list[FileIdentity | None]:
        if len(locations) <= 1:
            return [stat_file(loc, self.stat_timeout) for loc in locations]
        with ThreadPoolExecutor(min(_STAT_THREADS, len(locations))) as pool:
            return list(pool.map(lambda loc: stat_file(loc, self.stat_timeout), locations))
