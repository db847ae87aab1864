"""Running inside a batch allocation: workers on the nodes the job already holds.

``coffea-hpc submit`` writes a batch script whose driver runs ``coffea-hpc run
--inside-allocation``; users may write their own. Either way the driver finds its nodes in
the scheduler's environment and starts one worker pool per node through the scheduler's own
launcher (``srun`` under Slurm, ``mpiexec`` under PBS), without queueing anything new.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from coffea_hpc.errors import SiteError
from coffea_hpc.sites.schema import ExecutorSpec, ProviderSpec, SiteConfig

__all__ = ["Allocation", "detect_allocation", "site_inside"]


@dataclass(frozen=True)
class Allocation:
    scheduler: Literal["slurm", "pbs"]
    job_id: str
    nodes: int


def detect_allocation(env: Mapping[str, str] | None = None) -> Allocation:
    """The allocation this process runs in, from the scheduler's environment variables."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" in env:
        nodes = env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or "1"
        return Allocation("slurm", env["SLURM_JOB_ID"], int(nodes))
    if "PBS_JOBID" in env:
        nodefile = env.get("PBS_NODEFILE")
        nodes = len(set(Path(nodefile).read_text().split())) if nodefile else 1
        return Allocation("pbs", env["PBS_JOBID"], max(nodes, 1))
    raise SiteError("--inside-allocation: no Slurm or PBS job found (SLURM_JOB_ID / PBS_JOBID "
                    "are not set); run it from a batch script or use --site to submit workers")


def site_inside(site: SiteConfig | None, allocation: Allocation) -> SiteConfig:
    """``site`` (its executor knobs and worker_init) turned to use the allocation's nodes."""
    executor = site.executor if site is not None else ExecutorSpec(address_by="hostname")
    base = site.provider if site is not None else ProviderSpec()
    single = allocation.nodes == 1
    if single:
        executor = executor.model_copy(update={"loopback": True})
    provider = ProviderSpec(
        type="local",
        launcher="srun" if allocation.scheduler == "slurm" else "mpiexec",
        launcher_overrides=base.launcher_overrides,
        nodes_per_block=allocation.nodes,
        worker_init=base.worker_init,
        init_blocks=1, min_blocks=1, max_blocks=1,
    )
    name = f"{site.name if site else 'allocation'}@{allocation.scheduler}-{allocation.job_id}"
    return SiteConfig(name=name, executor=executor, provider=provider, strategy="none",
                      strategy_period=1.0)
