"""``coffea-hpc report``: one self-contained HTML page about where a run's time went.

Everything is drawn here as static SVG from ``report.json`` and ``chunks.jsonl``: no script,
no stylesheet or font from elsewhere, so the page opens offline, from a mail attachment, on a
login node. Tooltips are SVG ``<title>`` elements (the browser shows them on hover).

How to read each plot is explained in docs/performance.md.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from coffea_hpc import output as files
from coffea_hpc.errors import UserError
from coffea_hpc.metrics import CHUNKS_NAME, read_chunks

__all__ = ["PLOTS", "render_report", "write_report"]

PLOTS = ("throughput", "timeline", "durations", "columns", "slowest-files", "stages")
"""The ids of the plots every page has (the browser test checks each)."""

_PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7",
            "#9c755f", "#bab0ac", "#e15759")
_FAILED = "#d62728"
_W = 900
_MAX_BARS = 20_000
"""Chunks drawn in the timeline at most; beyond, an even sample (said in the caption)."""
_MAX_LANES = 150
"""Worker processes drawn as lanes of their own at most; beyond, one lane per host."""
_FIELDS = ("dataset", "file", "entrystart", "entrystop", "entries", "host", "pid", "start",
           "end", "wall_s", "outcome", "attempt")
"""What the page uses of a row (a run of 10^5 chunks is read in full)."""


def write_report(out_dir: str | Path, target: str | Path | None = None) -> Path:
    """Render the report of the run in ``out_dir`` to ``target`` (default
    ``out_dir/report.html``)."""
    out_dir = Path(out_dir)
    report_path = out_dir / files.REPORT_NAME
    if not report_path.is_file():
        raise UserError(f"{str(out_dir)!r} has no {files.REPORT_NAME}: is it the output "
                        "directory of a coffea-hpc run?")
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {report_path}: {err}") from None
    chunks_path = out_dir / CHUNKS_NAME
    rows: list[dict[str, Any]] = []
    if chunks_path.is_file():
        rows = read_chunks(chunks_path, run=report.get("started"), fields=_FIELDS) \
            or read_chunks(chunks_path, fields=_FIELDS)
    target = Path(target) if target is not None else out_dir / "report.html"
    page = render_report(report, rows)
    try:
        target.write_text(page)
    except OSError as err:
        raise UserError(f"cannot write {str(target)!r}: {err.strerror or err}") from None
    return target


def render_report(report: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """The page, as text."""
    perf = report.get("performance") or {}
    datasets = sorted({r["dataset"] for r in rows} | {d["name"] for d in
                                                      report.get("datasets", ())})
    colours = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(datasets)}
    done = [r for r in rows if r.get("start") is not None and r.get("end") is not None]
    t0 = min((r["start"] for r in done), default=0.0)
    parts = [
        _head(report),
        _figures(report, perf),
        _section("throughput", "Throughput over time",
                 "Events processed per second, in bins from the first chunk's start (a chunk's "
                 "events count evenly over the time it ran).",
                 _throughput(done, t0)),
        _section("timeline", "Per-worker timeline",
                 "One lane per worker process (per host, beyond "
                 f"{_MAX_LANES} processes); one bar per chunk, coloured by dataset (red: "
                 "failed). Gaps are a worker waiting for work." + _sampled_note(done),
                 _legend(colours) + _timeline(done, t0, colours)),
        _section("durations", "Chunk duration per dataset",
                 "How long chunks took (wall seconds), one histogram per dataset.",
                 _durations(done, colours)),
        _section("columns", "Bytes read per column",
                 "Compressed bytes of the baskets read for each column (all chunks).",
                 _bars([(k, v) for k, v in (perf.get("column_bytes") or {}).items()][:30],
                       _bytes)),
        _section("slowest-files", "Slowest files",
                 "Files by the worker time spent on them; events/s is per busy second.",
                 _bars([(f["file"], f["busy_s"]) for f in perf.get("slowest_files") or ()],
                       lambda v: f"{v:.2f} s") + _slowest_table(perf)),
        _section("stages", "Stage breakdown",
                 "Wall time of each stage of the run.", _stages(report.get("stages_s") or {})),
        _configuration(report),
        "</main></body></html>\n",
    ]
    return "".join(parts)


# -- page pieces ------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:960px;margin:auto;padding:1em 1.5em}
h1{font-size:1.5em;margin:.3em 0}h2{font-size:1.15em;margin:0 0 .2em}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.8em 1em;margin:1em 0}
p.note{color:#555;font-size:.9em;margin:.2em 0 .6em}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.15em .8em .15em 0;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:.5em}
.figure{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em .8em}
.figure b{display:block;font-size:1.3em}.figure span{color:#555;font-size:.85em}
.legend span{display:inline-block;margin-right:1em;font-size:.85em}
.legend i{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:middle}
svg text{font-size:11px;fill:#333}
"""


