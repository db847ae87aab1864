"""coffea-hpc: run coffea processors over ROOT filesets, from a laptop to any HPC centre.

The public names are importable from here; heavy modules (coffea, Parsl) load on first use,
so ``import coffea_hpc`` and ``coffea-hpc --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from coffea_hpc.errors import (
    ChunkFailedError,
    CoffeaHPCError,
    FilesetError,
    ProcessorLoadError,
    SiteError,
    UserError,
)

if TYPE_CHECKING:
    from coffea_hpc.api import Submission, run, submit
    from coffea_hpc.backends import ErrorPolicy, make_backend
    from coffea_hpc.data.fileset import Fileset
    from coffea_hpc.options import RunOptions
    from coffea_hpc.processing.preprocess import preprocess
    from coffea_hpc.processing.result import Result
    from coffea_hpc.runner import RunOutcome

__version__ = "0.1.0"

__all__ = [
    "ChunkFailedError",
    "CoffeaHPCError",
    "ErrorPolicy",
    "Fileset",
    "FilesetError",
    "ProcessorLoadError",
    "Result",
    "RunOptions",
    "RunOutcome",
    "SiteError",
    "Submission",
    "UserError",
    "__version__",
    "make_backend",
    "preprocess",
    "run",
    "submit",
]

_LAZY = {
    "ErrorPolicy": "coffea_hpc.backends",
    "make_backend": "coffea_hpc.backends",
    "Fileset": "coffea_hpc.data.fileset",
    "preprocess": "coffea_hpc.processing.preprocess",
    "Result": "coffea_hpc.processing.result",
    "RunOptions": "coffea_hpc.options",
    "RunOutcome": "coffea_hpc.runner",
    "Submission": "coffea_hpc.api",
    "run": "coffea_hpc.api",
    "submit": "coffea_hpc.api",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'coffea_hpc' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
