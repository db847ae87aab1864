"""The documentation site: it builds in strict mode (every internal link and anchor
resolves), its reference pages come from the code, its migration tables cover every argument
of coffea's Runner and executors, and every shell block marked runnable runs."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RUNNABLE = "<!-- runnable -->"
_BLOCK = re.compile(r"^<!-- runnable -->\n```(bash|sh|python)\n(.*?)^```", re.MULTILINE | re.DOTALL)


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


def _cli_names() -> tuple[set[str], dict[str, set[str]], set[str]]:
    """Every flag of the Typer app (any command), its command paths with their flags, and
    its arguments' names (upper case, as the help shows them)."""
    import typer

    from coffea_hpc.cli.app import app

    flags: set[str] = set()
    commands: dict[str, set[str]] = {}
    arguments: set[str] = set()

    def walk(command, path):
        own = set()
        for param in command.params:
            if param.param_type_name == "argument":
                arguments.add(param.name.upper())
            else:
                own |= {*param.opts, *param.secondary_opts}
        flags.update(own)
        commands[path] = own
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "coffea-hpc")
    return flags, commands, arguments


def _site_field(parts: list[str]) -> bool:
    """``site_config: provider: queue[: value]``: a field of the site schema."""
    from pydantic import BaseModel

    from coffea_hpc.sites.schema import SiteConfig

    model: type[BaseModel] = SiteConfig
    for i, part in enumerate(parts):
        if part not in model.model_fields:
            return False
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return True  # a leaf; what follows is its value
        model = annotation
        if i == len(parts) - 1:
            return True
    return True


def _stale_options(page: str) -> list[str]:
    """What the coffea-hpc column (the second) of ``page``'s tables names that coffea-hpc
    does not have. In that column a backticked ``--flag`` (or ``-x``) is a flag of the
    command line, ``coffea-hpc CMD --flag`` a command and its flag, ``name`` a key of a
    run-options file (``name: value`` with its value), ``name=`` a keyword of
    ``coffea_hpc.run``/``submit``, ``site_config: a: b`` a field of the site schema and
    ``NAME`` an argument."""
    import inspect

    import coffea_hpc
    from coffea_hpc.options import RunOptions

    flags, commands, arguments = _cli_names()
    keys = set(RunOptions.option_keys())
    keywords = set(inspect.signature(coffea_hpc.run).parameters) | set(
        inspect.signature(coffea_hpc.submit).parameters)
    stale = []
    rows = re.findall(r"^\|[^|\n]+\|((?:[^|\n]|\\\|)+)\|", (DOCS / page).read_text(), re.MULTILINE)
    for cell in rows:
        for span in re.findall(r"`([^`]+)`", cell.replace("\\|", "|")):
            words = span.split()
            ok = True
            if span.startswith("coffea-hpc "):
                path = " ".join(words[:2])
                own = commands.get(path)
                ok = own is not None and all(w.split("=")[0] in own
                                             for w in words[2:] if w.startswith("-"))
            elif span.startswith("-"):
                for word in words:
                    if word.startswith("-"):
                        word = word.split("=")[0].rstrip(",")
                        if re.fullmatch(r"-(\w)\1+", word):
                            word = word[:2]  # -vv: a count flag given twice
                        ok &= word in flags
            elif span.endswith("="):
                ok = span[:-1] in keywords
            elif ":" in span:
                parts = [part.strip() for part in span.split(":")]
                ok = _site_field(parts[1:]) if parts[0] == "site_config" else parts[0] in keys
            elif re.fullmatch(r"[a-z_]+", span):
                ok = span in keys
            elif re.fullmatch(r"[A-Z_]+", span):
                ok = span in arguments
            else:
                ok = False
            if not ok:
                stale.append(span)
    return stale


@pytest.mark.parametrize("page", ["migrating-from-runner.md", "migrating-from-pocketcoffea.md"])
def test_the_migration_tables_name_only_options_coffea_hpc_has(page):
    """A stale row (an option renamed or removed, or one added but still listed as "—"
    elsewhere) fails here, not in a reader's shell."""
    assert not _stale_options(page), _stale_options(page)


def test_the_option_check_catches_a_stale_row(monkeypatch, tmp_path):
    page = tmp_path / "page.md"
    page.write_text("| a | b | c |\n|---|---|---|\n| `x` | `--chunksize` / `chunksize` | |\n"
                    "| `y` | `--chunk-size` / `chunk_size`, `site_config: provider: queue` | |\n"
                    "| `z` | `site_config: provider: queues`, `coffea-hpc submit --dry-run` | |\n")
    monkeypatch.setattr(sys.modules[__name__], "DOCS", tmp_path)
    assert _stale_options("page.md") == ["--chunk-size", "chunk_size",
                                         "site_config: provider: queues"]


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


# PocketCoffea's runner options and run-options keys, taken from PocketCoffea commit
# bfe4447723e2f0d9c444a17aa30fabd50c5f8317 (2026-07-24): the click options of
# pocket_coffea/scripts/runner.py, the keys of parameters/executor_options_defaults.yaml, and
# every key its executors (pocket_coffea/executors/executors_*.py) read from run_options.
POCKETCOFFEA_FLAGS = [
    "--cfg", "-ro", "--custom-run-options", "-o", "--outputdir", "-t", "--test", "-lf",
    "--limit-files", "-lc", "--limit-chunks", "-e", "--executor", "-s", "--scaleout", "-c",
    "--chunksize", "-q", "--queue", "-ll", "--loglevel", "-ps", "--process-separately",
    "--executor-custom-setup", "--filter-years", "--filter-samples", "--filter-datasets",
    "--resubmit-failed", "--blocklist-sites", "--recreate-queue", "--use-redirector",
    "--skip-bad-files"]
