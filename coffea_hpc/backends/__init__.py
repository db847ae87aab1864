"""Backends: where elements of a computation run. All keep `protocol.Backend`.

Importing this package imports no engine; `make_backend` imports only the one it builds.
"""

from __future__ import annotations

from typing import Any

from coffea_hpc.backends.protocol import (
    Backend,
    Computable,
    ErrorPolicy,
    Task,
    TaskProgress,
    TaskStatus,
    WorkElement,
)
from coffea_hpc.errors import UserError

__all__ = [
    "BACKENDS",
    "Backend",
    "Computable",
    "ErrorPolicy",
    "Task",
    "TaskProgress",
    "TaskStatus",
    "WorkElement",
    "make_backend",
]

BACKENDS = ("iterative", "futures", "parsl", "dask", "globus")


def make_backend(name: str, *, workers: int | None = None, **options: Any) -> Backend:
    """Build a backend by name; options go to its constructor."""
    if name == "iterative":
        from coffea_hpc.backends.iterative import IterativeBackend

        return IterativeBackend()
    if name == "futures":
        from coffea_hpc.backends.futures import FuturesBackend

        return FuturesBackend(workers)
    if name == "parsl":
        from coffea_hpc.backends.parsl import ParslBackend

        return ParslBackend(workers=workers, **options)
    if name == "dask":
        from coffea_hpc.backends.dask import DaskBackend

        return DaskBackend(options.get("address"), workers=workers)
    if name == "globus":
        from coffea_hpc.backends.globus import GlobusBackend

        return GlobusBackend(options.get("endpoint_id", ""), **{
            k: v for k, v in options.items() if k != "endpoint_id"})
    raise UserError(f"unknown executor {name!r}: choose one of {', '.join(BACKENDS)}")
