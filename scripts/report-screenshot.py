#!/usr/bin/env python3
"""Make docs/images/report.png: a small run, its HTML report, a headless-Chromium screenshot.

    python scripts/report-screenshot.py [--workers 2] [--keep DIR]

Two synthetic datasets and a processor whose cost per event differs between them, so the
report has something to show (one dataset's chunks take longer). Needs Chromium (Debian:
apt-get install chromium).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coffea_hpc.examples.dimuon import DimuonProcessor  # noqa: E402


class UnevenProcessor(DimuonProcessor):
    """The dimuon analysis, plus busy work on one dataset: ten times the CPU per event."""

    def process(self, events):
        if events.metadata["dataset"] == "TTTo2L2Nu":
            import numpy as np

            x = np.random.default_rng(0).random(len(events) * 1500)
            for _ in range(4):
                x = np.sqrt(x * x + 1.0)
        return super().process(events)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep the run here (default: a temp dir)")
    parser.add_argument("--image", type=Path, default=ROOT / "docs" / "images" / "report.png")
    args = parser.parse_args()
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                                  "google-chrome")) if p), None)
    if browser is None:
        print("error: no Chromium found (apt-get install chromium)", file=sys.stderr)
        return 2
    from coffea_hpc.data.synthetic import SyntheticDataset, generate
    from coffea_hpc.report_html import write_report
    from coffea_hpc.runner import run

    work = args.keep or Path(tempfile.mkdtemp(prefix="coffea-hpc-report-"))
    fileset = generate(work / "data", events_per_file=20_000, datasets=(
        SyntheticDataset("DYJetsToLL", "dy", 3, {"is_mc": True}),
        SyntheticDataset("TTTo2L2Nu", "ttbar", 2, {"is_mc": True})))
    run(UnevenProcessor(), fileset, backend="futures", workers=args.workers, chunksize=2_500,
        output_dir=work / "out")
    page = write_report(work / "out")
    args.image.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={work / 'profile'}", "--window-size=1000,2900",
                    f"--screenshot={args.image}", page.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    print(f"report: {page}\nscreenshot: {args.image}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
