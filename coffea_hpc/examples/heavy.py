"""A heavy analysis: many histograms with systematic variations, as real analyses fill.

Sixty weight variations times several observables (jets, b-tagged jets, leptons, MET, a
combinatorial trijet mass), filled per dataset. The benchmarks use it as the analysis whose
per-chunk work dominates event building, where an executor's overheads matter least.
"""

from __future__ import annotations

from typing import Any

import awkward as ak
import hist
import numpy as np
from coffea import processor

N_VARIATIONS = 60


class HeavyProcessor(processor.ProcessorABC):
    def process(self, events: ak.Array) -> dict[str, Any]:
        dataset = events.metadata["dataset"]
        n = len(events)
        nominal = events.genWeight if "genWeight" in events.fields else np.ones(n, np.float32)
        nominal = ak.to_numpy(nominal).astype(np.float64)
        # deterministic pseudo-systematics: smooth functions of per-event quantities
        met = ak.to_numpy(events.MET.pt).astype(np.float64)
        shifts = np.linspace(-0.15, 0.15, N_VARIATIONS)
        weights = nominal[None, :] * (1 + shifts[:, None] * np.tanh(met / 100.0)[None, :])
        variation = np.repeat(np.arange(N_VARIATIONS), n)
        tiled = weights.reshape(-1)

        jets = events.Jet[(events.Jet.pt > 25) & (abs(events.Jet.eta) < 2.5)]
        bjets = jets[jets.btagDeepFlavB > 0.3]
        leptons = ak.concatenate([events.Muon[events.Muon.pt > 15],
                                  events.Electron[events.Electron.pt > 15]], axis=1)
        trijet = ak.combinations(jets[:, :6], 3, fields=["a", "b", "c"])
        trijet_mass = ak.max((trijet.a + trijet.b + trijet.c).mass, axis=1)
        ht = ak.to_numpy(ak.sum(jets.pt, axis=1))

        observables = {
            "njet": (hist.axis.Integer(0, 15, name="x"), ak.to_numpy(ak.num(jets))),
            "nbjet": (hist.axis.Integer(0, 8, name="x"), ak.to_numpy(ak.num(bjets))),
            "nlep": (hist.axis.Integer(0, 6, name="x"), ak.to_numpy(ak.num(leptons))),
            "ht": (hist.axis.Regular(100, 0, 2000, name="x"), ht),
            "met": (hist.axis.Regular(100, 0, 500, name="x"), met),
            "mjjj": (hist.axis.Regular(100, 0, 1500, name="x"),
                     ak.to_numpy(ak.fill_none(trijet_mass, -1.0))),
        }
        # per-jet observables: every jet, in every variation, with its event's weight
        jet_counts = ak.to_numpy(ak.num(jets))
        per_jet_weight = np.repeat(weights, jet_counts, axis=1).reshape(-1)  # variations x jets
        out: dict[str, Any] = {}
        for name, axis in (("jet_pt", hist.axis.Regular(100, 0, 500, name="x")),
                           ("jet_eta", hist.axis.Regular(50, -2.5, 2.5, name="x")),
                           ("jet_btagDeepFlavB", hist.axis.Regular(50, 0, 1, name="x")),
                           ("jet_mass", hist.axis.Regular(50, 0, 100, name="x"))):
            values = ak.to_numpy(ak.flatten(jets[name.removeprefix("jet_")]))
            h_jet = hist.Hist(axis, hist.axis.IntCategory(list(range(N_VARIATIONS)),
                                                          name="variation"),
                              storage=hist.storage.Weight())
            h_jet.fill(x=np.tile(values, N_VARIATIONS),
                       variation=np.repeat(np.arange(N_VARIATIONS), len(values)),
                       weight=per_jet_weight)
            out[name] = {dataset: h_jet}
        syst_axis = hist.axis.IntCategory(list(range(N_VARIATIONS)), name="variation")
        for name, (axis, values) in observables.items():
            h = hist.Hist(axis, syst_axis, storage=hist.storage.Weight())
            h.fill(x=np.tile(values, N_VARIATIONS), variation=variation, weight=tiled)
            out[name] = {dataset: h}
        out["events"] = {dataset: n}
        return out

    def postprocess(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        return accumulator
