"""Sites as data: every preset validates, layers apply in order, mistakes name their place."""

from __future__ import annotations

import pytest
import yaml

from coffea_hpc.errors import SiteError
from coffea_hpc.options import RunOptions
from coffea_hpc.sites import known_sites, resolve_site

PRESETS = ["local", "local-slurm", "perlmutter-cpu", "perlmutter-gpu", "polaris", "frontier",
           "lxplus-condor", "generic-slurm", "generic-pbs", "generic-condor", "taskvine-local",
           "workqueue-local"]


def test_every_preset_the_docs_promise_is_there():
    names = known_sites()
    assert set(PRESETS) <= set(names)
    assert names["perlmutter"] == names["perlmutter-gpu"]


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_validates(name):
    site = resolve_site(name, overrides={"account": "m0000"})
    assert site.name == name
    assert site.workers(8) >= 1


@pytest.fixture
def layers(tmp_path, monkeypatch):
    user = tmp_path / "user-sites"
    user.mkdir()
    monkeypatch.setenv("COFFEA_HPC_SITES", str(user))
    (user / "generic-slurm.yaml").write_text(yaml.safe_dump(
        {"provider": {"partition": "from-user-dir", "qos": "from-user-dir",
                      "walltime": "02:00:00"}}))
    site_file = tmp_path / "mysite.yaml"
    site_file.write_text(yaml.safe_dump({"provider": {"qos": "from-site-file",
                                                      "walltime": "03:00:00"}}))
    run_options = tmp_path / "run.yaml"
    run_options.write_text(yaml.safe_dump({"site": "generic-slurm", "site_config": {
        "provider": {"walltime": "04:00:00"}, "executor": {"cores_per_worker": 2}}}))
    return site_file, run_options


def test_layers_apply_most_specific_last(layers):
    site_file, run_options = layers
    site_config = RunOptions.layered(run_options).site_config  # a run-options file's layer
    site = resolve_site("generic-slurm", site_file=site_file, site_config=site_config,
                        overrides={"nodes": 3, "account": None})
    assert site.provider.partition == "from-user-dir"
    assert site.provider.qos == "from-site-file"
    assert site.provider.walltime == "04:00:00"
    assert site.provider.nodes_per_block == 3
    assert site.executor.cores_per_worker == 2
    assert site.provider.launcher == "srun"  # untouched preset value
    flagged = resolve_site("generic-slurm", site_file=site_file, site_config=site_config,
                           overrides={"walltime": "00:05:00", "scaleout": 7})
    assert flagged.provider.walltime == "00:05:00" and flagged.provider.max_blocks == 7


def test_a_user_site_needs_no_preset(tmp_path, monkeypatch):
    monkeypatch.setenv("COFFEA_HPC_SITES", str(tmp_path))
    (tmp_path / "mycluster.yaml").write_text(yaml.safe_dump(
        {"description": "our group's cluster", "provider": {"type": "slurm",
                                                            "partition": "hep"},
         "executor": {"interface": "ib0"}}))
    assert "mycluster" in known_sites()
    site = resolve_site("mycluster")
    assert site.provider.partition == "hep" and site.scheduler == "slurm"
    assert site.executor.encrypted  # unless the site file says why not


@pytest.mark.parametrize(("executor", "message"), [
    ({}, r"say which address workers reach the driver on: executor\.interface"),
    ({"interface": "ib0", "encrypted": False},
     r"executor\.encrypted: false needs executor\.plaintext_reason"),
])
def test_a_site_names_its_address_and_keeps_encryption_unless_it_says_why(
        tmp_path, monkeypatch, executor, message):
    monkeypatch.setenv("COFFEA_HPC_SITES", str(tmp_path))
    (tmp_path / "mycluster.yaml").write_text(yaml.safe_dump(
        {"provider": {"type": "slurm"}, "executor": executor}))
    with pytest.raises(SiteError, match=r"^site 'mycluster' \(.*mycluster\.yaml\): " + message):
        resolve_site("mycluster")
    (tmp_path / "mycluster.yaml").write_text(yaml.safe_dump(
        {"provider": {"type": "slurm"}, "executor": {
            "bind_all": True, "encrypted": False,
            "plaintext_reason": "an isolated test cluster"}}))
    site = resolve_site("mycluster")
    assert not site.executor.encrypted
    from coffea_hpc.sites import build_config

    executor = build_config(site, tmp_path / "run").executors[0]
    assert executor.encrypted is False and executor.address is None


def test_unknown_sites_list_the_known_ones():
    with pytest.raises(SiteError, match=r"unknown site 'perlmuter' \(did you mean "
                                        r"'perlmutter'\?\); known sites: .*polaris"):
        resolve_site("perlmuter")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"provider": {"walltime": "2 hours"}}, r"provider\.walltime: '2 hours' is not a wall"),
        ({"provider": {"partiton": "x"}}, r"provider\.partiton: unknown option"),
        ({"executor": {"type": "spark"}}, r"executor\.type: Input should be 'htex', 'mpi'"),
        ({"provider": {"type": "lsf"}}, r"provider\.type: Input should be 'slurm', 'pbspro'"),
        ({"provider": {"min_blocks": 5, "max_blocks": 2}}, r"min_blocks \(5\) exceeds"),
        ({"executor": {"type": "mpi"}, "provider": {"launcher": "simple"}},
         r"executor\.type: mpi \(Parsl's MPIExecutor\).*--reduce mpi"),
    ],
)
def test_invalid_fields_name_the_field_and_the_file(tmp_path, content, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(content))
    with pytest.raises(SiteError, match=message) as info:
        resolve_site("generic-slurm", site_file=bad)
    assert str(bad) in str(info.value) or "site" in str(info.value)
    assert "\n" not in str(info.value)


def test_the_file_that_set_a_bad_value_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"provider": {"walltime": "soon"}}))
    with pytest.raises(SiteError, match=rf"\({bad}\): provider\.walltime"):
        resolve_site("generic-slurm", site_file=bad)


def test_a_site_that_needs_an_account_says_so():
    with pytest.raises(SiteError, match=r"site 'perlmutter-cpu' needs an account.*--account"):
        resolve_site("perlmutter-cpu")
    assert resolve_site("perlmutter-cpu", overrides={"account": "m42"}).provider.account == "m42"
    assert resolve_site("perlmutter-cpu", require_account=False).provider.account is None


def test_broken_yaml_is_one_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("provider:\n  qos: [unclosed\n  walltime: 1\n")
    with pytest.raises(SiteError, match=r"broken\.yaml: not valid YAML at line 3, column 11: "
                                        r"expected ',' or '\]'"):
        resolve_site("generic-slurm", site_file=bad)
    with pytest.raises(SiteError, match="does not exist"):
        resolve_site("generic-slurm", site_file=tmp_path / "missing.yaml")
