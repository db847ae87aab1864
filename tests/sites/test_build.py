"""Every preset builds its Parsl objects without touching the network (golden files)."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from coffea_hpc.errors import MissingDependencyError, SiteError
from coffea_hpc.sites import build_config, resolve_site
from coffea_hpc.sites.schema import SiteConfig
from tests.sites.conftest import check_golden
from tests.sites.test_registry import PRESETS

NEEDS_NDCCTOOLS = {"taskvine-local", "workqueue-local"}


@pytest.fixture
def offline(monkeypatch):
    """Fail the test if building opens a socket or runs a command.

    One exception, Parsl's own: its SlurmProvider runs ``sacct -X`` when constructed, to
    choose between sacct and squeue for status queries; here it is answered as on a machine
    without Slurm accounting, and nothing else may run.
    """
    from parsl.providers import SlurmProvider

    def refuse(*args, **kwargs):
        raise AssertionError(f"building a site touched the outside: {args[:2]}")

    def sacct_only(self, cmd, timeout=None):
        assert cmd == "sacct -X", f"building a site ran {cmd!r}"
        return 1, "", "Slurm accounting storage is disabled"

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "bind", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(SlurmProvider, "execute_wait", sacct_only)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # 'cores_per_node: auto', the same anywhere


@pytest.mark.parametrize("name", sorted(set(PRESETS) - NEEDS_NDCCTOOLS))
def test_presets_build_offline_and_match_golden(name, offline):
    site = resolve_site(name, overrides={"account": "ACCOUNT"})
    config = build_config(site, "RUN_DIR", resolve_address=False)
    assert config.retries == 0  # retries belong to coffea-hpc's error policy
    check_golden(f"config-{name}.txt", repr(config) + "\n")


@pytest.mark.parametrize("name", sorted(NEEDS_NDCCTOOLS))
def test_conda_only_executors_say_what_to_install(name, offline):
    site = resolve_site(name)
    check_golden(f"site-{name}.yaml", site.model_dump_json(indent=1) + "\n")
    with pytest.raises(MissingDependencyError,
                       match="conda install -c conda-forge ndcctools"):
        build_config(site, "RUN_DIR")


def test_interfaces_resolve_only_on_the_machine_that_has_them():
    site = resolve_site("perlmutter-cpu", overrides={"account": "m1"})
    with pytest.raises(SiteError, match="network interface 'hsn0' does not exist"):
        build_config(site, "RUN_DIR")
    lo = site.model_copy(update={"executor": site.executor.model_copy(
        update={"interface": "lo"})})
    assert build_config(lo, "RUN_DIR").executors[0].address == "127.0.0.1"


def test_loopback_sites_bind_nothing_else():
    config = build_config(resolve_site("local"), "RUN_DIR")
    executor = config.executors[0]
    assert executor.address == "127.0.0.1" and executor.loopback_address == "127.0.0.1"


def test_globus_sites_are_not_parsl_configs():
    site = SiteConfig(name="g", executor={"type": "globus", "endpoint_id": "abc"})
    with pytest.raises(SiteError, match="Globus Compute backend"):
        build_config(site, "RUN_DIR")


@pytest.mark.parametrize(("python", "worker_start", "pool"), [
    ("driver", "forkserver", " -m coffea_hpc.backends._worker_pool "),
    ("driver", "spawn", " -m parsl.executors.high_throughput.process_worker_pool "),
    ("path", "forkserver", "coffea-hpc-worker-pool "),
    ("path", "spawn", "process_worker_pool.py "),
])
def test_a_site_chooses_how_its_workers_start(python, worker_start, pool, offline):
    """Forked from one import (the default) or spawned by Parsl's own pool, with the
    driver's interpreter or the first on the workers' PATH."""
    site = SiteConfig(name="s", executor={"python": python, "worker_start": worker_start,
                                          "address": "10.0.0.1"})
    launch = build_config(site, "RUN_DIR").executors[0].launch_cmd
    assert pool in launch
    assert launch.startswith(pool.lstrip()) == (python == "path")


def test_worker_start_is_refused_where_it_would_do_nothing():
    with pytest.raises(ValueError, match="worker_start is how htex blocks start"):
        SiteConfig(name="s", executor={"type": "taskvine", "worker_start": "spawn"})
    # what `coffea-hpc sites show` prints names the default, and reads back
    shown = SiteConfig(name="s", executor={"type": "taskvine"}).model_dump(mode="json")
    assert SiteConfig.model_validate(shown).executor.worker_start == "forkserver"
