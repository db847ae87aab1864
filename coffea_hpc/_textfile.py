"""Reading the YAML and JSON files people hand to coffea-hpc (filesets, site files).

They come from colleagues, tutorials and generated lists, so reading them must not be a way
to hurt the run: bytes that are not UTF-8, YAML aliases that expand a few lines into
billions of nodes ("billion laughs": PyYAML builds the shared object, and everything that
walks it afterwards explodes), or nesting deep enough to exhaust the interpreter's stack
all become one `TextFileError` line naming the file, never a traceback or a hung driver.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TextFileError", "read_data", "read_yaml"]

_MAX_BYTES = 256 * 1024**2
"""Larger than any fileset of a million files written by coffea-hpc itself."""


class TextFileError(ValueError):
    """A file that cannot be read as data; the message is one line, without the path."""


class _NoAliasLoader(yaml.SafeLoader):
    """A safe loader that refuses anchors and aliases: nothing in a fileset or site needs
    them, and they are how a small file becomes an enormous structure."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise TextFileError(f"YAML aliases (*{event.anchor}) are not supported, line "
                                f"{event.start_mark.line + 1}: write the values out")
        return super().compose_node(parent, index)


def read_data(path: Path, *, yaml_format: bool) -> Any:
    """The data in ``path`` (YAML if ``yaml_format``, else JSON); `TextFileError` in one
    line when the file is not UTF-8 text, not valid, or hostile."""
    with open(path, "rb") as src:
        raw = src.read(_MAX_BYTES + 1)
    if len(raw) > _MAX_BYTES:
        raise TextFileError(f"larger than {_MAX_BYTES // 1024**2} MB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TextFileError(f"not UTF-8 text (byte {err.start})") from None
    if "\0" in text:
        raise TextFileError("not a text file (it holds NUL bytes)")
    try:
        if yaml_format:
            return yaml.load(text, Loader=_NoAliasLoader)
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise TextFileError(f"not valid JSON at line {err.lineno}, column {err.colno}: "
                            f"{err.msg}") from None
    except yaml.YAMLError as err:  # where, so the fix needs no YAML linter
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise TextFileError(f"not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise TextFileError("nested too deeply") from None


def read_yaml(path: str | Path, error: type[Exception]) -> Any:
    """The YAML document in ``path``; anything wrong raises ``error`` in one line naming
    the file."""
    try:
        return read_data(Path(path), yaml_format=True)
    except TextFileError as err:
        raise error(f"{path}: {err}") from None
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror})") from None
