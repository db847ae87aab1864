"""Forms kept between runs give the events a form derived afresh gives, and are derived again
whenever anything that decides them changes."""

from __future__ import annotations

import json
import os
import stat
import time

import awkward as ak
import pytest
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory
from coffea.nanoevents.mapping.uproot import UprootSourceMapping

from coffea_hpc.data.chunks import Chunk
from coffea_hpc.processing.events import EventsBuilder
from coffea_hpc.processing.formcache import FormCache


class AnalystSchema(NanoAODSchema):
    """A schema of the analyst's own: its code may change with no version to say so."""


@pytest.fixture
def path(fileset):
    return fileset.datasets["DYJetsToLL"].files[0].path


@pytest.fixture
def derivations(monkeypatch):
    """How often a form is derived from a tree (coffea reads the tree's branches into its base
    form first)."""
    calls = []
    real = UprootSourceMapping._extract_base_form

    def counting(tree, *args, **kwargs):
        calls.append(tree.file.file_path)
        return real(tree, *args, **kwargs)

    monkeypatch.setattr(UprootSourceMapping, "_extract_base_form", staticmethod(counting))
    return calls


COLUMNS = [("Muon", "pt"), ("Jet", "btagDeepFlavB"), ("MET", "pt")]


def _events(path, forms, schema=NanoAODSchema):
    """What a worker's first chunk of ``path`` sees: its fields, some columns, a quantity
    that needs the schema's behaviours (a dimuon mass), its metadata."""
    builder = EventsBuilder(form_cache=FormCache(forms) if forms is not None else None)
    try:
        chunk = Chunk("DYJetsToLL", path, "Events", 0, 500, "", {"xsec": 2.0})
        events = builder.events(chunk, schema)
        columns = {c: ak.to_list(events[c[0]][c[1]]) for c in COLUMNS}
        return (events.fields, columns, ak.to_list(events.Muon[:, :2].sum().mass),
                events.metadata)
    finally:
        builder.close()


def test_a_kept_form_serves_the_next_process_and_gives_the_same_events(path, tmp_path,
                                                                       derivations):
    forms = tmp_path / "forms"
    first = _events(path, forms)
    assert len(derivations) == 1
    [entry] = list(forms.iterdir())
    assert stat.S_IMODE(forms.stat().st_mode) == 0o700
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600

    second = _events(path, forms)  # a new builder, as in a new worker process
    assert len(derivations) == 1  # the form came from the folder
    assert second == first  # fields, columns, behaviours (vector sums) and metadata
    theirs = NanoEventsFactory.from_root({path: "Events"}, entry_stop=500, mode="virtual",
                                         schemaclass=NanoAODSchema).events()
    assert second[0] == theirs.fields
    assert second[1] == {c: ak.to_list(theirs[c[0]][c[1]]) for c in COLUMNS}
    assert second[2] == ak.to_list(theirs.Muon[:, :2].sum().mass)


def test_a_schema_setting_changed_by_the_analysis_derives_the_form_again(
        path, tmp_path, derivations, monkeypatch):
    """Analysts change a schema's class-level settings when their module is imported (a
    mixin for a custom collection, say): the kept form of the old settings must not serve."""
    forms = tmp_path / "forms"
    _events(path, forms)
    monkeypatch.setitem(NanoAODSchema.mixins, "TrigObj", "PtEtaPhiMCandidate")
    _events(path, forms)
    assert len(derivations) == 2
    assert len(list(forms.glob("*.json"))) == 2
    monkeypatch.undo()
    _events(path, forms)
    assert len(derivations) == 2  # the first settings again: their form is still kept


def test_a_new_coffea_release_derives_the_form_again(path, tmp_path, derivations,
                                                     monkeypatch):
    import coffea

    forms = tmp_path / "forms"
    _events(path, forms)
    monkeypatch.setattr(coffea, "__version__", coffea.__version__ + ".post1")
    _events(path, forms)
    assert len(derivations) == 2


def test_an_analysts_own_schema_is_never_kept(path, tmp_path, derivations):
    forms = tmp_path / "forms"
    _events(path, forms, schema=AnalystSchema)
    _events(path, forms, schema=AnalystSchema)
    assert len(derivations) == 2
    assert not forms.exists() or not list(forms.iterdir())


@pytest.mark.parametrize("damage", ["truncated", "other-key", "not-a-form", "no-such-form"])
def test_a_damaged_entry_is_a_miss_and_is_written_again(path, tmp_path, derivations, damage):
    forms = tmp_path / "forms"
    first = _events(path, forms)
    [entry] = list(forms.iterdir())
    text = entry.read_text()
    entry.write_text({"truncated": text[: len(text) // 2],
                      "other-key": json.dumps({**json.loads(text), "key": "0" * 64}),
                      "not-a-form": json.dumps({"key": json.loads(text)["key"], "form": []}),
                      "no-such-form": json.dumps({"key": json.loads(text)["key"],
                                                  "form": {"class": "NoSuchForm"}}),
                      }[damage])
    assert _events(path, forms) == first
    assert len(derivations) == 2
    assert json.loads(entry.read_text()) == json.loads(text)  # rewritten whole


def test_a_folder_that_cannot_be_written_means_no_cache(path, tmp_path, derivations):
    blocked = tmp_path / "forms"
    blocked.write_text("a file where the folder would be")
    assert _events(path, blocked) == _events(path, None)
    assert blocked.read_text() == "a file where the folder would be"


def test_the_folder_keeps_the_most_recently_used_entries(tmp_path):
    cache = FormCache(tmp_path / "forms", max_entries=2)
    form = {"class": "RecordArray", "fields": [], "contents": []}
    for i, structure in enumerate(["a", "b", "c"]):
        cache.put(cache.key(structure, NanoAODSchema), {**form, "parameters": {"i": i}})
        os.utime(next(p for p in cache.directory.iterdir()
                      if json.loads(p.read_text())["form"]["parameters"]["i"] == i),
                 (1_000 + i, 1_000 + i))
        if structure == "b":
            assert cache.get(cache.key("a", NanoAODSchema)) is not None  # used: now the most recent
    assert cache.get(cache.key("b", NanoAODSchema)) is None
    assert cache.get(cache.key("a", NanoAODSchema))["parameters"] == {"i": 0}
    assert cache.get(cache.key("c", NanoAODSchema))["parameters"] == {"i": 2}
    assert not list(cache.directory.glob(".*.part"))
    # what a writer killed mid-write left goes once it is an hour old, not before
    for name, age in (("old", 7200), ("new", 60)):
        part = cache.directory / f".{name}.part"
        part.write_text("{")
        os.utime(part, (time.time() - age, time.time() - age))
    cache.put(cache.key("d", NanoAODSchema), form)
    assert sorted(p.name for p in cache.directory.glob(".*.part")) == [".new.part"]


def test_settings_changed_between_two_runs_of_one_process_are_seen(tmp_path, monkeypatch):
    """A notebook changes a schema's settings between two runs in the same kernel."""
    cache = FormCache(tmp_path / "forms")
    form = {"class": "RecordArray", "fields": [], "contents": []}
    cache.put(cache.key("structure", NanoAODSchema), form)
    assert cache.get(cache.key("structure", NanoAODSchema)) == form
    monkeypatch.setitem(NanoAODSchema.mixins, "TrigObj", "PtEtaPhiMCandidate")
    assert cache.get(cache.key("structure", NanoAODSchema)) is None
