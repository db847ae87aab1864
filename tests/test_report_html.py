"""``coffea-hpc report``: the HTML page, opened in a real headless Chromium.

Chromium (Debian's ``chromium``; scripts/test.sh installs it as root) loads the page from a
file and prints every console message to its log; ``--dump-dom`` gives the document it
built and ``--screenshot`` what it drew. Where no Chromium can run, the browser tests skip
and say why; the page's structure is still checked without one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from coffea_hpc.cli.app import main
from coffea_hpc.examples.dimuon import DimuonProcessor
from coffea_hpc.report_html import PLOTS, render_report
from coffea_hpc.runner import run


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                               "google-chrome")) if p), None)


def _browse(page: Path, tmp: Path) -> tuple[str, list[str], Path]:
    """The DOM Chromium built, its console messages, and a screenshot of the page."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium (apt-get install chromium; scripts/test.sh does it as root)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
             "--no-first-run", "--disable-extensions"]
    url = page.resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp / "page.png"
    drawn = subprocess.run([*flags, "--window-size=1000,3200", f"--screenshot={shot}", url],
                           capture_output=True, text=True, timeout=120)
    assert drawn.returncode == 0 and shot.exists(), drawn.stderr[-2000:]
    console = [line for line in (dom.stderr + drawn.stderr).splitlines()
               if ":CONSOLE" in line]
    return dom.stdout, console, shot


class _Plots(HTMLParser):
    """Per plot section: its svg elements and the drawn shapes (rects of positive size)."""

    def __init__(self) -> None:
        super().__init__()
        self.plots: dict[str, dict[str, int]] = {}
        self.fetches: list[str] = []
        self._section: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in ("src", "href"):
            if a.get(name):
                self.fetches.append(f"{tag} {name}={a[name]}")
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.fetches.append(tag)
        if tag == "section":
            ident = a.get("id") if "plot" in (a.get("class") or "") else None
            self._section.append(ident)
            if ident:
                self.plots[ident] = {"svg": 0, "shapes": 0, "empty": 0}
            return
        current = next((s for s in reversed(self._section) if s), None)
        if current is None:
            return
        if tag == "svg":
            self.plots[current]["svg"] += 1
        elif tag == "rect" and float(a.get("width") or 0) > 0 and float(a.get("height") or 0) > 0:
            self.plots[current]["shapes"] += 1
        elif "empty" in (a.get("class") or ""):
            self.plots[current]["empty"] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "section" and self._section:
            self._section.pop()


def _plots(dom: str) -> _Plots:
    parser = _Plots()
    parser.feed(dom)
    return parser


def _problems(dom: str) -> list[str]:
    found = _plots(dom)
    problems = [f"plot {p!r} missing" for p in PLOTS if p not in found.plots]
    problems += [f"plot {p!r} is empty" for p, n in found.plots.items()
                 if not n["svg"] or not n["shapes"] or n["empty"]]
    return problems + [f"fetches {f}" for f in found.fetches]


@pytest.fixture(scope="module")
def run_dir(fileset, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "out"
    run(DimuonProcessor(), fileset, backend="futures", workers=2, chunksize=1_000,
        chunks_per_task=2, output_dir=out)
    return out


def test_the_report_opens_in_chromium_with_every_plot_drawn(run_dir, tmp_path, capsys):
    page = tmp_path / "report.html"
    assert main(["report", str(run_dir), "-o", str(page)]) == 0
    assert str(page) in capsys.readouterr().err
    dom, console, shot = _browse(page, tmp_path)
    assert console == []
    assert _problems(dom) == []
    # every chunk of the run is a bar of the timeline
    chunks = json.loads((run_dir / "report.json").read_text())["performance"]["chunk_attempts"]
    assert _plots(dom).plots["timeline"]["shapes"] == chunks
    # what was drawn: much of the page carries the plots' colour, not only background
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    plot_blue = sum(n for n, rgb in image.getcolors(1 << 24) if rgb == (0x4E, 0x79, 0xA7))
    assert plot_blue > 20_000, plot_blue


@pytest.mark.parametrize("backend", ["iterative", "parsl", "dask"])
def test_every_backend_gives_a_page_with_every_plot_and_its_configuration(
        fileset, tmp_path, backend, capsys):
    """The page is drawn from what every backend records (the browser test above uses a
    futures run); its configuration section says how the run was made."""
    out = tmp_path / "out"
    run(DimuonProcessor(), fileset, backend=backend, workers=2, chunksize=1_500,
        chunks_per_task=1, output_dir=out)
    page = tmp_path / "report.html"
    assert main(["report", str(out), "-o", str(page)]) == 0
    dom = page.read_text()
    assert _problems(dom) == []
    [config] = re.findall(r'<section id="configuration">.*?</section>', dom, re.S)
    rows = dict(re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", config))
    assert rows["backend"] == backend and rows["chunksize"] == "1500"
    assert rows["status"] == "complete"


def test_the_checks_see_console_errors_and_empty_plots(run_dir, tmp_path):
    """The browser test can fail: a script error reaches the console it reads, and a run
    without chunk metrics gives plots the DOM check calls empty."""
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    _, console, _ = _browse(broken, tmp_path)
    assert any("undefinedFunction" in line for line in console)
    report = json.loads((run_dir / "report.json").read_text())
    report["performance"]["column_bytes"] = {}
    dom = render_report(report, [])
    assert set(_problems(dom)) >= {"plot 'timeline' is empty", "plot 'columns' is empty",
                                   "plot 'throughput' is empty"}


def test_a_directory_without_a_report_is_one_line(run_dir, tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: .* has no report\.json", err) and "Traceback" not in err
    assert main(["report", str(run_dir), "-o", str(tmp_path / "no" / "such" / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "error: cannot write" in err and "No such file" in err and "Traceback" not in err


def test_a_large_run_draws_one_lane_per_host_and_a_sample_of_its_chunks():
    """200 nodes of 64 workers would be 12,800 lanes: beyond 150 processes, a lane per
    host; beyond 20,000 chunks, an even sample, said in the caption."""
    rows = [{"dataset": "DY", "file": f"f{i % 500}.root", "entrystart": 0, "entrystop": 10,
             "entries": 10, "host": f"node{i % 200}", "pid": i % 12_800, "start": i * 0.01,
             "end": i * 0.01 + 5, "wall_s": 5.0, "outcome": "ok", "attempt": 1}
            for i in range(30_000)]
    page = render_report({"status": "complete", "datasets": [{"name": "DY"}]}, rows)
    timeline = _plots(page).plots["timeline"]
    assert 0 < timeline["shapes"] <= 20_000
    assert "20,000 of 30,000 chunks are drawn" in page
    lanes = re.search(r'id="timeline".*?<svg[^>]*height="(\d+)"', page, re.S)
    assert lanes and int(lanes.group(1)) <= 200 * 2 + 40
