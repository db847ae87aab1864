"""NanoEvents forms kept between runs, by the structure of the tree they were derived from.

Deriving the form of a NanoAOD tree (~1,700 branches) through coffea's schema takes ~0.15 s,
and every worker process pays it for the first file it opens: in a small run, a tenth of the
wait for the first chunk, and the analyst iterating on a processor waits for it run after run,
on the same files. A flat tree's form depends only on its structure (the branches' names,
titles and leaf types: `coffea_hpc.processing.events`) and on the code that derives it, so it
is kept under a key made of both:

- the structure's digest;
- the schema class (coffea's own schemas only: a schema of the analyst's may change with no
  version to tell) and its class-level settings, which analysts change at import time
  (``NanoAODSchema.mixins["FatJetPFCands"] = ...``, ``warn_missing_crossrefs``): a run that
  changes them derives the form again;
- the versions of coffea, uproot and awkward.

Entries are JSON (a form is plain data; nothing is unpickled), one file each, in a folder private
to the user (0700, files 0600), written whole under a temporary name and renamed, so that
workers deriving the same form at once never read half of one. A file that does not parse, or
whose key does not match, is a miss. The folder keeps the most recently used entries, a few
hundred kilobytes each.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import tempfile
import time
import types
from pathlib import Path
from typing import Any

__all__ = ["FormCache", "schema_settings"]

log = logging.getLogger(__name__)

_MAX_ENTRIES = 64


class FormCache:
    """Schema output forms by tree structure, in ``directory``."""

    def __init__(self, directory: str | Path, *, max_entries: int = _MAX_ENTRIES) -> None:
        self.directory = Path(directory)
        self.max_entries = max_entries

    def key(self, structure: str, schemaclass: type) -> str | None:
        """The entry of this structure and schema: the structure with the schema's settings
        and the library versions (read afresh, ~0.3 ms: a notebook may change the settings
        between two runs in the same process); None for a schema whose forms are not kept."""
        settings = _settings(schemaclass)
        if settings is None:
            return None
        return hashlib.sha256(f"{structure}\x1e{settings}".encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        """The form kept under ``key`` (from `key`), or None."""
        path = self.directory / f"{key}.json"
        try:
            with open(path, encoding="utf-8") as handle:
                entry = json.load(handle)
            if entry.get("key") != key or not isinstance(entry.get("form"), dict):
                return None
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError) as err:
            log.debug("form cache entry %s unusable: %s", path, err)
            return None
        with contextlib.suppress(OSError):  # a folder that is read-only here: still a hit
            os.utime(path)  # recently used: kept when the folder is pruned
        return entry["form"]

    def put(self, key: str, form: dict[str, Any]) -> None:
        """Keep ``form`` under ``key``; a folder that cannot be written only means no cache."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, temp = tempfile.mkstemp(prefix=".", suffix=".part", dir=self.directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump({"key": key, "form": form}, handle, separators=(",", ":"))
                os.replace(temp, self.directory / f"{key}.json")
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
            self._prune()
        except (OSError, TypeError, ValueError) as err:
            log.debug("form cache %s: not kept (%s)", self.directory, err)

    def _prune(self) -> None:
        """Keep the ``max_entries`` most recently used entries, and drop what a writer killed
        mid-write left (a temporary file an hour old)."""
        entries = []
        for path in self.directory.iterdir():
            with contextlib.suppress(OSError):
                if path.suffix == ".json":
                    entries.append((path.stat().st_mtime, path))
                elif path.suffix == ".part" and path.stat().st_mtime < time.time() - 3600:
                    path.unlink()
        entries.sort()
        for _, path in entries[: max(0, len(entries) - self.max_entries)]:
            with contextlib.suppress(OSError):
                path.unlink()

def schema_settings(schemaclass: type) -> str | None:
    """A digest of the schema's class-level settings and methods (its own and inherited):
    what an analysis changes at import time, or a notebook between two runs. None when one
    of them has no stable description."""
    parts = [f"{schemaclass.__module__}.{schemaclass.__qualname__}"]
    for klass in schemaclass.__mro__:
        if klass is object:
            continue
        for name, value in sorted(vars(klass).items()):
            if name.startswith("__"):
                continue
            described = _describe(value)
            if described is None:
                return None
            parts.append(f"{klass.__qualname__}.{name}={described}")
    return hashlib.sha256("\x1e".join(parts).encode()).hexdigest()


def _settings(schemaclass: type) -> str | None:
    """What, besides the tree, decides the form this schema derives; None for a schema whose
    forms are not kept."""
    import awkward
    import coffea
    import uproot

    if not schemaclass.__module__.startswith("coffea.") \
            or not isinstance(inspect.getattr_static(schemaclass, "behavior", None),
                              classmethod | staticmethod):
        return None
    settings = schema_settings(schemaclass)
    if settings is None:
        return None
    return "\x1e".join([settings, coffea.__version__, uproot.__version__, awkward.__version__])


def _describe(value: Any) -> str | None:
    """A stable text for a class attribute: its data, or which code it is (a method patched
    in changes it)."""
    if isinstance(value, classmethod | staticmethod):
        value = value.__func__
    if isinstance(value, property):
        value = value.fget
    if isinstance(value, types.FunctionType):
        code = value.__code__
        digest = hashlib.sha256(code.co_code + repr(code.co_names).encode()).hexdigest()
        return f"{value.__module__}.{value.__qualname__}:{digest}"
    try:
        return json.dumps(value, sort_keys=True, default=_data)
    except (TypeError, ValueError):
        return None


def _data(value: Any) -> Any:
    if isinstance(value, types.FunctionType):
        return _describe(value)
    if isinstance(value, set | frozenset):
        return sorted(map(str, value))
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(type(value).__name__)