def _head(report: dict[str, Any]) -> str:
    status = report.get("status", "?")
    started = report.get("started", "")
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>coffea-hpc run report ({_e(status)})</title><style>{_CSS}</style>"
            f"</head><body><main><h1>coffea-hpc run: {_e(status)}</h1>"
            f"<p class=\"note\">started {_e(started)} on {_e(report.get('backend'))} with "
            f"{_e(report.get('workers'))} workers; {report.get('events', 0):,} events in "
            f"{report.get('wall_time_s', 0):.1f} s</p>")


def _figures(report: dict[str, Any], perf: dict[str, Any]) -> str:
    def fig(value: Any, label: str, fmt: str = "{:,.0f}") -> str:
        shown = "-" if value is None else fmt.format(value)
        return f"<div class=\"figure\"><b>{_e(shown)}</b><span>{_e(label)}</span></div>"

    lost = (perf.get("lost_to_retries_s") or 0) + (perf.get("lost_to_ended_workers_s") or 0)
    return ("<section id=\"figures\"><h2>Figures</h2><div class=\"figures\">"
            + fig(perf.get("events_per_s"), "events/s while processing")
            + fig(perf.get("hz_per_core"), "events/s per core (Hz/core)", "{:,.1f}")
            + fig(perf.get("utilisation"), "worker utilisation", "{:.0%}")
            + fig(perf.get("cpu_efficiency"), "CPU / wall in chunks", "{:.0%}")
            + fig(perf.get("queue_wait_s"), "seconds tasks waited to start", "{:,.1f}")
            + fig(lost, "seconds lost to failures", "{:,.1f}")
            + fig(_bytes(perf["bytes_read"]) if perf.get("bytes_read") is not None else None,
                  "read from storage", "{}")
            + fig(perf.get("workers_seen"), "worker processes seen")
            + "</div></section>")


def _section(ident: str, title: str, note: str, body: str) -> str:
    return (f"<section class=\"plot\" id=\"{ident}\"><h2>{_e(title)}</h2>"
            f"<p class=\"note\">{_e(note)}</p>{body}</section>")


def _sampled_note(rows: Sequence[dict[str, Any]]) -> str:
    if len(rows) <= _MAX_BARS:
        return ""
    return f" {_MAX_BARS:,} of {len(rows):,} chunks are drawn (an even sample)."


def _legend(colours: dict[str, str]) -> str:
    items = "".join(f"<span><i style=\"background:{c}\"></i>{_e(n)}</span>"
                    for n, c in colours.items())
    return f"<div class=\"legend\">{items}<span><i style=\"background:{_FAILED}\"></i>" \
           "failed</span></div>"


def _configuration(report: dict[str, Any]) -> str:
    config = {"status": report.get("status"), "backend": report.get("backend"),
              "workers": report.get("workers"), **(report.get("configuration") or {}),
              **{f"version: {k}": v for k, v in (report.get("versions") or {}).items()}}
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in config.items())
    return (f"<section id=\"configuration\"><h2>Configuration</h2><table>{rows}</table>"
            "</section>")


def _slowest_table(perf: dict[str, Any]) -> str:
    files_ = perf.get("slowest_files") or []
    if not files_:
        return ""
    head = "<tr><th>file</th><th>dataset</th><th>busy s</th><th>events</th><th>events/s</th>" \
           "<th>bytes read</th></tr>"
    body = "".join(
        f"<tr><td>{_e(f['file'])}</td><td>{_e(f['dataset'])}</td>"
        f"<td class=\"n\">{f['busy_s']:.2f}</td><td class=\"n\">{f['events']:,}</td>"
        f"<td class=\"n\">{(f['events_per_s'] or 0):,.0f}</td>"
        f"<td class=\"n\">{_bytes(f['bytes_read'])}</td></tr>" for f in files_)
    return f"<table>{head}{body}</table>"


# -- plots ------------------------------------------------------------------------------


