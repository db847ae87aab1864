"""Time to the first processed chunk of a small run, per backend: what an analyst iterating
on a processor waits for, many times a day.

    python benchmarks/startup.py --dir /tmp/startup [--rounds 5] [--via python,cli]
        [--cold] [--against CHECKOUT] [--json .bench/startup.json]

Each measurement is a fresh Python process: ``--via python`` calls `coffea_hpc.run`, the
clock started before coffea-hpc is imported and read when the first chunk's result reaches
the driver; ``--via cli`` runs ``coffea-hpc run`` as typed, the clock started before the
command and the first chunk read from its chunk log (when it ended on its worker). Both
are read again when the run is over. The run: 40,000 NanoAOD-profile events in 8 chunks (4 files),
the example dimuon analysis, output written as `coffea-hpc run` writes it; coffea-hpc's
bytecode compiled first, as an installed package has it. Medians over
``--rounds`` runs; each round runs the backends in turn, so load on the machine spreads over
all of them. ``--against`` times another checkout of coffea-hpc too (a ``git worktree`` of
an earlier commit), its runs alternating with this one's, and prints the median of the
paired differences: this machine's speed drifts by 20 % from one hour to the next.

What runs keep for the next one (the metadata cache, the NanoEvents forms workers keep) is in
a folder of the benchmark's own under ``--dir``, one per checkout, shared by its rounds: the
first round fills it, and the medians are those of an analyst's next run on the same files.
``--cold`` gives every run an empty folder instead: a first run on new files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

START = time.perf_counter()

BACKENDS = ("iterative", "futures", "parsl")


def _child(backend: str, fileset: Path, out: Path) -> None:
    """One run in this fresh process; prints its timings as one JSON line."""
    from coffea_hpc import run  # as analysts call it, and as `coffea-hpc run` runs

    first: list[float] = []

    class FirstChunk:
        stage = ""

        def start(self, label: str, total: int, unit: str) -> None:
            self.stage = label  # preprocessing reports its files' progress too

        def update(self, progress) -> None:
            if self.stage == "processing" and progress.done and not first:
                first.append(time.perf_counter() - START)

        finish = update

    outcome = run("coffea_hpc.examples.dimuon:DimuonProcessor", str(fileset),
                  backend=backend, workers=2, output_dir=out, chunksize=5_000,
                  reporter=FirstChunk())
    total = time.perf_counter() - START
    stages = outcome.report["stages_s"]
    print(json.dumps({"backend": backend, "first_chunk_s": first[0] if first else None,
                      "total_s": total, "start_s": stages.get("start"),
                      "preprocessing_s": stages.get("preprocessing")}))


def _dataset(folder: Path) -> Path:
    from coffea_hpc.data.synthetic import SyntheticDataset, generate

    fileset = generate(folder / "data", events_per_file=10_000, profile="nanoaod",
                       datasets=(SyntheticDataset("DYJetsToLL", "dy", 4, {"is_mc": True}),),
                       workers=2)
    return fileset.save(folder / "fileset.json")


def _bytecode(env: dict[str, str]) -> None:
    """Compile coffea-hpc's modules as an installed package has them: in an environment with
    ``PYTHONDONTWRITEBYTECODE`` set, an editable install otherwise compiles them again in
    every process (the driver, the forkserver, each Parsl process), ~0.1-0.3 s each."""
    subprocess.run([sys.executable, "-c", "import compileall, pathlib, coffea_hpc; "
                    "compileall.compile_dir(pathlib.Path(coffea_hpc.__file__).parent, quiet=1)"],
                   check=True, env=env)


def _command_line(backend: str, fileset: Path, out: Path, env: dict[str, str]) -> dict:
    """One run of ``coffea-hpc run``, as typed: its first chunk is when the first chunk
    ended on its worker (``chunks.jsonl``), a few milliseconds before the driver has it."""
    command = Path(sys.executable).with_name("coffea-hpc")
    began = time.time()
    subprocess.run([str(command), "run", "coffea_hpc.examples.dimuon:DimuonProcessor",
                    "--fileset", str(fileset), "-o", str(out), "--executor", backend,
                    "--workers", "2", "--chunksize", "5000"],
                   capture_output=True, text=True, check=True, env=env)
    total = time.time() - began
    rows = [json.loads(line) for line in (out / "chunks.jsonl").read_text().splitlines()]
    stages = json.loads((out / "report.json").read_text())["stages_s"]
    return {"backend": backend, "first_chunk_s": min(r["end"] for r in rows) - began,
            "total_s": total, "start_s": stages.get("start"),
            "preprocessing_s": stages.get("preprocessing")}


def _checkouts(against: Path | None) -> dict[str, dict[str, str]]:
    """The code to time, as the environment that imports it: this checkout, and with
    ``--against`` another one (a ``git worktree`` of an earlier commit), imported first
    through PYTHONPATH."""
    found = {"this": dict(os.environ)}
    if against is not None:
        found["against"] = {**os.environ, "PYTHONPATH": str(against.resolve())}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/coffea-hpc-startup"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--via", default="python,cli",
                        help="python (coffea_hpc.run in a fresh process), cli (coffea-hpc run)")
    parser.add_argument("--against", type=Path,
                        help="a checkout of other code (git worktree add DIR COMMIT), run in "
                             "turn with this one, for paired differences")
    parser.add_argument("--cold", action="store_true",
                        help="every run with an empty cache folder (a first run on new files)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        backend, fileset, out = args._child
        _child(backend, Path(fileset), Path(out))
        return

    fileset = _dataset(args.dir)
    checkouts = _checkouts(args.against)
    for env in checkouts.values():
        _bytecode(env)
    cases = [(code, via, b) for via in args.via.split(",") for b in args.backends.split(",")
             for code in checkouts]
    runs: dict[tuple[str, str, str], list[dict]] = {case: [] for case in cases}
    for i in range(args.rounds):
        for code, via, backend in cases:
            env = checkouts[code]
            out = args.dir / f"out-{code}-{via}-{backend}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            cache = args.dir / (f"cache-{code}-{via}-{backend}-{i}" if args.cold
                                else f"cache-{code}")
            if args.cold:
                shutil.rmtree(cache, ignore_errors=True)
            env = {**env, "COFFEA_HPC_CACHE_DIR": str(cache)}
            if via == "cli":
                runs[code, via, backend].append(_command_line(backend, fileset, out, env))
                continue
            done = subprocess.run(  # this script, timing the code PYTHONPATH puts first
                [sys.executable, str(Path(__file__).resolve()), "--_child", backend,
                 str(fileset), str(out)], capture_output=True, text=True, check=True, env=env)
            runs[code, via, backend].append(json.loads(done.stdout.strip().splitlines()[-1]))
    keys = ("first_chunk_s", "total_s", "start_s", "preprocessing_s")
    rows = []
    for (code, via, backend), found in runs.items():
        row = {"code": code, "via": via, "backend": backend,
               **{key: statistics.median(r[key] for r in found) for key in keys}}
        if code == "against":
            mine = runs["this", via, backend]
            row["paired_first_chunk_s"] = statistics.median(
                m["first_chunk_s"] - r["first_chunk_s"] for m, r in zip(mine, found, strict=True))
        rows.append(row)
    print(f"{'code':<8} {'via':<7} {'backend':<10} {'first chunk':>12} {'whole run':>10} "
          f"{'start':>7} {'preprocess':>11}")
    for row in rows:
        paired = (f"   this - against: {row['paired_first_chunk_s']:+.2f}s"
                  if "paired_first_chunk_s" in row else "")
        print(f"{row['code']:<8} {row['via']:<7} {row['backend']:<10} "
              f"{row['first_chunk_s']:>11.2f}s {row['total_s']:>9.2f}s {row['start_s']:>6.2f}s "
              f"{row['preprocessing_s']:>10.2f}s{paired}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": rows, "rounds": args.rounds,
                                         "cold": args.cold}, indent=1))


if __name__ == "__main__":
    main()
