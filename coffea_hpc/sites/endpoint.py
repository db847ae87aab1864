"""Globus Compute endpoint configurations for the centres coffea-hpc knows.

The endpoint side is configured by a Jinja template (``user_config_template.yaml.j2``) that
the endpoint fills from each submission's ``user_endpoint_config``. The templates in
``templates/globus/`` keep those double-braced fields for the endpoint and take from
coffea-hpc only what is ours to say: how a worker activates the environment that has
coffea-hpc installed.
"""

from __future__ import annotations

from string import Template

from coffea_hpc._resources import resource_dir
from coffea_hpc.errors import SiteError

__all__ = ["ENDPOINT_SITES", "render_endpoint_config"]

ENDPOINT_SITES = ("perlmutter", "polaris")

_DEFAULT_WORKER_INIT = {
    "perlmutter": "module load python; source $HOME/coffea-hpc-env/bin/activate",
    "polaris": "module use /soft/modulefiles; module load conda; conda activate; "
               "source $HOME/coffea-hpc-env/bin/activate",
}


def render_endpoint_config(site: str, *, worker_init: str | None = None) -> str:
    if site not in ENDPOINT_SITES:
        raise SiteError(f"no endpoint template for {site!r}; there are: "
                        f"{', '.join(ENDPOINT_SITES)}")
    text = (resource_dir("templates") / "globus" / f"{site}.yaml.j2").read_text()
    return Template(text).substitute(worker_init=worker_init or _DEFAULT_WORKER_INIT[site])
