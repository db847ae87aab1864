"""What a worker pays per file before its first chunk: reading the tree, deriving the
NanoEvents forms, building the first chunk's events.

    python benchmarks/file_open.py [--files 12] [--dir /tmp/coffea-hpc-file-open] [--json OUT]

Synthetic NanoAOD with the real branch count (profile ``nanoaod``, ~1,700 branches). Each
file is opened twice in one process, the two ways taking turns to go first: by a fresh
``EventsBuilder`` (every file derives its forms, as coffea does), and by one builder kept
across files (files of the same structure share their forms). Medians over the files after
the first; the first file is left out (imports, caches).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _data(folder: Path, files: int) -> list[str]:
    from coffea_hpc.data.synthetic import SyntheticDataset, generate

    fileset = generate(folder, events_per_file=5_000, profile="nanoaod", workers=2,
                       datasets=(SyntheticDataset("DYJetsToLL", "dy", files),))
    return [f.path for f in fileset.datasets["DYJetsToLL"].files]


def _timed(builder, path: str) -> dict[str, float]:
    from coffea.nanoevents import NanoAODSchema

    from coffea_hpc.data.chunks import Chunk

    started = time.perf_counter()
    entry = builder._open(path, "Events")
    opened = time.perf_counter()
    builder._form(entry, NanoAODSchema)
    formed = time.perf_counter()
    builder.events(Chunk("DYJetsToLL", path, "Events", 0, 1_000), NanoAODSchema)
    built = time.perf_counter()
    return {"tree_s": opened - started, "forms_s": formed - opened,
            "events_s": built - formed, "total_s": built - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/coffea-hpc-file-open"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from coffea_hpc.processing.events import EventsBuilder

    paths = _data(args.dir, args.files)
    # no file is closed inside a timing: the kept builder holds them all until the end
    kept = EventsBuilder(max_open_files=len(paths))
    fresh_way, kept_way = "fresh builder per file", "one builder (shared forms)"
    rows: dict[str, list[dict[str, float]]] = {fresh_way: [], kept_way: []}
    for i, path in enumerate(paths):
        fresh = EventsBuilder(max_open_files=1)
        ways = [(fresh_way, fresh), (kept_way, kept)]
        for way, builder in ways if i % 2 else ways[::-1]:  # each goes first every other file
            rows[way].append(_timed(builder, path))
        fresh.close()
    kept.close()
    results = {way: {key: round(statistics.median(r[key] for r in found[1:]), 4)
                     for key in found[0]} for way, found in rows.items()}
    print(f"{'':28} {'tree':>7} {'forms':>7} {'events':>7} {'total':>7}")
    for way, medians in results.items():
        print(f"{way:28} " + " ".join(f"{medians[k]:>6.3f}s" for k in
                                       ("tree_s", "forms_s", "events_s", "total_s")))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"files": args.files, "results": results}, indent=1))


if __name__ == "__main__":
    main()
