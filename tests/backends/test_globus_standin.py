"""Globus backend, tested against a stand-in for the Globus Compute service.

The cloud service cannot be reached here: these are stand-in tests. The stand-in
(`tests/backends/globus_standin.py`) keeps the SDK Executor's interface and enforces the
service's batch, rate, payload and result limits; the live procedure is in docs/globus.md.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
import yaml

from coffea_hpc.backends import ErrorPolicy
from coffea_hpc.backends.globus import GlobusBackend, TaskLost, _Watchdog, ensure_logged_in
from coffea_hpc.errors import ChunkFailedError, RemoteEnvironmentError
from coffea_hpc.examples.dimuon import DimuonProcessor
from coffea_hpc.output import load
from coffea_hpc.reduction import Reduction
from coffea_hpc.runner import run
from tests.backends.globus_standin import StandInExecutor
from tests.helpers import assert_same

ENDPOINT = "2f1a0e9c-0000-4000-8000-standin00001"


@pytest.fixture(scope="module")
def expected(fileset):
    return run(DimuonProcessor(), fileset, backend="iterative", chunksize=1_000).output


def _backend(tmp_path: Path, executors: list, **options) -> GlobusBackend:
    standin = {k: options.pop(k) for k in list(options) if k in (
        "max_payload_bytes", "endpoint_versions", "fail_tasks", "lose_tasks",
        "service_max_result_bytes")}
    if "service_max_result_bytes" in standin:
        standin["max_result_bytes"] = standin.pop("service_max_result_bytes")

    options.setdefault("api_burst_window_s", 1)  # the SDK's default 16 s only slows tests

    def factory(**kwargs):
        executor = StandInExecutor(**kwargs, **standin)
        executors.append(executor)
        return executor

    return GlobusBackend(ENDPOINT, remote_dir=str(tmp_path / "endpoint-scratch"),
                         workers=2, executor_factory=factory, **options)


def test_standin_full_run_equals_a_local_run(fileset, expected, tmp_path):
    executors: list[StandInExecutor] = []
    outcome = run(DimuonProcessor(), fileset, backend=_backend(tmp_path, executors),
                  chunksize=1_000, output_dir=tmp_path / "out", chunks_per_task=1)
    assert_same(outcome.output, expected)
    assert_same(load(tmp_path / "out" / "output.coffea"), expected)
    [executor] = executors
    tasks = sum(c.tasks for c in executor.calls)
    assert tasks == 1 + 4 + 12  # version probe, four files, twelve chunks
    assert outcome.report["backend"] == "globus"


def test_standin_large_partials_are_spilled_and_merged_on_the_endpoint(fileset, expected,
                                                                      tmp_path):
    executors: list[StandInExecutor] = []
    # results over 2 kB may not come back: every partial must be spilled remotely
    backend = _backend(tmp_path, executors, max_result_bytes=2_000,
                       service_max_result_bytes=16_000)
    outcome = run(DimuonProcessor(), fileset, backend=backend, chunksize=1_000,
                  output_dir=tmp_path / "out", reduction=Reduction(mode="tree", fan_in=3))
    assert outcome.remote is not None  # the final output is over 2 kB too
    assert_same(load(outcome.remote.location), expected)
    assert outcome.report["output_location"] == outcome.remote.location
    assert not (tmp_path / "out" / "output.coffea").exists()
    assert Path(outcome.remote.location).is_relative_to(tmp_path / "endpoint-scratch")
    leftovers = [p for p in (tmp_path / "endpoint-scratch").rglob("partial-*")]
    assert leftovers == []  # merged partials are removed on the endpoint
    assert outcome.report["reduction"]["merge_tasks"] >= 1


def test_standin_spilled_partials_come_back_merged_when_the_sum_fits(fileset, expected,
                                                                    tmp_path):
    # a cap between one chunk's result and the merged output: chunks spill, the sum returns
    backend = _backend(tmp_path, [], max_result_bytes=2_000)
    backend.max_result_bytes = 2_000
    outcome = run(DimuonProcessor(), fileset, backend=backend, chunksize=1_000,
                  output_dir=tmp_path / "out", reduction=Reduction(mode="driver"))
    assert outcome.remote is not None  # everything here is above 2 kB, the sum too
    roomy = _backend(tmp_path / "b", [], max_result_bytes=10 * 1024**2)
    outcome = run(DimuonProcessor(), fileset, backend=roomy, chunksize=1_000,
                  output_dir=tmp_path / "out2")
    assert outcome.remote is None and outcome.output_path.exists()
    assert_same(outcome.output, expected)


def test_standin_oversized_results_are_refused_by_the_service(fileset, tmp_path):
    """Without the backend's cap, the stand-in refuses results the way the service does."""
    backend = _backend(tmp_path, [], max_result_bytes=10**9, service_max_result_bytes=2_000)
    with pytest.raises(ChunkFailedError, match="exceeds the service's limit"):
        run(DimuonProcessor(), fileset, backend=backend, chunksize=1_000,
            policy=ErrorPolicy(max_retries=0))


