"""Cached NanoEvents are the same events coffea builds from scratch."""

from __future__ import annotations

import awkward as ak
import pytest
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

from coffea_hpc.data.chunks import Chunk
from coffea_hpc.errors import FilesetError
from coffea_hpc.processing.events import BadFileError, EventsBuilder, open_tree


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


def test_missing_files_and_trees_are_oserrors_with_one_line(tmp_path, path):
    with pytest.raises(BadFileError, match="no such file"):
        open_tree(str(tmp_path / "nope.root"), "Events")
    with pytest.raises(BadFileError, match=r"has no tree 'Evnts' \(it has: Events\)"):
        open_tree(path, "Evnts")
    garbage = tmp_path / "garbage.root"
    garbage.write_bytes(b"not a root file at all" * 10)
    with pytest.raises(OSError, match="cannot open"):
        open_tree(str(garbage), "Events")
