"""Preprocessing over XRootD: every file opened (cold) against the metadata cache (cached).

    python benchmarks/preprocess_cache.py                    # 500 files, futures x2, 3 rounds
    python benchmarks/preprocess_cache.py --files 100 --rounds 1
    python benchmarks/preprocess_cache.py --executor parsl --workers 2

A real XRootD server on localhost (scripts/local-xrootd.sh, Debian's xrootd-server; run as
root, it serves as the unprivileged `xrootd` user) serves ``--files`` copies of one synthetic
NanoAOD file. Each round, on one backend started and warmed beforehand (its start-up, the
workers' imports and first connection are not timed):

- *cold, no cache*: `preprocess` opens every file over root:// (the run without a cache);
- *cold*: the same with an empty cache, which it fills (what a first run costs);
- *cached*: again with that cache: no file is opened, each is stat'ed (one XRootD request per
  file, 16 at a time, from the driver) to check its size and modification time.

The prepared filesets of the three must be equal, or the run says so. A loopback server
answers in microseconds; a remote one (a redirector, then a data server, tens of
milliseconds away) makes every open several round trips and every stat one, so the cached
share measured here is an upper bound for the time it saves at a real site.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parent / "scripts" / "local-xrootd.sh"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--executor", default="futures")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the measurements here too")
    args = parser.parse_args()

    from coffea_hpc.backends import make_backend
    from coffea_hpc.data.fileset import Fileset
    from coffea_hpc.data.synthetic import SyntheticDataset, generate
    from coffea_hpc.processing.metacache import MetadataCache
    from coffea_hpc.processing.preprocess import preprocess

    served = Path(tempfile.mkdtemp(prefix="coffea-hpc-bench-xrootd-"))
    served.chmod(0o755)
    port = _free_port()
    work = Path(tempfile.mkdtemp(prefix="coffea-hpc-bench-cache-"))
    try:
        one = generate(work / "gen", events_per_file=args.events,
                       datasets=(SyntheticDataset("DY", "dy", 1, {}),)).files[0][1].path
        (served / "store").mkdir(mode=0o755)
        urls = []
        for i in range(args.files):
            target = served / "store" / f"f{i:04d}.root"
            shutil.copy2(one, target)
            target.chmod(0o644)
            urls.append(f"root://localhost:{port}//store/{target.name}")
        subprocess.run([str(SCRIPT), "start", str(served), str(port)], check=True,
                       capture_output=True, text=True)
        fileset = Fileset.from_mapping({"DY": urls})
        options = {"timeout": 30}
        rows: dict[str, list[float]] = {"cold, no cache": [], "cold": [], "cached": []}
        with make_backend(args.executor, workers=args.workers, **(
                {"run_dir": work / "parsl"} if args.executor == "parsl" else {})) as backend:
            # workers import coffea and connect to the server once: not what is compared
            warm = Fileset.from_mapping({"DY": urls[:4 * args.workers]})
            preprocess(warm, backend, uproot_options=options)
            for r in range(args.rounds):
                results = {}
                cache_path = work / f"cache-{r}.sqlite"
                for name in rows:
                    cache = None if name == "cold, no cache" else MetadataCache(cache_path)
                    start = time.perf_counter()
                    out = preprocess(fileset, backend, uproot_options=options, cache=cache)
                    rows[name].append(time.perf_counter() - start)
                    opened = out.opened
                    results[name] = out.fileset
                    if cache is not None:
                        cache.close()
                    print(f"round {r + 1}: {name:15s} {rows[name][-1]:7.2f} s "
                          f"({opened} files opened)", flush=True)
                if len({f.model_dump_json() for f in results.values()}) != 1:
                    print("error: the prepared filesets differ", file=sys.stderr)
                    return 1
        medians = {name: statistics.median(times) for name, times in rows.items()}
        print(f"\n{args.files} files over root://localhost, {args.executor} x{args.workers}, "
              f"median of {args.rounds}:")
        for name, m in medians.items():
            print(f"  {name:15s} {m:7.2f} s  ({args.files / m:,.0f} files/s)")
        share = medians["cached"] / medians["cold"]
        print(f"  cached / cold: {share:.1%}")
        if args.json:
            args.json.write_text(json.dumps({"files": args.files, "executor": args.executor,
                                             "workers": args.workers, "rounds": rows,
                                             "medians": medians, "cached_over_cold": share},
                                            indent=1))
        return 0
    finally:
        subprocess.run([str(SCRIPT), "stop", str(served), str(port)], check=False)
        shutil.rmtree(served, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
