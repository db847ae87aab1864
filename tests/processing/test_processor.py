"""Finding processors the way analysts name them, and saying clearly when that fails."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from coffea_hpc.errors import ProcessorLoadError
from coffea_hpc.processing.processor import ProcessorHandle, load_processor, postprocess


def _write(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


def test_file_path_class_is_instantiated(tmp_path):
    helper = _write(tmp_path / "cuts.py", "PT_CUT = 42\n")
    assert helper.exists()
    path = _write(tmp_path / "ana.py", """
        from cuts import PT_CUT   # a neighbouring module, as `python ana.py` would allow
        class Ana:
            def process(self, events):
                return {"n": PT_CUT}
    """)
    proc = load_processor(f"{path}:Ana")
    assert proc.process(None) == {"n": 42}


def test_module_paths_instances_and_functions():
    from coffea_hpc.examples.dimuon import DimuonProcessor, count_muons

    assert isinstance(load_processor("coffea_hpc.examples.dimuon:DimuonProcessor"),
                      DimuonProcessor)
    assert load_processor("coffea_hpc.examples.dimuon:count_muons") is count_muons


def test_handle_carries_file_code_by_value_and_loads_once(tmp_path):
    path = _write(tmp_path / "byval.py", """
        class Counter:
            made = 0
            def __init__(self):
                Counter.made += 1
            def process(self, events):
                return 1
    """)
    handle = ProcessorHandle.wrap(load_processor(f"{path}:Counter"))
    path.unlink()  # workers may not see the analyst's files: the payload must not need them
    import cloudpickle

    copy = cloudpickle.loads(cloudpickle.dumps(handle))
    first, second = copy.load(), copy.load()
    assert first is second
    assert first.process(None) == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ana.py", "must look like 'path/to/file.py:Name'"),
        ("missing_dir/ana.py:Ana", "processor file 'missing_dir/ana.py' does not exist"),
        ("no_such_module_xyz:Ana", "cannot import module 'no_such_module_xyz'"),
        ("coffea_hpc.examples.dimuon:Nope", "has no attribute 'Nope' (processors found there: "
                                            "DimuonProcessor, count_muons)"),
    ],
)
def test_bad_processor_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ProcessorLoadError) as info:
        load_processor(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_import_errors_and_non_processors(tmp_path):
    broken = _write(tmp_path / "broken.py", "import numpy\nundefined_name\n")
    with pytest.raises(ProcessorLoadError, match=r"importing .*broken\.py' failed: NameError"):
        load_processor(f"{broken}:X")
    notproc = _write(tmp_path / "notproc.py", "VALUE = 3\n")
    with pytest.raises(ProcessorLoadError, match="is a int, not a processor"):
        load_processor(f"{notproc}:VALUE")
    needs_args = _write(tmp_path / "args.py", """
        class P:
            def __init__(self, year):
                self.year = year
            def process(self, events):
                return {}
    """)
    with pytest.raises(ProcessorLoadError, match="constructible with no arguments"):
        load_processor(f"{needs_args}:P")


def test_postprocess_follows_coffea_runner():
    class Keeps:
        def postprocess(self, acc):
            acc["done"] = True

    class Replaces:
        def postprocess(self, acc):
            return {"scaled": acc["x"] * 2}

    assert postprocess(Keeps(), {"x": 1}) == {"x": 1, "done": True}
    assert postprocess(Replaces(), {"x": 1}) == {"scaled": 2}
    assert postprocess(lambda events: None, {"x": 1}) == {"x": 1}
