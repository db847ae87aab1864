"""Parsl: one DataFlowKernel owned by one ``with`` block.

The backend takes any Parsl ``Config`` (sites build theirs from YAML) or, without one, makes
a HighThroughputExecutor on this machine: interchange and workers bound to loopback, one
worker per core. The DataFlowKernel is created directly and handed to the app, never loaded
into Parsl's global slot, and always cleaned up, so no interchange or worker pool outlives
the run, whatever happened in it.

Retries are not delegated to Parsl (``retries=0``): the task's `ErrorPolicy` retries, the
same way on every backend.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coffea_hpc.backends import _worker_pool
from coffea_hpc.backends._base import PoolBackend, run_element, warm_up
from coffea_hpc.backends._watchdog import Watchdog
from coffea_hpc.backends.protocol import WorkElement
from coffea_hpc.errors import BackendError, UserError
from coffea_hpc.output import private_dir

__all__ = ["ParslBackend", "WorkerStart", "local_htex_config", "pool_launch_command",
           "python_launch_commands"]

log = logging.getLogger(__name__)

LOCAL_LABEL = "coffea-hpc-local"


_QUIET_INTERCHANGE = (
    "import logging, runpy; logging.raiseExceptions = False; "
    "runpy.run_module('parsl.executors.high_throughput.interchange', run_name='__main__')")
"""Parsl's interchange, whose log file stops quietly when it cannot be written: it shares
the driver's terminal, and on a full disk each of its records printed a traceback there."""


WorkerStart = _worker_pool.WorkerStart

_POOL_MODULES = {"forkserver": _worker_pool.__name__, "spawn": _worker_pool.POOL}
_POOL_COMMANDS = {"forkserver": "coffea-hpc-worker-pool", "spawn": "process_worker_pool.py"}


def pool_launch_command(worker_start: WorkerStart = "forkserver", *,
                        interpreter: str | None = None) -> str:
    """HTEx's launch command for a block's worker pool: run by ``interpreter`` (a path) as
    a module, or, without one, the pool's command found on the workers' PATH."""
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD

    pool = (f"{interpreter} -m {_POOL_MODULES[worker_start]}" if interpreter
            else _POOL_COMMANDS[worker_start])
    return DEFAULT_LAUNCH_CMD.replace("process_worker_pool.py", pool, 1)


def python_launch_commands(worker_start: WorkerStart = "forkserver") -> dict[str, Any]:
    """HTEx launch commands that use this interpreter, not whatever is first on PATH.

    HTEx starts ``interchange.py`` and ``process_worker_pool.py`` by name, which fails when
    the virtual environment's ``bin`` is not on PATH (a venv used without activating it).
    Running them as modules of this interpreter removes that trap on the local machine.
    """
    return {
        "interchange_launch_cmd": [sys.executable, "-c", _QUIET_INTERCHANGE],
        "launch_cmd": pool_launch_command(worker_start, interpreter=sys.executable),
    }


_UNUSED_BY_LOCAL_POOLS = ("globus_compute_sdk",)


def _lean_launch_commands(run_dir: Path, worker_start: WorkerStart) -> dict[str, Any]:
    """Launch commands that hide packages a local pool never uses from its processes.

    ``import parsl`` imports ``globus_compute_sdk`` when it is installed (for Parsl's
    GlobusComputeExecutor): ~0.5 s in each of the five processes a local HTEx starts one
    after another (interchange, worker pool, its multiprocessing manager, the workers), over
    1.5 s of every ``run``. A directory of stub packages that refuse to import, first on
    the processes' PYTHONPATH, makes Parsl skip it. The driver itself is not affected.
    """
    stubs = run_dir / "hidden-packages"
    for name in _UNUSED_BY_LOCAL_POOLS:
        (stubs / name).mkdir(parents=True, exist_ok=True)
        (stubs / name / "__init__.py").write_text(
            f"raise ImportError('{name} is hidden from local Parsl pools by coffea-hpc')\n")
    path = os.pathsep.join(p for p in (str(stubs.resolve()), os.environ.get("PYTHONPATH"))
                           if p)
    commands = python_launch_commands(worker_start)
    # launch_cmd is a format string and a shell command: braces doubled, value quoted
    quoted = shlex.quote(path).replace("{", "{{").replace("}", "}}")
    return {
        "interchange_launch_cmd": ["env", f"PYTHONPATH={path}",
                                   *commands["interchange_launch_cmd"]],
        "launch_cmd": f"PYTHONPATH={quoted} {commands['launch_cmd']}",
    }


