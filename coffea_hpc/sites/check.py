"""``coffea-hpc sites check``: find what breaks HPC runs before the run does.

The usual failures, in the order they bite: the scheduler's commands are missing; the
account, partition or QoS is refused; workers start but cannot reach the interchange
address; workers start with another Python environment (``worker_init``) and fail on the
first task with an obscure unpickling or version error. Each check says what it found and,
when it fails, what to change.
"""

from __future__ import annotations

import platform
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from coffea_hpc.errors import CoffeaHPCError
from coffea_hpc.sites.build import build_config
from coffea_hpc.sites.schema import SiteConfig
from coffea_hpc.sites.submit import SCHEDULERS

__all__ = ["Check", "check_site", "environment_versions"]

_PACKAGES = ("parsl", "coffea", "coffea-hpc", "awkward", "uproot", "cloudpickle")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not applicable / not checked
    detail: str
    fix: str = ""


def environment_versions() -> dict[str, str]:
    """What must match between driver and workers."""
    out = {"python": ".".join(platform.python_version_tuple()[:2])}
    for pkg in _PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out


class Probe:
    """A work element that reports the worker's host and versions."""

    keys = ("probe",)
    weight = 0

    def __call__(self) -> dict[str, str]:
        return {"host": socket.gethostname(), **environment_versions()}


def check_site(site: SiteConfig, run_dir: Path, *, probe: bool = True,
               timeout: float = 300.0) -> list[Check]:
    checks: list[Check] = []
    scheduler = SCHEDULERS.get(site.scheduler)
    if scheduler is None:
        checks.append(Check("scheduler", None, f"none needed ({site.provider.type} provider)"))
    else:
        missing = [c for c in {scheduler.submit[0], scheduler.status[0], scheduler.cancel[0]}
                   if shutil.which(c) is None]
        checks.append(Check(
            "scheduler commands", not missing,
            f"missing: {', '.join(sorted(missing))}" if missing else
            f"{', '.join(sorted({scheduler.submit[0], scheduler.status[0]}))} found",
            "run on a login node of the site, or load the scheduler's module"))
        if missing:
            return checks
        checks.append(_accepted(site))

    try:
        config = build_config(site, run_dir)
        address = getattr(config.executors[0], "address", None)
        checks.append(Check("interchange address", True,
                            f"workers will connect to {address or 'any address of this host'}"))
    except CoffeaHPCError as err:
        checks.append(Check("interchange address", False, str(err),
                            "set executor.address or executor.interface in a site file"))
        return checks
    if not probe:
        return checks
    checks.extend(_probe(site, config, timeout))
    return checks


def _accepted(site: SiteConfig) -> Check:
    pr = site.provider
    if site.scheduler != "slurm":
        return Check("account and queue", None,
                     f"not checked: {site.scheduler} has no dry-run submission")
    cmd = ["sbatch", "--test-only", f"--time={pr.walltime}", f"--nodes={pr.nodes_per_block}"]
    cmd += [f"--{k}={v}" for k, v in (("account", pr.account), ("partition", pr.partition),
                                      ("qos", pr.qos), ("constraint", pr.constraint)) if v]
    proc = subprocess.run([*cmd, "--wrap", "true"], capture_output=True, text=True, timeout=60)
    said = (proc.stderr or proc.stdout).strip().splitlines()
    if proc.returncode == 0:
        return Check("account and queue", True, said[-1] if said else "accepted")
    return Check("account and queue", False, said[-1] if said else f"exit {proc.returncode}",
                 "check provider.account, partition, qos and constraint (or --account)")


def _probe(site: SiteConfig, config: object, timeout: float) -> list[Check]:
    from coffea_hpc.backends.parsl import ParslBackend

    mine = environment_versions()
    started = time.monotonic()
    try:
        with ParslBackend(config, workers=1) as backend:
            future = backend.submit(Probe())
            try:
                theirs = future.result(timeout=timeout)
            except Exception as err:
                took = time.monotonic() - started
                kind = "no worker answered" if took >= timeout - 1 else \
                    f"the probe failed ({type(err).__name__}: {err})"
                return [Check("worker probe", False, f"{kind} within {took:.0f} s",
                              "check that provider.worker_init activates this environment and "
                              "that compute nodes can reach the interchange address; the "
                              f"block's output is under {config.run_dir}")]  # type: ignore[attr-defined]
    except CoffeaHPCError as err:
        return [Check("worker probe", False, str(err))]
    took = time.monotonic() - started
    checks = [Check("worker probe", True,
                    f"a worker on {theirs.pop('host')} answered after {took:.0f} s")]
    differ = {k: (mine[k], theirs.get(k, "missing")) for k in mine if theirs.get(k) != mine[k]}
    checks.append(Check(
        "versions", not differ,
        "driver and workers match: " + ", ".join(f"{k} {v}" for k, v in mine.items())
        if not differ else "differ: " + ", ".join(f"{k} {a} here, {b} on workers"
                                                  for k, (a, b) in differ.items()),
        "make provider.worker_init activate the same environment as the driver"))
    return checks
