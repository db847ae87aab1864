"""Adaptive chunk size: fixed chunks against ``--target-chunk-seconds`` on two datasets whose
events cost ten times different CPU.

    python benchmarks/adaptive.py                        # defaults: about 4 minutes
    python benchmarks/adaptive.py --target 1.5 --chunksize 10000 --workers 2 --json out.json

Two synthetic datasets (the ``small`` profile): ``Light`` (``--light-files`` files) and
``Heavy`` (``--heavy-files`` files), ``--events`` each, processed by the dimuon analysis plus
busy work of ``--cost-us`` µs of CPU per event on Light and ten times that on Heavy (a fixed
working array, so the cost per event does not depend on the chunk's size). Both runs use the
futures backend with ``--workers`` workers and start from the same ``--chunksize``; the fixed
run keeps it, the adaptive one aims at ``--target`` seconds per chunk.

Reported per run, from its ``chunks.jsonl``: the total wall time of the run, and the chunk
durations (a chunk's wall time on its worker) relative to the target, for the chunks that
started after the first minute of processing: median, 10th and 90th percentiles, and the
share within ±50 % of the target. Numbers, with the command, go to RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from coffea_hpc.examples.dimuon import DimuonProcessor  # noqa: E402

WARMUP_S = 60.0
HEAVY_FACTOR = 10
_ARRAY = 16_384
_NS_PER_FLOAT = 1.7  # x*x + 1 and its sqrt, per float, on this machine (scaled by calibrate)


class Uneven(DimuonProcessor):
    """The dimuon analysis plus ``cost_us`` µs of CPU per event (ten times on Heavy)."""

    def __init__(self, cost_us: float) -> None:
        super().__init__()
        self.cost_us = cost_us

    def process(self, events: Any) -> Any:
        import numpy as np

        factor = HEAVY_FACTOR if events.metadata["dataset"] == "Heavy" else 1
        reps = round(len(events) * self.cost_us * factor * 1e3 / (_NS_PER_FLOAT * _ARRAY))
        x = np.full(_ARRAY, 0.5)
        for _ in range(reps):
            np.sqrt(x * x + 1.0, out=x)
        return super().process(events)


def durations(rows: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Chunk wall times relative to ``target``, after the first minute of processing."""
    ok = [r for r in rows if r["outcome"] == "ok" and r["entries"] > 0]
    first = min(r["start"] for r in ok)
    late = [r for r in ok if r["start"] >= first + WARMUP_S]

    def stats(chosen: list[dict[str, Any]]) -> dict[str, Any]:
        if not chosen:
            return {"chunks": 0}
        rel = sorted(r["wall_s"] / target for r in chosen)
        q = statistics.quantiles(rel, n=10) if len(rel) > 1 else [rel[0]] * 9
        return {"chunks": len(rel), "median": round(statistics.median(rel), 2),
                "p10": round(q[0], 2), "p90": round(q[-1], 2),
                "within_50pct": round(sum(0.5 <= x <= 1.5 for x in rel) / len(rel), 3),
                "mean_entries": round(statistics.mean(r["entries"] for r in chosen))}

    return {"all_after_first_minute": stats(late),
            **{ds: stats([r for r in late if r["dataset"] == ds]) for ds in ("Light", "Heavy")}}


def one_run(mode: str, fileset: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from coffea_hpc.metrics import read_chunks
    from coffea_hpc.runner import run

    out = work / f"out-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    outcome = run(Uneven(args.cost_us), fileset, backend="futures", workers=args.workers,
                  chunksize=args.chunksize, output_dir=out, metadata_cache=False,
                  target_chunk_seconds=args.target if mode == "adaptive" else None)
    wall = time.perf_counter() - started
    rows = read_chunks(out / "chunks.jsonl")
    result = {"mode": mode, "wall_s": round(wall, 1),
              "processing_s": round(outcome.report["stages_s"]["processing"], 1),
              "chunks": len(rows), "events": outcome.report["events"],
              "durations_vs_target": durations(rows, args.target)}
    if mode == "adaptive":
        result["learnt"] = outcome.report["adaptive_chunking"]["datasets"]
    return result


def calibrate() -> float:
    """ns per float of the busy loop here, so ``--cost-us`` means µs on this machine."""
    import numpy as np

    x = np.full(_ARRAY, 0.5)
    start = time.perf_counter()
    for _ in range(2_000):
        np.sqrt(x * x + 1.0, out=x)
    return (time.perf_counter() - start) / (2_000 * _ARRAY) * 1e9


def main() -> int:
    global _NS_PER_FLOAT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=1.5, help="target chunk seconds")
    parser.add_argument("--chunksize", type=int, default=10_000,
                        help="the fixed chunksize, and the adaptive run's start")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--events", type=int, default=100_000, help="events per file")
    parser.add_argument("--light-files", type=int, default=6)
    parser.add_argument("--heavy-files", type=int, default=1)
    parser.add_argument("--cost-us", type=float, default=100.0,
                        help="CPU µs per Light event (Heavy: ten times)")
    parser.add_argument("--order", choices=("fixed-first", "adaptive-first"),
                        default="fixed-first")
    parser.add_argument("--data", type=Path, help="where the files are (kept; default: temp)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    from coffea_hpc.data.synthetic import SyntheticDataset, generate

    _NS_PER_FLOAT = calibrate()
    work = Path(tempfile.mkdtemp(prefix="coffea-hpc-adaptive-"))
    data = args.data or work / "data"
    fileset = generate(data, events_per_file=args.events, datasets=(
        SyntheticDataset("Light", "dy", args.light_files, {"is_mc": True}),
        SyntheticDataset("Heavy", "ttbar", args.heavy_files, {"is_mc": True})))
    modes = ["fixed", "adaptive"] if args.order == "fixed-first" else ["adaptive", "fixed"]
    results = []
    try:
        for mode in modes:
            result = one_run(mode, fileset, args, work)
            results.append(result)
            print(json.dumps(result, indent=1), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {"command": " ".join(sys.argv), "ns_per_float": round(_NS_PER_FLOAT, 3),
               "runs": results}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    by_mode = {r["mode"]: r for r in results}
    print(f"wall: fixed {by_mode['fixed']['wall_s']} s, adaptive {by_mode['adaptive']['wall_s']}"
          f" s; adaptive chunks within ±50 % of {args.target} s after the first minute: "
          f"{by_mode['adaptive']['durations_vs_target']['all_after_first_minute']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