def local_htex_config(workers: int | None = None, run_dir: str | Path = "runinfo", *,
                      encrypted: bool = True, worker_start: WorkerStart = "forkserver") -> Any:
    """A HighThroughputExecutor on this machine, reachable only through loopback.

    Encrypted (CurveZMQ) unless told otherwise, here too: loopback keeps other machines
    out, not other users of this one, and only a worker holding the run's certificate may
    then connect to the interchange, take tasks (with the run's key) or return results.
    """
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.launchers import SingleNodeLauncher
    from parsl.providers import LocalProvider

    workers = workers or os.cpu_count() or 1
    run_dir = private_dir(run_dir)  # logs and the CurveZMQ certificates: the user's alone
    executor = _local_executor_class(HighThroughputExecutor)(
        label=LOCAL_LABEL,
        address="127.0.0.1",
        loopback_address="127.0.0.1",
        worker_port=_free_loopback_port(),  # known before the interchange binds it
        max_workers_per_node=workers,
        cores_per_worker=1,
        heartbeat_period=2,
        encrypted=encrypted,
        heartbeat_threshold=10,
        provider=LocalProvider(
            init_blocks=1, min_blocks=1, max_blocks=1, launcher=SingleNodeLauncher()
        ),
        **_lean_launch_commands(run_dir, worker_start),
    )
    return Config(
        executors=[executor],
        run_dir=str(run_dir),
        retries=0,
        strategy="none",
        # init_blocks are launched at the first poll; the default 5 s would delay every run
        strategy_period=0.5,
        usage_tracking=0,
    )


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@functools.cache
def _local_executor_class(base: type) -> type:
    """HTEx whose one block is launched as its interchange starts, not once it is up.

    HTEx starts its interchange, waits for it to import Parsl and bind the workers' port
    (~0.5 s), and only then can its block be launched, whose worker pool imports Parsl
    too: one after the other, on the path to a local run's first chunk. With the port
    chosen beforehand, the pool's command is known first; the pool is launched, then the
    interchange, and they start side by side (the pool's connection waits for the port).
    Where Parsl no longer calls the hook, the block is launched after the start as before
    (`ParslBackend._start`).
    """

    class LocalHighThroughputExecutor(base):  # type: ignore[misc, valid-type]
        early_blocks = 0
        """Blocks to launch before the interchange (set by `ParslBackend`, which then
        leaves the provider no ``init_blocks`` to launch)."""
        launched_early = False

        def _start_local_interchange_process(self) -> None:
            if self.early_blocks and self.worker_port:
                template = self.launch_cmd
                self.initialize_scaling()  # the pool's command, for the port chosen
                self.scale_out_facade(self.early_blocks)
                self.launched_early = True
                self.launch_cmd = template  # formatted again by start(), as it always is
            try:
                super()._start_local_interchange_process()
            except BaseException:
                with contextlib.suppress(Exception):  # no pool waits for an interchange
                    self.provider.cancel(list(self.blocks_to_job_id.values()))
                raise

    return LocalHighThroughputExecutor


