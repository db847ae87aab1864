"""Deterministic synthetic NanoAOD, for the demo, the tests and the benchmarks.

Files carry CMS NanoAOD branch names and structure (``nMuon``/``Muon_pt`` jagged
collections, ``MET_pt``, ``HLT_*`` flags, ``run``/``luminosityBlock``/``event``) so coffea's
NanoAOD schema reads them as it reads real data. One dataset holds a Z→μμ resonance, so a
dimuon analysis has a peak to find. The ``nanoaod`` profile pads each file to the branch
count and compression of real NanoAOD (about 1,500 branches, LZMA), which is what makes
per-chunk overheads show up in benchmarks; the ``small`` profile keeps only the physics
branches and writes fast.

The same arguments always give the same bytes' worth of events: every file draws from its
own seeded generator.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import awkward as ak
import numpy as np
import uproot

from coffea_hpc.data.fileset import Fileset

__all__ = ["DEFAULT_DATASETS", "SyntheticDataset", "generate"]

log = logging.getLogger(__name__)

Profile = Literal["small", "nanoaod"]
Compression = Literal["lz4", "zlib", "lzma", "zstd", "none"]

Z_MASS = 91.1876
Z_WIDTH = 2.4952


@dataclass(frozen=True)
class SyntheticDataset:
    """One dataset to generate: its process, file count and metadata.

    The last ``empty_files`` of its files have the tree but no entries, as skims with no
    passing events do; real filesets have them, and whole datasets of them.
    """

    name: str
    process: Literal["dy", "ttbar", "data"]
    n_files: int = 2
    metadata: dict[str, Any] = field(default_factory=dict)
    empty_files: int = 0


DEFAULT_DATASETS: tuple[SyntheticDataset, ...] = (
    SyntheticDataset("DYJetsToLL_M-50", "dy", 2, {"xsec": 6077.22, "is_mc": True, "year": 2018}),
    SyntheticDataset("TTTo2L2Nu", "ttbar", 2, {"xsec": 88.29, "is_mc": True, "year": 2018}),
    SyntheticDataset("SingleMuon_Run2018A", "data", 2, {"is_mc": False, "year": 2018}),
)


def generate(
    outdir: str | Path,
    *,
    events_per_file: int = 25_000,
    datasets: Sequence[SyntheticDataset] = DEFAULT_DATASETS,
    profile: Profile = "small",
    compression: Compression = "lz4",
    basket_entries: int = 5_000,
    seed: int = 2026,
    overwrite: bool = False,
    workers: int = 1,
) -> Fileset:
    """Write the files (skipping those already there) and return their fileset.

    ``workers > 1`` writes files in parallel processes (each file still comes from its own
    seeded generator, so the output does not depend on it).
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {}
    jobs = []
    for d_index, ds in enumerate(datasets):
        paths = []
        for f_index in range(ds.n_files):
            path = outdir / ds.name / f"nano_{f_index}.root"
            n_events = 0 if f_index >= ds.n_files - ds.empty_files else events_per_file
            if overwrite or not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                jobs.append((path, ds, (seed, d_index, f_index), n_events, profile,
                             compression, basket_entries, 1 + d_index,
                             f_index * events_per_file))
            paths.append(str(path.resolve()))
        spec[ds.name] = {"treename": "Events", "files": paths, "metadata": dict(ds.metadata)}
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
            list(pool.map(_write_job, jobs))
    else:
        for job in jobs:
            _write_job(job)
    return Fileset.from_mapping(spec, source="synthetic")


def _write_job(job: tuple[Any, ...]) -> None:
    path, ds, seeds, n, profile, compression, basket, run, first = job
    _write_file(path, ds, np.random.default_rng(list(seeds)), n, profile, compression, basket,
                run=run, first_event=first)


# -- writing ------------------------------------------------------------------------------


