"""Optional dependencies, in one place, each failing with the command that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from coffea_hpc.errors import MissingDependencyError

__all__ = ["require"]


def require(module: str, feature: str, *, extra: str | None = None,
            hint: str | None = None) -> ModuleType:
    """Import ``module`` or raise one line saying how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        how = hint or (f"pip install 'coffea-hpc[{extra}]'" if extra else f"pip install {module}")
        raise MissingDependencyError(
            f"the {feature} needs the Python package {module!r}, which is not installed "
            f"({how})"
        ) from err
