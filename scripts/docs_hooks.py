"""MkDocs hook: reference pages written from the code, so they cannot drift from it.

``<!-- cli-reference -->`` becomes every command of the Typer app with its options (flags,
type, default, help); ``<!-- run-options-reference -->`` the keys of a run-options file;
``<!-- api-reference -->`` the signatures and docstrings of the public Python functions.
"""

from __future__ import annotations

import inspect
from typing import Any

CLI = "<!-- cli-reference -->"
RUN_OPTIONS = "<!-- run-options-reference -->"
API = "<!-- api-reference -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if CLI in markdown:
        markdown = markdown.replace(CLI, cli_reference())
    if RUN_OPTIONS in markdown:
        markdown = markdown.replace(RUN_OPTIONS, run_options_reference())
    if API in markdown:
        markdown = markdown.replace(API, api_reference())
    return markdown


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def cli_reference() -> str:
    import typer

    from coffea_hpc.cli.app import app

    root = typer.main.get_command(app)
    out: list[str] = []
    _command(root, "coffea-hpc", out, depth=0)
    return "\n".join(out)


def _command(command: Any, path: str, out: list[str], depth: int) -> None:
    import typer

    if depth:
        out += [f"{'#' * min(depth + 1, 4)} `{path}`", ""]
        help_text = inspect.cleandoc(command.help or "")
        if help_text:
            out += [help_text, ""]
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        usage = " ".join([path, *(p.name.upper() for p in arguments), "[OPTIONS]"])
        out += ["```text", usage, "```", ""]
        ctx = typer.Context(command, info_name=path)
        rows = [param.get_help_record(ctx) for param in command.params]
        rows = [row for row in rows if row is not None]
        if rows:
            out += ["| option | meaning |", "|---|---|"]
            out += [f"| `{_cell(flags)}` | {_cell(meaning)} |" for flags, meaning in rows]
            out.append("")
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        _command(sub, f"{path} {name}", out, depth + 1)


def run_options_reference() -> str:
    from coffea_hpc.options import RunOptions

    defaults = RunOptions()
    rows = ["| key | type | default | command line |", "|---|---|---|---|"]
    for name, field in RunOptions.model_fields.items():
        key = field.alias or name
        kind = str(field.annotation).replace("typing.", "").replace("pathlib.", "")
        value = getattr(defaults, name)
        default = "" if value in (None, {}) else f"`{value}`"
        flag = "" if key == "site_config" else f"`--{key.replace('_', '-')}`"
        rows.append(f"| `{key}` | {_cell(kind)} | {default} | {flag} |")
    return "\n".join(rows)


def api_reference() -> str:
    import coffea_hpc

    out = []
    for name in ("run", "submit", "RunOptions", "ErrorPolicy", "RunOutcome", "Submission",
                 "Fileset", "preprocess"):
        obj = getattr(coffea_hpc, name)
        try:
            signature = f"{name}{inspect.signature(obj)}"
        except (TypeError, ValueError):
            signature = name
        out += [f"## `coffea_hpc.{name}`", "", "```python", signature, "```", "",
                inspect.cleandoc(obj.__doc__ or ""), ""]
    return "\n".join(out)
