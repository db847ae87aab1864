"""The documentation site: it builds in strict mode (every internal link and anchor
resolves), its reference pages come from the code, its migration tables cover every argument
of coffea's Runner and executors, and every shell block marked runnable runs."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RUNNABLE = "<!-- runnable -->"
_BLOCK = re.compile(r"^<!-- runnable -->\n```(?:bash|sh)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _env() -> dict[str, str]:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def test_the_site_builds_strictly_with_the_generated_references(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    import typer

    from coffea_hpc.cli.app import app

    commands = typer.main.get_command(app).commands
    for command in ("run", "submit"):
        for param in commands[command].params:
            for flag in param.opts:
                if flag.startswith("--"):
                    assert flag in cli, f"{command} {flag} is not in the CLI reference"
    options = (tmp_path / "site" / "run-options" / "index.html").read_text()
    from coffea_hpc.options import RunOptions

    for key in RunOptions.option_keys():
        assert f"<code>{key}</code>" in options, key


def _section_names(page: str, heading: str) -> set[str]:
    """The first-column names (in backticks) of the table(s) under ``heading``."""
    text = (DOCS / page).read_text()
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1:]
    end = re.search(r"^#{1,3} ", rest, re.MULTILINE)
    body = rest[:end.start()] if end else rest
    cells = re.findall(r"^\| ([^|]+) \|", body, re.MULTILINE)
    return {name for cell in cells for name in re.findall(r"`([^`]+)`", cell)}


def test_the_runner_migration_covers_every_argument_of_coffea():
    from coffea import processor
    from coffea.processor import executor as ex

    runner = _section_names("migrating-from-runner.md", "## processor.Runner")
    fields = {f.name for f in dataclasses.fields(processor.Runner)}
    import inspect

    for method in (processor.Runner.__call__, processor.Runner.run, processor.Runner.preprocess):
        fields |= {p for p in inspect.signature(method).parameters if p != "self"}
    assert fields <= runner, fields - runner
    base = {f.name for f in dataclasses.fields(ex.ExecutorBase)} if dataclasses.is_dataclass(
        ex.ExecutorBase) else {"status", "unit", "desc", "compression", "function_name"}
    assert base <= _section_names("migrating-from-runner.md", "## Executors")
    executors = [ex.IterativeExecutor, ex.FuturesExecutor, ex.DaskExecutor, ex.ParslExecutor,
                 processor.TaskVineExecutor]
    for cls in executors:
        own = {f.name for f in dataclasses.fields(cls)} - base
        listed = _section_names("migrating-from-runner.md", f"### {cls.__name__}")
        assert own <= listed, (cls.__name__, own - listed)


# PocketCoffea's runner options and default run-options keys, as its runner.py and
# parameters/executor_options_defaults.yaml define them
POCKETCOFFEA_FLAGS = ["--cfg", "-ro", "-o", "-t", "-lf", "-lc", "-e", "-s", "-c", "-q", "-ll",
                      "-ps", "--executor-custom-setup", "--filter-years", "--filter-samples",
                      "--filter-datasets"]
POCKETCOFFEA_KEYS = [
    "scaleout", "chunksize", "limit-files", "limit-chunks", "retries", "tree-reduction",
    "skip-bad-files", "voms-proxy", "ignore-grid-certificate", "group-samples", "starting-time",
    "cores-per-worker", "mem-per-worker", "disk-per-worker", "worker-image", "death-timeout",
    "queue", "adaptive", "performance-report", "custom-setup-commands", "conda-env",
    "local-virtualenv", "max-retries", "walltime", "logs-dir", "sched-url", "gateway-address",
    "gateway-proxy-address", "notify-user", "max-run-time"]


def test_the_pocketcoffea_migration_covers_its_runner():
    flags = _section_names("migrating-from-pocketcoffea.md", "## Command-line options")
    missing = set(POCKETCOFFEA_FLAGS) - flags
    assert not missing, missing
    keys = _section_names("migrating-from-pocketcoffea.md", "## Run-options keys")
    assert set(POCKETCOFFEA_KEYS) <= keys, set(POCKETCOFFEA_KEYS) - keys
    # and what the tables promise in coffea-hpc exists
    from coffea_hpc.options import RunOptions

    text = (DOCS / "migrating-from-pocketcoffea.md").read_text()
    for key in re.findall(r"^\| `[^`]+` \| `([a-z_]+)`", text, re.MULTILINE):
        assert key in RunOptions.option_keys(), key


def _runnable_pages() -> dict[str, list[str]]:
    pages = {}
    for path in [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]:
        text = path.read_text()
        blocks = _BLOCK.findall(text)
        markers = re.findall(rf"^{re.escape(RUNNABLE)}$", text, re.MULTILINE)
        assert len(blocks) == len(markers), f"{path.name}: a runnable marker is not " \
                                            "directly above a ```bash block"
        if blocks:
            pages[path.name] = blocks
    return pages


def test_runnable_blocks_are_found():
    pages = _runnable_pages()
    assert "quickstart.md" in pages and len(pages["quickstart.md"]) >= 6


@pytest.mark.parametrize("page", sorted(_runnable_pages()))
def test_runnable_shell_blocks_run(page, tmp_path):
    """Each page's runnable blocks run in order, in one fresh folder, as a reader would."""
    for i, block in enumerate(_runnable_pages()[page]):
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path,
                              capture_output=True, text=True, env=_env(), timeout=240)
        assert done.returncode == 0, f"{page} block {i + 1}:\n{block}\n" \
                                     f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
