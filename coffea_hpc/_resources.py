"""Where the data files shipped with coffea-hpc live: ``site_configs/`` and ``templates/``.

In a source checkout (and an editable install) they sit at the top of the repository; a
wheel carries them inside the package as ``coffea_hpc/_resources/``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["resource_dir"]

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The folder ``name`` (``"site_configs"`` or ``"templates"``)."""
    for candidate in (_PACKAGE / "_resources" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"coffea-hpc's {name!r} folder is missing from this installation")
