"""Filesets and site files that try to hurt: any input loads, or fails in one line.

Property-based (hypothesis): arbitrary bytes, arbitrary JSON/YAML documents and documents
shaped almost like real filesets and sites go through the real loaders
(`Fileset.load`, `resolve_site`); the only acceptable outcomes are a loaded object or the
loader's own error with a one-line message. Then the known attacks, each refused cleanly and
quickly: path steps in names, billion-laughs aliases, bytes that are not UTF-8, and nesting
deep enough to break a recursive parser.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coffea_hpc.data.fileset import Fileset
from coffea_hpc.errors import FilesetError, SiteError
from coffea_hpc.sites import resolve_site

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
           | st.text(max_size=20))
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=30,
)
words = st.sampled_from(["files", "treename", "metadata", "steps", "num_entries", "uuid",
                         "object_path", "entries", "form", "../x", "a.root", "Events", "",
                         "provider", "executor", "type", "htex", "slurm", "interface",
                         "address", "encrypted", "name", "walltime", "max_blocks", "../../etc"])
near_miss = st.recursive(
    scalars | words,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(words, inner, max_size=5),
    max_leaves=30,
)


def _one_line(err: Exception) -> None:
    text = str(err)
    assert text and "\n" not in text, repr(text)


def _load_fileset(path: Path) -> None:
    try:
        Fileset.load(path)
    except FilesetError as err:
        _one_line(err)


def _load_site(path: Path) -> None:
    try:
        resolve_site(None, site_file=path, require_account=False)
    except SiteError as err:
        _one_line(err)


def _dump(doc: object, suffix: str) -> str:
    if suffix == ".json":
        return json.dumps(doc)
    return yaml.safe_dump(doc)


@SETTINGS
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".json", ".yaml"]))
def test_any_bytes_as_a_fileset(tmp_path, data, suffix):
    path = tmp_path / f"f{suffix}"
    path.write_bytes(data)
    _load_fileset(path)


@SETTINGS
@given(doc=documents | near_miss, suffix=st.sampled_from([".json", ".yaml"]))
def test_any_document_as_a_fileset(tmp_path, doc, suffix):
    path = tmp_path / f"f{suffix}"
    path.write_text(_dump(doc, suffix))
    _load_fileset(path)


@SETTINGS
@given(data=st.binary(max_size=300))
def test_any_bytes_as_a_site_file(tmp_path, data):
    path = tmp_path / "site.yaml"
    path.write_bytes(data)
    _load_site(path)


@SETTINGS
@given(doc=documents | near_miss
       | st.fixed_dictionaries({"executor": near_miss, "provider": near_miss}))
def test_any_document_as_a_site_file(tmp_path, doc):
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    _load_site(path)


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/../b", "./x", "data\nerror: forged"])
def test_path_steps_and_line_breaks_in_dataset_names_are_refused(tmp_path, name):
    path = tmp_path / "fileset.json"
    path.write_text(json.dumps({name: ["a.root"]}))
    with pytest.raises(FilesetError, match="dataset name") as err:
        Fileset.load(path)
    _one_line(err.value)
    assert Fileset.from_mapping({"/DYJetsToLL_M-50/Run3Summer22NanoAODv12/NANOAODSIM":
                                 ["a.root"]})  # DAS names stay welcome


@pytest.mark.parametrize("name", ["../../tmp/evil", "x\n#SBATCH --wrap=id", "a b", ""])
def test_path_steps_and_line_breaks_in_site_names_are_refused(tmp_path, name):
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"name": name, "executor": {"loopback": True}}))
    with pytest.raises(SiteError, match="name") as err:
        resolve_site(None, site_file=path, require_account=False)
    _one_line(err.value)
    with pytest.raises(SiteError, match="unknown site"):
        resolve_site("../../site_configs/local", require_account=False)


BILLION_LAUGHS = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]"
       for i in range(8)]
    + ["files: *i"])


@pytest.mark.parametrize("load", ["fileset", "site"])
@pytest.mark.parametrize(("content", "message"), [
    (BILLION_LAUGHS.encode(), "YAML aliases"),
    (b"ds:\n  files: [\xff\xfe\xfa.root]\n", r"not UTF-8 text \(byte 14\)"),
    (b"\x00\x01\x02", "NUL bytes"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not valid"),
])
def test_known_attacks_are_refused_quickly_in_one_line(tmp_path, load, content, message):
    path = tmp_path / "input.yaml"
    path.write_bytes(content)
    started = time.perf_counter()
    error = FilesetError if load == "fileset" else SiteError
    with pytest.raises(error, match=message) as err:
        if load == "fileset":
            Fileset.load(path)
        else:
            resolve_site(None, site_file=path, require_account=False)
    assert time.perf_counter() - started < 5
    _one_line(err.value)


def test_deep_json_is_refused_in_one_line(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FilesetError, match="nested too deeply"):
        Fileset.load(path)
