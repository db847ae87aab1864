"""Finding a site and layering the options people set on it.

Most specific last: the preset shipped in ``site_configs/`` → a site of the same name in
``~/.config/coffea-hpc/sites/`` → ``--site-file`` → the ``site_config:`` of the run options
→ the site flags (``--account``, ``--walltime``, ... from the run options or the command
line).
Every layer is a partial YAML mapping with the shape of `SiteConfig`; they are merged key by
key and validated once, and an invalid value is reported with the file that set it.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from coffea_hpc._resources import resource_dir
from coffea_hpc._textfile import TextFileError, read_data
from coffea_hpc.errors import SiteError
from coffea_hpc.sites.schema import SiteConfig

__all__ = ["USER_SITES", "known_sites", "load_layer", "resolve_site"]

USER_SITES = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / \
    "coffea-hpc" / "sites"

# command-line flag -> place in the site mapping
_FLAGS = {
    "account": ("provider", "account"),
    "partition": ("provider", "partition"),
    "qos": ("provider", "qos"),
    "nodes": ("provider", "nodes_per_block"),
    "walltime": ("provider", "walltime"),
    "scaleout": ("provider", "max_blocks", "init_blocks"),  # N blocks at once, from the start
    "endpoint": ("executor", "endpoint_id"),
    "workers": ("executor", "max_workers_per_node"),
}


@dataclass(frozen=True)
class _Layer:
    source: str
    data: dict[str, Any]


def _user_sites_dir() -> Path:
    return Path(os.environ.get("COFFEA_HPC_SITES", USER_SITES))


def known_sites() -> dict[str, Path]:
    """Site names (and aliases) to their files: presets, then the user's own sites (a user
    file named like a preset is a layer over it, see `resolve_site`)."""
    out: dict[str, Path] = {}
    folders = [resource_dir("site_configs"), _user_sites_dir()]
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.yaml")):
            data = _read(path)
            out.setdefault(path.stem, path)
            for alias in data.get("aliases", ()) or ():
                out.setdefault(str(alias), path)
    return out


def load_layer(path: str | Path) -> dict[str, Any]:
    """Read one layer (a site or run-options file) as a mapping."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SiteError(f"site file {str(path)!r} does not exist")
    return _read(path)


def resolve_site(
    name: str | None,
    *,
    site_file: str | Path | None = None,
    site_config: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    require_account: bool = True,
    site_config_source: str = "run options: site_config",
) -> SiteConfig:
    """The effective site: all layers merged and validated.

    ``site_config`` is a partial site mapping (a run-options file's ``site_config:``).
    ``require_account=False`` skips the account check (inside an allocation that was
    already charged to one, or to show what a preset still needs)."""
    layers = _layers(name, site_file, (site_config_source, site_config), overrides or {})
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer.data)
    if "extends" in merged:
        raise SiteError(f"{layers[0].source}: 'extends' is not supported; use aliases or a "
                        "site file layered over a preset")
    merged.setdefault("name", name or Path(str(site_file)).stem)
    try:
        site = SiteConfig.model_validate(merged)
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(str(p) for p in first["loc"])
        where = _who_set(layers, loc)
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown option"
        field = f"{'.'.join(loc)}: " if loc else ""  # a rule over several fields names them
        raise SiteError(f"site {merged['name']!r} ({where}): {field}{message}") from None
    if require_account and site.requires_account and not site.provider.account:
        raise SiteError(
            f"site {site.name!r} needs an account (allocation/project): pass --account NAME "
            "or set provider.account in a site file"
        )
    return site


def _layers(name: str | None, site_file: str | Path | None,
            site_config: tuple[str, Mapping[str, Any] | None],
            overrides: Mapping[str, Any]) -> list[_Layer]:
    layers: list[_Layer] = []
    if name is not None:
        sites = known_sites()
        path = sites.get(name)
        if path is None and Path(name).suffix in (".yaml", ".yml") and Path(name).is_file():
            path = Path(name)
        if path is None:
            close = difflib.get_close_matches(name, list(sites), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SiteError(f"unknown site {name!r}{hint}; known sites: "
                            f"{', '.join(sorted(sites))}")
        data = _read(path)
        layers.append(_Layer(str(path), data))
        user = _user_sites_dir() / f"{path.stem}.yaml"
        if user.is_file() and user.resolve() != path.resolve():
            layers.append(_Layer(str(user), _read(user)))
        layers[0].data.setdefault("name", path.stem)
    elif site_file is None:
        raise SiteError("no site given: pass --site NAME (see 'coffea-hpc sites list') or "
                        "--site-file FILE")
    if site_file is not None:
        layers.append(_Layer(str(site_file), load_layer(site_file)))
    source, extra = site_config
    if extra:
        layers.append(_Layer(source, dict(extra)))
    flags: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in _FLAGS:
            raise SiteError(f"unknown site option {key!r}")
        section, *fields = _FLAGS[key]
        for field in fields:
            flags.setdefault(section, {})[field] = value
    if flags:
        layers.append(_Layer("command line", flags))
    return layers


def _read(path: Path) -> dict[str, Any]:
    try:
        data = read_data(path, yaml_format=True)
    except TextFileError as err:
        raise SiteError(f"{path}: {err}") from None
    except OSError as err:
        raise SiteError(f"{path}: cannot be read ({err.strerror})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SiteError(f"{path}: a site file must be a mapping, got a {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _who_set(layers: list[_Layer], loc: tuple[str, ...]) -> str:
    for layer in reversed(layers):
        node: Any = layer.data
        for part in loc:
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            return layer.source
    return layers[-1].source if layers else "site"