POCKETCOFFEA_KEYS = [
    # executor_options_defaults.yaml
    "scaleout", "chunksize", "limit-files", "limit-chunks", "retries", "tree-reduction",
    "skip-bad-files", "voms-proxy", "ignore-grid-certificate", "group-samples", "starting-time",
    "cores-per-worker", "mem-per-worker", "disk-per-worker", "worker-image", "death-timeout",
    "queue", "adaptive", "performance-report", "custom-setup-commands", "conda-env",
    "local-virtualenv", "max-retries", "split-by-category", "eos-prefix", "walltime",
    "logs-dir", "worker-debug", "slurm: partition", "slurm: account",
    "slurm: scheduler-options", "sched-url", "notify-user", "max-run-time", "gateway-address",
    "gateway-proxy-address",
    # read by the executors only
    "dry-run", "recreate-jobs", "recreate-queue", "blocklist-sites", "use-redirector",
    "requirements", "job-name", "jobs-dir", "max-events-per-job", "nodes-per-block",
    "min-blocks", "max-workers-per-node", "exclusive", "srun-overrides", "prefetch-capacity",
    "parsl-run-dir", "parsl-runinfo", "dask-scheduler-port"]


def test_the_pocketcoffea_migration_covers_its_runner():
    flags = _section_names("migrating-from-pocketcoffea.md", "## Command-line options")
    missing = set(POCKETCOFFEA_FLAGS) - flags
    assert not missing, missing
    keys = _section_names("migrating-from-pocketcoffea.md", "## Run-options keys")
    assert set(POCKETCOFFEA_KEYS) <= keys, set(POCKETCOFFEA_KEYS) - keys
    # what the tables promise in coffea-hpc exists:
    # test_the_migration_tables_name_only_options_coffea_hpc_has


def test_the_sites_page_lists_every_preset():
    listed = _section_names("sites.md", "## Presets")
    presets = {path.stem for path in (ROOT / "site_configs").glob("*.yaml")}
    assert presets <= listed, presets - listed
    # each row is in the table, not stray text after it
    table = (DOCS / "sites.md").read_text().split("## Presets\n\n")[1].split("\n\n")[0]
    assert all(f"`{name}`" in table for name in presets)


def _runnable_pages() -> dict[str, list[tuple[str, str]]]:
    """Each page's runnable blocks, in order, as (language, code)."""
    pages = {}
    for path in [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]:
        text = path.read_text()
        blocks = _BLOCK.findall(text)
        markers = re.findall(rf"^{re.escape(RUNNABLE)}$", text, re.MULTILINE)
        assert len(blocks) == len(markers), f"{path.name}: a runnable marker is not " \
                                            "directly above a ```bash or ```python block"
        if blocks:
            pages[path.name] = [("python" if lang == "python" else "bash", code)
                                for lang, code in blocks]
    return pages


# Pages whose every bash and Python block either runs or says why it cannot
# (<!-- not runnable: REASON -->, e.g. a site that needs an account or a batch system).
FULLY_CHECKED = ["quickstart.md", "getting-started.md", "migrating-from-runner.md",
                 "migrating-from-pocketcoffea.md"]

# What a page takes from another as given: the migration pages start from the reader's
# analysis.py and fileset.json of getting-started.md.
PAGE_SETUP = {"migrating-from-runner.md": "getting-started.md",
              "migrating-from-pocketcoffea.md": "getting-started.md"}


def test_runnable_blocks_are_found():
    pages = _runnable_pages()
    assert "quickstart.md" in pages and len(pages["quickstart.md"]) >= 6
    assert len(pages["getting-started.md"]) >= 5
    assert [lang for lang, _ in pages["migrating-from-runner.md"]] == ["python", "bash"]
    assert "migrating-from-pocketcoffea.md" in pages


@pytest.mark.parametrize("page", FULLY_CHECKED)
def test_every_block_runs_or_says_why_not(page):
    text = (DOCS / page).read_text()
    fences = re.findall(r"^(.*)\n```(?:bash|sh|python)$", text, re.MULTILINE)
    unmarked = [before for before in fences
                if before != RUNNABLE and not re.fullmatch(r"<!-- not runnable: .+ -->", before)]
    assert not unmarked, f"{page}: a block is neither {RUNNABLE} nor <!-- not runnable: ... -->"


def _run_blocks(page: str, folder: Path) -> None:
    for i, (lang, block) in enumerate(_runnable_pages()[page]):
        if lang == "python":
            # a block that starts with `# NAME.py` is that file, saved where the reader works
            name = re.match(r"# (\w+\.py)\n", block)
            script = folder / (name.group(1) if name else f"_block_{i + 1}.py")
            script.write_text(block)
            command = [sys.executable, script.name]
        else:
            command = ["bash", "-euo", "pipefail", "-c", block]
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=_env(),
                              timeout=240)
        assert done.returncode == 0, f"{page} block {i + 1}:\n{block}\n" \
                                     f"{done.stdout[-2000:]}{done.stderr[-2000:]}"


@pytest.mark.parametrize("page", sorted(_runnable_pages()))
def test_runnable_blocks_run(page, tmp_path):
    """Each page's runnable blocks run in order, in one fresh folder, as a reader would:
    shell blocks with bash, Python blocks as scripts."""
    if page in PAGE_SETUP:
        _run_blocks(PAGE_SETUP[page], tmp_path)
        for path in tmp_path.iterdir():  # keep the reader's files, not the earlier results
            if path.name not in ("analysis.py", "fileset.json", "data"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    _run_blocks(page, tmp_path)
