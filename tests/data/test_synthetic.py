"""The synthetic NanoAOD is deterministic and reads like NanoAOD."""

from __future__ import annotations

import warnings

import awkward as ak
import numpy as np
import uproot
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

from coffea_hpc.data.synthetic import DEFAULT_DATASETS, Z_MASS, generate


def test_same_seed_same_events(tmp_path):
    a = generate(tmp_path / "a", events_per_file=800, datasets=DEFAULT_DATASETS[:1])
    b = generate(tmp_path / "b", events_per_file=800, datasets=DEFAULT_DATASETS[:1])
    for (_, fa), (_, fb) in zip(a.files, b.files, strict=True):
        ta, tb = uproot.open(fa.path)["Events"], uproot.open(fb.path)["Events"]
        assert ta.keys() == tb.keys()
        for key in ("Muon_pt", "Jet_btagDeepFlavB", "MET_pt", "event"):
            assert ak.all(ta[key].array() == tb[key].array())
    other = generate(tmp_path / "c", events_per_file=800, datasets=DEFAULT_DATASETS[:1], seed=7)
    pt_a = uproot.open(a.files[0][1].path)["Events"]["MET_pt"].array()
    pt_c = uproot.open(other.files[0][1].path)["Events"]["MET_pt"].array()
    assert not ak.all(pt_a == pt_c)


def test_nanoaod_schema_reads_it_without_complaint_and_finds_the_z(fileset):
    path = fileset.datasets["DYJetsToLL"].files[0].path
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        events = NanoEventsFactory.from_root({path: "Events"}, schemaclass=NanoAODSchema,
                                             mode="virtual").events()
    mu = events.Muon[ak.num(events.Muon) >= 2]
    mass = ak.to_numpy((mu[:, 0] + mu[:, 1]).mass)
    assert abs(np.median(mass) - Z_MASS) < 2.0
    assert {"Muon", "Electron", "Jet", "MET", "HLT"} <= set(events.fields)


def test_nanoaod_profile_has_a_realistic_branch_count():
    # counted on the columns handed to uproot (one branch per field, plus a counter per
    # collection), not on a written file: uproot's writer takes ~1 min for 1,700 branches
    from coffea_hpc.data.synthetic import _events

    cols = _events(DEFAULT_DATASETS[0], np.random.default_rng(1), 20, "nanoaod", run=1,
                   first_event=0)
    n_branches = sum(1 + len(v.fields) if isinstance(v, ak.Array) else 1 for v in cols.values())
    assert 1_400 <= n_branches <= 2_000
