"""Filesets in every shape analysts bring, and one-line errors for malformed ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from coffea_hpc.data.fileset import Fileset
from coffea_hpc.errors import FilesetError


@pytest.mark.parametrize(
    "spec",
    [
        {"ZJets": ["/data/a.root", "/data/b.root"]},
        {"ZJets": {"treename": "Events", "files": ["/data/a.root", "/data/b.root"]}},
        {"ZJets": {"files": {"/data/a.root": "Events", "/data/b.root": "Events"}}},
        {"ZJets": {"files": {"/data/a.root": {"object_path": "Events"},
                             "/data/b.root": {"object_path": "Events"}}}},
    ],
    ids=["list", "treename+list", "path->tree", "dataset_tools"],
)
def test_every_coffea_shape_reads_the_same(spec):
    fs = Fileset.from_mapping(spec)
    [ds] = fs
    assert ds.name == "ZJets"
    assert [(f.path, f.treename) for f in ds.files] == [("/data/a.root", "Events"),
                                                       ("/data/b.root", "Events")]


def test_metadata_and_per_file_trees_are_kept():
    fs = Fileset.from_mapping({
        "data": {"files": {"/x/a.root": "Events", "/x/b.root": "Friends"},
                 "metadata": {"is_mc": False, "year": 2018}},
    })
    ds = fs.datasets["data"]
    assert ds.metadata == {"is_mc": False, "year": 2018}
    assert [f.treename for f in ds.files] == ["Events", "Friends"]


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_prepared_fileset_round_trips_through_files(tmp_path: Path, suffix: str):
    original = Fileset.from_mapping({
        "ds": {"files": {"/x/a.root": {"object_path": "Events", "num_entries": 10,
                                       "uuid": "u-1", "steps": [[0, 5], [5, 10]]}},
               "metadata": {"xsec": 1.5}},
    })
    path = original.save(tmp_path / f"prepared{suffix}")
    again = Fileset.load(path)
    assert again == original
    assert again.is_prepared and again.n_entries == 10


def test_reading_a_mapping_leaves_it_as_it_was():
    """Loading a file drops each entry of the parsed JSON once read (memory); a mapping the
    caller hands in is the caller's and stays whole."""
    spec = {"ds": {"files": {f"/x/{i}.root": {"object_path": "Events", "num_entries": 10,
                                              "uuid": f"u-{i}", "steps": [[0, 10]]}
                             for i in range(3)}}}
    copy = json.loads(json.dumps(spec))
    assert len(Fileset.from_mapping(spec).files) == 3
    assert spec == copy


def test_relative_paths_resolve_against_the_fileset_file(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "fs.json"
    path.write_text(json.dumps({"ds": ["data/a.root", "root://eos//b.root", "/abs/c.root"]}))
    files = [f.path for f in Fileset.load(path).datasets["ds"].files]
    assert files == [str(tmp_path / "sub" / "data" / "a.root"), "root://eos//b.root",
                     "/abs/c.root"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([], "non-empty mapping"),
        ({"ds": 3}, "dataset 'ds': expected a list of files"),
        ({"ds": {"metadata": {}}}, "dataset 'ds': missing key 'files'"),
        ({"ds": {"files": [], "metadata": {}}}, "dataset 'ds': has no files"),
        ({"ds": {"file": ["a.root"]}}, "dataset 'ds': unknown key(s) ['file']"),
        ({"ds": {"files": "a.root"}}, "'files' must be a list of paths"),
        ({"ds": {"files": ["a.root"], "metadata": [1]}}, "'metadata' must be a mapping"),
        ({"ds": [""]}, "file paths must be non-empty strings"),
        ({"ds": {"files": {"/a.root": {"steps": [[5, 2]]}}}},
         "file '/a.root': step [5, 2] is not a valid"),
        ({"ds": {"files": {"/a.root": {"num_entries": 4, "steps": [[0, 9]]}}}},
         "ends past the file's 4 entries"),
        ({"ds": {"files": {"/a.root": {"num_entries": -1}}}}, "greater than or equal to 0"),
        ({"ds": {"files": {"/a.root": {"tree": "Events"}}}}, "unknown key(s) ['tree']"),
    ],
)
def test_malformed_filesets_fail_with_one_line_naming_the_place(spec, message):
    with pytest.raises(FilesetError) as info:
        Fileset.from_mapping(spec, source="fs.json")
    text = str(info.value)
    assert message in text
    assert text.startswith("fs.json")
    assert "\n" not in text


