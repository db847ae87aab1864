"""Checkpoints a run can trust, and one run per output directory.

A checkpoint is the running `Result` of a run, written to ``OUT/checkpoint.coffea`` while
chunks come in, so that ``--resume`` processes only what is missing. Resuming must never
make an output wrong, so a checkpoint is used only when

- it is intact and was written for this output directory: it carries an HMAC-SHA256 over
  its bytes, keyed by a secret kept in the directory's private run folder
  (``OUT/.coffea-hpc/key``), checked before a byte of it is unpickled;
- it was produced by the same analysis: the processor, the fileset, the chunking, the
  schema and the coffea-hpc version are recorded in it and compared before any chunk runs.

The file stays readable by ``coffea.util.load``: the checksum and the record sit in an LZ4
*skippable frame* ahead of the usual LZ4 frame, which LZ4 readers pass over.

Checkpoints are written as work gets done, not only as time passes: every 5 % of the chunks
or every ``interval`` seconds, whichever comes first, but never so often that writing them
takes more than a small share of the driver's time.

A checkpoint costs what changed since the last one. After a whole one, a run writes
*updates* (``OUT/.coffea-hpc/updates/GENERATION.N``): the entries of the output that the
chunks since touched (`coffea_hpc.processing.changes`), their trees' ledger and the metrics
they added, signed like the checkpoint and tied to it by its generation. A resume applies
them in order. Once the updates together are as large as the checkpoint, the next one is
whole again and the updates go.

Two runs writing into one output directory would both do all the work and overwrite each
other's checkpoint, so a run holds `OutputLock` on its directory from start to end.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import itertools
import json
import logging
import math
import os
import pickletools
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import cloudpickle
import lz4.frame

from coffea_hpc import output as files
from coffea_hpc._signing import KEY_NAME, RUN_DIR_NAME, RunKey
from coffea_hpc.data.chunks import Chunk
from coffea_hpc.data.fileset import Fileset
from coffea_hpc.data.ranges import EntryRanges
from coffea_hpc.errors import UserError
from coffea_hpc.processing.changes import Changes, OutputPath
from coffea_hpc.processing.processor import ProcessorHandle
from coffea_hpc.processing.result import Result, merge_values

__all__ = [
    "Checkpointer",
    "OutputLock",
    "SavedCheckpoint",
    "chunks_digest",
    "fileset_digest",
    "open_checkpoint",
    "processor_digest",
    "run_dir",
    "write_checkpoint",
]

log = logging.getLogger(__name__)

LOCK_NAME = "lock"
UPDATES_NAME = "updates"

_HEADER_SIZE = 4096
_SKIPPABLE_MAGIC = 0x184D2A5C  # an LZ4 skippable frame: LZ4 readers step over it
_MARKER = b"CHPC-CK1"
_TAG_SIZE = 32
_PREFIX = struct.pack("<II", _SKIPPABLE_MAGIC, _HEADER_SIZE - 8) + _MARKER
_RECORD_SIZE = _HEADER_SIZE - len(_PREFIX) - _TAG_SIZE


def run_dir(out_dir: Path) -> Path:
    """The output directory's private folder for what only coffea-hpc reads (key, lock)."""
    return files.private_dir(Path(out_dir) / RUN_DIR_NAME)


# -- what produced a checkpoint ---------------------------------------------------------

_LEAF_OPS = frozenset({
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "INT", "BININT", "BININT1",
    "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "NONE", "NEWTRUE", "NEWFALSE",
})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_SET_OPS = frozenset({"ADDITEMS", "FROZENSET"})
_CLASS_TRACKER = re.compile(r"[0-9a-f]{32}")


