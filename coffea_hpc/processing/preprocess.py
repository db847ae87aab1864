"""Preprocessing: open each file once, record what chunking needs, split into chunks.

Opening files is itself distributed work (thousands of remote files take a while), so it is
a `Computable` run on the same backend as the analysis. A file whose entries and uuid are
already known (a prepared fileset, or the metadata cache of earlier runs) is not opened again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coffea_hpc._text import count, one_line
from coffea_hpc.backends.protocol import Backend, ErrorPolicy
from coffea_hpc.data.chunks import aligned_steps, even_steps
from coffea_hpc.errors import FilesetError
from coffea_hpc.processing.result import Failure, RemoteError, Result
from coffea_hpc.processing.worker import builder
from coffea_hpc.progress import Reporter, watch

if TYPE_CHECKING:  # workers unpickle `InspectFile`; the fileset model costs them 0.25 s
    from coffea_hpc.data.fileset import File, Fileset
    from coffea_hpc.processing.metacache import MetadataCache

__all__ = ["DEFAULT_CHUNKSIZE", "FileInfo", "InspectFile", "Preprocessed", "preprocess"]

DEFAULT_CHUNKSIZE = 100_000

_FILE_ERROR = f"{FilesetError.__module__}.{FilesetError.__qualname__}"
"""Added to the error of a file that cannot be read, so every file is tried before the run
stops; anything else (a worker or service lost) stops it as the policy says."""

FileKey = tuple[str, str]
"""(dataset, path)"""


@dataclass(frozen=True)
class FileInfo:
    entries: int
    uuid: str
    cluster_starts: tuple[int, ...] | None = None


@dataclass(frozen=True)
class InspectFile:
    """One element: open a file and read its entry count, uuid and cluster boundaries."""

    dataset: str
    path: str
    treename: str
    clusters: bool = False
    replicas: tuple[str, ...] = ()
    uproot_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> tuple[FileKey]:
        return ((self.dataset, self.path),)

    @property
    def labels(self) -> tuple[str]:
        return (f"{self.path}:{self.treename}",)

    @property
    def weight(self) -> int:
        return 1

    def __call__(self) -> Result:
        key = self.keys[0]
        files = builder(self.uproot_options)
        try:
            if self.clusters:  # cluster boundaries need the branches: open the tree itself
                tree = files.tree(self.path, self.treename, self.replicas)
                info = FileInfo(int(tree.num_entries), str(tree.file.uuid),
                                tuple(int(x) for x in tree.common_entry_offsets()))
            else:
                entries, uuid, _ = files.header(self.path, self.treename, self.replicas)
                info = FileInfo(entries, uuid)
        except Exception as exc:  # the file's own fault, told apart from a lost worker
            if isinstance(exc, OSError):
                files.forget(self.path, self.treename)
            error = RemoteError.from_exception(exc)
            error = dataclasses.replace(error, type_names=(*error.type_names, _FILE_ERROR))
            return Result(failures=(Failure(key, error, 1, self.labels[0]),),
                          metrics=_failed_metrics(files))
        return Result(value={key: info}, metrics=_failed_metrics(files))


def _failed_metrics(files: Any) -> dict[str, Any]:
    failed = files.take_failed()
    return {"failed_locations": set(failed)} if failed else {}


class Inspection:
    """The files of a fileset that need opening."""

    def __init__(self, elements: Iterable[InspectFile]) -> None:
        self._elements = {e.keys[0]: e for e in elements}

    def __iter__(self) -> Iterator[InspectFile]:
        return iter(self._elements.values())

    def __len__(self) -> int:
        return len(self._elements)

    def keys(self) -> list[Hashable]:
        return list(self._elements)

    def subset(self, keys: Iterable[Hashable]) -> Inspection:
        wanted = set(keys)
        return Inspection(e for k, e in self._elements.items() if k in wanted)


@dataclass
class Preprocessed:
    """The prepared fileset, and the files left out of it (with why)."""

    fileset: Fileset
    skipped: list[Failure] = field(default_factory=list)
    failed_locations: set[tuple[str, str, str]] = field(default_factory=set)
    """``(path, location, error)`` of each location that failed to open."""
    opened: int = 0
    """Files opened (the others came from the fileset itself or the metadata cache)."""


def preprocess(
    fileset: Fileset,
    backend: Backend,
    *,
    chunksize: int | None = None,
    align_clusters: bool = False,
    policy: ErrorPolicy | None = None,
    reporter: Reporter | None = None,
    uproot_options: Mapping[str, Any] | None = None,
    cache: MetadataCache | None = None,
) -> Preprocessed:
    """Fill in entries, uuid and steps for every file.

    ``chunksize=None`` keeps the steps a prepared fileset already has (and uses
    `DEFAULT_CHUNKSIZE` for files without); a number re-splits every file.
    With ``align_clusters`` chunks end on ROOT cluster boundaries, which needs each file
    opened. Every file is tried before deciding: unreadable files stop the run with one
    `FilesetError` listing each of them, unless ``policy`` continues on their errors
    (``ErrorPolicy.skip_bad_files()``); skipped files are listed in the outcome.
    ``uproot_options`` are the keyword arguments of every open. With a ``cache``, files it
    knows (and that have not changed) are not opened, and files opened are added to it.
    """
    needed = [(ds, f) for ds, f in fileset.files
              if align_clusters or f.entries is None or f.uuid is None]
    infos: dict[FileKey, FileInfo] = {}
    if cache is not None and needed:
        known = cache.lookup(((f.path, f.treename, f.uuid) for _, f in needed),
                             clusters=align_clusters)
        for ds, f in needed:
            hit = known.get((f.path, f.treename))
            if hit is not None:
                infos[(ds.name, f.path)] = FileInfo(hit.entries, hit.uuid, hit.cluster_starts)
    options = dict(uproot_options or {})
    todo = Inspection(
        InspectFile(ds.name, f.path, f.treename, align_clusters, f.replicas, options)
        for ds, f in needed if (ds.name, f.path) not in infos
    )
    skipped: list[Failure] = []
    failed_locations: set[tuple[str, str, str]] = set()
    if len(todo):
        policy = policy or ErrorPolicy()
        find_all = dataclasses.replace(policy, continue_on=(*policy.continue_on, FilesetError))
        task = backend.compute(todo, find_all)
        result = watch(task, "preprocessing", reporter, unit="files",
                       workers=getattr(backend, "connected_workers", None))
        opened: dict[FileKey, FileInfo] = result.value or {}
        infos.update(opened)
        failed_locations = set(result.metrics.get("failed_locations", ()))
        if cache is not None:
            treenames = {(e.dataset, e.path): e.treename for e in todo}
            cache.store((path, treenames[(ds, path)], i.entries, i.uuid, i.cluster_starts)
                        for (ds, path), i in opened.items())
        skipped = list(result.failures)
        unreadable = [f for f in skipped if f.error.matches((FilesetError,))
                      and not f.error.matches(policy.continue_on)]
        if unreadable:
            raise FilesetError(
                f"{len(unreadable)} of {count(len(todo), 'file')} cannot be read (--skip-bad-files "
                "goes on without them):" + "".join(f"\n  {_one_line(f)}" for f in unreadable))
    skipped_keys = {f.key for f in skipped}

    from coffea_hpc.data.fileset import Dataset, Fileset

    datasets = {}
    for ds in fileset:
        files = []
        for f in ds.files:
            key = (ds.name, f.path)
            if key in skipped_keys:
                continue
            files.append(_prepared(f, infos.get(key), chunksize))
        if files:
            datasets[ds.name] = Dataset(name=ds.name, files=tuple(files), metadata=ds.metadata)
    return Preprocessed(Fileset(datasets=datasets), skipped, failed_locations, len(todo))


def _one_line(failure: Failure) -> str:
    return f"{failure.label or failure.key}: {one_line(failure.error.summary())}"


def _prepared(f: File, info: FileInfo | None, chunksize: int | None) -> File:
    entries = info.entries if info else f.entries
    uuid = info.uuid if info else f.uuid
    assert entries is not None
    if chunksize is None and f.steps is not None and info is None:
        steps = f.steps
    elif info is not None and info.cluster_starts is not None:
        steps = tuple(aligned_steps(info.cluster_starts, entries, chunksize or DEFAULT_CHUNKSIZE))
    else:
        steps = tuple(even_steps(entries, chunksize or DEFAULT_CHUNKSIZE))
    return f.model_copy(update={"entries": entries, "uuid": uuid, "steps": steps})