def test_standin_version_mismatch_names_what_differs(fileset, tmp_path):
    backend = _backend(tmp_path, [], endpoint_versions={"coffea": "2024.1.0"})
    with pytest.raises(RemoteEnvironmentError,
                       match=r"coffea \S+ here, 2024\.1\.0 on the endpoint"):
        run(DimuonProcessor(), fileset, backend=backend)


def test_standin_failed_and_lost_tasks_are_retried(fileset, expected, tmp_path):
    executors: list[StandInExecutor] = []
    # the window is short so that rate limiting cannot hold a retry past the timeout
    backend = _backend(tmp_path, executors, fail_tasks={3, 7}, lose_tasks={9},
                       task_timeout=10.0, api_burst_window_s=1)
    outcome = run(DimuonProcessor(), fileset, backend=backend, chunksize=1_000,
                  policy=ErrorPolicy(max_retries=1), chunks_per_task=1)
    assert_same(outcome.output, expected)
    assert sum(c.tasks for c in executors[0].calls) == 1 + 4 + 12 + 3  # three resubmitted


def test_standin_submissions_are_batched_and_rate_limited(fileset, expected, tmp_path):
    executors: list[StandInExecutor] = []
    backend = _backend(tmp_path, executors, batch_size=3, api_burst_limit=2,
                       api_burst_window_s=1)
    outcome = run(DimuonProcessor(), fileset, backend=backend, chunksize=1_000)
    assert_same(outcome.output, expected)
    calls = executors[0].calls
    assert max(c.tasks for c in calls) <= 3
    for i, call in enumerate(calls):  # never more than 2 calls in any 1 s window
        in_window = [c for c in calls[i:] if c.at - call.at < 1.0]
        assert len(in_window) <= 2


def test_standin_payloads_over_the_limit_fail_clearly(fileset, tmp_path):
    backend = _backend(tmp_path, [], max_payload_bytes=500)
    with pytest.raises(ChunkFailedError, match=r"payload of .* bytes exceeds"):
        run(DimuonProcessor(), fileset, backend=backend, policy=ErrorPolicy(max_retries=0))


def _heavy_processor(ballast_bytes: int) -> DimuonProcessor:
    processor = DimuonProcessor()
    processor.ballast = os.urandom(ballast_bytes)  # corrections, a model: travels by value
    return processor


def test_standin_heavy_processors_go_in_batches_the_service_accepts(fileset, expected,
                                                                    tmp_path):
    """Twelve 60 kB chunk tasks in one default batch would be refused (600 kB limit)."""
    executors: list[StandInExecutor] = []
    backend = _backend(tmp_path, executors, max_payload_bytes=600_000,
                       max_request_bytes=600_000)
    outcome = run(_heavy_processor(60_000), fileset, backend=backend, chunksize=1_000,
                  chunks_per_task=1)
    assert_same(outcome.output, expected)
    calls = executors[0].calls
    assert max(c.payload_bytes for c in calls) <= 600_000
    assert max(c.tasks for c in calls) < 12