def test_unreadable_files_name_the_file(tmp_path: Path):
    with pytest.raises(FilesetError, match="does not exist"):
        Fileset.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ds:\n  files: [a.root\n  treename: Events\n")
    with pytest.raises(FilesetError, match=r"bad.yaml: not valid YAML at line 3, column 11: "
                                           r"expected ',' or '\]'"):
        Fileset.load(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(FilesetError, match="empty file"):
        Fileset.load(empty)
    broken = tmp_path / "broken.json"
    broken.write_text('{"ds": ["a.root",]}')
    with pytest.raises(FilesetError, match=r"broken.json: not valid JSON at line 1, column 18"):
        Fileset.load(broken)


def test_limit_keeps_the_first_files_of_each_dataset():
    fs = Fileset.from_mapping({"a": ["/1", "/2", "/3"], "b": ["/4"]})
    limited = fs.limit(files_per_dataset=2)
    assert [f.path for _, f in limited.files] == ["/1", "/2", "/4"]
    assert yaml.safe_load(yaml.safe_dump(limited.to_mapping()))["b"]["files"] == {
        "/4": {"object_path": "Events"}}


def test_replicas_as_a_list_of_urls_or_a_field_read_the_same():
    as_list = Fileset.from_mapping({"d": [["root://a//f.root", "root://b//f.root"], "/x.root"]})
    as_field = Fileset.from_mapping({"d": {"files": {
        "root://a//f.root": {"object_path": "Events", "replicas": ["root://b//f.root"]},
        "/x.root": "Events"}}})
    assert as_list == as_field
    first = as_list.files[0][1]
    assert first.path == "root://a//f.root" and first.replicas == ("root://b//f.root",)
    assert Fileset.from_mapping(as_list.to_mapping()) == as_list  # saved and read back


def test_redirectors_rewrite_store_paths_in_order():
    fs = Fileset.from_mapping({"d": ["/store/mc/a.root", "root://eos.example//store/mc/b.root",
                                     "/data/c.root"]})
    a, b, c = (f for _, f in fs.with_redirectors(["root://regional:1094/",
                                                   "root://global"]).files)
    assert a.locations == ("root://regional:1094//store/mc/a.root",
                           "root://global//store/mc/a.root")
    assert b.locations == ("root://eos.example//store/mc/b.root",
                           "root://regional:1094//store/mc/b.root",
                           "root://global//store/mc/b.root")
    assert c.locations == ("/data/c.root",)


def test_malformed_replicas_and_redirectors_are_one_line_errors():
    with pytest.raises(FilesetError, match="'replicas' must be a list"):
        Fileset.from_mapping({"d": {"files": {"/a.root": {"replicas": "root://b//a.root"}}}})
    with pytest.raises(FilesetError, match="is not a URL"):
        Fileset.from_mapping({"d": ["/store/a.root"]}).with_redirectors(["cmsxrootd.fnal.gov"])


def test_a_large_fileset_is_saved_as_the_same_json_a_piece_at_a_time(tmp_path: Path):
    # above 1,000 files the text is written file by file, never held whole
    mapping = {
        f"ds{d}": {"files": {f"/x/{d}/f{i}.root": {
            "object_path": "Events", "num_entries": 7 * i + 1, "uuid": f"u-{d}-{i}",
            "steps": [[0, 3 * i + 1], [3 * i + 1, 7 * i + 1]],
            **({"replicas": [f"root://b//x/{d}/f{i}.root"]} if i % 3 == 0 else {})}
            for i in range(600)},
            "metadata": {"xsec": 0.5 + d, "name": 'quote "d"'}}
        for d in range(3)
    }
    original = Fileset.from_mapping(mapping)
    path = original.save(tmp_path / "prepared.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(original.to_mapping()))
    assert Fileset.load(path) == original
