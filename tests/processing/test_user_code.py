"""The analyst's own code reaches workers that cannot import it.

A processor file usually imports modules and packages beside it. Workers share the driver's
environment but not its folder (a remote site never has it; local pools start elsewhere), so
every run here happens from an unrelated working directory with the analysis folder on
neither ``sys.path`` nor ``PYTHONPATH``, and payloads are unpickled in fresh interpreters.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import hist
import pytest

from coffea_hpc import output as files
from coffea_hpc.data.synthetic import SyntheticDataset, generate
from coffea_hpc.processing.processor import ProcessorHandle, _user_modules, load_processor
from coffea_hpc.runner import run

SCALE = 1.25  # corrections.muon's scale factor: a weight no installed code would apply
TAG = "sf-2026-v7"  # corrections' constant, used as an output key

ANALYSIS = {
    "analysis.py": """
        import awkward as ak
        import hist
        from coffea import processor

        import corrections
        import selections
        from corrections.muon import muon_sf


        class P(processor.ProcessorABC):
            def process(self, events):
                muons = selections.good_muons(events)
                h = hist.Hist.new.Reg(20, 0, 200, name="pt").Weight()
                h.fill(pt=ak.flatten(muons.pt), weight=ak.flatten(muon_sf(muons.pt)))
                n_good = int(ak.sum(ak.num(muons)))
                return {events.metadata["dataset"]: {"pt": h, "n_good": n_good,
                                                     corrections.TAG: 1}}

            def postprocess(self, accumulator):
                pass
    """,
    "selections.py": """
        PT_MIN = 25.0

        def good_muons(events):
            return events.Muon[events.Muon.pt > PT_MIN]
    """,
    "corrections/__init__.py": f"""
        TAG = {TAG!r}
        from corrections.muon import muon_sf
    """,
    "corrections/muon.py": """
        import awkward as ak

        import corrections.tables  # binds the package here too: the modules refer to each other

        def muon_sf(pt):
            return ak.ones_like(pt) * corrections.tables.SCALE
    """,
    "corrections/tables.py": f"SCALE = {SCALE!r}\n",
}


def _write_tree(root: Path, tree: dict[str, str]) -> Path:
    for name, body in tree.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(body))
    return root


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty working directory, no PYTHONPATH, and the modules a test imports forgotten
    afterwards (the names are common ones)."""
    before = set(sys.modules)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    yield elsewhere
    for name in set(sys.modules) - before:
        if str(tmp_path) in str(getattr(sys.modules[name], "__file__", None) or ""):
            del sys.modules[name]


@pytest.fixture
def analysis(tmp_path) -> Path:
    return _write_tree(tmp_path / "A", ANALYSIS)


@pytest.fixture(scope="module")
def small_fileset(tmp_path_factory):
    datasets = (SyntheticDataset("DY", "dy", 1, {"is_mc": True}),
                SyntheticDataset("Data", "data", 1, {"is_mc": False}))
    return generate(tmp_path_factory.mktemp("user_code_data"), events_per_file=2_000,
                    datasets=datasets, basket_entries=1_000)


def _check_helpers_ran(out: dict) -> None:
    assert set(out) == {"DY", "Data"}
    for part in out.values():
        h = part["pt"]
        assert part[TAG] == 2 and part["n_good"] > 0  # one per chunk
        assert h.sum(flow=True).value == pytest.approx(SCALE * part["n_good"])  # muon_sf's weights
        assert h[: hist.loc(25.0)].sum().value == 0  # selections' cut


def test_neighbour_modules_reach_workers_on_every_backend(analysis, small_fileset, isolated):
    assert str(analysis) not in sys.path
    outputs = {}
    for backend in ("iterative", "futures", "parsl"):
        outcome = run(f"{analysis}/analysis.py:P", small_fileset, backend=backend, workers=2,
                      chunksize=1_000, output_dir=isolated / backend)
        assert not outcome.result.failures, backend
        outputs[backend] = outcome.output
    _check_helpers_ran(outputs["iterative"])
    assert outputs["futures"] == outputs["iterative"]
    assert outputs["parsl"] == outputs["iterative"]


def test_command_line_run_from_another_folder(analysis, small_fileset, isolated):
    fileset_path = small_fileset.save(isolated / "fileset.json")
    cli = Path(sys.executable).parent / "coffea-hpc"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(cli), "run", f"{analysis.name}/analysis.py:P", "--fileset", str(fileset_path),
         "-o", "out", "--executor", "futures", "--workers", "2", "--chunksize", "1000"],
        cwd=analysis.parent, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_helpers_ran(files.load(analysis.parent / "out" / files.OUTPUT_NAME))


# -- payloads, unpickled in a fresh interpreter that cannot import the analyst's folders ----

