"""Building NanoEvents for a chunk without redoing per-file work.

coffea's Runner reopens the file, re-derives the form of every branch and re-runs the schema
for each chunk; on real NanoAOD (about 1,500 branches) that costs far more than a light
analysis of the chunk. Everything except the entry range is the same for every chunk of a
file, so a worker keeps a few files open and, per file, the tree, its base form and the
schema's output form; a chunk then only costs a new column mapping and the reconstitution of
the (virtual, so unread) array. The files of a dataset usually have the same branches, so
the forms of a flat tree are also kept by the tree's structure, and the next file of that
structure only has its tree read (on NanoAOD: ~0.45 s to read the tree, ~0.15 s to derive
the forms, ~0.02 s to check the structure). Given a `FormCache`, those forms are also kept
between runs, and a worker's first file of a known structure only has its tree read too.

What a worker keeps must not grow with the number of files it has seen: a job of many small
files passes thousands through one worker. So the open files are a small LRU, a file leaving
it is closed and its forms dropped, and uproot's per-file array cache is off (see
`EventsBuilder`). A closed file's model of its tree is reference cycles that only the cyclic
collector frees; `EventsBuilder.closed` counts closed files so that the worker can collect
them (`coffea_hpc.processing.worker`).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import awkward as ak
import numpy as np
import uproot
from coffea.nanoevents import NanoEventsFactory
from coffea.nanoevents.mapping.uproot import TrivialUprootOpener, UprootSourceMapping
from coffea.nanoevents.schemas.base import BaseSchema
from coffea.nanoevents.util import tuple_to_key
from uproot.models.TTree import Model_TTree_NumEntries

from coffea_hpc.data.chunks import Chunk
from coffea_hpc.errors import FilesetError, UserError
from coffea_hpc.processing.formcache import FormCache, schema_settings
from coffea_hpc.processing.remote import open_options

__all__ = [
    "BadFileError",
    "EventsBuilder",
    "NoReadableLocationError",
    "open_tree",
    "read_tree_header",
]

log = logging.getLogger(__name__)


class BadFileError(OSError):
    """A file that cannot be opened, or lacks the tree it should have.

    A subclass of `OSError`, so ``--skip-bad-files`` (continue on `OSError`) covers it.
    """


class NoReadableLocationError(BadFileError):
    """Every location of a file (its path and its replicas) failed to open or to read.

    ``attempts`` holds ``(location, error)`` for each location tried, in order. Like any
    `BadFileError` it is an `OSError`: an I/O failure, told apart from the processor's own
    exceptions.
    """

    def __init__(self, path: str, attempts: tuple[tuple[str, str], ...]) -> None:
        self.path = path
        self.attempts = tuple(attempts)
        tried = "; ".join(f"{loc}: {msg}" for loc, msg in self.attempts)
        super().__init__(f"no location of {path!r} could be read ({tried})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.attempts))


def _describe_error(err: BaseException) -> str:
    return str(err) if isinstance(err, BadFileError) else f"{type(err).__name__}: {err}"


def open_tree(path: str, treename: str, uproot_options: dict[str, Any] | None = None) -> Any:
    """Open ``path`` and return its tree, with one-line errors for the usual failures."""
    handle = _open_file(path, uproot_options)
    return _get_tree(handle, path, treename)


def read_tree_header(
    path: str, treename: str, uproot_options: dict[str, Any] | None = None
) -> tuple[int, str]:
    """The tree's entry count and the file's uuid, without reading the tree's branches.

    Chunking needs only these two numbers, but reading a tree the usual way deserialises
    every TBranch: about 0.8 s for NanoAOD's ~1,700 branches against a few milliseconds for
    the header, with uproot's own reader for ``uproot.num_entries``. Anything else at
    ``treename`` (a TTree subclass such as TNtuple, memberwise streaming, no such key) is read
    the usual way, which also words the errors.
    """
    options = dict(uproot_options or {})
    options["custom_classes"] = {**uproot.classes, "TTree": Model_TTree_NumEntries}
    handle = _open_file(path, options)
    try:
        header = handle[treename]
        if isinstance(header, Model_TTree_NumEntries):
            return int(header.all_members["fEntries"][0]), str(handle.file.uuid)
    except OSError as err:  # the storage failed: reading the tree would wait for it again
        raise BadFileError(f"cannot read {path!r}: {type(err).__name__}: {err}") from None
    except Exception as err:  # the usual read below says what is wrong
        log.debug("reading the header of %s:%s: %s", path, treename, err)
    finally:
        handle.close()
    return _header_from_tree(path, treename, uproot_options)


def _header_from_tree(
    path: str, treename: str, uproot_options: dict[str, Any] | None
) -> tuple[int, str]:
    tree = open_tree(path, treename, uproot_options)
    try:
        return int(tree.num_entries), str(tree.file.uuid)
    finally:
        tree.file.close()


def _open_file(path: str, uproot_options: dict[str, Any] | None) -> Any:
    options = open_options(path, uproot_options)
    try:
        return uproot.open(path, **options)
    except UserError:
        raise
    except FileNotFoundError:
        raise BadFileError(f"cannot open {path!r}: no such file") from None
    except Exception as err:
        raise BadFileError(f"cannot open {path!r}: {type(err).__name__}: {err}") from None


def _get_tree(handle: Any, path: str, treename: str) -> Any:
    try:
        tree = handle[treename]
    except KeyError:
        present = sorted({k.split(";")[0] for k in handle.keys(recursive=False)})
        handle.close()
        raise BadFileError(
            f"{path!r} has no tree {treename!r} (it has: {', '.join(present) or 'nothing'})"
        ) from None
    if not isinstance(tree, uproot.behaviors.TTree.TTree):
        handle.close()
        raise BadFileError(f"{path!r}: {treename!r} is a {type(tree).__name__}, not a TTree")
    return tree


@dataclass
class _OpenFile:
    tree: Any
    uuid: str
    forms: dict[type, tuple[ak.forms.Form, dict[str, Any], BaseSchema | type[BaseSchema]]]
    location: str
    baskets: dict[str, tuple[np.ndarray, np.ndarray] | None] = field(default_factory=dict)
    """Per branch: the first entry of each basket (and the end) and its compressed bytes."""


class _ChunkSchema:
    """The per-file schema, seen with one chunk's metadata; what NanoEventsFactory reads."""

    def __init__(self, form: ak.forms.Form, metadata: dict[str, Any],
                 schema: BaseSchema | type[BaseSchema]):
        self.form = form.copy(parameters={**form.parameters, "metadata": metadata})
        self._schema = schema

    def behavior(self) -> Any:
        return self._schema.behavior()


