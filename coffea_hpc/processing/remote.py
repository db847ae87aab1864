"""How files are opened: uproot options, XRootD defaults, and the locations of a file.

Analysts pass uproot options (``timeout``, ``handler``, ``num_workers``...) as JSON or YAML;
they reach preprocessing and every worker unchanged, as plain data, and become uproot's
arguments only where a file is opened (`open_options`), so a handler named by its dotted path
travels as a string.

``root://`` URLs are read with uproot's own XRootD source unless the options name another
handler: through uproot's default fsspec source (fsspec-xrootd), a read that fails after the
file is open (a server stopped mid-run) never reaches the reader, and the worker waits for
ever; uproot's XRootD source raises `TimeoutError` or `OSError`, which the worker can act on.
The XRootD client's defaults are made for one long-lived program, not for a run that retries:
it checks its timeouts every 15 s, so a timeout of a few seconds would fire up to 15 s late;
after a failed connection it tries the server again only when its connection window (120 s)
has passed; and once its connection retries are spent it fails every request to that server
at once, without trying, for its stream error window (30 minutes), so a server back after a
restart of a few seconds would stay unreachable for the rest of most runs. coffea-hpc makes
these settings of the process's XRootD client before it opens a ``root://`` URL: the
stream error window at most a minute, and with a ``timeout`` a check every second and
windows of the timeout (made again when a run asks for another timeout). A setting the
analyst made through its ``XRD_*`` environment variable is left as it is.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from coffea_hpc.errors import UserError

__all__ = ["is_xrootd", "open_options", "parse_uproot_options", "read_options"]

_XROOTD_SCHEMES = ("root://", "roots://")
_UNSET = object()
_client_timeout: object = _UNSET
"""The timeout this process's XRootD client settings were last made for."""
_STREAM_ERROR_WINDOW = 60
"""Seconds a server whose connection retries were spent is refused without trying."""


def is_xrootd(path: str) -> bool:
    return path.startswith(_XROOTD_SCHEMES)


def parse_uproot_options(value: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """Options from a mapping, a JSON or YAML string, or a JSON/YAML file; a user error
    in one line for anything else."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        obj: Any = dict(value)
    else:
        text = str(value)
        path = Path(text)
        source = "--uproot-options"
        try:
            if not text.lstrip().startswith(("{", "[")) and path.is_file():
                source, text = str(path), path.read_text()
        except OSError:  # a string too long to be a path
            pass
        try:
            obj = yaml.safe_load(text)  # YAML is a superset of JSON
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0]
            raise UserError(f"{source}: not valid JSON or YAML: {first}") from None
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise UserError(f"uproot options must be a mapping of option name to value, got "
                        f"{json.dumps(obj, default=str)[:80]}")
    handler = obj.get("handler")
    if handler is not None and not isinstance(handler, str | type):
        raise UserError(f"uproot option 'handler' must be a dotted class path, got {handler!r}")
    if isinstance(handler, str):
        _handler_class(handler)  # a typo is the driver's error, not every worker's
    return dict(obj)


def read_options(uproot_options: str | Path | Mapping[str, Any] | None = None,
                 xrootd_timeout: float | None = None) -> dict[str, Any]:
    """The options every open of a run uses: ``uproot_options`` with ``timeout`` set from
    ``xrootd_timeout`` when given (it wins over a timeout in the options)."""
    options = parse_uproot_options(uproot_options)
    if xrootd_timeout is not None:
        if xrootd_timeout <= 0:
            raise UserError(f"--xrootd-timeout must be positive, got {xrootd_timeout}")
        # the XRootD client counts whole seconds; 0 would mean no timeout at all
        options["timeout"] = max(1, round(xrootd_timeout))
    return options


def open_options(path: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """uproot's keyword arguments for opening ``path``."""
    out = dict(options or {})
    handler = out.get("handler")
    if isinstance(handler, str):
        out["handler"] = _handler_class(handler)
    elif handler is None and is_xrootd(path):
        from uproot.source.xrootd import XRootDSource

        from coffea_hpc.extras import require

        require("XRootD", "reading of root:// URLs", extra="xrootd")
        out["handler"] = XRootDSource
    if is_xrootd(path):
        _client_settings(int(out["timeout"]) if out.get("timeout") else None)
    return out


def _handler_class(name: str) -> type:
    module_name, _, attr = name.replace(":", ".").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name or "uproot"), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise UserError(f"uproot option 'handler': cannot load {name!r}: {err}") from None
    if not isinstance(cls, type):
        raise UserError(f"uproot option 'handler': {name!r} is not a class")
    return cls


def _client_settings(timeout: int | None) -> None:
    global _client_timeout
    if _client_timeout == timeout:
        return
    _client_timeout = timeout
    try:
        from XRootD.client import EnvPutInt
    except ImportError:  # uproot names the missing package when it opens the file
        return
    if timeout is None:  # the client's own defaults, but for the stream error window
        settings = {"TimeoutResolution": 15, "ConnectionWindow": 120,
                    "StreamErrorWindow": _STREAM_ERROR_WINDOW}
    else:
        window = max(1, min(timeout, 120))
        settings = {"TimeoutResolution": 1, "ConnectionWindow": window,
                    "StreamErrorWindow": min(window, _STREAM_ERROR_WINDOW)}
    for name, value in settings.items():
        if f"XRD_{name.upper()}" not in os.environ:
            EnvPutInt(name, value)