class _Svg:
    """A minimal SVG writer: a plot area with margins, and data-to-pixel scales."""

    def __init__(self, height: int, *, left: int = 60, bottom: int = 30) -> None:
        self.width, self.height = _W, height
        self.left, self.right, self.top, self.bottom = left, 15, 10, bottom
        self.items: list[str] = []

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom

    def add(self, item: str) -> None:
        self.items.append(item)

    def rect(self, x: float, y: float, w: float, h: float, fill: str, tip: str = "") -> None:
        title = f"<title>{_e(tip)}</title>" if tip else ""
        self.add(f"<rect x=\"{x:.1f}\" y=\"{y:.1f}\" width=\"{max(w, 0.5):.1f}\" "
                 f"height=\"{max(h, 0.5):.1f}\" fill=\"{fill}\">{title}</rect>")

    def text(self, x: float, y: float, s: str, anchor: str = "start") -> None:
        self.add(f"<text x=\"{x:.1f}\" y=\"{y:.1f}\" text-anchor=\"{anchor}\">{_e(s)}</text>")

    def line(self, x1: float, y1: float, x2: float, y2: float, colour: str = "#999") -> None:
        self.add(f"<line x1=\"{x1:.1f}\" y1=\"{y1:.1f}\" x2=\"{x2:.1f}\" y2=\"{y2:.1f}\" "
                 f"stroke=\"{colour}\" stroke-width=\"1\"/>")

    def x_axis(self, lo: float, hi: float, label: str) -> None:
        y = self.top + self.plot_h
        self.line(self.left, y, self.left + self.plot_w, y)
        for tick in _ticks(lo, hi):
            x = self.left + (tick - lo) / (hi - lo) * self.plot_w if hi > lo else self.left
            self.line(x, y, x, y + 4)
            self.text(x, y + 15, _num(tick), "middle")
        self.text(self.left + self.plot_w, y + 27, label, "end")

    def y_axis(self, lo: float, hi: float, label: str, *, whole: bool = False) -> None:
        self.line(self.left, self.top, self.left, self.top + self.plot_h)
        for tick in _ticks(lo, hi, whole=whole):
            y = self.top + self.plot_h - (tick - lo) / (hi - lo) * self.plot_h if hi > lo \
                else self.top + self.plot_h
            self.line(self.left - 4, y, self.left, y)
            self.text(self.left - 6, y + 4, _num(tick), "end")
        self.text(4, self.top + 8, label)

    def render(self, label: str) -> str:
        return (f"<svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" "
                f"aria-label=\"{_e(label)}\" width=\"{self.width}\" height=\"{self.height}\" "
                f"viewBox=\"0 0 {self.width} {self.height}\">{''.join(self.items)}</svg>")


def _empty(what: str) -> str:
    return f"<p class=\"empty\">no {_e(what)} recorded</p>"


def _throughput(rows: Sequence[dict[str, Any]], t0: float) -> str:
    ok = [r for r in rows if r["outcome"] == "ok"]
    if not ok:
        return _empty("chunks")
    span = max(max(r["end"] for r in ok) - t0, 1e-3)
    n_bins = max(min(60, len(ok)), 1)
    width = span / n_bins
    bins = [0.0] * n_bins
    for r in ok:  # a chunk's events are spread over the time it ran, not put at its end
        a, b = r["start"] - t0, r["end"] - t0
        first, last = min(int(a / width), n_bins - 1), min(int(b / width), n_bins - 1)
        for i in range(first, last + 1):
            overlap = min(b, (i + 1) * width) - max(a, i * width)
            bins[i] += r["entries"] * (overlap / (b - a) if b > a else 1.0)
    rates = [b / width for b in bins]
    svg = _Svg(260)
    top = max(rates) or 1.0
    for i, rate in enumerate(rates):
        x = svg.left + i * svg.plot_w / n_bins
        h = rate / top * svg.plot_h
        svg.rect(x, svg.top + svg.plot_h - h, svg.plot_w / n_bins - 1, h, _PALETTE[0],
                 f"{i * width:.1f}-{(i + 1) * width:.1f} s: {rate:,.0f} events/s")
    svg.x_axis(0, span, "seconds since the first chunk started")
    svg.y_axis(0, top, "events/s")
    return svg.render("throughput over time")