def test_standin_a_task_over_any_request_limit_is_refused_with_advice(fileset, tmp_path):
    backend = _backend(tmp_path, [], max_payload_bytes=600_000, max_request_bytes=600_000)
    with pytest.raises(ChunkFailedError, match="load large inputs"):
        run(_heavy_processor(400_000), fileset, backend=backend, chunksize=1_000,
            policy=ErrorPolicy(max_retries=0))


def test_watchdog_spares_tasks_that_wait_while_the_endpoint_answers():
    watchdog = _Watchdog(0.5)
    watchdog.start()
    try:
        waiting = Future()
        watched = watchdog.watch(waiting)
        others = [Future() for _ in range(6)]
        for future in others:
            watchdog.watch(future)
        for future in others:
            time.sleep(0.2)  # answers keep coming for 1.2 s, over twice the timeout
            future.set_result(None)
        assert not watched.done()
        with pytest.raises(TaskLost, match="answered nothing else"):
            watched.result(timeout=3)  # once the endpoint falls silent, it is lost
        assert waiting.cancelled()
    finally:
        watchdog.stop()


def test_missing_login_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "no-tokens"))
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_ID", raising=False)
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_SECRET", raising=False)
    with pytest.raises(RemoteEnvironmentError, match="not logged in to Globus Compute") as info:
        ensure_logged_in()
    assert "\n" not in str(info.value)
    with pytest.raises(RemoteEnvironmentError, match="needs an endpoint id"):
        GlobusBackend("")


@pytest.mark.parametrize("site", ["perlmutter", "polaris"])
def test_endpoint_config_renders_for_the_endpoint(site):
    """The template is valid YAML for the endpoint once its own (Jinja) values are filled."""
    import jinja2

    from coffea_hpc.sites.endpoint import render_endpoint_config

    text = render_endpoint_config(site)
    config = yaml.safe_load(jinja2.Template(text).render(
        account="m1234", walltime="00:30:00", nodes=2))
    engine = config["engine"]
    assert engine["type"] == "GlobusComputeEngine"
    provider = engine["provider"]
    assert provider["type"] == {"perlmutter": "SlurmProvider", "polaris": "PBSProProvider"}[site]
    assert provider["account"] == "m1234" and provider["nodes_per_block"] == 2
    assert "coffea-hpc" in provider["worker_init"] or "activate" in provider["worker_init"]


@pytest.mark.parametrize("name", ["globus", "globus-perlmutter"])
def test_globus_sites_make_globus_backends(name):
    from coffea_hpc.sites import site_backend

    backend = site_backend(name, overrides={"endpoint": ENDPOINT})
    assert isinstance(backend, GlobusBackend) and backend.endpoint_id == ENDPOINT
    assert backend.remote_storage.endswith("coffea-hpc")


def test_cli_globus_errors_are_one_line(capsys, fileset_path, tmp_path, monkeypatch):
    from coffea_hpc.cli.app import main

    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(tmp_path / "no-tokens"))
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_ID", raising=False)
    monkeypatch.delenv("GLOBUS_COMPUTE_CLIENT_SECRET", raising=False)
    base = ["run", "coffea_hpc.examples.dimuon:DimuonProcessor", "-f", str(fileset_path),
            "-o", str(tmp_path / "out"), "--site", "globus"]
    assert main(base) == 2
    assert "needs an endpoint id: pass --endpoint UUID" in capsys.readouterr().err
    assert main([*base, "--endpoint", ENDPOINT]) == 2
    err = capsys.readouterr().err
    assert "not logged in to Globus Compute" in err and "Traceback" not in err
    assert main(["globus", "endpoint-config", "--site", "perlmutter"]) == 0
    assert "GlobusComputeEngine" in capsys.readouterr().out
