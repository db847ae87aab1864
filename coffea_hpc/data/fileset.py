"""Filesets: datasets of ROOT files, before and after preprocessing.

Analysts arrive with filesets in the shapes coffea accepts; they are all read into one typed
model here, so that the rest of coffea-hpc never guesses at dictionary shapes. A preprocessed
fileset (entries, uuid and chunk boundaries known) is written in coffea's own
``dataset_tools`` layout, so it can be handed back to coffea unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from coffea_hpc._textfile import TextFileError, read_data
from coffea_hpc.errors import FilesetError
from coffea_hpc.output import atomic_write

__all__ = ["DEFAULT_TREENAME", "Dataset", "File", "Fileset", "load_fileset"]

DEFAULT_TREENAME = "Events"

_DATASET_KEYS = {"files", "treename", "metadata", "form"}
_INDENTED_UP_TO = 1_000
"""Files up to which a saved fileset is indented for people to read."""
_FILE_KEYS = {"object_path", "treename", "steps", "num_entries", "entries", "uuid", "replicas"}
_LFN = re.compile(r"^(?:[a-z]+://[^/]+/)?(/store/.*)$")
"""A CMS logical file name, bare (``/store/...``) or behind a server (``root://host//store/...``)."""


class File(BaseModel):
    """One ROOT file and the tree to read in it.

    ``entries``, ``uuid`` and ``steps`` are filled by preprocessing; ``steps`` are the
    half-open entry ranges ``[start, stop)`` that become chunks. ``replicas`` are other
    locations of the same file (the same uuid), read in order when ``path`` cannot be; the
    file is known by ``path`` everywhere (chunks, checkpoints, ``events.metadata``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(min_length=1)
    treename: str = Field(default=DEFAULT_TREENAME, min_length=1)
    entries: int | None = Field(default=None, ge=0)
    uuid: str | None = None
    steps: tuple[tuple[int, int], ...] | None = None
    replicas: tuple[str, ...] = ()

    @property
    def locations(self) -> tuple[str, ...]:
        return (self.path, *self.replicas)

    @model_validator(mode="after")
    def _steps_inside_file(self) -> File:
        if self.steps is None:
            return self
        previous = 0
        for start, stop in self.steps:
            if not 0 <= start <= stop:
                raise ValueError(f"step [{start}, {stop}] is not a valid entry range")
            if start < previous:
                raise ValueError(f"steps overlap or are unsorted at [{start}, {stop}]")
            if self.entries is not None and stop > self.entries:
                raise ValueError(
                    f"step [{start}, {stop}] ends past the file's {self.entries} entries"
                )
            previous = stop
        return self

    @property
    def is_prepared(self) -> bool:
        return self.entries is not None and self.steps is not None


class Dataset(BaseModel):
    """A named list of files that share metadata (cross-section, year, is-data...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    files: tuple[File, ...]
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        """Names reach reports, logs and file names: DAS paths (``/DY.../NANOAODSIM``) are
        fine, parent-directory steps and control characters (a line break that forges a
        log line) are not."""
        if any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise ValueError(f"dataset name {name!r} holds control characters")
        if any(part in (".", "..") for part in name.replace("\\", "/").split("/")):
            raise ValueError(f"dataset name {name!r} holds '.' or '..' path steps")
        return name


class Fileset(BaseModel):
    """Datasets by name. Build one with `Fileset.from_mapping` or `Fileset.load`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    datasets: dict[str, Dataset]

    def __iter__(self) -> Iterator[Dataset]:  # type: ignore[override]
        return iter(self.datasets.values())

    def __len__(self) -> int:
        return len(self.datasets)

    @property
    def files(self) -> list[tuple[Dataset, File]]:
        return [(ds, f) for ds in self.datasets.values() for f in ds.files]

    @property
    def is_prepared(self) -> bool:
        return all(f.is_prepared for _, f in self.files)

    @property
    def n_entries(self) -> int:
        return sum(f.entries or 0 for _, f in self.files)

    # -- reading -------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Fileset:
        """Read a fileset from a JSON or YAML file.

        Relative local file paths are resolved against the fileset file's folder, so that a
        fileset keeps working when a batch job starts in another directory.
        """
        path = Path(path)
        if not path.is_file():
            raise FilesetError(f"fileset file {str(path)!r} does not exist")
        try:
            obj = read_data(path, yaml_format=path.suffix.lower() in {".yaml", ".yml"})
        except TextFileError as err:
            raise FilesetError(f"{path}: {err}") from None
        except OSError as err:
            raise FilesetError(f"{path}: cannot be read ({err.strerror})") from None
        return cls.from_mapping(obj, source=str(path), base_dir=path.parent, _consume=True)

    @classmethod
    def from_mapping(
        cls, obj: Any, *, source: str = "fileset", base_dir: Path | None = None,
        _consume: bool = False,
    ) -> Fileset:
        """Read any of the fileset shapes coffea accepts.

        - ``{dataset: [path, ...]}``, where a path may be a list of locations of one file
          (the first is its path, the others its replicas)
        - ``{dataset: {"treename": tree, "files": [path, ...], "metadata": {...}}}``
        - ``{dataset: {"files": {path: tree, ...}, "metadata": {...}}}``
        - ``{dataset: {"files": {path: {"object_path": tree, "steps": [[0, 100], ...],
          "num_entries": n, "uuid": u, "replicas": [url, ...]}}}}`` (coffea's preprocessed
          layout, as `save` writes; ``replicas`` is coffea-hpc's and optional)
        """
        if isinstance(obj, Fileset):
            return obj
        if not isinstance(obj, Mapping) or not obj:
            raise FilesetError(
                f"{source}: a fileset must be a non-empty mapping of dataset name to files, "
                f"got {_describe(obj)}"
            )
        # ``_consume`` (a mapping just read from a file, nobody else's): each file's entry is
        # dropped once its model is made, so a prepared fileset of 10^5 files never holds
        # its parsed JSON and its models whole at the same time (~200 MB of peak memory)
        datasets = {}
        for name in list(obj):
            spec = obj.pop(name) if _consume else obj[name]
            datasets[str(name)] = _read_dataset(str(name), spec, source, base_dir, _consume)
            del spec
        return cls(datasets=datasets)

    # -- writing -------------------------------------------------------------------------

    def to_mapping(self) -> dict[str, Any]:
        """The coffea ``dataset_tools`` layout; `from_mapping` reads it back unchanged."""
        return {ds.name: {"files": {f.path: _file_entry(f) for f in ds.files},
                          "metadata": dict(ds.metadata)}
                for ds in self.datasets.values()}

    def save(self, path: str | Path) -> Path:
        """Write the fileset as JSON or YAML (by suffix), atomically: a resumed run reads
        the prepared fileset back, so a full disk must not leave half of one."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() in {".yaml", ".yml"}:
            pieces: Iterable[str] = [yaml.safe_dump(self.to_mapping(), sort_keys=False)]
        elif sum(len(ds.files) for ds in self) <= _INDENTED_UP_TO:
            pieces = [json.dumps(self.to_mapping(), indent=1) + "\n"]
        else:  # indenting is pure Python in json: 20 s for 10^5 files, 1 s without
            pieces = self._compact_json()
        with atomic_write(path, share=True) as out:  # a fileset is shared as its folder is
            for piece in pieces:
                out.write(piece.encode())
        return path

    def _compact_json(self) -> Iterator[str]:
        """``json.dumps(self.to_mapping())``, a file at a time: a prepared fileset of 10^5
        files held whole as a mapping and then as text took ~160 MB more to save."""
        yield "{"
        for i, ds in enumerate(self.datasets.values()):
            yield f'{", " if i else ""}{json.dumps(ds.name)}: {{"files": {{'
            for j, f in enumerate(ds.files):
                yield f'{", " if j else ""}{json.dumps(f.path)}: {json.dumps(_file_entry(f))}'
            yield f'}}, "metadata": {json.dumps(dict(ds.metadata))}}}'
        yield "}\n"

    # -- selecting -----------------------------------------------------------------------

    def with_redirectors(self, redirectors: Sequence[str]) -> Fileset:
        """Every CMS logical file name (``/store/...``) read through ``redirectors``.

        A bare ``/store/...`` path becomes ``REDIRECTOR//store/...`` for the first
        redirector, the others its replicas, in order (a regional redirector before the
        global one, say). A URL that already names a server keeps it first; the redirectors
        follow as replicas. Other paths are left as they are.
        """
        if not redirectors:
            return self
        bad = [r for r in redirectors if "://" not in r]
        if bad:
            raise FilesetError(f"redirector {bad[0]!r} is not a URL (e.g. root://host:1094/)")
        datasets = {}
        for name, ds in self.datasets.items():
            files = []
            for f in ds.files:
                locations: list[str] = []
                for loc in f.locations:
                    match = _LFN.match(loc)
                    if match is None or loc != match.group(1):
                        locations.append(loc)  # a URL (or not an LFN): tried first
                    if match is not None:
                        locations += [f"{r.rstrip('/')}/{match.group(1)}" for r in redirectors]
                unique = tuple(dict.fromkeys(locations))
                files.append(f.model_copy(update={"path": unique[0], "replicas": unique[1:]}))
            datasets[name] = ds.model_copy(update={"files": tuple(files)})
        return Fileset(datasets=datasets)

    def limit(self, *, files_per_dataset: int | None = None) -> Fileset:
        """The first ``files_per_dataset`` files of each dataset (for quick test runs)."""
        if files_per_dataset is None:
            return self
        return Fileset(
            datasets={
                name: ds.model_copy(update={"files": ds.files[:files_per_dataset]})
                for name, ds in self.datasets.items()
            }
        )


def load_fileset(fileset: Fileset | Mapping[str, Any] | str | Path) -> Fileset:
    """A fileset as a run takes it: a `Fileset`, a mapping of any shape coffea accepts, or
    the path of a JSON or YAML file."""
    if isinstance(fileset, Fileset):
        return fileset
    if isinstance(fileset, str | Path):
        return Fileset.load(fileset)
    return Fileset.from_mapping(fileset)


def _file_entry(f: File) -> dict[str, Any]:
    entry: dict[str, Any] = {"object_path": f.treename}
    if f.steps is not None:
        entry["steps"] = [list(s) for s in f.steps]
    if f.entries is not None:
        entry["num_entries"] = f.entries
    if f.uuid is not None:
        entry["uuid"] = f.uuid
    if f.replicas:
        entry["replicas"] = list(f.replicas)
    return entry


def _describe(obj: Any) -> str:
    if obj is None:
        return "nothing (empty file?)"
    if isinstance(obj, Mapping) and not obj:
        return "an empty mapping"
    return f"a {type(obj).__name__}"


def _read_dataset(name: str, spec: Any, source: str, base_dir: Path | None,
                  consume: bool = False) -> Dataset:
    where = f"{source}: dataset {name!r}"
    treename = DEFAULT_TREENAME
    metadata: dict[str, Any] = {}
    if isinstance(spec, list | tuple):
        raw_files: Any = list(spec)
    elif isinstance(spec, Mapping):
        unknown = set(spec) - _DATASET_KEYS
        if unknown:
            raise FilesetError(
                f"{where}: unknown key(s) {sorted(unknown)}; a dataset takes "
                f"{sorted(_DATASET_KEYS - {'form'})}"
            )
        if "files" not in spec:
            raise FilesetError(f"{where}: missing key 'files'")
        raw_files = spec["files"]
        treename = spec.get("treename", DEFAULT_TREENAME)
        if not isinstance(treename, str) or not treename:
            raise FilesetError(f"{where}: 'treename' must be a non-empty string")
        metadata = spec.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise FilesetError(f"{where}: 'metadata' must be a mapping, got {_describe(metadata)}")
    else:
        raise FilesetError(
            f"{where}: expected a list of files or a mapping with 'files', got {_describe(spec)}"
        )

    files: list[File] = []
    if isinstance(raw_files, Mapping):
        items = list(raw_files.items())
    elif isinstance(raw_files, list | tuple):
        items = [(p, None) if not isinstance(p, list | tuple)
                 else (p[0] if p else None, {"replicas": list(p[1:])}) for p in raw_files]
    else:
        raise FilesetError(
            f"{where}: 'files' must be a list of paths or a mapping of path to tree name, "
            f"got {_describe(raw_files)}"
        )
    if not items:
        raise FilesetError(f"{where}: has no files")
    consume = consume and isinstance(raw_files, dict)
    for i, (path, fspec) in enumerate(items):
        if not isinstance(path, str) or not path:
            raise FilesetError(f"{where}: file paths must be non-empty strings, got {path!r}")
        where_file = f"{where}, file {path!r}"
        files.append(_read_file(_resolve(path, base_dir), fspec, treename, where_file, base_dir))
        if consume:
            items[i] = None  # type: ignore[call-overload]
            raw_files.pop(path, None)
            del fspec
    try:
        return Dataset(name=name, files=tuple(files), metadata=dict(metadata))
    except ValidationError as err:
        raise FilesetError(f"{where}: {_first_error(err)}") from None


def _read_file(path: str, spec: Any, treename: str, where: str,
               base_dir: Path | None = None) -> File:
    fields: dict[str, Any] = {"path": path, "treename": treename}
    if isinstance(spec, str):
        fields["treename"] = spec
    elif isinstance(spec, Mapping):
        unknown = set(spec) - _FILE_KEYS
        if unknown:
            raise FilesetError(
                f"{where}: unknown key(s) {sorted(unknown)}; a file takes {sorted(_FILE_KEYS)}"
            )
        tree = spec.get("object_path", spec.get("treename"))
        if tree is not None:
            fields["treename"] = tree
        entries = spec.get("num_entries", spec.get("entries"))
        if entries is not None:
            fields["entries"] = entries
        for key in ("uuid", "steps"):
            if spec.get(key) is not None:
                fields[key] = spec[key]
        replicas = spec.get("replicas") or []
        if not isinstance(replicas, list | tuple) or not all(
                isinstance(r, str) and r for r in replicas):
            raise FilesetError(f"{where}: 'replicas' must be a list of paths or URLs")
        fields["replicas"] = tuple(_resolve(r, base_dir) for r in replicas)
    elif spec is not None:
        raise FilesetError(
            f"{where}: expected a tree name or a mapping of file fields, got {_describe(spec)}"
        )
    try:
        return File(**fields)
    except ValidationError as err:
        raise FilesetError(f"{where}: {_first_error(err)}") from None


def _first_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def _resolve(path: str, base_dir: Path | None) -> str:
    if base_dir is None or "://" in path or Path(path).is_absolute():
        return path
    return str((base_dir / path).resolve())
