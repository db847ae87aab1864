"""The worker function: schemas by name or path, per-chunk failures kept as data."""

from __future__ import annotations

import awkward as ak
import pytest
from coffea.nanoevents import NanoAODSchema

from coffea_hpc.data.chunks import Chunk
from coffea_hpc.errors import UserError
from coffea_hpc.processing.processor import ProcessorHandle
from coffea_hpc.processing.worker import process_chunks, resolve_schema


def _fields(events):
    return {"fields": set(events.fields), "n": len(events)}


@pytest.mark.parametrize("schema", ["base", "coffea.nanoevents.schemas.BaseSchema",
                                    "coffea.nanoevents.schemas:NanoAODSchema", "nanoaod"])
def test_schemas_by_short_name_or_dotted_path(fileset, schema):
    path = fileset.datasets["TTTo2L2Nu"].files[0].path
    chunk = Chunk("TTTo2L2Nu", path, "Events", 0, 500)
    result = process_chunks(ProcessorHandle.wrap(_fields), [chunk], schema)
    assert not result.failures
    assert result.value["n"] == 500
    flat = "Muon_pt" in result.value["fields"]
    assert flat == (resolve_schema(schema).__name__ == "BaseSchema")


@pytest.mark.parametrize("name", ["nosuch", "coffea.nanoevents.NoSchema", "json.JSONDecoder"])
def test_unknown_schemas_are_user_errors(name):
    with pytest.raises(UserError, match="schema"):
        resolve_schema(name)


def test_a_bad_chunk_ends_its_batch_keeping_what_was_done(fileset):
    """The chunks before it are kept; those after it come back unattempted (the task puts
    them back in the queue at no cost), so a processor that raises on every chunk is not
    called for the whole batch. The traceback starts in the analyst's code."""
    path = fileset.datasets["DYJetsToLL"].files[0].path

    def picky(events):
        if events.metadata["entrystart"] == 1000:
            raise ZeroDivisionError("bad chunk")
        return {"muons": int(ak.sum(ak.num(events.Muon)))}

    chunks = [Chunk("DYJetsToLL", path, "Events", a, a + 1000) for a in (0, 1000, 2000)]
    result = process_chunks(ProcessorHandle.wrap(picky), chunks, "nanoaod")
    assert [f.key for f in result.failures] == [chunks[1].key]
    error = result.failures[0].error
    assert error.type_name == "ZeroDivisionError"
    assert error.traceback.splitlines()[1].endswith("in picky")
    assert "coffea_hpc" not in error.traceback
    assert result.processed.n_entries == 1000
    assert result.unattempted == (chunks[2].key,)
    assert result.metrics["chunks"] == 1


def test_workers_unpickle_work_without_the_fileset_model():
    """Elements name only worker-side modules; pydantic (the fileset model) would add a
    quarter of a second to every worker's first task."""
    import subprocess
    import sys

    code = ("import sys, coffea_hpc.processing.workload, coffea_hpc.processing.preprocess; "
            "print(sorted(m for m in ('pydantic', 'coffea_hpc.data.fileset') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_a_processor_that_cannot_be_loaded_is_a_failure_not_a_crash(fileset):
    """On a worker without the analyst's code, unpickling fails: that is reported as the
    first chunk's failure (the rest unattempted), not raised through the backend, whose own
    traceback would bury it."""
    path = fileset.datasets["DYJetsToLL"].files[0].path
    chunks = [Chunk("DYJetsToLL", path, "Events", a, a + 1000) for a in (0, 1000)]
    broken = ProcessorHandle(payload=b"not a pickle", digest="0123456789abcdef")
    result = process_chunks(broken, chunks, "nanoaod")
    [failure] = result.failures
    assert failure.key == chunks[0].key and result.unattempted == (chunks[1].key,)
    assert "UnpicklingError" in failure.error.summary()
    assert not result.processed


def test_a_damaged_basket_is_a_read_error_and_a_processor_bug_is_not(fileset, tmp_path):
    """uproot reports a damaged basket as a ValueError (or a decompression error): the
    worker turns what fails inside uproot into a ReadError, an OSError, so --skip-bad-files
    skips it; the same exception type raised by the processor stays what it is."""
    import shutil

    from tests.helpers import damage_basket

    damaged = tmp_path / "damaged.root"
    shutil.copy(fileset.datasets["DYJetsToLL"].files[0].path, damaged)
    start, stop = damage_basket(damaged)
    chunk = Chunk("DY", str(damaged), "Events", start, stop)
    result = process_chunks(ProcessorHandle.wrap(_muon_pt_sum), [chunk], "nanoaod")
    (failure,) = result.failures
    assert failure.error.matches((OSError,)), failure.error.summary()
    assert failure.error.type_name == "ReadError"
    assert str(damaged) in failure.error.message

    good = Chunk("DY", fileset.datasets["DYJetsToLL"].files[0].path, "Events", start, stop)
    result = process_chunks(ProcessorHandle.wrap(_raises_value_error), [good], "nanoaod")
    (failure,) = result.failures
    assert failure.error.type_name == "ValueError" and not failure.error.matches((OSError,))


def _muon_pt_sum(events):
    return {"pt": float(ak.sum(events.Muon.pt))}


def _raises_value_error(events):
    raise ValueError("a cut that makes no sense")


def _muon_record(events):
    return {"record": {ak.parameters(events.Muon.layout.content)["__record__"]}}


def test_a_schema_setting_changed_between_two_runs_of_one_process_is_seen(fileset,
                                                                          monkeypatch):
    """A notebook runs an analysis, changes a schema's mixins, and runs it again in the same
    kernel (the iterative backend: the same process, whose builder keeps the open files and
    their forms): the second run's events carry the new setting."""
    path = fileset.datasets["DYJetsToLL"].files[0].path
    chunks = [Chunk("DYJetsToLL", path, "Events", 0, 100)]
    handle = ProcessorHandle.wrap(_muon_record)
    before = process_chunks(handle, chunks, "nanoaod").value
    monkeypatch.setitem(NanoAODSchema.mixins, "Muon", "PtEtaPhiMCandidate")
    after = process_chunks(handle, chunks, "nanoaod").value
    assert before == {"record": {"Muon"}}
    assert after == {"record": {"PtEtaPhiMCandidate"}}