def _call_elsewhere(handle: ProcessorHandle, where: Path, argument: str = "None") -> str:
    """Load ``handle`` in a new interpreter started in ``where`` and call its processor."""
    (where / "payload.pkl").write_bytes(cloudpickle.dumps(handle))
    code = ("import pickle; from coffea_hpc.processing.processor import run_processor; "
            "p = pickle.load(open('payload.pkl', 'rb')).load(); "
            f"print(repr(run_processor(p, {argument})))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=where, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_installed_code_goes_by_name(tmp_path, isolated):
    from coffea_hpc.examples.dimuon import DimuonProcessor

    assert _user_modules(DimuonProcessor()) == []  # coffea_hpc is installed (editable)
    assert len(ProcessorHandle.wrap(DimuonProcessor()).payload) < 1_000
    path = _write_tree(tmp_path / "B", {"ana.py": """
        import numpy as np
        from coffea_hpc.examples.dimuon import DimuonProcessor

        class Ana(DimuonProcessor):
            def process(self, events):
                return {"n": int(np.sum(events))}
    """}) / "ana.py"
    proc = load_processor(f"{path}:Ana")
    registry = cloudpickle.list_registry_pickle_by_value()
    assert [m.__name__ for m in _user_modules(proc)] == [type(proc).__module__]
    handle = ProcessorHandle.wrap(proc)
    assert cloudpickle.list_registry_pickle_by_value() == registry  # nothing left behind
    assert len(handle.payload) < 5_000
    assert _call_elsewhere(handle, isolated, "[1, 2]") == "{'n': 3}"


def test_package_on_pythonpath_is_carried(tmp_path, isolated, monkeypatch):
    root = _write_tree(tmp_path / "src", {
        "mypkg/__init__.py": "",
        "mypkg/util.py": "def double(x):\n    return 2 * x\n",
        "mypkg/ana.py": """
            from mypkg.util import double

            class Ana:
                def process(self, events):
                    return double(events)
        """,
    })
    monkeypatch.syspath_prepend(str(root))  # as PYTHONPATH would put it there
    proc = load_processor("mypkg.ana:Ana")
    assert [m.__name__ for m in _user_modules(proc)] == ["mypkg"]
    assert _call_elsewhere(ProcessorHandle.wrap(proc), isolated, "21") == "42"


def test_a_distribution_installed_into_a_folder_on_pythonpath_goes_by_name(
        tmp_path, isolated, monkeypatch):
    """``pip install --target DIR`` (or an LCG view) on PYTHONPATH: the package is installed
    for every worker that shares the environment, so it is imported there, not carried;
    its folder's own metadata says so (a wheel without top_level.txt: from its file list).
    A package beside it that no distribution provides is still carried."""
    root = _write_tree(tmp_path / "target", {
        "corrlib/__init__.py": "def scale(x):\n    return 3 * x\n",
        "corrlib-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: corrlib\n"
                                          "Version: 1.0\n",
        "corrlib-1.0.dist-info/RECORD": "corrlib/__init__.py,,\n"
                                        "corrlib-1.0.dist-info/METADATA,,\n",
        "stray/__init__.py": "def scale(x):\n    return 5 * x\n",
    })
    analysis = _write_tree(tmp_path / "ana", {"ana.py": """
        import corrlib
        import stray

        class Ana:
            def process(self, events):
                return corrlib.scale(events) + stray.scale(events)
    """}) / "ana.py"
    monkeypatch.syspath_prepend(str(root))
    proc = load_processor(f"{analysis}:Ana")
    assert sorted(m.__name__ for m in _user_modules(proc)) == sorted(
        [type(proc).__module__, "stray"])


def test_driver_script_instances_and_functions_are_carried(analysis, isolated):
    (analysis / "thresholds.py").write_text(textwrap.dedent("""
        class Threshold:  # reached only through the processor's attribute
            def __init__(self, value):
                self.value = value
    """))
    (analysis / "driver.py").write_text(textwrap.dedent("""
        import sys

        import cloudpickle

        import selections
        from coffea_hpc.processing.processor import ProcessorHandle
        from thresholds import Threshold


        class Counter:
            def __init__(self, cut):
                self.cut = cut

            def process(self, values):
                return [v for v in values if v > self.cut.value and v > selections.PT_MIN]


        def count(values):
            return len([v for v in values if v > selections.PT_MIN])


        for name, proc in (("instance", Counter(Threshold(30))), ("function", count)):
            with open(f"{sys.argv[1]}/{name}.pkl", "wb") as out:
                cloudpickle.dump(ProcessorHandle.wrap(proc), out)
    """))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(analysis / "driver.py"), str(isolated)],
                          cwd=isolated, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for name, expected in (("instance", "[40]"), ("function", "2")):
        handle = cloudpickle.loads((isolated / f"{name}.pkl").read_bytes())
        assert _call_elsewhere(handle, isolated, "[10, 28, 40]") == expected
