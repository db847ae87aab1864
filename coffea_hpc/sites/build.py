"""A validated site, turned into Parsl objects.

Three small registries keyed by the YAML ``type:`` build the executor, the provider and the
launcher, and compose them the way Parsl's own configs do. Building touches nothing outside
this process: no scheduler command runs and no socket opens until the backend starts, so
every preset can be built (and checked against its golden file) on a laptop.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coffea_hpc.backends.parsl import pool_launch_command, python_launch_commands
from coffea_hpc.errors import MissingDependencyError, SiteError
from coffea_hpc.sites.schema import ExecutorSpec, ProviderSpec, SiteConfig, walltime_seconds

__all__ = ["ADDRESS_PLACEHOLDER", "build_config", "build_executor", "build_provider",
           "drain_period"]

ADDRESS_PLACEHOLDER = "<address of {interface}>"


def _launcher(spec: ProviderSpec) -> Any:
    from parsl import launchers

    kind = spec.resolved_launcher
    if kind == "srun":
        return launchers.SrunLauncher(overrides=spec.launcher_overrides)
    if kind == "mpiexec":
        return launchers.MpiExecLauncher(bind_cmd="--cpu-bind",
                                         overrides=spec.launcher_overrides)
    if kind == "simple":
        return launchers.SimpleLauncher()
    return launchers.SingleNodeLauncher()


def _cores(spec: ProviderSpec) -> int | None:
    if spec.cores_per_node == "auto":
        return os.cpu_count() or 1
    return spec.cores_per_node


def _slurm(spec: ProviderSpec) -> Any:
    from parsl.providers import SlurmProvider

    return SlurmProvider(
        partition=spec.partition, account=spec.account, qos=spec.qos,
        constraint=spec.constraint, nodes_per_block=spec.nodes_per_block,
        cores_per_node=_cores(spec), mem_per_node=spec.mem_per_node,
        gpus_per_node=spec.gpus_per_node, init_blocks=spec.init_blocks,
        min_blocks=spec.min_blocks, max_blocks=spec.max_blocks, parallelism=spec.parallelism,
        walltime=spec.walltime, scheduler_options=spec.scheduler_options,
        worker_init=spec.worker_init, cmd_timeout=spec.cmd_timeout, exclusive=spec.exclusive,
        launcher=_launcher(spec),
    )


def _pbspro(spec: ProviderSpec) -> Any:
    from parsl.providers import PBSProProvider

    return PBSProProvider(
        account=spec.account, queue=spec.queue, scheduler_options=spec.scheduler_options,
        select_options=spec.select_options, worker_init=spec.worker_init,
        nodes_per_block=spec.nodes_per_block, cpus_per_node=_cores(spec) or 1,
        init_blocks=spec.init_blocks, min_blocks=spec.min_blocks, max_blocks=spec.max_blocks,
        parallelism=spec.parallelism, walltime=spec.walltime, cmd_timeout=spec.cmd_timeout,
        launcher=_launcher(spec),
    )


def _condor(spec: ProviderSpec) -> Any:
    from parsl.providers import CondorProvider

    return CondorProvider(
        nodes_per_block=spec.nodes_per_block, cores_per_slot=_cores(spec),
        mem_per_slot=spec.mem_per_node, init_blocks=spec.init_blocks,
        min_blocks=spec.min_blocks, max_blocks=spec.max_blocks, parallelism=spec.parallelism,
        project=spec.account or "", scheduler_options=spec.scheduler_options,
        walltime=spec.walltime, worker_init=spec.worker_init, requirements=spec.requirements,
        cmd_timeout=spec.cmd_timeout, launcher=_launcher(spec),
    )


def _local(spec: ProviderSpec) -> Any:
    from parsl.providers import LocalProvider

    return LocalProvider(
        nodes_per_block=spec.nodes_per_block, init_blocks=spec.init_blocks,
        min_blocks=spec.min_blocks, max_blocks=spec.max_blocks, parallelism=spec.parallelism,
        worker_init=spec.worker_init, cmd_timeout=spec.cmd_timeout, launcher=_launcher(spec),
    )


PROVIDERS: dict[str, Callable[[ProviderSpec], Any]] = {
    "slurm": _slurm, "pbspro": _pbspro, "condor": _condor, "local": _local,
}


def build_provider(spec: ProviderSpec) -> Any:
    return PROVIDERS[spec.type](spec)


def _address(spec: ExecutorSpec, resolve: bool) -> str | None:
    """The one address the interchange binds and workers connect to; None (every
    interface) only for a site that says ``bind_all``."""
    if spec.loopback:
        return "127.0.0.1"
    if spec.address:
        return spec.address
    if spec.address_by:
        if not resolve:
            return ADDRESS_PLACEHOLDER.format(interface=f"this host's {spec.address_by}")
        from parsl import addresses

        return getattr(addresses, f"address_by_{spec.address_by}")()
    if spec.interface:
        if not resolve:
            return ADDRESS_PLACEHOLDER.format(interface=spec.interface)
        from parsl.addresses import address_by_interface

        try:
            return address_by_interface(spec.interface)
        except Exception:
            raise SiteError(
                f"network interface {spec.interface!r} does not exist on this machine: this "
                "site expects its driver on the centre's login or compute nodes (or set "
                "executor.address)"
            ) from None
    return None  # bind_all: Parsl offers workers every address of this machine


def _htex(spec: ExecutorSpec, provider: Any, resolve: bool) -> Any:
    from parsl.executors import HighThroughputExecutor

    address = _address(spec, resolve)
    extra: dict[str, Any] = (python_launch_commands(spec.worker_start) if spec.python == "driver"
                             else {"launch_cmd": pool_launch_command(spec.worker_start)})
    if spec.port is not None:
        extra["worker_port_range"] = (spec.port, spec.port + 1)
    return HighThroughputExecutor(
        label=spec.label, address=address, encrypted=spec.encrypted,
        loopback_address="127.0.0.1", cores_per_worker=spec.cores_per_worker,
        mem_per_worker=spec.mem_per_worker, max_workers_per_node=spec.max_workers_per_node,
        available_accelerators=spec.available_accelerators, cpu_affinity=spec.cpu_affinity,
        heartbeat_period=spec.heartbeat_period, heartbeat_threshold=spec.heartbeat_threshold,
        provider=provider, **extra,
    )


def _ndcctools(kind: str) -> None:
    try:
        __import__(f"ndcctools.{kind}")
    except ImportError:
        raise MissingDependencyError(
            f"the {kind} executor needs ndcctools, which is only on conda-forge: "
            "conda install -c conda-forge ndcctools"
        ) from None


def _taskvine(spec: ExecutorSpec, provider: Any, resolve: bool) -> Any:
    _ndcctools("taskvine")
    from parsl.executors.taskvine import TaskVineExecutor, TaskVineManagerConfig

    return TaskVineExecutor(label=spec.label, provider=provider,
                            manager_config=TaskVineManagerConfig(port=spec.port or 9123))


def _workqueue(spec: ExecutorSpec, provider: Any, resolve: bool) -> Any:
    _ndcctools("work_queue")
    from parsl.executors import WorkQueueExecutor

    return WorkQueueExecutor(label=spec.label, provider=provider, port=spec.port or 9123)


def _threadpool(spec: ExecutorSpec, provider: Any, resolve: bool) -> Any:
    from parsl.executors import ThreadPoolExecutor

    return ThreadPoolExecutor(label=spec.label, max_threads=spec.max_workers_per_node or 1)


EXECUTORS: dict[str, Callable[[ExecutorSpec, Any, bool], Any]] = {
    "htex": _htex, "taskvine": _taskvine, "workqueue": _workqueue,
    "threadpool": _threadpool,
}


def build_executor(site: SiteConfig, *, resolve_address: bool = True) -> Any:
    kind = site.executor.type
    if kind == "globus":
        raise SiteError("globus sites run through the Globus Compute backend, not a Parsl "
                        "config (coffea_hpc.backends.globus)")
    provider = None if kind == "threadpool" else build_provider(site.provider)
    executor = EXECUTORS[kind](site.executor, provider, resolve_address)
    drain = drain_period(site)
    if drain is not None and hasattr(executor, "drain_period"):
        executor.drain_period = drain
    return executor


_ENFORCED_WALLTIME = ("slurm", "pbspro")


def drain_period(site: SiteConfig) -> int | None:
    """Seconds after which a block's HTEx workers stop taking tasks and leave once idle.

    A batch system kills a block at its walltime, and whatever ran on it is lost; workers
    that drain before it finish their chunks and leave, and Parsl's strategy starts a new
    block while work remains. None where blocks have no walltime that anyone enforces.
    """
    if site.provider.type not in _ENFORCED_WALLTIME:
        return None
    walltime = walltime_seconds(site.provider.walltime)
    margin = site.executor.drain_before_walltime
    if margin is None:
        margin = min(max(0.1 * walltime, 30.0), 900.0, walltime / 2)
    if margin <= 0:
        return None
    return max(int(walltime - margin), 1)


def build_config(site: SiteConfig, run_dir: str | Path, *, resolve_address: bool = True) -> Any:
    """The Parsl ``Config`` of ``site``, logging under ``run_dir``.

    Retries stay with coffea-hpc's error policy (``retries=0``), so they behave the same on
    every backend.
    """
    from parsl.config import Config

    return Config(
        executors=[build_executor(site, resolve_address=resolve_address)],
        run_dir=str(run_dir),
        retries=0,
        strategy=None if site.strategy == "none" else site.strategy,
        strategy_period=site.strategy_period,
        max_idletime=site.max_idletime,
        usage_tracking=0,
    )
