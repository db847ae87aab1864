"""Reading YAML that people write by hand: a syntax error says where it is (line and column),
so the fix does not need a YAML linter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["read_yaml", "yaml_error_line"]


def yaml_error_line(path: str | Path, err: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: the file, line and column (1-based), and what the
    parser expected."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{path}: not valid YAML{where}: {problem}"


def read_yaml(path: str | Path, error: type[Exception]) -> Any:
    """The document in ``path``; a syntax error raises ``error`` with `yaml_error_line`."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise error(yaml_error_line(path, err)) from None