def _write_file(
    path: Path,
    ds: SyntheticDataset,
    rng: np.random.Generator,
    n_events: int,
    profile: Profile,
    compression: Compression,
    basket_entries: int,
    *,
    run: int,
    first_event: int,
) -> None:
    log.info("writing %s (%d events, %s profile)", path, n_events, profile)
    codec = {
        "lz4": uproot.LZ4(1),
        "zlib": uproot.ZLIB(4),
        "lzma": uproot.LZMA(1),
        "zstd": uproot.ZSTD(5),
        "none": None,
    }[compression]
    tmp = path.with_suffix(".root.partial")
    with uproot.recreate(tmp, compression=codec) as out:
        tree = None
        for start in range(0, max(n_events, 1), max(basket_entries, 1)):
            n = min(basket_entries, n_events - start)
            if n <= 0:
                break
            block = _events(ds, rng, n, profile, run=run, first_event=first_event + start)
            if tree is None:
                types = {k: (v.layout.form.type if isinstance(v, ak.Array) else v.dtype)
                         for k, v in block.items()}
                out.mktree("Events", types)
                tree = out["Events"]
            tree.extend(block)
        if tree is None:  # an empty file still has the tree, with no entries
            block = _events(ds, rng, 1, profile, run=run, first_event=first_event)
            types = {k: (v.layout.form.type if isinstance(v, ak.Array) else v.dtype)
                     for k, v in block.items()}
            out.mktree("Events", types)
    tmp.replace(path)