def processor_digest(handle: ProcessorHandle) -> str:
    """A digest of the processor that is the same in every process for the same code.

    ``ProcessorHandle.digest`` hashes the payload bytes, which differ between two processes
    for an unchanged analysis file: cloudpickle tags each class it carries by value with a
    random id, sets (a ``frozenset`` constant in the code, a set attribute) pickle in an
    order that depends on the process's string hashing, and an equal string is written
    once and referred to, or written twice, as the process happened to share it. Here the
    payload is read op by op with those ids blanked, memo references to plain values
    replaced by the values, other references numbered among themselves, and the members of
    sets of plain values sorted, so only a change in what the processor is or does changes
    the digest.
    """
    tokens: list[tuple[Any, ...]] = []
    marks: list[int] = []
    memo: dict[int, tuple[Any, ...]] = {}
    objects = 0  # memoized objects that are not plain values, numbered among themselves
    last: tuple[Any, ...] | None = None
    for op, arg, _ in pickletools.genops(handle.payload):
        name = op.name
        if name in ("PROTO", "FRAME", "STOP"):
            continue
        if name == "MEMOIZE" or name in _PUT_OPS:
            index = len(memo) if name == "MEMOIZE" else int(arg)  # type: ignore[arg-type]
            if last is not None and last[0] == "v":
                memo[index] = last
            else:  # not by memo index: a string shared in one process and repeated in
                # another (interning differs) adds a memo entry and shifts every index
                memo[index] = ("get", objects)
                objects += 1
            continue
        if name == "MARK":
            marks.append(len(tokens))
            last = None
            continue
        if name in _LEAF_OPS:
            if isinstance(arg, str) and _CLASS_TRACKER.fullmatch(arg):
                arg = "<class id>"
            token: tuple[Any, ...] = ("v", name, repr(arg))
        elif name in _GET_OPS:
            token = memo.get(int(arg), ("get", arg))  # type: ignore[arg-type]
        else:
            token = (name, repr(arg))
            if pickletools.markobject in op.stack_before and marks:
                start = marks.pop()
                if name in _SET_OPS and all(t[0] == "v" for t in tokens[start:]):
                    tokens[start:] = sorted(tokens[start:])
        tokens.append(token)
        last = token
    return hashlib.sha256(repr(tokens).encode()).hexdigest()[:16]


def fileset_digest(fileset: Fileset) -> str:
    """What the data is: datasets, their metadata, and each file with its uuid and entries;
    not the chunk boundaries (`chunks_digest`), so that a change is named for what it is."""
    record = [
        [ds.name, sorted(ds.metadata.items(), key=lambda kv: str(kv[0])),
         [[f.path, f.treename, f.uuid, f.entries] for f in ds.files]]
        for ds in fileset
    ]
    return _digest(record)


def chunks_digest(chunks: Iterable[Chunk], *, target_seconds: float | None = None) -> str:
    """The chunking's digest; with adaptive chunking (``target_seconds``), that of the
    ranges the fixed chunks cover and the target: the chunks themselves are cut as the run
    goes, and a resume re-cuts what its checkpoint lacks."""
    digest = hashlib.sha256()
    if target_seconds is not None:
        digest.update(b'{"ranges":')
    # the JSON text of the list of keys, hashed a slice at a time: at 10^6 chunks the whole
    # text and its keys held at once were the largest allocation of a run's start (~250 MB)
    digest.update(b"[")
    keys = (chunk.key for chunk in chunks)
    separator = b""
    while batch := list(itertools.islice(keys, _DIGEST_BATCH)):
        digest.update(separator + _json(batch)[1:-1].encode())  # the items, no brackets
        separator = b","
    digest.update(b"]")
    if target_seconds is not None:
        digest.update(f',"target_chunk_seconds":{_json(float(target_seconds))}}}'.encode())
    return digest.hexdigest()[:16]


_DIGEST_BATCH = 10_000


def _json(record: Any) -> str:
    return json.dumps(record, sort_keys=True, default=repr, separators=(",", ":"))


def _digest(record: Any) -> str:
    return hashlib.sha256(_json(record).encode()).hexdigest()[:16]


_CHANGED = {  # what changed, how, and how to resume anyway
    "version": ("coffea-hpc", "version {old} → {new}", "with coffea-hpc {old}"),
    "processor": ("the processor", "processor digest {old} → {new}",
                  "with the original processor"),
    "schema": ("the schema", "--schema {old} → {new}", "with --schema {old}"),
    "fileset": ("the fileset", "its datasets, files, their uuids or metadata, or "
                "--limit-files; fileset digest {old} → {new}", "with the original fileset"),
    "chunks": ("the chunking", "",
               "with the original --chunksize, --target-chunk-seconds, --limit-chunks and "
               "--align-clusters"),
}


