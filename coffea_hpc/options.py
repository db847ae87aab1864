"""Run options: every parameter of a run, as data.

One validated model (`RunOptions`) serves the command line, a ``--run-options run.yaml``
file and the Python API, so a parameter means the same wherever it is set and has its
default in one place. Layers, most specific last: the model's defaults → the run-options
file → what the command line (or the call) gives. Keys are the command-line flags with
``_`` for ``-``; site settings beyond the flags go under ``site_config:`` as a partial site
file (see docs/sites.md). The effective options are written into ``report.json``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from coffea_hpc._textfile import read_yaml
from coffea_hpc.errors import UserError

__all__ = ["EXECUTORS", "SITE_KEYS", "RunOptions", "load_run_options"]

EXECUTORS = ("iterative", "futures", "parsl", "dask")
Executor = Literal["iterative", "futures", "parsl", "dask"]
Reduce = Literal["driver", "tree", "mpi"]

SITE_KEYS = ("site_file", "account", "partition", "qos", "nodes", "walltime", "scaleout",
             "endpoint", "site_config")
"""Keys that only mean something with a site: setting one without a site is an error."""

TEST_CHUNKS = 2
"""Chunks per dataset in test mode (one file each)."""

_PATH_KEYS = ("fileset", "output", "site_file", "spill_dir")


class RunOptions(BaseModel):
    """Every parameter of ``coffea-hpc run`` but the processor (which is code, not data)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    fileset: Path | None = None
    output: Path | None = None
    executor: Executor = "parsl"
    workers: int | None = Field(default=None, ge=1)
    chunksize: int | None = Field(default=None, ge=1)
    target_chunk_seconds: float | None = Field(default=None, gt=0)
    """Adaptive chunking: chunks sized per dataset to last about this long."""
    limit_files: int | None = Field(default=None, ge=1)
    limit_chunks: int | None = Field(default=None, ge=1)
    schema_name: str = Field(default="nanoaod", alias="schema")
    retries: int = Field(default=1, ge=0)
    processor_retries: int = Field(default=0, ge=0)
    skip_bad_files: bool = False
    continue_on_error: bool = False
    align_clusters: bool = False
    chunks_per_task: int | None = Field(default=None, ge=1)
    reduce: Reduce = "driver"
    fan_in: int = Field(default=8, ge=2)
    spill_dir: Path | None = None
    spill_threshold: float = Field(default=256.0, ge=0)
    mpi_ranks: int = Field(default=2, ge=1)
    mpi_launcher: str | None = None
    resume: bool = False
    checkpoint_every: float = Field(default=60.0, ge=0)
    test: bool = False
    site: str | None = None
    site_file: Path | None = None
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    nodes: int | None = Field(default=None, ge=1)
    walltime: str | None = None
    scaleout: int | None = Field(default=None, ge=1)
    endpoint: str | None = None
    dask_address: str | None = None
    inside_allocation: bool = False
    site_config: dict[str, Any] = Field(default_factory=dict)
    uproot_options: dict[str, Any] | str | None = None
    """Options of every ``uproot.open``: a mapping, or JSON/YAML text or a file."""
    xrootd_timeout: float | None = Field(default=None, gt=0)
    redirector: list[str] | None = None
    metadata_cache: str | None = None
    """The metadata cache's path, or ``off`` (default: the user's cache folder)."""

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, value: str | None) -> str | None:
        from coffea_hpc.sites.schema import _WALLTIME

        if value is not None and not _WALLTIME.match(value):
            raise ValueError(f"{value!r} is not a wall time like 01:30:00 or 1-00:00:00")
        return value

    @classmethod
    def option_keys(cls) -> list[str]:
        """The keys a run-options file may set (the command line's names)."""
        return [field.alias or name for name, field in cls.model_fields.items()]

    @classmethod
    def layered(cls, file: str | Path | None = None,
                given: Mapping[str, Any] | None = None,
                flag: Mapping[str, str] | None = None) -> RunOptions:
        """The effective options: ``file`` (a run-options YAML) under ``given`` (values set
        on the command line or in the call; None means not set). ``flag`` names where a
        given key came from (``--chunksize``) for error messages."""
        data = load_run_options(file) if file is not None else {}
        top = {k: v for k, v in (given or {}).items() if v is not None}
        data.update(top)
        try:
            options = cls.model_validate(data)
        except ValidationError as err:
            raise _user_error(err, file, top, flag or {}) from None
        options._check_site(file, top, flag or {})
        return options

    def _check_site(self, file: str | Path | None, top: Mapping[str, Any],
                    flag: Mapping[str, str]) -> None:
        if self.site is not None or self.inside_allocation or self.test:
            return
        for key in SITE_KEYS:
            if getattr(self, key):
                where = flag.get(key, f"--{key.replace('_', '-')}") if key in top else \
                    f"{file}: {key}"
                raise UserError(f"{where} needs a site: pass --site NAME (see 'coffea-hpc "
                                "sites list') or set site: in the run options")

    def given(self) -> dict[str, Any]:
        """What differs from the defaults, as the keys of a run-options file."""
        return self.model_dump(mode="json", by_alias=True, exclude_defaults=True)

    def site_overrides(self) -> dict[str, Any]:
        """The site flags, for `coffea_hpc.sites.resolve_site`."""
        return {"account": self.account, "partition": self.partition, "qos": self.qos,
                "nodes": self.nodes, "walltime": self.walltime, "scaleout": self.scaleout,
                "endpoint": self.endpoint, "workers": self.workers}

    def for_test(self) -> RunOptions:
        """Test mode: one file and two chunks per dataset, in this process."""
        limit = min(self.limit_chunks or TEST_CHUNKS, TEST_CHUNKS)
        return self.model_copy(update={"executor": "iterative", "limit_files": 1,
                                       "limit_chunks": limit, "workers": None,
                                       "reduce": "driver"})


