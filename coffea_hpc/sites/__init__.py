"""Sites: where a run's workers come from, as data.

A site is a YAML file (presets in ``site_configs/``, your own in
``~/.config/coffea-hpc/sites/``), layered with ``--site-file``, the run options'
``site_config:`` and flags,
validated (`SiteConfig`), and built into a Parsl configuration (`build_config`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coffea_hpc.sites.allocation import detect_allocation, site_inside
from coffea_hpc.sites.build import build_config
from coffea_hpc.sites.registry import known_sites, resolve_site
from coffea_hpc.sites.schema import SiteConfig

__all__ = ["SiteConfig", "build_config", "known_sites", "resolve_site", "site_backend"]


def site_backend(
    name: str | None,
    *,
    site_file: Path | None = None,
    site_config: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    inside_allocation: bool = False,
    run_dir: Path | None = None,
) -> Any:
    """The backend for a site (not started): a Parsl backend, or Globus Compute's."""
    overrides = dict(overrides or {})
    site: SiteConfig | None = None
    if name is not None or site_file is not None:
        site = resolve_site(name, site_file=site_file, site_config=site_config,
                            overrides=overrides, require_account=not inside_allocation)
    if inside_allocation:
        site = site_inside(site, detect_allocation())
    assert site is not None
    run_dir = Path(run_dir or "runinfo")
    if site.executor.type == "globus":
        from coffea_hpc.backends.globus import GlobusBackend

        return GlobusBackend.from_site(site, run_dir=run_dir)
    from coffea_hpc.backends.parsl import ParslBackend

    return ParslBackend(build_config(site, run_dir), workers=site.workers(os.cpu_count() or 1),
                        run_dir=run_dir)