class ParslBackend(PoolBackend):
    name = "parsl"

    def __init__(
        self,
        config: Any | None = None,
        *,
        workers: int | None = None,
        run_dir: str | Path | None = None,
        executors: Sequence[str] | None = None,
        merge_executors: Sequence[str] | None = None,
    ) -> None:
        """``config``: a ``parsl.config.Config`` (default: `local_htex_config`).

        ``workers`` is how many elements the config can run at once (for batch sizes and
        progress; default: the local worker count). ``executors`` restricts chunk tasks to
        some executor labels, ``merge_executors`` sends merge tasks to others (e.g. a
        ``merges`` executor on large-memory nodes); by default merges share the workers.
        """
        super().__init__()
        self._workers = workers or os.cpu_count() or 1
        self._run_dir = Path(run_dir) if run_dir is not None else None
        self._config = config
        self._executors = list(executors) if executors else "all"
        self._merge_executors = list(merge_executors) if merge_executors else self._executors
        self._dfk: Any = None
        self._watchdog: Watchdog | None = None
        self._warm_ups: list[Any] = []
        """Futures of the warm-up apps of a local pool (`warm_up`), one per worker."""
        self._app: Any = None
        self._merge_app: Any = None

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def dfk(self) -> Any:
        """The DataFlowKernel, for code that adds its own apps (merges, MPI)."""
        return self._dfk

    def submit(self, element: WorkElement) -> Any:
        return self._app(element)

    @property
    def on_this_machine(self) -> bool:
        """Blocks of Parsl's LocalProvider only: a batch provider's workers are elsewhere."""
        dfk = self._dfk
        if dfk is None:
            return False
        providers = [getattr(e, "provider", None) for e in dfk.executors.values()
                     if getattr(e, "label", "") != "_parsl_internal"]
        return bool(providers) and all(type(p).__name__ == "LocalProvider" for p in providers)

    @property
    def lost_on(self) -> tuple[type[BaseException], ...]:
        """An HTEx manager that stops answering went away with its block (walltime,
        preemption, ``scancel``, a node lost): its tasks fail with ``ManagerLost``. A worker
        process that dies while its block lives (out of memory, a crash) is ``WorkerLost``,
        and spends a retry."""
        from parsl.executors.high_throughput.errors import ManagerLost

        return (ManagerLost,)

    def connected_workers(self) -> int | None:
        """Workers registered with the HighThroughputExecutors' interchanges (blocks still
        queued at the batch system have none); None with executors that do not say."""
        dfk = self._dfk
        if dfk is None:
            return None
        counts = [sum(m.get("worker_count", 0) for m in executor.connected_managers()
                      if m.get("active", True))
                  for executor in dfk.executors.values()
                  if hasattr(executor, "connected_managers")]
        return sum(counts) if counts else None

    def blocks(self) -> tuple[int, int] | None:
        """Batch jobs of workers (pending, running); None where blocks are this machine's
        processes. Running: blocks with workers connected to the interchange now (Parsl
        polls the scheduler only every minute or so, so its own job states lag); pending:
        the other blocks submitted and not ended."""
        dfk = self._dfk
        if dfk is None:
            return None
        pending = running = 0
        batch = False
        for executor in dfk.executors.values():
            provider = getattr(executor, "provider", None)
            if provider is None or type(provider).__name__ == "LocalProvider" \
                    or not hasattr(executor, "connected_managers"):
                continue
            batch = True
            live = {str(m.get("block_id")) for m in executor.connected_managers()
                    if m.get("active", True)}
            submitted = {str(block) for block, job in dict(executor.status_facade).items()
                         if not job.terminal}
            running += len(live)
            pending += len(submitted - live)
        return (pending, running) if batch else None

    def submit_merge(self, element: WorkElement) -> Any:
        return self._merge_app(element)

    def _start(self) -> None:
        from parsl import python_app
        from parsl.dataflow.dflow import DataFlowKernel

        config = self._config
        local = config is None
        if local:
            run_dir = self._run_dir or Path("runinfo")
            config = local_htex_config(self._workers, run_dir)
            # its block is launched as its interchange starts (`_local_executor_class`),
            # not at the strategy's first poll (half a second after it is up)
            config.executors[0].provider.init_blocks = 0
            config.executors[0].early_blocks = 1
        else:
            _refuse_a_spent_config(config)
            if self._run_dir is not None:
                config.run_dir = str(self._run_dir)
        private_dir(config.run_dir)  # logs and the CurveZMQ certificates: the user's alone
        try:
            self._dfk = DataFlowKernel(config)
        except Exception as err:
            raise BackendError(f"starting Parsl failed: {type(err).__name__}: {err}") from err
        if local and not getattr(self._dfk.executors[LOCAL_LABEL], "launched_early", False):
            try:
                self._dfk.executors[LOCAL_LABEL].scale_out_facade(1)
            except Exception as err:
                _cleanup_within(self._dfk, CLEANUP_TIMEOUT_S)
                self._dfk = None
                raise BackendError(f"starting Parsl's local workers failed: "
                                   f"{type(err).__name__}: {err}") from err
        _mute_logs_that_cannot_be_written(Path(self._dfk.run_dir))
        interchanges = [executor.interchange_proc.pid for executor in self._dfk.executors.values()
                        if getattr(executor, "interchange_proc", None) is not None]
        self._watchdog = Watchdog(interchanges) if interchanges else None
        self._app = python_app(run_element, data_flow_kernel=self._dfk,
                               executors=self._executors)
        self._merge_app = python_app(run_element, data_flow_kernel=self._dfk,
                                     executors=self._merge_executors)
        if self.on_this_machine:
            # the pool's workers import what chunks need while the driver preprocesses,
            # not when the first chunk is waiting (a batch block's arrive minutes later)
            self._warm_ups = [self._app(warm_up) for _ in range(self._workers)]
        log.info("Parsl started (run dir %s)", self._dfk.run_dir)

    def _close(self) -> None:
        if self._dfk is None:
            return
        dfk = self._dfk
        try:
            _skip_dead_interchanges(dfk)
            _cleanup_within(dfk, CLEANUP_TIMEOUT_S)
            if self._watchdog is not None:
                self._watchdog.release()
        finally:
            self._dfk = None
            self._app = self._merge_app = None


