"""Throughput: coffea-hpc vs coffea's processor.Runner vs a bare uproot loop, one run.

    python benchmarks/throughput.py            # the recorded run (see RESULTS.md)
    python benchmarks/throughput.py --quick    # a one-minute smoke run on small files
    python benchmarks/throughput.py --repeat 3 --analyses light   # medians of 3 rounds

Data: synthetic NanoAOD with the real branch count (~1,700 branches) and LZMA compression
(`coffea_hpc.data.synthetic`, profile "nanoaod"), cached under .bench/. Every measurement runs
in a fresh process, one after the other on the same files. Imports are not timed (Parsl's
neither, which coffea-hpc imports only when a Parsl backend starts); the run itself is:
preprocessing, processing, merging, and for Parsl starting and stopping the pool. Outputs are
compared: coffea-hpc's cut flow must equal the Runner's, so a fast but wrong result cannot
pass.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

ANALYSES = {
    "light": "coffea_hpc.examples.dimuon:DimuonProcessor",
    "heavy": "coffea_hpc.examples.heavy:HeavyProcessor",
}
MUON_BRANCHES = ["Muon_pt", "Muon_eta", "Muon_phi", "Muon_mass", "Muon_charge", "Muon_tightId"]


def make_data(folder: Path, files: int, events: int) -> dict:
    from coffea_hpc.data.synthetic import DEFAULT_DATASETS, SyntheticDataset, generate

    datasets = [SyntheticDataset(d.name, d.process, files // 2 or 1, d.metadata)
                for d in DEFAULT_DATASETS[:2]]
    start = time.perf_counter()
    fileset = generate(folder, events_per_file=events, datasets=datasets, profile="nanoaod",
                       compression="lzma", workers=2)
    took = time.perf_counter() - start
    spec = {ds.name: {"files": {f.path: "Events" for f in ds.files}, "metadata": ds.metadata}
            for ds in fileset}
    return {"fileset": spec, "generation_s": took, "events": fileset_events(spec)}


def fileset_events(spec: dict) -> int:
    import uproot

    return sum(uproot.open(p)["Events"].num_entries
               for ds in spec.values() for p in ds["files"])


# -- one measurement (in its own process) -------------------------------------------------


def measure(method: str, analysis: str, workers: int, spec: dict, chunksize: int) -> dict:
    warnings.simplefilter("ignore")
    from coffea_hpc.processing.processor import load_processor

    proc = load_processor(ANALYSES[analysis])
    if method.startswith("runner-"):
        from coffea import processor
        from coffea.nanoevents import NanoAODSchema

        executor = (processor.IterativeExecutor() if method == "runner-iterative"
                    else processor.FuturesExecutor(workers=workers))
        runner = processor.Runner(executor=executor, schema=NanoAODSchema, chunksize=chunksize)
        start = time.perf_counter()
        out = runner(spec, treename="Events", processor_instance=proc)
        wall = time.perf_counter() - start
        return {"wall_s": wall, "digest": digest(out, analysis)}
    if method == "bare-uproot":
        start = time.perf_counter()
        out = bare_loop(spec, chunksize)
        return {"wall_s": time.perf_counter() - start, "digest": out}
    from coffea_hpc.runner import run

    backend = method.removeprefix("coffea-hpc-")
    if backend == "parsl":  # imported lazily by the backend; imports are not timed
        import parsl  # noqa: F401
    start = time.perf_counter()
    outcome = run(proc, spec, backend=backend, workers=workers, chunksize=chunksize,
                  output_dir=None if backend != "parsl" else
                  Path(f"/tmp/bench-parsl-{os.getpid()}"))
    wall = time.perf_counter() - start
    metrics = outcome.result.metrics
    return {"wall_s": wall, "digest": digest(outcome.output, analysis),
            "build_per_chunk_s": metrics["buildtime"] / metrics["chunks"],
            "process_per_chunk_s": metrics["processtime"] / metrics["chunks"],
            "chunks": metrics["chunks"], "stages_s": outcome.report["stages_s"]}


def digest(out: dict, analysis: str) -> dict:
    if analysis == "light":
        return {ds: dict(flow) for ds, flow in sorted(out["cutflow"].items())}
    return {ds: [int(n), round(float(out["ht"][ds].values().sum()), 3)]
            for ds, n in sorted(out["events"].items())}


def bare_loop(spec: dict, chunksize: int) -> dict:
    """The same dimuon selection, straight from the branches with uproot and awkward."""
    import awkward as ak
    import numpy as np
    import uproot

    flows = {}
    for name, ds in spec.items():
        flow = {"all": 0, "two muons": 0, "opposite sign": 0, "Z window": 0}
        for path in ds["files"]:
            for arrays in uproot.iterate({path: "Events"}, MUON_BRANCHES, step_size=chunksize):
                good = ((arrays.Muon_pt > 10) & (abs(arrays.Muon_eta) < 2.4)
                        & arrays.Muon_tightId)
                pt, eta, phi = arrays.Muon_pt[good], arrays.Muon_eta[good], arrays.Muon_phi[good]
                m, q = arrays.Muon_mass[good], arrays.Muon_charge[good]
                two = ak.num(pt) >= 2
                pt, eta, phi, m, q = (x[two][:, :2] for x in (pt, eta, phi, m, q))
                os_ = ak.sum(q, axis=1) == 0
                pt, eta, phi, m = (ak.to_numpy(x[os_]) for x in (pt, eta, phi, m))
                px, py = pt * np.cos(phi), pt * np.sin(phi)
                pz, e = pt * np.sinh(eta), np.sqrt((pt * np.cosh(eta)) ** 2 + m**2)
                mass = np.sqrt(np.maximum(e.sum(1) ** 2 - px.sum(1) ** 2 - py.sum(1) ** 2
                                          - pz.sum(1) ** 2, 0))
                flow["all"] += len(arrays)
                flow["two muons"] += int(ak.sum(two))
                flow["opposite sign"] += int(ak.sum(os_))
                flow["Z window"] += int(np.sum((mass > 76) & (mass < 106)))
        flows[name] = flow
    return dict(sorted(flows.items()))


def chunk_overhead(spec: dict, chunksize: int) -> dict:
    """Per-chunk cost of building events — alone (the overhead) and with reading the muons
    (real I/O, which grows with the chunk) — first chunk of a file excluded, with
    coffea-hpc's GC setting and with Python's default."""
    import awkward as ak
    from coffea.nanoevents import NanoAODSchema

    from coffea_hpc.data.chunks import Chunk, even_steps
    from coffea_hpc.processing.events import EventsBuilder
    from coffea_hpc.processing.worker import _fewer_gc_pauses

    warnings.simplefilter("ignore")
    path = next(iter(next(iter(spec.values()))["files"]))
    import uproot

    n = uproot.open(path)["Events"].num_entries
    steps = even_steps(n, chunksize)
    results = {}
    for label, tuned, read in (("build_tuned_gc", True, False),
                               ("build_default_gc", False, False),
                               ("build+muons_tuned_gc", True, True),
                               ("build+muons_default_gc", False, True)):
        builder = EventsBuilder()
        times = []
        for i, (a, b) in enumerate(steps * 3):
            start = time.perf_counter()
            with _fewer_gc_pauses() if tuned else contextlib.nullcontext():
                events = builder.events(Chunk("d", path, "Events", a, b), NanoAODSchema)
                if read:
                    ak.sum(events.Muon.pt)
                del events
            if i > 0:
                times.append(time.perf_counter() - start)
        builder.close()
        gc.collect()
        results[label] = {"mean_s": statistics.mean(times), "max_s": max(times)}
    return results



# -- the orchestration --------------------------------------------------------------------


PLAN = [  # (method, workers)
    ("runner-iterative", 1), ("coffea-hpc-iterative", 1), ("coffea-hpc-futures", 1),
    ("runner-futures", 2), ("coffea-hpc-futures", 2), ("coffea-hpc-parsl", 2),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--events", type=int, default=25_000, help="events per file")
    parser.add_argument("--chunksize", type=int, default=5_000)
    parser.add_argument("--quick", action="store_true", help="small files, light analysis")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over all contenders (interleaved); medians are reported")
    parser.add_argument("--analyses", default=None, help="comma-separated: light,heavy")
    parser.add_argument("--overhead-only", action="store_true",
                        help="only the per-chunk event-building micro-benchmark")
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    parser.add_argument("--_analysis", help=argparse.SUPPRESS)
    parser.add_argument("--_workers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._one:
        spec = json.loads(args._spec.read_text())
        print(json.dumps(measure(args._one, args._analysis, args._workers, spec,
                                 args.chunksize)))
        return

    if args.quick:
        args.files, args.events, args.chunksize = 2, 4_000, 1_000
    folder = ROOT / ".bench" / f"nanoaod-{args.files}x{args.events}"
    data = make_data(folder, args.files, args.events)
    spec_path = folder / "fileset.json"
    spec_path.write_text(json.dumps(data["fileset"]))
    events = data["events"]
    print(f"data: {args.files} files x {args.events} events, ~1,700 branches, LZMA "
          f"({data['generation_s']:.0f} s to generate or find), chunks of {args.chunksize}")
    report: dict = {"events": events, "chunksize": args.chunksize, "results": {}}
    report["chunk_overhead"] = chunk_overhead(data["fileset"], args.chunksize)
    print("per-chunk event building (first chunk of a file excluded): "
          + ", ".join(f"{k} {v['mean_s'] * 1e3:.0f} ms (max {v['max_s'] * 1e3:.0f})"
                      for k, v in report["chunk_overhead"].items()))
    if args.overhead_only:
        return
    analyses = (args.analyses.split(",") if args.analyses
                else ["light"] if args.quick else ["light", "heavy"])
    plan = [("bare-uproot", 1), *PLAN]
    for analysis in analyses:
        runs: dict[str, list[dict]] = {}
        for round_ in range(args.repeat):  # interleaved, so a slow spell hits every contender
            for method, workers in plan:
                if method == "bare-uproot" and analysis != "light":
                    continue
                proc = subprocess.run(
                    [sys.executable, __file__, "--_one", method, "--_analysis", analysis,
                     "--_workers", str(workers), "--_spec", str(spec_path),
                     "--chunksize", str(args.chunksize)],
                    capture_output=True, text=True, cwd=ROOT)
                if proc.returncode != 0:
                    print(f"{analysis} {method} x{workers}: failed\n{proc.stderr[-3000:]}")
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                res["events_per_s"] = events / res["wall_s"]
                runs.setdefault(f"{method} x{workers}", []).append(res)
                extra = (f"  build {res['build_per_chunk_s'] * 1e3:.0f} ms/chunk, process "
                         f"{res['process_per_chunk_s'] * 1e3:.0f} ms/chunk; "
                         + ", ".join(f"{k} {v:.1f}" for k, v in res["stages_s"].items()
                                     if v >= 0.05)
                         if "build_per_chunk_s" in res else "")
                tag = f" [round {round_ + 1}]" if args.repeat > 1 else ""
                print(f"{analysis:>5} {method:>22} x{workers}: {res['wall_s']:7.2f} s "
                      f"{res['events_per_s']:9.0f} ev/s{extra}{tag}", flush=True)
        rows = {name: _median_run(results) for name, results in runs.items()}
        _check(runs, analysis)
        _ratios(rows, analysis, args.repeat)
        report["results"][analysis] = rows
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


def _median_run(results: list[dict]) -> dict:
    """The run with the median wall time (the lower middle one for an even count), with
    every round's wall time beside it."""
    ordered = sorted(results, key=lambda r: r["wall_s"])
    row = dict(ordered[(len(ordered) - 1) // 2])
    row["walls_s"] = [round(r["wall_s"], 2) for r in results]
    return row


def _check(runs: dict[str, list[dict]], analysis: str) -> None:
    """Every round of every contender must give the Runner's output."""
    reference = runs.get("runner-iterative x1", [{}])[0].get("digest")
    digest = json.dumps(reference, sort_keys=True)
    bad = [name for name, results in runs.items() if reference is not None
           and any(json.dumps(r["digest"], sort_keys=True) != digest for r in results)]
    print(f"{analysis}: outputs {'agree' if not bad else 'DIFFER: ' + ', '.join(bad)}")


def _ratios(rows: dict, analysis: str, repeat: int) -> None:
    def rate(name: str) -> float | None:
        return rows[name]["events_per_s"] if name in rows else None

    pairs = [("coffea-hpc-iterative x1", "runner-iterative x1"),
             ("coffea-hpc-futures x1", "runner-iterative x1"),
             ("coffea-hpc-futures x2", "runner-futures x2"),
             ("coffea-hpc-parsl x2", "runner-futures x2"),
             ("coffea-hpc-iterative x1", "bare-uproot x1")]
    for ours, theirs in pairs:
        a, b = rate(ours), rate(theirs)
        if a and b:
            spread = ""
            ours_walls, theirs_walls = rows[ours]["walls_s"], rows[theirs]["walls_s"]
            # every round's own ratio, for how much the machine varied (when no round failed)
            if repeat > 1 and len(ours_walls) == len(theirs_walls) == repeat:
                per_round = [t / o for o, t in zip(ours_walls, theirs_walls, strict=True)]
                spread = f"  (rounds: {', '.join(f'{r:.2f}' for r in per_round)})"
            print(f"{analysis}: {ours} / {theirs} = {a / b:.2f}{spread}")


if __name__ == "__main__":
    main()
