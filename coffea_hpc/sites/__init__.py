"""Sites: where a run's workers come from, as data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coffea_hpc.errors import SiteError


def site_backend(
    name: str | None,
    *,
    site_file: Path | None = None,
    run_options: Path | None = None,
    overrides: dict[str, Any] | None = None,
    inside_allocation: bool = False,
    run_dir: Path | None = None,
) -> Any:
    raise SiteError("sites are not available yet")
