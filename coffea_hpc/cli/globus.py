"""``coffea-hpc globus ...``: endpoint configuration and login."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]

globus_app = typer.Typer(help="Globus Compute endpoints.", no_args_is_help=True)


@globus_app.command("endpoint-config")
def endpoint_config(
    site: Annotated[str, typer.Option(help="perlmutter or polaris.")],
    worker_init: Annotated[str | None, typer.Option(
        "--worker-init", help="Shell lines that activate coffea-hpc on the workers.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here.")] = None,
) -> None:
    """Print (or write) the endpoint's user_config_template.yaml.j2 for a centre."""
    from coffea_hpc.sites.endpoint import render_endpoint_config

    text = render_endpoint_config(site, worker_init=worker_init)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}", err=True)


@globus_app.command("login")
def login() -> None:
    """Log in to Globus Compute with the SDK's own flow (tokens stay in its storage)."""
    from coffea_hpc.extras import require

    require("globus_compute_sdk", "globus login", extra="globus")
    from globus_compute_sdk.sdk.auth.globus_app import get_globus_app

    app = get_globus_app()
    if app.login_required():
        app.login()
    typer.echo("logged in to Globus Compute", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(globus_app, name="globus")