def _changes(saved: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """One line naming everything in ``now`` that differs from what wrote a checkpoint."""
    what, how, remedy = [], [], []
    for name, (noun, detail, fix) in _CHANGED.items():
        if name not in now or saved.get(name) == now[name]:
            continue
        if (name == "chunks" and saved.get("fileset") != now.get("fileset")
                and saved.get("chunking") == now.get("chunking")):
            continue  # other files, other chunks: the fileset said it
        old, new = saved.get(name), now[name]
        what.append(noun)
        how.append(_describe_chunking(saved, now) if name == "chunks"
                   else detail.format(old=old, new=new))
        remedy.append(fix.format(old=old))
    if not what:
        return None
    nouns = what[0] if len(what) == 1 else f"{', '.join(what[:-1])} and {what[-1]}"
    return (f"{nouns} changed since the checkpoint was written ({'; '.join(how)}): rerun "
            f"without --resume, or resume {' and '.join(remedy)}")


def _describe_chunking(saved: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    old = saved.get("chunking") or {}
    new = now.get("chunking") or {}

    def shown(value: Any) -> Any:
        return "unset" if value is None else value

    changed = [f"--{k.replace('_', '-')} {shown(old.get(k))} → {shown(new.get(k))}"
               for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(changed) or f"chunk list {saved.get('chunks')} → {now.get('chunks')}"


# -- the file ----------------------------------------------------------------------------


def _key(out_dir: Path, *, create: bool) -> bytes | None:
    key = RunKey.of(out_dir, create=create)
    return None if key is None else key.secret


def _naming(err: OSError, path: Path) -> OSError:
    """``err`` as it should reach the user: naming the file meant, not a temporary one."""
    if err.errno is None:
        return err
    return OSError(err.errno, err.strerror, str(path))


class _Hashing:
    """A file object that hashes what passes through it on its way to ``raw``."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def write(self, data: Any) -> int:
        self.sha.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _tag(key: bytes, record: bytes, payload_sha: bytes) -> bytes:
    return hmac.new(key, _PREFIX + record + payload_sha, hashlib.sha256).digest()


def write_checkpoint(result: Result, path: Path, provenance: Mapping[str, Any], *,
                     generation: str | None = None) -> Path:
    """Write ``result`` to ``path`` atomically, with ``provenance`` and the checksum that
    makes it trustworthy to `open_checkpoint` (and only there: a copy in another output
    directory has another key). ``generation`` names it for the updates that follow it."""
    path = Path(path)
    _write_signed(result, path, key_dir=path.parent, record={
        "provenance": dict(provenance), "entries": result.processed.n_entries,
        "generation": generation or uuid.uuid4().hex})
    return path


@dataclass
class _Update:
    """What changed since the checkpoint or update before: the output's entries touched
    (their totals, set in place), the ledger of the trees extended, the metrics added."""

    values: list[tuple[OutputPath, Any]]
    trees: EntryRanges
    metrics: dict[str, Any]


def _updates_dir(checkpoint: Path) -> Path:
    return checkpoint.parent / RUN_DIR_NAME / UPDATES_NAME


def _write_signed(payload: Any, path: Path, *, key_dir: Path, record: dict[str, Any]) -> int:
    """Write ``payload`` with its signed header; returns the bytes written."""
    key = _key(key_dir, create=True)
    assert key is not None
    record["written"] = datetime.now(timezone.utc).isoformat()
    text = json.dumps(record).encode()
    if len(text) > _RECORD_SIZE:
        raise ValueError(f"checkpoint record too long ({len(text)} bytes)")
    text = text.ljust(_RECORD_SIZE)
    with files.atomic_write(path) as raw:
        raw.write(bytes(_HEADER_SIZE))  # the header, once the payload's hash is known
        hashing = _Hashing(raw)
        with lz4.frame.open(hashing, "wb") as out:
            cloudpickle.dump(payload, files._SlicedWriter(out))
        raw.seek(0)
        raw.write(_PREFIX + _tag(key, text, hashing.sha.digest()) + text)
        size = raw.seek(0, os.SEEK_END)
    return size


@dataclass
class SavedCheckpoint:
    """A checkpoint whose checksum is verified; its result is unpickled only by `load`,
    once `check` found it was made by the same analysis."""

    path: Path
    provenance: dict[str, Any]
    entries: int
    _file: IO[bytes] = field(repr=False)
    generation: str | None = None
    """Names the checkpoint for its updates; and, for an update, which it follows."""
    update: int | None = None
    """For an update, its place in the order."""
    updates: list[tuple[Path, IO[bytes]]] = field(default_factory=list, repr=False)
    """The updates written after it, in order, verified as it was."""

    def check(self, now: Mapping[str, Any]) -> None:
        """Raise `UserError` naming, in one line, everything in ``now`` that differs from
        what wrote the checkpoint."""
        changes = _changes(self.provenance, now)
        if changes is not None:
            self.close()
            raise UserError(changes)

    def load(self, *, spills: RunKey | None = None) -> Result:
        """The result; with ``spills``, the partials it refers to (spill files) are checked
        to be signed with that key before the run relies on them."""
        try:
            loaded = _unpickle(self._file)
            if not isinstance(loaded, Result):  # verified, so written by a coffea-hpc run
                raise UserError(f"{self.path} is not a coffea-hpc checkpoint")
            for path, src in self.updates:
                update = _unpickle(src)
                if not isinstance(update, _Update):
                    raise UserError(f"{path} is not a coffea-hpc checkpoint update")
                _apply(update, loaded)
        finally:
            self.close()
        if spills is not None:
            from coffea_hpc.errors import MergeError
            from coffea_hpc.reduction.spill import SpilledRef, SpillSet, check_spilled

            value = loaded.value
            refs = (value,) if isinstance(value, SpilledRef) else (
                value.refs if isinstance(value, SpillSet) else ())
            try:
                check_spilled(refs, spills)
            except MergeError as err:
                raise UserError(f"the checkpoint {self.path} refers to a partial that cannot "
                                f"be trusted ({err}): rerun without --resume to start "
                                "afresh") from None
        log.info("resuming from %s (%d entries done)", self.path, loaded.processed.n_entries)
        return loaded

    def close(self) -> None:
        self._file.close()
        for _, src in self.updates:
            src.close()


def _unpickle(src: IO[bytes]) -> Any:
    src.seek(_HEADER_SIZE)
    with lz4.frame.open(src, "rb") as frames:
        return cloudpickle.load(frames)


def _apply(update: _Update, result: Result) -> None:
    for where, value in update.values:
        outer = result.value
        for step in where[:-1]:
            outer = outer[step]
        outer[where[-1]] = value
    result.processed.replace(update.trees)
    result.absorb(Result(metrics=update.metrics))


def open_checkpoint(path: Path | None) -> SavedCheckpoint | None:
    """The checkpoint at ``path`` if there is one, its checksum verified; `UserError` in
    one line if it is damaged or was not written for this output directory."""
    if path is None:
        raise UserError("resuming needs the output directory of the interrupted run")
    path = Path(path)
    try:
        src = open(path, "rb")  # noqa: SIM115 - stays open until `load`: what was verified
    except FileNotFoundError:
        log.info("no checkpoint in %s: starting from the beginning", path.parent)
        return None
    try:
        saved = _verified(src, path)
    except BaseException:
        src.close()
        raise
    try:
        _open_updates(saved)
    except BaseException:
        saved.close()
        raise
    return saved


def _open_updates(saved: SavedCheckpoint) -> None:
    generation = saved.generation
    folder = _updates_dir(saved.path)
    if generation is None or not folder.is_dir():
        return
    numbered: dict[int, Path] = {}
    for item in folder.iterdir():
        name, _, number = item.name.partition(".")
        if name == generation and number.isdigit():
            numbered[int(number)] = item
    for n in range(1, len(numbered) + 1):
        if n not in numbered:
            raise UserError(f"checkpoint update {folder / f'{generation}.{n}'} is missing "
                            f"(later ones are there): rerun without --resume to start afresh")
        src = open(numbered[n], "rb")  # noqa: SIM115 - stays open until `load`
        try:
            record = _verified(src, numbered[n], what="checkpoint update",
                               key_dir=saved.path.parent)
        except BaseException:
            src.close()
            raise
        saved.updates.append((numbered[n], src))
        if record.generation != generation or record.update != n:
            raise UserError(f"checkpoint update {numbered[n]} is damaged (it names another "
                            "checkpoint): rerun without --resume to start afresh")
        saved.entries = record.entries


def _verified(src: IO[bytes], path: Path, *, what: str = "checkpoint",
              key_dir: Path | None = None) -> SavedCheckpoint:
    def damaged(why: str) -> UserError:
        return UserError(f"{what} {path} is damaged ({why}): rerun without --resume to "
                         "start afresh")

    header = src.read(_HEADER_SIZE)
    if len(header) < _HEADER_SIZE:
        raise damaged("truncated")
    if not header.startswith(_PREFIX):
        raise damaged("not a checkpoint of this coffea-hpc version, or its header is broken")
    key_dir = path.parent if key_dir is None else key_dir
    key = _key(key_dir, create=False)
    if key is None:
        key_path = key_dir / RUN_DIR_NAME / KEY_NAME
        raise UserError(f"{what} {path} cannot be verified (its key {key_path} is "
                        "missing): rerun without --resume to start afresh")
    tag = header[len(_PREFIX):len(_PREFIX) + _TAG_SIZE]
    record = header[len(_PREFIX) + _TAG_SIZE:]
    sha = hashlib.sha256()
    for block in iter(lambda: src.read(1 << 20), b""):
        sha.update(block)
    if not hmac.compare_digest(tag, _tag(key, record, sha.digest())):
        raise damaged("checksum mismatch")
    meta = json.loads(record)  # verified: written by this directory's runs
    return SavedCheckpoint(path, meta["provenance"], meta["entries"], src,
                           meta.get("generation"), meta.get("update"))


# -- when to write -------------------------------------------------------------------------


@dataclass
class Checkpointer:
    """Writes the running result to disk as work gets done.

    A checkpoint is due after ``fraction`` of the run's chunks, or ``interval`` seconds,
    whichever comes first, once there is new work to save; and never sooner than
    ``min_spacing`` seconds, nor than twenty times the last write took, so that writing
    checkpoints costs at most a few percent of the driver's time however large they are.

    The first is whole; then, while the task tells what changed (``take_changes``) and the
    output is a mapping, updates follow it, until they add up to its size.
    """

    path: Path | None
    interval: float = 60.0
    fraction: float = 0.05
    min_spacing: float = 1.0
    base: Result = field(default_factory=Result)
    provenance: dict[str, Any] = field(default_factory=dict)
    discard: Callable[[list[Any]], None] = field(default=lambda values: None)
    _last: float = field(default_factory=time.monotonic)
    _last_done: int = 0
    _cost: float = 0.0
    _generation: str | None = None
    """The whole checkpoint this run wrote last, while updates may follow it."""
    _updates: int = 0
    _whole_bytes: int = 0
    _update_bytes: int = 0
    _saved_keys: frozenset[Any] = frozenset()
    """The output's keys as last saved: an update sets entries inside those in place."""
    _base_counted: tuple[EntryRanges, int] | None = None
    """``base``'s ledger and its entries, counted once (a walk over every file)."""

    def _base_entries(self) -> int:
        if self._base_counted is None or self._base_counted[0] is not self.base.processed:
            self._base_counted = (self.base.processed, self.base.processed.n_entries)
        return self._base_counted[1]

    def due(self, done: int, total: int) -> bool:
        if done <= self._last_done:
            return False
        since = time.monotonic() - self._last
        if since >= self.interval:
            return True
        step = max(1, math.ceil(total * self.fraction))
        return done - self._last_done >= step and since >= max(self.min_spacing,
                                                               20 * self._cost)

    def tick(self, task: Any) -> None:
        progress = task.progress()
        if not self.due(progress.done, progress.total):
            return
        garbage = getattr(task, "take_garbage", list)()
        take_changes = getattr(task, "take_changes", None)
        if self.path is not None:
            current = getattr(task, "current_result", None)  # no copy, no remaining work
            partial = current() if current is not None else task.partial_result()[0]
            changes = take_changes() if take_changes is not None else None  # after `current`
            if changes is None or not self.write_update(partial, changes):
                self.write(partial)
        else:
            if take_changes is not None:
                take_changes()  # nothing keeps them
            self._last = time.monotonic()
        self._last_done = progress.done
        # merged-away partials go only once a checkpoint no longer refers to them
        self.discard(garbage)

    def write(self, partial: Result) -> None:
        if self.path is None or (partial.is_empty and self.base.is_empty):
            return
        self.write_total(self.base + partial)

    def write_total(self, total: Result) -> None:
        """Checkpoint a total that already includes ``base`` (the end of a run)."""
        if self.path is None:
            return
        started = time.monotonic()
        self._generation = None  # were this to fail, no update may follow the old one
        generation = uuid.uuid4().hex
        write_checkpoint(total, self.path, self.provenance, generation=generation)
        self._generation, self._updates, self._update_bytes = generation, 0, 0
        self._whole_bytes = self.path.stat().st_size
        value = total.value
        self._saved_keys = frozenset(value) if isinstance(value, Mapping) else frozenset()
        self._remove_updates(keep=generation)
        self._wrote(started, "checkpoint written to %s (%.2f s)", self.path)

    def write_update(self, partial: Result, changes: Changes) -> bool:
        """Write what ``changes`` says changed of ``base + partial``, if an update can say
        it; False if the next checkpoint must be whole."""
        base, value = self.base.value, partial.value
        if (self.path is None or self._generation is None or changes.unknown
                or self._update_bytes >= self._whole_bytes
                or not isinstance(base, Mapping | None)
                or not isinstance(value, Mapping | None)
                or (base is None and value is None)):
            return False
        started = time.monotonic()
        trees = partial.processed.of_trees(changes.trees)
        if self.base.processed:  # resumed: the trees' ranges from before, too
            trees = self.base.processed.of_trees(changes.trees) + trees
        update = _Update(self._entries_changed(base, value, changes.paths), trees,
                         changes.metrics.metrics)
        number = self._updates + 1
        generation, self._generation = self._generation, None
        try:
            path = files.private_dir(_updates_dir(self.path)) / f"{generation}.{number}"
            self._update_bytes += _write_signed(update, path, key_dir=self.path.parent, record={
                "provenance": dict(self.provenance), "generation": generation,
                "update": number,
                "entries": self._base_entries() + partial.processed.n_entries})
        except OSError as err:  # a full disk: named as the checkpoint, which the user knows
            raise _naming(err, self.path) from err
        self._generation, self._updates = generation, number
        self._saved_keys = self._saved_keys | {*(value or ())}
        self._wrote(started, "checkpoint update written to %s (%.2f s)", path)
        return True

    def _entries_changed(self, base: Mapping[Any, Any] | None, value: Mapping[Any, Any] | None,
                         paths: set[OutputPath]) -> list[tuple[OutputPath, Any]]:
        """The totals of the entries at ``paths``, in the output's order; an entry new
        since the last save is written whole."""
        whole: set[Any] = set()
        inner: dict[Any, set[Any]] = {}
        for where in paths:
            if len(where) == 1 or where[0] not in self._saved_keys:
                whole.add(where[0])
            else:
                inner.setdefault(where[0], set()).add(where[1])
        out: list[tuple[OutputPath, Any]] = []
        for key in _keys(base, value):
            if key in whole:
                out.append(((key,), _total(base, value, key)))
            elif key in inner:
                below_base = None if base is None else base.get(key)
                below = None if value is None else value.get(key)
                out.extend(((key, name), _total(below_base, below, name))
                           for name in _keys(below_base, below) if name in inner[key])
        return out

    def _wrote(self, started: float, message: str, path: Path) -> None:
        self._last = time.monotonic()
        self._cost = self._last - started
        log.info(message, path, self._cost)

    def _remove_updates(self, keep: str | None = None) -> None:
        assert self.path is not None
        with contextlib.suppress(FileNotFoundError):
            for item in _updates_dir(self.path).iterdir():
                if keep is None or not item.name.startswith(f"{keep}."):
                    with contextlib.suppress(FileNotFoundError):
                        item.unlink()

    def clear(self) -> None:
        """The run is complete: its checkpoint and updates go."""
        if self.path is None:
            return
        self.path.unlink(missing_ok=True)
        self._remove_updates()
        self._generation = None


def _keys(base: Mapping[Any, Any] | None, value: Mapping[Any, Any] | None) -> list[Any]:
    """The keys of ``base + value`` in the order the sum has them."""
    keys = list(base or ())
    if value:
        keys.extend(key for key in value if base is None or key not in base)
    return keys


def _total(base: Mapping[Any, Any] | None, value: Mapping[Any, Any] | None, key: Any) -> Any:
    return merge_values(None if base is None else base.get(key),
                        None if value is None else value.get(key))


# -- one run per output directory -----------------------------------------------------------

_HELD: set[tuple[int, int]] = set()
"""Output directories (device, inode) this process holds: a lock is per process."""
_HELD_LOCK = threading.Lock()


class OutputLock:
    """Holds ``OUT/.coffea-hpc/lock`` for a run: a second run into the same directory is
    refused at once, before it does any work.

    The lock file names its owner (host, pid, start time) for the message. It is held with
    ``flock``, which the kernel drops when the owner dies however it dies, so a lock left by
    a killed run on this host is taken over (and the log says so). On a file system without
    ``flock``, an owner on this host counts as gone when its pid is. A lock from another host
    is never taken over: whether that run is alive cannot be told from here.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / RUN_DIR_NAME / LOCK_NAME
        self._fd: int | None = None
        self._id: tuple[int, int] | None = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        run_dir(self.out_dir)
        st = self.out_dir.stat()
        ident = (st.st_dev, st.st_ino)
        with _HELD_LOCK:
            if ident in _HELD:
                raise UserError(f"output directory {self.out_dir} is in use by another run "
                                "in this process: wait for it to end, or choose another "
                                "output directory")
            _HELD.add(ident)
        try:
            self._acquire(ident)
        except BaseException:
            with _HELD_LOCK:
                _HELD.discard(ident)
            raise

    def _acquire(self, ident: tuple[int, int]) -> None:
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                locked = _flock(fd)
                if locked and not _same_file(fd, self.path):
                    os.close(fd)  # its owner removed it as we opened it: take the new one
                    continue
                self._take(fd, locked)
            except _Held:
                owner = _read_owner(fd)
                os.close(fd)
                raise self._in_use(owner) from None
            except OSError as err:
                os.close(fd)
                raise _naming(err, self.path) from err
            except BaseException:
                os.close(fd)
                raise
            self._fd, self._id = fd, ident
            return
        raise UserError(f"cannot lock {self.path}: it keeps changing; is another run "
                        "starting there?")

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if _same_file(self._fd, self.path):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None
        with _HELD_LOCK:
            _HELD.discard(self._id)  # type: ignore[arg-type]

    def _take(self, fd: int, locked: bool) -> None:
        owner = _read_owner(fd)
        if owner:
            host, pid = owner.get("host"), owner.get("pid")
            if host != socket.gethostname():
                raise UserError(
                    f"output directory {self.out_dir} is in use by a run on host {host} (pid "
                    f"{pid}, started {owner.get('started', '?')}): wait for it to end, or "
                    f"choose another output directory; if no run is going on there, delete "
                    f"{self.path}")
            if isinstance(pid, int) and pid != os.getpid():
                alive = _alive(pid)
                if alive and not locked:
                    raise _Held
                log.warning("taking over the lock left in %s by pid %d (%s)", self.out_dir,
                            pid, "it holds no lock" if alive else "no longer running")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me()).encode(), 0)
        os.fsync(fd)

    def _in_use(self, owner: dict[str, Any] | None) -> UserError:
        who = (f" (pid {owner.get('pid')} on host {owner.get('host')}, started "
               f"{owner.get('started', '?')})" if owner else "")
        return UserError(f"output directory {self.out_dir} is in use by another run{who}: "
                         "wait for it to end, or choose another output directory")


def _flock(fd: int) -> bool:
    """Take the lock (`_Held` if another process has it); False where the file system has
    no ``flock``."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _Held from None
    except OSError as err:
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise
    return True


class _Held(Exception):
    """Another process holds the lock."""


def _me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _read_owner(fd: int) -> dict[str, Any] | None:
    data = os.pread(fd, 4096, 0)
    try:
        owner = json.loads(data) if data.strip() else None
    except ValueError:
        return None
    return owner if isinstance(owner, dict) else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
