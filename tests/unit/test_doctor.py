"""`invoke doctor`'s checks on the tools' real output formats and real files; no engine needed."""

from __future__ import annotations

import json
import os

from amltrain import doctor
from amltrain.azure.settings import AzureSettings, RegistrySettings
from tests.unit.test_tasks import ENGINE_DOWN, invoke

# `nvidia-smi --query-gpu=index,persistence_mode --format=csv,noheader` on a two-GPU host, one left off.
NVIDIA_SMI = "0, Enabled\n1, Disabled\n"
# What dockerd answered here for MCR without a network, and for a tag a registry does not have.
NO_NETWORK = ('Get "https://mcr.microsoft.com/v2/": dial tcp: lookup mcr.microsoft.com on 10.255.255.53:53: '
              'no such host')
NO_TAG = "manifest for mcr.microsoft.com/azureml/openmpi5.0-ubuntu24.04:19990101.v1 not found: manifest unknown"


def test_persistence_mode_is_read_per_gpu():
    assert doctor.persistence(NVIDIA_SMI) == [("0", True), ("1", False)]
    assert doctor.persistence("") == []


def test_a_missing_tag_is_named_as_such_not_as_a_network_problem():
    assert doctor.pull_problem(NO_TAG) == "missing"
    assert doctor.pull_problem(NO_NETWORK) == "unreachable"
    assert doctor.pull_problem("pull access denied for x, repository does not exist or may require 'docker "
                               "login': denied: requested access to the resource is denied") == "denied"


def test_each_line_carries_its_fix_and_only_failures_fail():
    low = doctor.disk_check(5 * 2**30, "/var/lib/docker")
    assert low.status == doctor.FAIL and "prune-images" in low.line() and low.line().count("\n") == 0
    assert doctor.disk_check(100 * 2**30, "/x").status == doctor.OK
    assert doctor.disk_check(None, "/remote").status == doctor.SKIP
    assert doctor.exit_code([low]) == 1
    assert doctor.exit_code([doctor.disk_check(None, "/r"), doctor.disk_check(2**40, "/x")]) == 0


def test_gpu_checks_are_skipped_where_no_gpu_will_be_used():
    results = doctor.gpu_checks(None, gpus_wanted=False, host_gpus=0)
    assert [r.status for r in results] == [doctor.SKIP, doctor.SKIP]


def test_azure_checks_fail_only_once_a_workspace_is_configured(tmp_path):
    config_json = tmp_path / "docker.json"
    no_ws = doctor.azure_checks(AzureSettings(registry=RegistrySettings(auth="docker", address="x.azurecr.io")),
                                tmp_path, {}, lambda: False, config_json)
    assert doctor.exit_code(no_ws) == 0 and {r.name: r.status for r in no_ws}["workspace config"] == doctor.SKIP
    (tmp_path / ".azureml").mkdir()
    (tmp_path / ".azureml/config.json").write_text(json.dumps(
        {"subscription_id": "s", "resource_group": "r", "workspace_name": "w"}))
    with_ws = {r.name: r for r in doctor.azure_checks(
        AzureSettings(registry=RegistrySettings(auth="docker", address="x.azurecr.io")), tmp_path, {},
        lambda: False, config_json)}
    assert with_ws["workspace config"].status == doctor.OK
    assert with_ws["registry login"].status == doctor.FAIL and "docker login x.azurecr.io" in with_ws[
        "registry login"].fix
    config_json.write_text(json.dumps({"auths": {"x.azurecr.io": {"auth": "dTpw"}}}))
    stored = doctor.registry_login(RegistrySettings(auth="docker", address="x.azurecr.io"), {}, config_json,
                                   doctor.FAIL)
    assert stored.status == doctor.OK


def test_doctor_without_an_engine_fails_with_the_engine_line_first():
    result = invoke("doctor", env=ENGINE_DOWN)
    assert result.returncode == 1, result.stdout + result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("[FAIL] docker engine: the Docker engine is not reachable") and "-> start it" in first
    assert "Traceback" not in result.stderr and "doctor: " in result.stderr


def test_doctor_dry_run_runs_no_check():
    result = invoke("doctor", "--dry-run", env={**ENGINE_DOWN, "PATH": os.environ["PATH"]})
    assert result.returncode == 0 and "would check: docker engine" in result.stdout
