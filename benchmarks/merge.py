"""Merge benchmark: serial at the driver vs a worker-side tree vs the MPI tree-merge.

    python benchmarks/merge.py                      # 64 partials of ~53 MB, the recorded run
    python benchmarks/merge.py --partials 8 --mb 5  # a quick look
    python benchmarks/merge.py --methods serial,mpi2,mpi2-started --rounds 3

With ``--rounds N`` the methods run in turn, N times over (so a slow spell of the machine
hits every method alike), and the speed-ups are ratios of median wall times.

Partials are weighted histograms (2 datasets x 19 systematics x 853 x 100 bins, Weight
storage, 30 % of bins filled) with growth category axes, written as spill files, as workers
write them; by default each lists its labels in its own order (``--categories``). Each method
runs in its own process(es), one after the other on the same files, and reports wall time
and peak memory *above the process's baseline* (the Python interpreter with coffea imported
is ~150 MB before any data), so the numbers compare the merges, not the imports. All outputs
are checked to be equal, bin by bin and label by label.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


DATASETS = ("ttbar", "dy")
SYSTEMATICS = tuple(f"syst{k}" for k in range(20))


def make_partials(folder: Path, n: int, mb: float, categories: str = "shuffled") -> list[Path]:
    """Weighted histograms of dataset x systematic x pt x eta, with growth category axes as
    processors fill them. ``shuffled``: each partial lacks one systematic and lists the rest
    (and the two datasets) in its own order, so every merge goes by label; ``same``: every
    partial lists all labels in one order, so every merge adds buffers directly."""
    import hist

    from coffea_hpc.reduction._spillfile import SPILL_SUFFIX, check_spill_file, write_spill_file
    from coffea_hpc.reduction.buffers import raw_view

    folder.mkdir(parents=True, exist_ok=True)
    key = _key([folder / "x"])
    n_pt = max(int(853 * mb / 53), 10)  # 2 x 19 x 855 x 102 bins x 16 bytes: 53 MB
    paths = []
    for i in range(n):
        path = folder / f"partial-{i:03d}{SPILL_SUFFIX}"
        if path.exists():
            try:
                check_spill_file(path, key)
            except ValueError:  # another key, or an older format: written afresh
                path.unlink()
        if not path.exists():
            rng = np.random.default_rng(i)
            if categories == "shuffled":
                datasets = DATASETS[::-1] if i % 2 else DATASETS
                rest = [s for s in SYSTEMATICS if s != SYSTEMATICS[i % 20]]
                systematics = rest[i % 19:] + rest[:i % 19]
            else:
                datasets, systematics = DATASETS, SYSTEMATICS[:19]
            h = hist.Hist(hist.axis.StrCategory(datasets, growth=True, name="dataset"),
                          hist.axis.StrCategory(systematics, growth=True, name="systematic"),
                          hist.axis.Regular(n_pt, 0, 800, name="pt"),
                          hist.axis.Regular(100, -5, 5, name="eta"),
                          storage=hist.storage.Weight())
            view = raw_view(h)
            mask = rng.random(view.size // 2) < 0.3
            values = np.zeros(view.size // 2)
            values[mask] = rng.exponential(1.0, mask.sum())
            view[0::2], view[1::2] = values, values * 0.1
            write_spill_file({"pt_eta": h, "n": i}, path, key)
        paths.append(path)
    return paths


def _key(paths: list[Path]) -> Any:
    """The key the partials are signed with, kept beside them as a run keeps its own."""
    from coffea_hpc._signing import RunKey

    return RunKey.of(paths[0].parent)


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def method_serial(paths: list[Path], out: Path) -> dict:
    """One process streams every partial into one sum (what a driver can do at best)."""
    from coffea_hpc import output
    from coffea_hpc.reduction.merge import merge_stream, peak_rss

    base = _rss()
    start = time.perf_counter()
    total = merge_stream(paths, _key(paths))
    output.save(total, out)
    wall = time.perf_counter() - start
    peak = peak_rss()
    return {"wall_s": wall, "peak_above_base_mb": (peak - base) / 1e6}


def method_naive(paths: list[Path], out: Path) -> dict:
    """All partials in driver memory, then accumulate (how results pile up at a driver)."""
    from coffea.processor import accumulate

    from coffea_hpc import output
    from coffea_hpc.reduction.merge import peak_rss
    from coffea_hpc.reduction.spill import load_spilled

    base = _rss()
    start = time.perf_counter()
    key = _key(paths)
    values = [load_spilled(p, key) for p in paths]
    total = accumulate(values)
    output.save(total, out)
    wall = time.perf_counter() - start
    peak = peak_rss()
    return {"wall_s": wall, "peak_above_base_mb": (peak - base) / 1e6}


def method_tree(paths: list[Path], out: Path, workers: int = 2, fan_in: int = 8) -> dict:
    """Merge tasks on a pool of worker processes, fan_in at a time, until one is left."""
    if __name__ != "__main__":
        raise RuntimeError("run from the command line")
    from coffea_hpc import output
    from coffea_hpc.backends.futures import FuturesBackend
    from coffea_hpc.reduction.merge import MergeSpilled
    from coffea_hpc.reduction.spill import SpilledRef, load_spilled

    spill_dir = out.parent / "tree-spill"
    key = _key(paths)
    refs = [SpilledRef(str(p), p.stat().st_size) for p in paths]
    first = True
    with FuturesBackend(workers) as backend:
        # start the workers and let them import, so their baseline can be read
        warm = [backend.submit(MergeSpilled((), str(spill_dir), key, delete_inputs=False))
                for _ in range(workers)]
        for f in warm:
            f.result()
        sampler = _Sampler()
        baseline = sampler.current_max()
        sampler.start()
        start = time.perf_counter()
        while len(refs) > 1:
            groups = [tuple(refs[i:i + fan_in]) for i in range(0, len(refs), fan_in)]
            futures = [backend.submit(MergeSpilled(g, str(spill_dir), key,
                                                    delete_inputs=not first))
                       for g in groups]
            refs = [f.result().value for f in futures]
            first = False
        wall = time.perf_counter() - start
        sampler.stop()
    output.save(load_spilled(refs[0], key), out)  # outside the timed region: a format change
    shutil.rmtree(spill_dir, ignore_errors=True)
    return {"wall_s": wall, "peak_above_base_mb_per_worker": round(
        (sampler.peak - baseline) / 1e6, 1)}


class _Sampler:
    """Samples the resident memory of the pool's workers: this process's grandchildren (the
    workers are forked by the forkserver, itself a child, and are never bigger than it at
    rest, so it is left out)."""

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current_max(self) -> int:
        import psutil

        rss = []
        me = os.getpid()
        for child in psutil.Process().children(recursive=True):
            try:
                if child.ppid() != me:
                    rss.append(child.memory_info().rss)
            except psutil.Error:
                pass
        return max(rss, default=0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current_max())
            time.sleep(0.02)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def method_mpi(paths: list[Path], out: Path, ranks: int, started: bool) -> dict:
    """``mpiN``: mpiexec launched when the merge is called (``coffea-hpc merge --ranks N``).
    ``mpiN-started``: ranks started beforehand and waiting, as ``--reduce mpi`` starts them
    when processing starts; timed from handing over the inputs."""
    from coffea_hpc.reduction.mpi_job import MpiMergeJob

    start = time.perf_counter()
    with MpiMergeJob(ranks) as job:
        if started:
            if not job.ready(timeout=120):
                raise RuntimeError("the MPI merge job did not start")
            start = time.perf_counter()
        stats = job.merge(paths, out, key=_key(paths))
        wall = time.perf_counter() - start
    above = [p - b for p, b in zip(stats.extra["peak_rss_per_rank"],
                                   stats.extra.get("baseline_rss_per_rank", []), strict=False)]
    return {"wall_s": wall, "merge_s": stats.wall_time_s,
            "peak_above_base_mb_per_rank": [round(a / 1e6, 1) for a in above]}


def run_one(method: str, paths: list[Path], out: Path) -> dict:
    if method == "serial":
        return method_serial(paths, out)
    if method == "naive":
        return method_naive(paths, out)
    if method == "tree":
        return method_tree(paths, out)
    if method.startswith("mpi"):
        ranks, _, when = method[3:].partition("-")
        return method_mpi(paths, out, int(ranks), started=when == "started")
    raise SystemExit(f"unknown method {method}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partials", type=int, default=64)
    parser.add_argument("--mb", type=float, default=53.0, help="in-memory size of a partial")
    parser.add_argument("--categories", choices=("shuffled", "same"), default="shuffled",
                        help="labels of the growth axes: another subset and order in each "
                             "partial, or the same in all (see make_partials)")
    parser.add_argument("--dir", type=Path, default=None, help="where partials go (kept)")
    parser.add_argument("--methods", default="serial,tree,mpi2,mpi2-started,mpi4,naive")
    parser.add_argument("--rounds", type=int, default=1, help="run the methods N times in turn")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    parser.add_argument("--_out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="coffea-hpc-merge-bench-"))
    if args._one:  # a child process: one method, results as JSON on stdout
        paths = sorted(_partials_dir(work, args.categories).glob("partial-*"))
        print(json.dumps(run_one(args._one, paths, args._out)))
        return

    start = time.perf_counter()
    paths = make_partials(_partials_dir(work, args.categories), args.partials, args.mb,
                          args.categories)
    gen = time.perf_counter() - start
    disk = sum(p.stat().st_size for p in paths) / 1e6
    print(f"{len(paths)} partials, {args.mb:.0f} MB each in memory, {disk:.0f} MB on disk, "
          f"categories {args.categories} (made in {gen:.0f} s) in {work}")
    for path in paths:  # into the page cache, so the first method does not pay for it alone
        with open(path, "rb") as src:
            while src.read(16 * 1024**2):
                pass
    results: dict[str, list[dict]] = {}
    outputs = {}
    for _ in range(args.rounds):
        for method in args.methods.split(","):
            out = work / f"merged-{method}.coffea"
            proc = subprocess.run([sys.executable, __file__, "--dir", str(work), "--_one", method,
                                   "--_out", str(out), "--categories", args.categories],
                                  capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(HERE.parent)})
            if proc.returncode != 0:
                print(f"{method}: failed\n{proc.stderr[-2000:]}")
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            results.setdefault(method, []).append(result)
            outputs[method] = out
            print(f"{method:>12}: {result}")
    _check_identical(outputs)
    median = {m: statistics.median(r["wall_s"] for r in rs) for m, rs in results.items()}
    if "serial" in median:
        print("\nspeed-up over the serial merge (median wall times):")
        for method, wall in median.items():
            print(f"  {method:>12}: {median['serial'] / wall:.2f}x  ({wall:.2f} s)")
    print(f"\npartial size in memory: {args.mb:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps({"partials": len(paths), "mb": args.mb,
                                         "results": results}, indent=1))
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)


def _partials_dir(work: Path, categories: str) -> Path:
    return work / f"partials-{categories}"  # not "partials": those had no growth axes


def _check_identical(outputs: dict[str, Path]) -> None:
    """Equal as coffea's accumulate defines it: merges in another order list the growth
    axes' labels in another order."""
    sys.path.insert(0, str(HERE.parent))
    from coffea_hpc import output
    from tests.reduction.conftest import assert_same_by_label

    paths = list(outputs.values())
    if len(paths) < 2:
        return
    reference = output.load(paths[0])
    for path in paths[1:]:
        assert_same_by_label(output.load(path), reference)
    print(f"outputs identical across {', '.join(outputs)} (bins compared by label)")


if __name__ == "__main__":
    main()