class EventsBuilder:
    """Per-process builder of chunk events, keeping up to ``max_open_files`` files open.

    Files are opened without uproot's array cache (unless ``uproot_options`` asks for one):
    by default every open file keeps up to 100 MB of the arrays read from it, but each chunk
    is a new entry range, read once, so that cache only ever held arrays nobody reads again,
    and with a closed file it became garbage that waits for the cyclic collector.
    """

    def __init__(self, *, max_open_files: int = 4, uproot_options: dict[str, Any] | None = None,
                 form_cache: FormCache | None = None):
        self.max_open_files = max_open_files
        self.form_cache = form_cache
        """Forms kept between runs (`coffea_hpc.processing.formcache`), or None."""
        self.uproot_options = dict(uproot_options or {})
        self._open_options = {"array_cache": None, **self.uproot_options}
        self._files: OrderedDict[tuple[str, str], _OpenFile] = OrderedDict()
        self._shared_forms: OrderedDict[tuple[str, type], tuple[Any, ...]] = OrderedDict()
        """Forms of flat trees by their structure (`_flat_structure`), for the next file."""
        self._schema_settings: dict[type, str | None] = {}
        """The settings each schema's forms here were derived under (`use_schema`)."""
        self.failed: list[tuple[str, str, str]] = []
        """``(path, location, error)`` of locations that failed, for the next result."""
        self.closed = 0
        """Files this builder has closed so far; each left cyclic garbage behind."""

    def events(self, chunk: Chunk, schemaclass: type[BaseSchema],
               access_log: list[str] | None = None,
               exclude: frozenset[str] = frozenset()) -> ak.Array:
        """The chunk's (virtual) events, from the first of its file's locations that opens,
        leaving out the locations in ``exclude`` (they failed a read of this chunk)."""
        entry = self._open(chunk.filename, chunk.treename, chunk.replicas, exclude)
        if chunk.fileuuid and entry.uuid != chunk.fileuuid:
            raise FilesetError(
                f"{entry.location!r} changed since preprocessing (uuid {entry.uuid} is not "
                f"{chunk.fileuuid}); preprocess the fileset again"
            )
        if chunk.entrystop > entry.tree.num_entries:
            raise FilesetError(
                f"{chunk.describe()} is past the end of the tree ({entry.tree.num_entries} "
                "entries); preprocess the fileset again"
            )
        form, base_metadata, schema = self._form(entry, schemaclass)
        mapping = UprootSourceMapping(
            TrivialUprootOpener({entry.uuid: entry.location},
                                open_options(entry.location, self.uproot_options)),
            chunk.entrystart,
            chunk.entrystop,
            cache={},
            access_log=access_log,
            file_handle=entry.tree.file,
            use_ak_forth=True,
            virtual=True,
        )
        mapping.preload_column_source(entry.uuid, entry.tree.object_path, entry.tree)
        key = tuple_to_key(
            (entry.uuid, entry.tree.object_path, f"{chunk.entrystart}-{chunk.entrystop}")
        )
        metadata = {**base_metadata, **chunk.metadata}
        factory = NanoEventsFactory(
            _ChunkSchema(form, metadata, schema), mapping, key, mode="virtual"
        )
        return factory.events()

    def use_schema(self, schemaclass: type[BaseSchema]) -> None:
        """Forget the forms derived under other settings of ``schemaclass``: a notebook may
        change them (a mixin for a collection) between two runs in this process, whose files
        and forms this builder keeps. Called once per batch of chunks (~0.3 ms)."""
        settings = schema_settings(schemaclass)
        if self._schema_settings.get(schemaclass, settings) != settings:
            for entry in self._files.values():
                entry.forms.pop(schemaclass, None)
            for key in [k for k in self._shared_forms if k[1] is schemaclass]:
                del self._shared_forms[key]
        self._schema_settings[schemaclass] = settings

    def close(self) -> None:
        while self._files:
            _, entry = self._files.popitem()
            self._close(entry)
        self._shared_forms.clear()

    def forget(self, path: str, treename: str) -> None:
        """Close a file whose reads failed: its connection may be dead, and a retry must
        open it afresh (possibly elsewhere)."""
        entry = self._files.pop((path, treename), None)
        if entry is not None:
            try:
                self._close(entry)
            except Exception as err:  # closing a dead connection may fail too
                log.debug("closing %s: %s", entry.location, err)

    def location(self, path: str, treename: str) -> str | None:
        """Where the open file ``path`` is read from (None when it is not open)."""
        entry = self._files.get((path, treename))
        return entry.location if entry is not None else None

    def take_failed(self) -> list[tuple[str, str, str]]:
        """``(path, location, error)`` of each location that failed (to open, or to read)
        since the last call, so that the worker's result can report them."""
        failed, self.failed = self.failed, []
        return failed

    def _close(self, entry: _OpenFile) -> None:
        entry.forms.clear()  # the schema and forms are freed now, not at the next collection
        entry.tree.file.close()
        self.closed += 1

    def bytes_read(self, path: str, treename: str) -> int:
        """Bytes fetched so far from the open file's storage (0 when it is not open): the
        difference across a chunk is what the chunk read."""
        entry = self._files.get((path, treename))
        if entry is None:
            return 0
        source = entry.tree.file.source
        source = getattr(source, "fallback", None) or source
        return int(getattr(source, "num_requested_bytes", 0))

    def column_bytes(self, chunk: Chunk, columns: list[str]) -> dict[str, int]:
        """Compressed bytes of the baskets of each column that the chunk's entries overlap,
        from the tree's metadata (baskets embedded in the tree's own record are left out)."""
        entry = self._files.get((chunk.filename, chunk.treename))
        if entry is None:
            return {}
        out = {}
        for name in columns:
            index = entry.baskets.get(name, False)
            if index is False:
                index = entry.baskets[name] = _basket_index(entry.tree, name)
            if index is None:
                continue
            starts, sizes = index
            first = max(int(np.searchsorted(starts, chunk.entrystart, side="right")) - 1, 0)
            last = int(np.searchsorted(starts, chunk.entrystop, side="left"))
            out[name] = int(sizes[first:last].sum())
        return out

    def tree(self, path: str, treename: str, replicas: tuple[str, ...] = ()) -> Any:
        """The open tree, from the cache (preprocessing with cluster alignment uses it, so a
        worker that inspected a file and then processes it opens it once)."""
        return self._open(path, treename, replicas).tree

    def header(self, path: str, treename: str,
               replicas: tuple[str, ...] = ()) -> tuple[int, str, str]:
        """Entries, uuid and the location read: from the cache when the file is open, else
        `read_tree_header` at the first location that answers.

        Inspection does not fill the cache: which worker later processes a file is the
        executor's choice, so a tree read during inspection would mostly be read again.
        """
        entry = self._files.get((path, treename))
        if entry is not None:
            return int(entry.tree.num_entries), entry.uuid, entry.location
        (entries, uuid), location = self._first_readable(
            path, replicas, frozenset(),
            lambda loc: read_tree_header(loc, treename, self.uproot_options))
        return entries, uuid, location

    def _open(self, path: str, treename: str, replicas: tuple[str, ...] = (),
              exclude: frozenset[str] = frozenset()) -> _OpenFile:
        key = (path, treename)
        entry = self._files.get(key)
        if entry is not None and entry.location not in exclude:
            self._files.move_to_end(key)
            return entry
        if entry is not None:
            self.forget(path, treename)
        tree, location = self._first_readable(
            path, replicas, exclude, lambda loc: open_tree(loc, treename, self._open_options))
        entry = _OpenFile(tree, str(tree.file.uuid), {}, location)
        self._files[key] = entry
        while len(self._files) > self.max_open_files:
            _, old = self._files.popitem(last=False)
            self._close(old)
        return entry

    def _first_readable(self, path: str, replicas: tuple[str, ...], exclude: frozenset[str],
                        read: Any) -> tuple[Any, str]:
        """``read(location)`` at each location in turn, until one works: its result and
        the location. A file without replicas fails with its own error."""
        locations = [loc for loc in (path, *replicas) if loc not in exclude]
        if not replicas:
            try:
                return read(path), path
            except OSError as err:
                self.failed.append((path, path, _describe_error(err)))
                raise
        attempts: list[tuple[str, str]] = []
        for loc in locations:
            try:
                return read(loc), loc
            except OSError as err:
                message = _describe_error(err)
                log.info("reading %s: %s; trying its next location", loc, message)
                attempts.append((loc, message))
                self.failed.append((path, loc, message))
        raise NoReadableLocationError(path, tuple(attempts))

    def _form(
        self, entry: _OpenFile, schemaclass: type[BaseSchema]
    ) -> tuple[ak.forms.Form, dict[str, Any], BaseSchema | type[BaseSchema]]:
        cached = entry.forms.get(schemaclass)
        if cached is not None:
            return cached
        structure = _flat_structure(entry.tree)
        shared = self._shared_forms.get((structure, schemaclass)) if structure else None
        if shared is not None:  # another file of the same branches, types and titles
            self._shared_forms.move_to_end((structure, schemaclass))
            entry.forms[schemaclass] = shared
            return shared
        cache = self.form_cache if structure else None
        key = cache.key(structure, schemaclass) if cache is not None else None
        kept = cache.get(key) if cache is not None and key is not None else None
        if kept is not None:  # derived by an earlier run (or worker) from the same structure
            try:
                form = ak.forms.from_dict(kept)
            except Exception as err:  # not a form after all: derived again, and kept anew
                log.debug("kept form for %s unusable: %s", entry.location, err)
            else:
                return self._keep(entry, structure, schemaclass, form, schemaclass)
        with warnings.catch_warnings(record=True) as seen:
            # coffea warns per unreadable branch, and the NanoAOD schema per cross-reference
            # a skimmed file dropped (``Muon_jetIdx``...): every worker, for every file, on
            # the terminal of the run. They change nothing (the branch or reference is
            # left out, as coffea would) and go to the debug log, once per file
            warnings.simplefilter("always")
            base_form = UprootSourceMapping._extract_base_form(entry.tree)
            base_form["typenames"] = entry.tree.typenames()
            base_form.setdefault("parameters", {})["metadata"] = {}
            schema = schemaclass(base_form)
            form = ak.forms.from_dict(schema.form)
        for message in dict.fromkeys(str(w.message) for w in seen):
            log.debug("%s: %s", entry.location, message)
        if cache is not None and key is not None:
            cache.put(key, schema.form)
        return self._keep(entry, structure, schemaclass, form, schema)

    def _keep(self, entry: _OpenFile, structure: str | None, schemaclass: type[BaseSchema],
              form: ak.forms.Form, schema: BaseSchema | type[BaseSchema],
              ) -> tuple[ak.forms.Form, dict[str, Any], BaseSchema | type[BaseSchema]]:
        base_metadata = dict(form.parameters.get("metadata") or {})
        entry.forms[schemaclass] = (form, base_metadata, schema)
        if structure:
            self._shared_forms[(structure, schemaclass)] = entry.forms[schemaclass]
            while len(self._shared_forms) > self.max_open_files:
                self._shared_forms.popitem(last=False)
        return entry.forms[schemaclass]