def _refuse_a_spent_config(config: Any) -> None:
    """Parsl starts an executor once: a Config whose executors already served a
    DataFlowKernel starts a second one on stopped executors, which may run and then hang
    the process at exit. Said in one line instead (a notebook running run after run with
    one Config is how it happens)."""
    spent = [getattr(e, "label", "?") for e in getattr(config, "executors", ())
             if getattr(e, "run_id", None) is not None]
    if spent:
        raise UserError(f"this Parsl Config already ran a DataFlowKernel (executor "
                        f"{spent[0]!r}); Parsl starts an executor only once: build a new "
                        "Config for each run")


def _mute_logs_that_cannot_be_written(run_dir: Path) -> None:
    """Parsl's own log files (in the run directory, usually beside the output) stop at the
    first write that fails, with one warning, instead of printing a traceback for every
    record: on a full disk the run has to stop with one line saying so, not a flood."""
    run_dir = run_dir.resolve()
    for name in ("parsl", ""):
        for handler in logging.getLogger(name).handlers:
            path = getattr(handler, "baseFilename", None)
            if path is not None and Path(path).resolve().is_relative_to(run_dir):
                handler.handleError = _MuteOnFirstError(handler)  # type: ignore[method-assign]


class _MuteOnFirstError:
    def __init__(self, handler: logging.Handler) -> None:
        self._handler = handler

    def __call__(self, record: logging.LogRecord) -> None:
        handler = self._handler
        if handler.level > logging.CRITICAL:
            return
        handler.setLevel(logging.CRITICAL + 1)  # off: no record reaches emit() again
        err = sys.exc_info()[1]
        log.warning("Parsl's log %s cannot be written (%s); Parsl's logging is off for "
                    "the rest of the run", getattr(handler, "baseFilename", "?"),
                    getattr(err, "strerror", None) or err)


CLEANUP_TIMEOUT_S = 30.0
"""Parsl's shutdown asks each interchange about its blocks with no timeout; an interchange
that died or hangs would keep a batch job's driver alive until its walltime."""


def _skip_dead_interchanges(dfk: Any) -> None:
    """An executor whose interchange has exited is put in Parsl's bad state, so its
    shutdown does not ask the dead interchange anything; its blocks are cancelled here."""
    for executor in dfk.executors.values():
        proc = getattr(executor, "interchange_proc", None)
        if proc is None or proc.poll() is None or executor.bad_state_is_set:
            continue
        log.warning("the Parsl interchange of %r exited (code %s); stopping its workers",
                    executor.label, proc.returncode)
        executor.set_bad_state_and_fail_all(BackendError("the Parsl interchange exited"))
        _cancel_blocks(executor)


def _cleanup_within(dfk: Any, timeout: float) -> None:
    """``dfk.cleanup()``, but never longer than ``timeout``: past it, interchanges are
    killed and blocks cancelled directly, and the stuck cleanup is left behind (a daemon
    thread; Parsl's exit hook only logs)."""
    failure: list[BaseException] = []

    def cleanup() -> None:
        try:
            dfk.cleanup()
        except BaseException as err:
            failure.append(err)

    stopper = threading.Thread(target=cleanup, name="coffea-hpc-parsl-cleanup", daemon=True)
    stopper.start()
    stopper.join(timeout)
    if stopper.is_alive():
        log.warning("Parsl did not shut down within %.0f s; stopping its interchanges and "
                    "blocks directly", timeout)
        for executor in dfk.executors.values():
            proc = getattr(executor, "interchange_proc", None)
            if proc is not None and proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)  # reaped: a driver that lives on (a notebook)
                    # would otherwise keep a zombie per run
            _cancel_blocks(executor)
    elif failure:
        raise failure[0]


def _cancel_blocks(executor: Any) -> None:
    jobs = [j for j in getattr(executor, "blocks_to_job_id", {}).values() if j is not None]
    provider = getattr(executor, "provider", None)
    if jobs and provider is not None:
        try:
            provider.cancel(jobs)
        except Exception as err:  # the batch system is unreachable: say so, go on
            log.warning("cancelling Parsl blocks %s failed: %s", jobs, err)
