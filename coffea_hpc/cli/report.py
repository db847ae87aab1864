"""``coffea-hpc report``: the HTML performance report of a finished (or stopped) run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["register"]

console = Console(stderr=True)


def report(
    output: Annotated[Path, typer.Argument(help="The run's output directory.")],
    html: Annotated[Path | None, typer.Option(
        "--output", "-o", help="HTML file to write (default OUTPUT/report.html).")] = None,
) -> None:
    """Write a self-contained HTML page on where the run's time went (see
    docs/performance.md)."""
    from coffea_hpc.report_html import write_report

    path = write_report(output, html)
    console.print(f"report: {path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(report)