def _events(
    ds: SyntheticDataset,
    rng: np.random.Generator,
    n: int,
    profile: Profile,
    *,
    run: int,
    first_event: int,
) -> dict[str, Any]:
    cols: dict[str, Any] = {
        "run": np.full(n, run, dtype=np.uint32),
        "luminosityBlock": (1 + (first_event + np.arange(n)) // 1000).astype(np.uint32),
        "event": (first_event + np.arange(n) + 1).astype(np.uint64),
    }
    if ds.process != "data":
        sign = np.where(rng.random(n) < 0.1, -1.0, 1.0)
        cols["genWeight"] = (sign * rng.normal(1.0, 0.05, n)).astype(np.float32)
    muons = _muons(ds.process, rng, n)
    cols["Muon"] = muons
    cols["Electron"] = _electrons(ds.process, rng, n)
    cols["Jet"] = _jets(ds.process, rng, n)
    met_pt = rng.exponential(45.0 if ds.process == "ttbar" else 20.0, n).astype(np.float32)
    cols["MET_pt"] = met_pt
    cols["MET_phi"] = rng.uniform(-np.pi, np.pi, n).astype(np.float32)
    cols["MET_sumEt"] = (met_pt * 8 + rng.exponential(300, n)).astype(np.float32)
    cols["PV_npvs"] = rng.poisson(30, n).astype(np.int32)
    cols["HLT_IsoMu24"] = ak.to_numpy(ak.any(muons.pt > 26, axis=1))
    for name, mean in _MINOR_COLLECTIONS.items():
        cols[name] = _simple_collection(rng, n, mean)
    if profile == "nanoaod":
        _pad_to_nanoaod(cols, rng, n)
    _add_cross_references(cols)
    return cols


_MINOR_COLLECTIONS = {
    "Photon": 0.5, "Tau": 0.3, "FatJet": 0.3, "SubJet": 0.6, "LowPtElectron": 0.2,
    "FsrPhoton": 0.1,
}
"""Collections the NanoAOD schema cross-references; small, so the schema finds them all."""


def _simple_collection(rng: np.random.Generator, n: int, mean: float) -> ak.Array:
    counts = rng.poisson(mean, n)
    total = int(counts.sum())
    return ak.unflatten(ak.Array({
        "pt": (10 + rng.exponential(20.0, total)).astype(np.float32),
        "eta": rng.uniform(-2.5, 2.5, total).astype(np.float32),
        "phi": rng.uniform(-np.pi, np.pi, total).astype(np.float32),
    }), counts)


def _add_cross_references(cols: dict[str, Any]) -> None:
    """Give every collection the index branches NanoAOD has (``Muon_jetIdx``...), set to -1
    ("no match"), so the NanoAOD schema finds the cross-references it expects."""
    from coffea.nanoevents.schemas.nanoaod import NanoAODSchema

    for indexer in NanoAODSchema.all_cross_references:
        source, name = indexer.split("_", 1)
        coll = cols.get(source)
        if isinstance(coll, ak.Array) and name not in coll.fields:
            cols[source] = ak.with_field(coll, ak.values_astype(ak.zeros_like(coll.pt) - 1,
                                                                np.int32), name)


def _muons(process: str, rng: np.random.Generator, n: int) -> ak.Array:
    if process == "ttbar":
        n_mu = rng.poisson(0.9, n)
        total = int(n_mu.sum())
        return _collection(
            n_mu, rng, "muon",
            pt=10 + rng.exponential(30.0, total),
            eta=rng.uniform(-2.4, 2.4, total),
            phi=rng.uniform(-np.pi, np.pi, total),
            charge=rng.choice(np.array([-1, 1], dtype=np.int32), total),
        )
    # A resonant pair: draw the mass, one muon and the second's direction, then solve
    # m^2 = 2 pt1 pt2 (cosh(d_eta) - cos(d_phi)) for pt2 (muons taken massless).
    mass = np.clip(Z_MASS + Z_WIDTH / 2 * np.tan(np.pi * (rng.random(n) - 0.5)), 50.0, 150.0)
    pt1 = 20 + rng.exponential(25.0, n)
    eta1, eta2 = rng.uniform(-2.4, 2.4, n), rng.uniform(-2.4, 2.4, n)
    phi1, phi2 = rng.uniform(-np.pi, np.pi, n), rng.uniform(-np.pi, np.pi, n)
    pt2 = mass**2 / np.maximum(2 * pt1 * (np.cosh(eta1 - eta2) - np.cos(phi1 - phi2)), 1e-6)
    q = rng.choice(np.array([-1, 1], dtype=np.int32), n)
    pair = (pt2 > 5) & (pt2 < 500) & (rng.random(n) < (1.0 if process == "dy" else 0.3))
    n_extra = rng.poisson(0.15, n)
    n_pair = np.where(pair, 2, 0)
    n_mu = n_pair + n_extra
    total = int(n_mu.sum())
    starts = np.concatenate([[0], np.cumsum(n_mu)[:-1]]).astype(np.int64)
    fields = {k: np.empty(total, dtype=np.float64) for k in ("pt", "eta", "phi")}
    charge = np.empty(total, dtype=np.int32)
    first, second = starts[pair], starts[pair] + 1
    for pos, (pt, eta, phi, sign) in (
        (first, (pt1, eta1, phi1, 1)),
        (second, (pt2, eta2, phi2, -1)),
    ):
        fields["pt"][pos], fields["eta"][pos], fields["phi"][pos] = pt[pair], eta[pair], phi[pair]
        charge[pos] = sign * q[pair]
    extra = np.repeat(starts + n_pair, n_extra) + _ramp(n_extra)
    m = len(extra)
    fields["pt"][extra] = 3 + rng.exponential(8.0, m)
    fields["eta"][extra] = rng.uniform(-2.4, 2.4, m)
    fields["phi"][extra] = rng.uniform(-np.pi, np.pi, m)
    charge[extra] = rng.choice(np.array([-1, 1], dtype=np.int32), m)
    return _collection(n_mu, rng, "muon", charge=charge, **fields)


def _electrons(process: str, rng: np.random.Generator, n: int) -> ak.Array:
    n_el = rng.poisson(0.9 if process == "ttbar" else 0.3, n)
    total = int(n_el.sum())
    return _collection(
        n_el, rng, "electron",
        pt=7 + rng.exponential(25.0, total),
        eta=rng.uniform(-2.5, 2.5, total),
        phi=rng.uniform(-np.pi, np.pi, total),
        charge=rng.choice(np.array([-1, 1], dtype=np.int32), total),
        cutBased=rng.integers(0, 5, total).astype(np.int32),
    )


def _jets(process: str, rng: np.random.Generator, n: int) -> ak.Array:
    n_jet = rng.poisson(5.5 if process == "ttbar" else 2.5, n)
    total = int(n_jet.sum())
    btag = rng.beta(0.3, 2.0, total)
    if process == "ttbar":
        btag = np.where(rng.random(total) < 0.3, 0.7 + 0.3 * rng.random(total), btag)
    return _collection(
        n_jet, rng, "jet",
        pt=15 + rng.exponential(40.0, total),
        eta=rng.uniform(-4.7, 4.7, total),
        phi=rng.uniform(-np.pi, np.pi, total),
        mass=rng.exponential(8.0, total),
        btagDeepFlavB=btag,
        jetId=rng.choice(np.array([0, 2, 6], dtype=np.int32), total, p=[0.05, 0.15, 0.8]),
    )


def _collection(counts: np.ndarray, rng: np.random.Generator, kind: str,
                **fields: np.ndarray) -> ak.Array:
    """Zip flat per-object fields into a jagged NanoAOD-style collection, sorted by pt."""
    total = int(counts.sum())
    if "mass" not in fields:
        fields["mass"] = np.full(total, 0.10566 if kind == "muon" else 0.000511)
    if kind == "muon":
        fields["tightId"] = rng.random(total) < 0.9
        fields["pfRelIso04_all"] = rng.exponential(0.08, total)
    if kind == "electron":
        fields["pfRelIso03_all"] = rng.exponential(0.08, total)
    if kind in ("muon", "electron"):
        fields["dxy"] = rng.normal(0, 0.01, total)
        fields["dz"] = rng.normal(0, 0.02, total)
    flat = {
        k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in fields.items()
    }
    jagged = ak.unflatten(ak.Array(flat), counts)
    order = ak.argsort(jagged.pt, axis=1, ascending=False)
    return ak.to_packed(jagged[order])


def _ramp(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., c-1 for each count c, concatenated."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total) - starts


# -- the real-NanoAOD padding -------------------------------------------------------------

_PAD_COLLECTIONS = {
    # name: (mean multiplicity, number of extra fields)
    "Muon": (None, 38),
    "Electron": (None, 45),
    "Jet": (None, 36),
    "Photon": (1.2, 32),
    "Tau": (0.8, 40),
    "FatJet": (0.6, 38),
    "SubJet": (1.0, 12),
    "GenJet": (4.0, 6),
    "GenPart": (25.0, 8),
    "TrigObj": (6.0, 10),
    "SV": (2.0, 16),
    "IsoTrack": (0.8, 12),
    "LowPtElectron": (0.5, 22),
    "CorrT1METJet": (3.0, 5),
    "SoftActivityJet": (5.0, 3),
    "OtherPV": (3.0, 1),
    "LHEPart": (4.0, 6),
    "boostedTau": (0.2, 25),
    "FsrPhoton": (0.1, 4),
    "GenVisTau": (0.3, 5),
    "GenJetAK8": (1.0, 4),
}
_PAD_FLAGS = {"HLT": 690, "L1": 430, "Flag": 30}
_PAD_SCALARS = 60


def _pad_to_nanoaod(cols: dict[str, Any], rng: np.random.Generator, n: int) -> None:
    """Add the branches real NanoAOD has and a light analysis never reads.

    Values are small integers stored as floats, which compress about as well as NanoAOD's
    reduced-precision floats do.
    """
    for name, (mean, n_fields) in _PAD_COLLECTIONS.items():
        if name in cols:
            base = cols[name]
            counts = ak.to_numpy(ak.num(base))
            extra = {f"x{i}": rng.integers(0, 64, int(counts.sum())).astype(np.float32)
                     for i in range(n_fields)}
            merged = {f: ak.flatten(base[f]) for f in base.fields} | extra
            cols[name] = ak.unflatten(ak.Array(merged), counts)
            continue
        counts = rng.poisson(mean, n)
        total = int(counts.sum())
        fields = {"pt": rng.integers(1, 200, total).astype(np.float32),
                  "eta": rng.integers(-25, 25, total).astype(np.float32) / 10,
                  "phi": rng.integers(-31, 31, total).astype(np.float32) / 10}
        if name in ("GenPart", "GenVisTau"):
            fields["genPartIdxMother"] = np.full(total, -1, dtype=np.int32)
            fields["pdgId"] = rng.choice(np.array([1, 2, 11, 13, 21, 22], dtype=np.int32), total)
            fields["status"] = np.ones(total, dtype=np.int32)
            fields["statusFlags"] = np.zeros(total, dtype=np.int32)
        fields |= {f"x{i}": rng.integers(0, 64, total).astype(np.float32)
                   for i in range(n_fields)}
        cols[name] = ak.unflatten(ak.Array(fields), counts)
    for prefix, count in _PAD_FLAGS.items():
        rates = rng.random(count) * 0.2
        for i in range(count):
            key = f"{prefix}_path{i}"
            if key not in cols:
                cols[key] = rng.random(n) < rates[i]
    for i in range(_PAD_SCALARS):
        cols[f"Misc_value{i}"] = rng.integers(0, 100, n).astype(np.float32)
