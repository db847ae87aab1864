"""Worker memory against files processed: flat after warm-up, whatever the backend.

    python benchmarks/memory.py --files 1000        # the recorded run (RESULTS-memory.md)
    python benchmarks/memory.py --files 200         # a quick look
    python benchmarks/memory.py --profile nanoaod --distinct 2 --files 160 \
        --backends futures,futures-nocollect      # NanoAOD-sized trees

Data: synthetic NanoAOD (`coffea_hpc.data.synthetic`), a few distinct files of ``--events``
events, each reached through many hard links, so that a worker sees ``--files`` paths it has
never opened (what it keeps per file is keyed by path) without writing thousands of files.
One chunk per file, one chunk per task: the case where per-file state matters most.

The analysis is the example dimuon processor, which also reports its own process's RSS after
every chunk, numbered per process; the table gives each worker's RSS after its 1st, 50th, ...
file and the ratio of its highest RSS after the 50th file to its RSS at the 50th. Target:
at most 1.5. It also gives the time each worker spent in full collections, measured inside
it. ``futures-nocollect`` is the futures backend with the workers' periodic full collection
switched off, for comparison. Every contender runs in a fresh process; the cut flows must
agree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from coffea_hpc.examples.dimuon import DimuonProcessor  # noqa: E402

CONTENDERS = ("futures", "parsl", "futures-nocollect")
MARKS = (1, 50, 100, 200, 300, 500, 750, 1000)
WARM_UP = 50


class RssDimuon(DimuonProcessor):
    """The dimuon analysis, plus the RSS of the process that ran each chunk and the time
    that process spent in full collections during it."""

    def __init__(self, collect: bool = True) -> None:
        self.collect = collect
        self.seen = 0
        self.full_gc = [0.0, 0, 0.0]  # seconds, count, start of the one running
        self.reported = [0.0, 0]

    def _timed(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self.full_gc[2] = time.perf_counter()
        else:
            self.full_gc[0] += time.perf_counter() - self.full_gc[2]
            self.full_gc[1] += 1

    def process(self, events: Any) -> dict[str, Any]:
        import gc

        import psutil

        if self.seen == 0:
            gc.callbacks.append(self._timed)
            if not self.collect:
                from coffea_hpc.processing import worker

                worker._OLD_GARBAGE.after_chunk = lambda files_closed: None  # type: ignore
        out = super().process(events)
        self.seen += 1
        pid = os.getpid()
        out["rss"] = {pid: {self.seen: psutil.Process().memory_info().rss}}
        # since the last report: a collection after a chunk is counted with the next chunk
        out["full_gc"] = {pid: {"s": self.full_gc[0] - self.reported[0],
                                "n": self.full_gc[1] - self.reported[1]}}
        self.reported = self.full_gc[:2]
        return out


def make_paths(folder: Path, files: int, distinct: int, events: int, profile: str) -> dict:
    """``files`` paths over ``distinct`` generated files, as a fileset mapping."""
    from coffea_hpc.data.synthetic import SyntheticDataset, generate

    source = folder / f"{profile}-{events}"
    fileset = generate(source, events_per_file=events, profile=profile, workers=2,
                       datasets=[SyntheticDataset("DYJetsToLL", "dy", distinct,
                                                  {"is_mc": True})])
    originals = [f.path for f in fileset.datasets["DYJetsToLL"].files]
    links = folder / f"links-{profile}-{events}"
    links.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        path = links / f"f{i:05d}.root"
        if not path.exists():
            os.link(originals[i % len(originals)], path)
        paths.append(str(path))
    return {"DYJetsToLL": {"treename": "Events", "files": paths, "metadata": {"is_mc": True}}}


def run_one(contender: str, spec: dict, events: int, workers: int) -> dict:
    from coffea_hpc import run

    backend = contender.split("-")[0]
    start = time.perf_counter()
    outcome = run(RssDimuon(collect=contender != "futures-nocollect"), spec, backend=backend,
                  workers=workers, chunksize=events, chunks_per_task=1)
    wall = time.perf_counter() - start
    value = outcome.result.value
    return {
        "contender": contender,
        "wall_s": wall,
        "cutflow": {k: int(v) for k, v in value["cutflow"]["DYJetsToLL"].items()},
        "rss_mb": {str(pid): {str(n): rss / 2**20 for n, rss in sorted(by_file.items())}
                   for pid, by_file in value["rss"].items()},
        "full_gc": {str(pid): dict(gc) for pid, gc in value["full_gc"].items()},
    }


def summarise(result: dict) -> list[dict]:
    rows = []
    for pid, by_file in result["rss_mb"].items():
        series = {int(n): mb for n, mb in by_file.items()}
        warm = series.get(WARM_UP)
        after = [mb for n, mb in series.items() if n > WARM_UP]
        rows.append({
            "worker": pid,
            "files": max(series),
            "rss_at": {n: series[n] for n in MARKS if n in series},
            "last": series[max(series)],
            "ratio": max(after) / warm if warm and after else None,
            "full_gc": result["full_gc"].get(pid, {"s": 0.0, "n": 0}),
        })
    return rows


def report(results: list[dict], args: argparse.Namespace) -> str:
    rows = [(result, row) for result in results for row in summarise(result)]
    marks = [n for n in MARKS if all(n in row["rss_at"] for _, row in rows)]
    lines = [f"{args.files} paths over {args.distinct} distinct {args.profile} files of "
             f"{args.events} events, one chunk per file, {args.workers} workers", "",
             "| backend | wall [s] | files | " + " | ".join(f"RSS@{n}" for n in marks)
             + f" | RSS@last | max after {WARM_UP} / at {WARM_UP} | full collections |",
             "|---|---:|---:|" + "---:|" * len(marks) + "---:|---:|---:|"]
    for result, row in rows:
        cells = [f"{row['rss_at'][n]:.0f}" for n in marks]
        ratio = f"{row['ratio']:.2f}" if row["ratio"] else "n/a"
        gc = row["full_gc"]
        lines.append(f"| {result['contender']} | {result['wall_s']:.0f} | {row['files']} | "
                     + " | ".join(cells) + f" | {row['last']:.0f} | {ratio} | "
                     f"{gc['n']:.0f} in {gc['s']:.1f} s |")
    lines.append("\n(RSS in MB, of each worker process after its n-th file; full collections: "
                 "how many that worker made while processing, and their total time.)")
    flows = {json.dumps(r["cutflow"], sort_keys=True) for r in results}
    lines += ["", "cut flows agree" if len(flows) == 1 else "CUT FLOWS DIFFER: " + str(flows)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=800, help="distinct paths to process")
    parser.add_argument("--distinct", type=int, default=8, help="files actually written")
    parser.add_argument("--events", type=int, default=200, help="events per file")
    parser.add_argument("--profile", default="small", choices=["small", "nanoaod"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backends", default=",".join(CONTENDERS))
    parser.add_argument("--dir", type=Path, default=ROOT / ".bench" / "memory")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--_one", help=argparse.SUPPRESS)
    parser.add_argument("--_spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._one:  # one contender, in a fresh process
        spec = json.loads(args._spec.read_text())
        print(json.dumps(run_one(args._one, spec, args.events, args.workers)))
        return

    spec = make_paths(args.dir, args.files, args.distinct, args.events, args.profile)
    spec_path = args.dir / "fileset.json"
    spec_path.write_text(json.dumps(spec))
    results = []
    for contender in args.backends.split(","):
        done = subprocess.run(
            [sys.executable, __file__, "--_one", contender, "--_spec", str(spec_path),
             "--events", str(args.events), "--workers", str(args.workers)],
            capture_output=True, text=True, check=False, cwd=args.dir)
        if done.returncode != 0:
            sys.exit(f"{contender} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{contender}: {results[-1]['wall_s']:.0f} s", file=sys.stderr)
    print(report(results, args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
