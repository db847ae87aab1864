"""Driver scale: how many chunks per second the driver handles, with how much memory.

    python benchmarks/scale.py                                   # 10^4, 10^5, 10^6 chunks
    python benchmarks/scale.py --files 100000 --chunks-per-file 10 --json .bench/scale.json
    python benchmarks/scale.py --backend parsl --files 200 --chunks-per-file 10

``--backend sim`` replaces the workers by a stand-in whose elements complete at once with a
realistic result (a dict of histograms of about 100 kB, the element's entry ranges and a
worker's metrics, among them the files it read), so
what is measured is the driver alone: loading a prepared fileset, chunking, submitting,
the exactly-once ledger, merging, progress, checkpoints and writing each chunk's metrics row
(the sim's results carry one per chunk, as workers' do). ``--backend parsl`` runs a real
local HighThroughputExecutor (32 workers) with a no-op processor over tiny chunks (of files
with three branches, ``--data minimal``, or the tests' synthetic NanoAOD, ``--data small``) and
compares chunks/s, once the workers are warm, with what Parsl's own ``parsl-perf`` measures
on an executor of the same settings, in the same run (``--worker-start spawn``: workers
spawned by Parsl's own pool instead of forked from one import).

Each size runs in a fresh process, so its peak resident memory is its own. Numbers, with the
command that produced them, go to RESULTS-scale.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, get_args

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from coffea_hpc.backends.parsl import WorkerStart  # noqa: E402  (no Parsl imported)

DEFAULT_SIZES = ((1_000, 10), (10_000, 10), (100_000, 10))
ENTRIES_PER_CHUNK = 1_000
HIST_BINS = 12_500  # float64: 100 kB


def write_prepared(path: Path, files: int, chunks_per_file: int) -> Path:
    """A prepared fileset (entries, uuid and steps known), written as plain JSON: no file
    is opened, as with a fileset from ``coffea-hpc preprocess``."""
    n = chunks_per_file * ENTRIES_PER_CHUNK
    steps = [[i * ENTRIES_PER_CHUNK, (i + 1) * ENTRIES_PER_CHUNK] for i in range(chunks_per_file)]
    datasets: dict[str, Any] = {}
    for i in range(files):
        name = f"Dataset{i % 20:02d}"
        ds = datasets.setdefault(name, {"treename": "Events", "files": {}, "metadata": {}})
        ds["files"][f"/store/mc/{name}/NANOAODSIM/file_{i:06d}.root"] = {
            "object_path": "Events", "num_entries": n,
            "uuid": f"{i:08x}-0000-4000-8000-000000000000", "steps": steps}
    path.write_text(json.dumps(datasets))
    return path


def noop(events: Any) -> dict[str, int]:
    return {"events": len(events)}


def _sim_backend(workers: int) -> Any:
    import hist
    import numpy as np

    from coffea_hpc.backends._base import PoolBackend
    from coffea_hpc.data.ranges import EntryRanges
    from coffea_hpc.processing.result import Result

    template = hist.Hist(hist.axis.StrCategory(["Dataset00"], growth=True, name="dataset"),
                         hist.axis.Regular(HIST_BINS - 2, 0, 1, name="x"))
    template.view(flow=True)[...] = np.arange(HIST_BINS, dtype=np.float64)
    # a worker's result arrives pickled: unpickling it is the driver's work, making it not
    wire = pickle.dumps({"x": template})
    columns = [f"Muon_{f}" for f in ("pt", "eta", "phi", "mass", "charge")] + ["nMuon"]
    row = {"treename": "Events", "entries": ENTRIES_PER_CHUNK, "location": "local",
           "host": "node001", "pid": 4242, "job": "123456", "block": "0",
           "start": 1.7e9, "end": 1.7e9 + 0.25, "wall_s": 0.25, "cpu_s": 0.24, "build_s": 0.01,
           "process_s": 0.23, "bytes_read": 250_000, "columns": columns,
           "column_bytes": dict.fromkeys(columns, 40_000), "peak_rss": 500_000_000,
           "outcome": "ok", "error": None}

    class SimBackend(PoolBackend):
        """Elements complete at once: the result a worker would send, without the work."""

        name = "sim"
        first_submit: float | None = None

        @property
        def workers(self) -> int:
            return workers

        def submit(self, element: Any) -> Future:
            if self.first_submit is None:
                self.first_submit = time.perf_counter()
            ranges = EntryRanges()
            for c in element.chunks:
                ranges += EntryRanges.of((c.dataset, c.filename, c.treename), c.entrystart,
                                         c.entrystop)
            future: Future = Future()
            n = len(element.chunks)
            metrics = {"chunks": n, "entries": n * ENTRIES_PER_CHUNK, "buildtime": 0.01 * n,
                       "processtime": 0.23 * n, "columns": set(columns),
                       "read_from": {(c.filename, "local") for c in element.chunks}}
            result = Result(value={**pickle.loads(wire), "n": n}, processed=ranges,
                            metrics=metrics)  # a worker's metrics, as it sends them
            if hasattr(result, "chunk_rows"):  # what a worker measures per chunk, too
                result.chunk_rows = tuple(
                    dict(row, dataset=c.dataset, file=c.filename, entrystart=c.entrystart,
                         entrystop=c.entrystop, column_bytes=dict(row["column_bytes"]))
                    for c in element.chunks)
            future.set_result(result)
            return future

        def _start(self) -> None:
            pass

        def _close(self) -> None:
            pass

    return SimBackend()


def measure_sim(files: int, chunks_per_file: int, workers: int, per_task: int) -> dict:
    from coffea_hpc.reduction.merge import peak_rss
    from coffea_hpc.runner import run

    with tempfile.TemporaryDirectory(prefix="coffea-hpc-scale-") as tmp:
        prepared = write_prepared(Path(tmp) / "prepared.json", files, chunks_per_file)
        backend = _sim_backend(workers)
        written = _CheckpointsWritten()
        started = time.perf_counter()
        with written:
            outcome = run(noop, prepared, backend=backend, output_dir=Path(tmp) / "out",
                          chunks_per_task=per_task, checkpoint_interval=3600)
        wall = time.perf_counter() - started
        chunks = outcome.report["metrics"]["chunks"]
        assert chunks == files * chunks_per_file, (chunks, files * chunks_per_file)
        checkpoint_s = _time_checkpoint(outcome.result, Path(tmp) / "checkpoint.coffea")
    return {"chunks": chunks, "files": files, "backend": "sim",
            "chunks_per_s": round(chunks / wall, 1),
            "driver_peak_rss_bytes": peak_rss(),
            "first_chunk_s": round(backend.first_submit - started, 3),
            "checkpoint_s": round(checkpoint_s, 3),
            "checkpoints_in_run": written.summary(),
            "wall_s": round(wall, 2), "stages_s": outcome.report["stages_s"]}


class _CheckpointsWritten(logging.Handler):
    """The checkpoints a run wrote as it went, whole or updates, and what each cost (from
    the run's own log lines)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: dict[str, list[float]] = {"whole": [], "update": []}

    def emit(self, record: logging.LogRecord) -> None:
        message = str(record.msg)
        if message.startswith("checkpoint") and record.args:
            kind = "update" if message.startswith("checkpoint update") else "whole"
            self.seconds[kind].append(float(record.args[-1]))  # type: ignore[index]

    def __enter__(self) -> _CheckpointsWritten:
        logger = logging.getLogger("coffea_hpc.checkpoint")
        self._level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("coffea_hpc.checkpoint")
        logger.removeHandler(self)
        logger.setLevel(self._level)

    def summary(self) -> dict[str, Any]:
        return {kind: {"count": len(times), "max_s": round(max(times, default=0.0), 3),
                       "total_s": round(sum(times), 3)}
                for kind, times in self.seconds.items()}


def _time_checkpoint(result: Any, path: Path) -> float:
    """A checkpoint of the whole run's result, written the way a run writes it."""
    from coffea_hpc.checkpoint import write_checkpoint

    started = time.perf_counter()
    write_checkpoint(result, path, {})
    return time.perf_counter() - started


def write_minimal(folder: Path, files: int, entries: int) -> Path:
    """Files of three branches (run, luminosityBlock, event): a chunk's events then cost
    the worker almost nothing to build, so what is left per chunk is coffea-hpc's own
    dispatch, which is what a comparison with no-op Parsl apps is about."""
    import numpy as np
    import uproot

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        path = folder / f"minimal_{i:05d}.root"
        columns = {"run": np.ones(entries, np.uint32),
                   "luminosityBlock": np.ones(entries, np.uint32),
                   "event": np.arange(entries, dtype=np.uint64) + 1}
        with uproot.recreate(path) as out:
            out.mktree("Events", {k: v.dtype for k, v in columns.items()})
            out["Events"].extend(columns)
        paths.append(str(path))
    fileset = folder / "fileset.json"
    fileset.write_text(json.dumps({"Minimal": {"treename": "Events", "files": paths}}))
    return fileset


def measure_parsl(files: int, chunks_per_file: int, workers: int, per_task: int,
                  data: str = "minimal", worker_start: WorkerStart = "forkserver") -> dict:
    """Parsl's own ``parsl-perf`` on a local HTEx, then coffea-hpc's chunks/s (its processing
    stage) over a local HTEx of the same settings, once its workers have imported what
    chunks need (what a cold start costs is `startup.py`'s to measure)."""
    from coffea_hpc.backends.parsl import ParslBackend, local_htex_config
    from coffea_hpc.data.synthetic import SyntheticDataset, generate
    from coffea_hpc.reduction.merge import peak_rss
    from coffea_hpc.runner import run

    with tempfile.TemporaryDirectory(prefix="coffea-hpc-scale-") as tmp:
        if data == "minimal":
            fs: Any = write_minimal(Path(tmp) / "data", files, chunks_per_file * 10)
        else:  # the synthetic NanoAOD of the tests (about 150 branches)
            fs = generate(Path(tmp) / "data", events_per_file=chunks_per_file * 10,
                          datasets=(SyntheticDataset("Tiny", "dy", files),),
                          basket_entries=10)
        raw = _parsl_perf_rate(workers, Path(tmp), worker_start)
        first = _FirstChunk()
        backend = ParslBackend(local_htex_config(workers, Path(tmp) / "parsl",
                                                 worker_start=worker_start),
                               workers=workers)
        with backend:
            for warming in backend._warm_ups:
                warming.result()
            first.started = time.perf_counter()
            outcome = run(noop, fs, backend=backend, chunksize=10, schema="base",
                          output_dir=Path(tmp) / "out", chunks_per_task=per_task,
                          reporter=first)
            chunks = outcome.report["metrics"]["chunks"]
    ours = chunks / outcome.report["stages_s"]["processing"]
    return {"chunks": chunks, "files": files, "backend": "parsl",
            "chunks_per_s": round(ours, 1), "parsl_perf_tasks_per_s": round(raw, 1),
            "ratio_to_parsl": round(ours / raw, 2), "data": data,
            "worker_start": worker_start,
            "driver_peak_rss_bytes": peak_rss(),
            "first_chunk_s": round(first.seconds, 3) if first.seconds else None,
            "checkpoint_s": None, "stages_s": outcome.report["stages_s"]}


class _FirstChunk:
    """A progress reporter that notes when the first chunk came back, from the start."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: float | None = None
        self._label = ""

    def start(self, label: str, total: int, unit: str) -> None:
        self._label = label

    def update(self, progress: Any) -> None:
        if self._label == "processing" and progress.done and self.seconds is None:
            self.seconds = time.perf_counter() - self.started

    finish = update


PARSL_PERF_CONFIG = """
from pathlib import Path
from coffea_hpc.backends.parsl import local_htex_config
config = local_htex_config({workers}, Path({run_dir!r}), worker_start={worker_start!r})
"""


def _parsl_perf_rate(workers: int, folder: Path, worker_start: WorkerStart) -> float:
    """Parsl's own ``parsl-perf`` on the HTEx coffea-hpc starts locally (the same
    `local_htex_config`): the tasks/s of its last iteration, which lasts ~10 s."""
    config = folder / "parsl_perf_config.py"
    config.write_text(PARSL_PERF_CONFIG.format(workers=workers, run_dir=str(folder / "perf"),
                                               worker_start=worker_start))
    perf = Path(sys.executable).with_name("parsl-perf")
    done = subprocess.run([str(perf), "--config", str(config), "--time", "10"],
                          capture_output=True, text=True, check=True, cwd=folder)
    rates = [float(line.rsplit(":", 1)[1]) for line in done.stdout.splitlines()
             if line.startswith("Tasks per second:")]
    return rates[-1]


def _one(args: argparse.Namespace) -> dict:
    if args.backend == "sim":
        return measure_sim(args.files, args.chunks_per_file, args.workers, args.chunks_per_task)
    return measure_parsl(args.files, args.chunks_per_file, args.workers, args.chunks_per_task,
                         args.data, args.worker_start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, help="files (default: every default size)")
    parser.add_argument("--chunks-per-file", type=int, default=10)
    parser.add_argument("--backend", choices=("sim", "parsl"), default="sim")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--chunks-per-task", type=int, default=1)
    parser.add_argument("--data", choices=("minimal", "small"), default="minimal",
                        help="parsl: files of 3 branches, or the tests' synthetic NanoAOD")
    parser.add_argument("--worker-start", choices=get_args(WorkerStart), default="forkserver",
                        help="how the parsl backend's workers start (executor.worker_start)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(_one(args)))
        return 0
    sizes = [(args.files, args.chunks_per_file)] if args.files else list(DEFAULT_SIZES)
    if args.backend == "parsl" and not args.files:
        sizes = [(200, 10)]
    results = []
    for files, per_file in sizes:
        command = [sys.executable, __file__, "--one", "--files", str(files),
                   "--chunks-per-file", str(per_file), "--backend", args.backend,
                   "--workers", str(args.workers), "--chunks-per-task",
                   str(args.chunks_per_task), "--data", args.data,
                   "--worker-start", args.worker_start]
        done = subprocess.run(command, capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        _print_row(results[-1])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results}, indent=1) + "\n")
    return 0


def _print_row(row: dict) -> None:
    extra = f"  {row['ratio_to_parsl']}x parsl-perf" if "ratio_to_parsl" in row else ""
    check = f"{row['checkpoint_s']:.3f} s" if row["checkpoint_s"] is not None else "-"
    during = row.get("checkpoints_in_run")
    if during:
        check += (f" (in the run: {during['whole']['count']} whole, max "
                  f"{during['whole']['max_s']:.3f} s; {during['update']['count']} updates, "
                  f"max {during['update']['max_s']:.3f} s)")
    print(f"{row['backend']:5} {row['files']:>7,} files {row['chunks']:>9,} chunks  "
          f"{row['chunks_per_s']:>9,.0f} chunks/s  peak RSS "
          f"{row['driver_peak_rss_bytes'] / 1e6:7.0f} MB  first chunk "
          f"{row['first_chunk_s']} s  checkpoint {check}{extra}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