_PLAIN_LEAVES = frozenset({"TLeafB", "TLeafS", "TLeafI", "TLeafL", "TLeafG", "TLeafF",
                           "TLeafD", "TLeafO"})


def _flat_structure(tree: Any) -> str | None:
    """What a flat tree's NanoEvents form is made of: its title and, per branch, the name,
    title and leaves (type, dimensions, signedness). Files of a dataset usually share it,
    and then the form and schema derived for one serve them all (deriving them is a fifth
    of opening a NanoAOD file: ~0.15 s for 1,700 branches). None for a tree with anything
    else (split objects, compressed floats), whose form is always derived from the file."""
    parts = [str(tree.title)]
    for branch in tree.itervalues(recursive=True):
        if branch.classname != "TBranch" or len(branch.branches):
            return None
        parts.append(f"{branch.name}\x1f{branch.title}")
        for leaf in branch.member("fLeaves"):
            if leaf.classname not in _PLAIN_LEAVES:
                return None
            parts.append(f"{leaf.classname}\x1f{leaf.member('fTitle')}\x1f"
                         f"{leaf.member('fLen')}\x1f{leaf.member('fIsUnsigned')}")
    return hashlib.sha256("\x1e".join(parts).encode()).hexdigest()


def _basket_index(tree: Any, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        branch = tree[name]
        n = branch._num_normal_baskets  # uproot's count; embedded ones would need a read
        starts = np.asarray(branch.member("fBasketEntry")[: n + 1], dtype=np.int64)
        sizes = np.asarray(branch.member("fBasketBytes")[:n], dtype=np.int64)
    except Exception:  # not a branch of this tree (a derived column): nothing to count
        return None
    return starts, sizes