def _timeline(rows: Sequence[dict[str, Any]], t0: float, colours: dict[str, str]) -> str:
    if not rows:
        return _empty("chunks")
    per_host = len({(r["host"], r["pid"]) for r in rows}) > _MAX_LANES

    def lane_of(r: dict[str, Any]) -> str:
        return str(r["host"]) if per_host else f"{r['host']}:{r['pid']}"

    lanes: dict[str, int] = {}
    for r in sorted(rows, key=lambda r: r["start"]):
        lanes.setdefault(lane_of(r), len(lanes))
    drawn = rows if len(rows) <= _MAX_BARS else rows[:: math.ceil(len(rows) / _MAX_BARS)]
    lane_h = max(1.5, min(22.0, 400 / len(lanes)))
    svg = _Svg(int(lane_h * len(lanes) + 40), left=130)
    span = max(max(r["end"] for r in rows) - t0, 1e-3)
    for name, i in lanes.items():
        if lane_h >= 10:
            svg.text(svg.left - 6, svg.top + i * lane_h + lane_h * 0.7, name, "end")
    for r in drawn:
        i = lanes[lane_of(r)]
        x = svg.left + (r["start"] - t0) / span * svg.plot_w
        w = (r["end"] - r["start"]) / span * svg.plot_w
        colour = colours.get(r["dataset"], _PALETTE[0]) if r["outcome"] == "ok" else _FAILED
        tip = (f"{r['dataset']} {r['file']}[{r['entrystart']}:{r['entrystop']}] "
               f"{r['wall_s']:.3f} s, attempt {r.get('attempt', 1)}, {r['outcome']}")
        svg.rect(x, svg.top + i * lane_h + 1, w, lane_h - 2, colour, tip)
    svg.x_axis(0, span, "seconds since the first chunk started")
    return svg.render("per-worker timeline")


def _durations(rows: Sequence[dict[str, Any]], colours: dict[str, str]) -> str:
    by_dataset: dict[str, list[float]] = {}
    for r in rows:
        if r["outcome"] == "ok":
            by_dataset.setdefault(r["dataset"], []).append(r["wall_s"])
    if not by_dataset:
        return _empty("chunks")
    hi = max(max(v) for v in by_dataset.values()) or 1e-3
    n_bins = 30
    out = []
    for name, walls in sorted(by_dataset.items()):
        counts = [0] * n_bins
        for w in walls:
            counts[min(int(w / hi * n_bins), n_bins - 1)] += 1
        svg = _Svg(140)
        top = max(counts)
        for i, c in enumerate(counts):
            h = c / top * svg.plot_h
            svg.rect(svg.left + i * svg.plot_w / n_bins, svg.top + svg.plot_h - h,
                     svg.plot_w / n_bins - 1, h, colours.get(name, _PALETTE[0]),
                     f"{i * hi / n_bins:.3f}-{(i + 1) * hi / n_bins:.3f} s: {c} chunks")
        svg.x_axis(0, hi, "chunk wall time [s]")
        svg.y_axis(0, top, "chunks", whole=True)
        median = sorted(walls)[len(walls) // 2]
        out.append(f"<h3 style=\"font-size:1em;margin:.4em 0 0\">{_e(name)}: {len(walls)} "
                   f"chunks, median {median:.3f} s</h3>" + svg.render(f"durations {name}"))
    return "".join(out)


def _bars(items: Sequence[tuple[str, float]], fmt: Any) -> str:
    if not items:
        return _empty("data")
    bar_h = 18
    svg = _Svg(bar_h * len(items) + 12, left=260, bottom=2)
    top = max(v for _, v in items) or 1.0
    for i, (label, value) in enumerate(items):
        y = svg.top + i * bar_h
        w = value / top * (svg.plot_w - 90)
        svg.rect(svg.left, y + 2, w, bar_h - 4, _PALETTE[0], f"{label}: {fmt(value)}")
        short = label if len(label) <= 40 else "…" + label[-39:]
        svg.text(svg.left - 6, y + bar_h - 5, short, "end")
        svg.text(svg.left + w + 4, y + bar_h - 5, fmt(value))
    return svg.render("bars")


def _stages(stages: dict[str, float]) -> str:
    if not stages:
        return _empty("stages")
    total = sum(stages.values()) or 1.0
    svg = _Svg(70, left=10, bottom=30)
    x = float(svg.left)
    for i, (name, seconds) in enumerate(stages.items()):
        w = seconds / total * svg.plot_w
        colour = _PALETTE[i % len(_PALETTE)]
        svg.rect(x, svg.top, w, 28, colour, f"{name}: {seconds:.2f} s")
        svg.rect(svg.left + i * 150, svg.top + 36, 10, 10, colour)
        svg.text(svg.left + i * 150 + 14, svg.top + 45, f"{name} {seconds:.1f} s")
        x += w
    return svg.render("stage breakdown")


# -- small helpers ----------------------------------------------------------------------


def _ticks(lo: float, hi: float, n: int = 6, *, whole: bool = False) -> Iterable[float]:
    if hi <= lo:
        return [lo]
    raw = max((hi - lo) / n, 1.0) if whole else (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * step:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _num(v: float) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M"
    if abs(v) >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:.3g}"


def _bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))
