"""An example dimuon analysis: the Z peak, MET and jets, with a cut flow.

It is an ordinary coffea processor; nothing in it knows about coffea-hpc. The demo runs it,
and the tests and benchmarks use it as the "light analysis".
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import awkward as ak
import hist
import numpy as np
from coffea import processor


def _mass_axis() -> hist.axis.Regular:
    return hist.axis.Regular(120, 30.0, 150.0, name="mass", label=r"$m_{\mu\mu}$ [GeV]")


def _dataset_axis() -> hist.axis.StrCategory:
    """Datasets as a growth category, as analyses book them: each chunk's histogram holds
    only its own dataset, and adding them unions the categories."""
    return hist.axis.StrCategory([], growth=True, name="dataset")


class DimuonProcessor(processor.ProcessorABC):
    """Opposite-sign dimuon mass, per dataset, weighted by ``genWeight`` for simulation."""

    def process(self, events: ak.Array) -> dict[str, Any]:
        dataset = events.metadata["dataset"]
        is_mc = "genWeight" in events.fields
        weight = events.genWeight if is_mc else np.ones(len(events), dtype=np.float32)

        muons = events.Muon
        good = muons[(muons.pt > 10) & (abs(muons.eta) < 2.4) & muons.tightId]
        two = ak.num(good) >= 2
        leading = good[two][:, :2]
        opposite = ak.sum(leading.charge, axis=1) == 0
        pair = leading[opposite]
        mass = (pair[:, 0] + pair[:, 1]).mass
        w = weight[two][opposite]

        h_mass = hist.Hist(_dataset_axis(), _mass_axis(), storage=hist.storage.Weight())
        h_mass.fill(dataset=dataset, mass=mass, weight=w)
        h_counts = hist.Hist(_dataset_axis(), _mass_axis(), storage=hist.storage.Int64())
        h_counts.fill(dataset=dataset, mass=mass)
        h_met = hist.Hist(_dataset_axis(), hist.axis.Regular(50, 0, 250, name="met",
                                                             label="MET [GeV]"))
        h_met.fill(dataset=dataset, met=events.MET.pt)
        h_njet = hist.Hist(_dataset_axis(), hist.axis.Integer(0, 15, name="njet"),
                           storage=hist.storage.Int64())
        h_njet.fill(dataset=dataset, njet=ak.num(events.Jet[events.Jet.pt > 30]))

        cutflow: defaultdict[str, int] = defaultdict(int)
        cutflow["all"] += len(events)
        cutflow["two muons"] += int(ak.sum(two))
        cutflow["opposite sign"] += int(ak.sum(opposite))
        cutflow["Z window"] += int(ak.sum((mass > 76) & (mass < 106)))

        return {
            "mass": h_mass,
            "mass_counts": h_counts,
            "met": h_met,
            "njet": h_njet,
            "cutflow": {dataset: cutflow},
            "sumw": {dataset: float(np.sum(ak.to_numpy(weight), dtype=np.float64))},
            "datasets": {dataset},
        }

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        return accumulator


def count_muons(events: ak.Array) -> dict[str, Any]:
    """A processor can also be a plain function of the events."""
    return {"events": len(events), "muons": int(ak.sum(ak.num(events.Muon)))}
