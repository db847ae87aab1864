"""Cached NanoEvents are the same events coffea builds from scratch."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

from coffea_hpc.data.chunks import Chunk
from coffea_hpc.errors import FilesetError
from coffea_hpc.processing.events import (
    BadFileError,
    EventsBuilder,
    open_tree,
    read_tree_header,
)


@pytest.fixture
def path(fileset):
    return fileset.datasets["DYJetsToLL"].files[0].path


def test_chunks_equal_coffea_built_events(path):
    builder = EventsBuilder(max_open_files=1)
    for start, stop in [(0, 1000), (1000, 2500), (2500, 3000)]:
        chunk = Chunk("DYJetsToLL", path, "Events", start, stop, "", {"xsec": 1.0})
        ours = builder.events(chunk, NanoAODSchema)
        theirs = NanoEventsFactory.from_root(
            {path: "Events"}, entry_start=start, entry_stop=stop, schemaclass=NanoAODSchema,
            mode="virtual", metadata=chunk.metadata,
        ).events()
        assert ours.fields == theirs.fields
        for coll, field in [("Muon", "pt"), ("Jet", "btagDeepFlavB"), ("MET", "pt")]:
            assert ak.array_equal(ours[coll][field], theirs[coll][field])
        mu_ours = ours.Muon[ak.num(ours.Muon) >= 2]
        mu_theirs = theirs.Muon[ak.num(theirs.Muon) >= 2]
        assert ak.array_equal((mu_ours[:, 0] + mu_ours[:, 1]).mass,
                              (mu_theirs[:, 0] + mu_theirs[:, 1]).mass)
        expected = {"version": "latest", **chunk.metadata}
        assert ours.metadata == expected
    builder.close()


def test_access_log_lists_only_columns_touched(path):
    log: list = []
    events = EventsBuilder().events(Chunk("d", path, "Events", 0, 100), NanoAODSchema,
                                    access_log=log)
    ak.sum(events.Muon.pt)
    branches = {entry.branch for entry in log}
    assert branches == {"nMuon", "Muon_pt"}


def test_stale_chunks_are_refused(path):
    builder = EventsBuilder()
    with pytest.raises(FilesetError, match="changed since preprocessing"):
        builder.events(Chunk("d", path, "Events", 0, 10, "not-the-uuid"), NanoAODSchema)
    with pytest.raises(FilesetError, match="past the end of the tree"):
        builder.events(Chunk("d", path, "Events", 0, 10**9), NanoAODSchema)


@pytest.mark.parametrize("reader", [open_tree, read_tree_header])
def test_missing_files_and_trees_are_oserrors_with_one_line(tmp_path, path, reader):
    with pytest.raises(BadFileError, match="no such file"):
        reader(str(tmp_path / "nope.root"), "Events")
    with pytest.raises(BadFileError, match=r"has no tree 'Evnts' \(it has: Events\)"):
        reader(path, "Evnts")
    garbage = tmp_path / "garbage.root"
    garbage.write_bytes(b"not a root file at all" * 10)
    with pytest.raises(OSError, match="cannot open"):
        reader(str(garbage), "Events")


def test_tree_header_agrees_with_the_full_tree(tmp_path, fileset):
    odd = tmp_path / "odd.root"
    with uproot.recreate(odd) as out:
        out.mktree("dir/Events", {"x": np.float32}).extend({"x": np.arange(1234.0)})
        out.mktree("Empty", {"x": np.int32})
        out["hist"] = np.histogram(np.arange(10), bins=3)
    cases = [(f.path, f.treename) for _, f in fileset.files]
    cases += [(str(odd), "dir/Events"), (str(odd), "Empty")]
    for file, tree in cases:
        full = open_tree(file, tree)
        assert read_tree_header(file, tree) == (full.num_entries, str(full.file.uuid))
        full.file.close()
    with pytest.raises(BadFileError, match=r"'hist' is a .*, not a TTree"):
        read_tree_header(str(odd), "hist")


def test_the_header_of_an_open_file_comes_from_the_cache(path):
    builder = EventsBuilder()
    first = builder.header(path, "Events")
    assert not builder._files  # reading a header opens nothing for later
    tree = builder.tree(path, "Events")
    assert builder.header(path, "Events") == first \
        == (tree.num_entries, str(tree.file.uuid), path)
    builder.close()


@pytest.mark.filterwarnings("ignore:Missing cross-reference")  # coffea's own, of the skim
def test_files_of_one_structure_share_a_form_and_others_get_their_own(fileset, tmp_path,
                                                                      monkeypatch):
    from coffea.nanoevents.mapping.uproot import UprootSourceMapping

    derived: list[str] = []
    extract = UprootSourceMapping._extract_base_form.__func__

    def counting(cls, tree, *args, **kwargs):
        derived.append(tree.file.file_path)
        return extract(cls, tree, *args, **kwargs)

    monkeypatch.setattr(UprootSourceMapping, "_extract_base_form", classmethod(counting))
    first, second = (f.path for f in fileset.datasets["DYJetsToLL"].files[:2])
    skim = tmp_path / "skim.root"  # the muons only: another structure
    with uproot.open(first) as src, uproot.recreate(skim) as out:
        arrays = src["Events"].arrays(
            filter_name=["run", "luminosityBlock", "event", "nMuon", "Muon_*"],
            entry_stop=500, how=dict)
        out.mktree("Events", {k: ak.Array(v).type for k, v in arrays.items()}, title="Events")
        out["Events"].extend(arrays)
    builder = EventsBuilder()
    chunks = [Chunk("DYJetsToLL", path, "Events", 0, 500) for path in (first, second, str(skim))]
    ours = [builder.events(chunk, NanoAODSchema) for chunk in chunks]
    # the second file reused the first's form; the skim, of other branches, got its own
    assert derived == [first, str(skim)]
    for chunk, events in zip(chunks, ours, strict=True):
        theirs = NanoEventsFactory.from_root(
            {chunk.filename: "Events"}, entry_stop=500, schemaclass=NanoAODSchema,
            mode="virtual", metadata=chunk.metadata).events()
        assert events.fields == theirs.fields
        assert ak.array_equal(events.Muon.pt, theirs.Muon.pt)
        assert events.metadata == {"version": "latest", **chunk.metadata}
    builder.close()
