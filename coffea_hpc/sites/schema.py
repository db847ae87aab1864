"""The shape of a site: a validated description of an executor and a provider.

Sites are data. A YAML file names the Parsl executor (*what* runs workers), the provider
(*where* blocks of nodes come from) and its launcher (*how* workers spread over a block's
nodes), with the knobs people set at HPC centres. Values are checked here, once, with
messages that name the field; `coffea_hpc.sites.build` turns a valid site into Parsl objects.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from coffea_hpc.backends._worker_pool import WorkerStart

__all__ = ["ExecutorSpec", "ProviderSpec", "SiteConfig", "SubmitSpec", "walltime_seconds"]

ExecutorType = Literal["htex", "mpi", "taskvine", "workqueue", "globus", "threadpool"]
ProviderType = Literal["slurm", "pbspro", "condor", "local"]
LauncherType = Literal["srun", "mpiexec", "single-node", "simple"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$"
"""Site names go into job scripts and file names: no path steps, spaces or line breaks."""
_WALLTIME = re.compile(r"^(\d+-)?\d{1,3}:\d{2}:\d{2}$")
DEFAULT_LAUNCHERS: dict[str, LauncherType] = {
    "slurm": "srun", "pbspro": "mpiexec", "condor": "single-node", "local": "single-node",
}


def walltime_seconds(value: str) -> int:
    """``[D-]HH:MM:SS`` in seconds."""
    days, _, clock = value.rpartition("-")
    hours, minutes, seconds = (int(x) for x in clock.split(":"))
    return int(days or 0) * 86_400 + hours * 3_600 + minutes * 60 + seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExecutorSpec(_Strict):
    """The Parsl executor and how workers reach it."""

    type: ExecutorType = "htex"
    label: str = "coffea-hpc"
    cores_per_worker: float = Field(default=1.0, gt=0)
    mem_per_worker: float | None = Field(default=None, gt=0, description="GB")
    max_workers_per_node: int | None = Field(default=None, ge=1)
    available_accelerators: int | list[str] = 0
    cpu_affinity: str = "none"
    address: str | None = Field(
        default=None, description="the address workers connect to (and the only one bound)")
    interface: str | None = Field(
        default=None, description="network interface whose address workers connect to")
    address_by: Literal["hostname", "route"] | None = Field(
        default=None, description="the address this host's name resolves to (hostname), or "
                                  "the one its default route leaves by (route)")
    loopback: bool = Field(
        default=False, description="workers run on this machine: bind to 127.0.0.1 only")
    bind_all: bool = Field(
        default=False, description="offer workers every address of this host and listen on "
                                   "all interfaces (only where a site needs it)")
    encrypted: bool = Field(
        default=True, description="encrypt and authenticate worker traffic (CurveZMQ); "
                                  "turning it off needs plaintext_reason")
    plaintext_reason: str | None = Field(
        default=None, description="why this site's worker traffic may travel unencrypted")
    python: Literal["driver", "path"] = Field(
        default="driver",
        description="workers use the driver's interpreter (driver) or the first python on "
                    "PATH after worker_init (path)")
    worker_start: WorkerStart = Field(
        default="forkserver",
        description="htex: a block's workers are forked from one process that imported "
                    "Parsl and coffea once (forkserver: one import per node from the shared "
                    "filesystem, not one per worker), or each is a fresh interpreter started "
                    "by Parsl's own pool (spawn)")
    endpoint_id: str | None = None
    endpoint_config: dict[str, Any] = Field(
        default_factory=dict, description="user_endpoint_config sent with every Globus task "
                                          "(fills the endpoint's template: account, walltime...)")
    remote_dir: str | None = Field(
        default=None, description="endpoint-side folder for spilled partials and outputs "
                                  "($VARS expand on the endpoint)")
    heartbeat_period: int = Field(
        default=30, ge=1, description="seconds between heartbeats of HTEx workers and "
                                      "interchange")
    heartbeat_threshold: int = Field(
        default=120, ge=2, description="seconds without a heartbeat after which a block's "
                                       "workers count as gone and their chunks run again")
    drain_before_walltime: float | None = Field(
        default=None, ge=0,
        description="seconds before a block's walltime at which its workers stop taking "
                    "chunks and leave when idle, so no chunk is cut off by the walltime "
                    "(default: 10% of the walltime, 30 s to 15 min, at most half of it; "
                    "0: never drain)")
    port: int | None = Field(default=None, ge=1024, le=65535)


class ProviderSpec(_Strict):
    """Where blocks of nodes come from, with the scheduler knobs centres document."""

    type: ProviderType = "local"
    launcher: LauncherType | None = None
    launcher_overrides: str = ""
    account: str | None = None
    partition: str | None = None
    queue: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes_per_block: int = Field(default=1, ge=1)
    cores_per_node: int | Literal["auto"] | None = None
    mem_per_node: int | None = Field(default=None, ge=1, description="GB")
    gpus_per_node: int | None = Field(default=None, ge=0)
    walltime: str = "01:00:00"
    exclusive: bool = True
    worker_init: str = ""
    scheduler_options: str = ""
    select_options: str = ""
    requirements: str = ""
    init_blocks: int = Field(default=1, ge=0)
    min_blocks: int = Field(default=0, ge=0)
    max_blocks: int = Field(default=1, ge=1)
    parallelism: float = Field(default=1.0, gt=0, le=1)
    cmd_timeout: int = Field(default=60, ge=1)

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, value: str) -> str:
        if not _WALLTIME.match(value):
            raise ValueError(f"{value!r} is not a wall time like 01:30:00 or 1-00:00:00")
        return value

    @model_validator(mode="after")
    def _blocks(self) -> ProviderSpec:
        if not self.min_blocks <= self.max_blocks:
            raise ValueError(f"min_blocks ({self.min_blocks}) exceeds max_blocks "
                             f"({self.max_blocks})")
        if self.init_blocks > self.max_blocks:
            raise ValueError(f"init_blocks ({self.init_blocks}) exceeds max_blocks "
                             f"({self.max_blocks})")
        return self

    @property
    def resolved_launcher(self) -> LauncherType:
        return self.launcher or DEFAULT_LAUNCHERS[self.type]


class SubmitSpec(_Strict):
    """The driver job of ``coffea-hpc submit``: the whole run inside one allocation."""

    nodes: int = Field(default=1, ge=1)
    walltime: str | None = None
    setup: str = Field(default="", description="shell lines run before the driver "
                                                "(module loads, environment activation)")
    directives: str = Field(default="", description="extra scheduler directives")

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, value: str | None) -> str | None:
        if value is not None and not _WALLTIME.match(value):
            raise ValueError(f"{value!r} is not a wall time like 01:30:00")
        return value


class SiteConfig(_Strict):
    """A complete site: one executor, one provider, and how to submit a driver there."""

    name: str = Field(pattern=_NAME, description="letters, digits and . _ @ + -")
    description: str = ""
    docs: str = ""
    aliases: tuple[Annotated[str, Field(pattern=_NAME)], ...] = ()
    requires_account: bool = False
    executor: ExecutorSpec = ExecutorSpec()
    provider: ProviderSpec = ProviderSpec()
    submit: SubmitSpec = SubmitSpec()
    strategy: Literal["simple", "htex_auto_scale", "none"] = "simple"
    strategy_period: float = Field(default=5.0, gt=0)
    max_idletime: float = Field(default=120.0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> SiteConfig:
        if self.executor.type == "globus" and self.provider.type != "local":
            raise ValueError("a globus executor gets its workers from the endpoint; "
                             "leave the provider out (or type: local)")
        if self.executor.type == "mpi":
            raise ValueError(
                "executor.type: mpi (Parsl's MPIExecutor) gives each task whole nodes to "
                "launch an MPI application; a chunk is one Python process, so chunks run on "
                "type: htex (a worker per core), and large outputs are merged with MPI by "
                "--reduce mpi on any executor")
        ex = self.executor
        if ex.type != "htex" and ex.worker_start != "forkserver":  # a dump names the default
            raise ValueError(f"executor.worker_start is how htex blocks start their workers; "
                             f"a {ex.type} executor starts its own (leave it out)")
        if ex.type == "htex":
            if not ex.encrypted and not (ex.plaintext_reason or "").strip():
                raise ValueError("executor.encrypted: false needs executor.plaintext_reason: "
                                 "say why worker traffic (tasks, results, the run's key) may "
                                 "travel unencrypted on this site")
            if not (ex.loopback or ex.address or ex.interface or ex.address_by or ex.bind_all):
                raise ValueError("say which address workers reach the driver on: "
                                 "executor.interface (e.g. hsn0), executor.address, "
                                 "executor.address_by: hostname, or executor.loopback: true "
                                 "(executor.bind_all: true listens on every interface)")
        return self

    @property
    def scheduler(self) -> Literal["slurm", "pbs", "condor", "none"]:
        return {"slurm": "slurm", "pbspro": "pbs", "condor": "condor"}.get(
            self.provider.type, "none")  # type: ignore[return-value]

    def workers(self, cpu_count: int) -> int:
        """How many workers the site runs at full scale-out (for batch sizes and bars)."""
        ex, pr = self.executor, self.provider
        cores = cpu_count if pr.cores_per_node in (None, "auto") else int(pr.cores_per_node)
        per_node = ex.max_workers_per_node or max(int(cores // ex.cores_per_worker), 1)
        return per_node * pr.nodes_per_block * pr.max_blocks