def load_run_options(path: str | Path) -> dict[str, Any]:
    """A run-options file as a mapping of known keys; paths in it are relative to it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"run-options file {str(path)!r} does not exist")
    data = read_yaml(path, UserError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: run options must be a mapping of option: value, got a "
                        f"{type(data).__name__}")
    known = RunOptions.option_keys()
    for key in data:
        if str(key).replace("-", "_") in known and str(key) not in known:
            raise UserError(f"{path}: unknown key {key!r} (did you mean "
                            f"{str(key).replace('-', '_')!r}?)")
        if key not in known:
            raise UserError(f"{path}: unknown key {key!r}{_hint(str(key), known)}")
    if isinstance(data.get("executor"), dict):
        raise UserError(f"{path}: executor: names the backend ({', '.join(EXECUTORS)}); "
                        "a site's executor settings go under site_config: executor:")
    for key in _PATH_KEYS:
        value = data.get(key)
        if isinstance(value, str) and "://" not in value:
            data[key] = (path.parent / Path(value).expanduser()).resolve()
    return data


_SITE_SECTIONS = ("provider", "submit", "strategy", "aliases", "requires_account")


def _hint(key: str, known: list[str]) -> str:
    if key in _SITE_SECTIONS:
        return f": site settings go under site_config: {key}:"
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _user_error(err: ValidationError, file: str | Path | None, top: Mapping[str, Any],
                flag: Mapping[str, str]) -> UserError:
    first = err.errors()[0]
    key = str(first["loc"][0]) if first["loc"] else ""
    message = first["msg"].removeprefix("Value error, ")
    message = message[0].lower() + message[1:] if message else message
    if first["type"] == "literal_error":
        expected = str(first.get("ctx", {}).get("expected", "")).replace("'", "")
        where = flag.get(key, f"--{key.replace('_', '-')}") if key in top else f"{file}: {key}"
        return UserError(f"{where}: unknown {key.replace('_', ' ')} {first.get('input')!r}; "
                         f"choose one of {expected.replace(' or ', ', ')}")
    if key in top:
        where = flag.get(key, f"--{key.replace('_', '-')}")
        return UserError(f"{where} {top[key]!r}: {message}" if key != "site_config"
                         else f"{where}: {message}")
    return UserError(f"{file}: {key}: {message} (got {first.get('input')!r})")
