"""Preflight, compute and workspace resolution: refused or decided before anything contacts Azure."""

from __future__ import annotations

import json

import pytest

from amltrain.azure import compute, preflight, v1, workspace
from amltrain.azure import settings as azure_settings
from amltrain.azure.settings import AzureSettings, ComputeSpec
from amltrain.azure.v1 import auth as v1_auth
from amltrain.errors import ToolkitError
from amltrain.spec import Distribution
from tests.conftest import load_config


@pytest.mark.parametrize("size, gpus", [
    ("Standard_NC24ads_A100_v4", 1), ("standard_nc96ads_a100_v4", 4), ("Standard_NC80adis_H100_v5", 2),
    ("Standard_ND96isr_H100_v5", 8), ("Standard_NC64as_T4_v3", 4), ("Standard_NV24s_v3", 2),
    ("Standard_D4s_v5", 0), ("Standard_NX99_v9", None),
])
def test_gpus_per_node(size, gpus):
    assert preflight.gpus_per_node(size) == gpus


@pytest.mark.parametrize("size, replacement", [
    ("STANDARD_NC6", "Standard_NC24ads_A100_v4"),  # the seed's default
    ("Standard_NC24s_v3", "Standard_NC96ads_A100_v4"), ("Standard_ND12s", "Standard_NC48ads_A100_v4"),
])
def test_retired_sizes_are_refused_with_the_replacement(size, replacement):
    with pytest.raises(ToolkitError, match=f"retired.*{replacement}"):
        preflight.check_vm_size(size)


def test_more_processes_than_gpus_is_refused_with_a_hint():
    with pytest.raises(ToolkitError, match="2 processes per node on Standard_NC24ads_A100_v4, which has 1 GPU") as e:
        preflight.check_shape(Distribution("per-process", 1, 2), "gpu", "Standard_NC24ads_A100_v4", 4)
    assert "--procs-per-node 1" in str(e.value)


def test_more_nodes_than_the_cluster_scales_to_is_refused():
    with pytest.raises(ToolkitError, match="5 nodes asked, but compute gpu scales to at most 4"):
        preflight.check_shape(Distribution("mpi", 5, 1), "gpu", "Standard_NC96ads_A100_v4", 4)


def test_cpu_sizes_take_any_process_count_and_unknown_gpu_sizes_warn():
    assert preflight.check_shape(Distribution("per-process", 2, 8), "cpu", "Standard_D16s_v5", 2) == []
    assert "not in the GPU table" in preflight.check_shape(Distribution(), "x", "Standard_NX99_v9", 1)[0]


@pytest.mark.parametrize("image, outcome", [
    ("mcr.microsoft.com/azureml/openmpi3.1.2-ubuntu18.04:20230101.v1", "refused"),
    ("mcr.microsoft.com/azureml/intelmpi2018.3-ubuntu16.04", "refused"),
    ("mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:20250217.v1", "warned"),
    ("mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.8-cudnn8-ubuntu22.04:20250701.v1", "warned"),
    ("mcr.microsoft.com/azureml/openmpi5.0-cuda13.1-ubuntu24.04:20260901.v1", "fine"),
    ("amltrain/standin-base:bookworm", "fine"),
])
def test_base_images(image, outcome):
    if outcome == "refused":
        with pytest.raises(ToolkitError, match="openmpi5.0"):
            preflight.check_base_image(image, gpu=False)
    else:
        warnings = preflight.check_base_image(image, gpu="cuda" in image)
        assert bool(warnings) == (outcome == "warned")
        assert all("openmpi5.0-cuda13.1-ubuntu24.04" in w for w in warnings if "cuda" in image)


def test_the_creation_request_is_the_sdks_own_payload():
    spec = ComputeSpec("gpu-cluster", "Standard_NC24ads_A100_v4", min_nodes=0, max_nodes=4, idle_seconds=900,
                       low_priority=True)
    payload = v1.compute_body(v1.compute(spec), "westeurope", "sub")
    props = payload["properties"]
    assert (payload["location"], props["computeType"]) == ("westeurope", "AmlCompute")
    assert props["properties"]["vmSize"] == "Standard_NC24ads_A100_v4"
    assert props["properties"]["vmPriority"] == "lowpriority"
    assert props["properties"]["scaleSettings"] == {"maxNodeCount": 4, "minNodeCount": 0,
                                                     "nodeIdleTimeBeforeScaleDown": "PT900S"}


def test_compute_options_win_over_the_declaration_and_are_validated():
    settings = azure_settings.from_config(load_config())
    spec = azure_settings.compute_for(settings, "gpu-cluster", max_nodes="8", priority="low")
    assert (spec.vm_size, spec.max_nodes, spec.low_priority, spec.declared) == ("Standard_NC48ads_A100_v4", 8,
                                                                                 True, True)
    assert not azure_settings.compute_for(settings, "adhoc", vm_size="Standard_D2s_v5").declared
    for bad, match in [({"min_nodes": "5", "max_nodes": "2"}, "min nodes 5 > max nodes 2"),
                       ({"max_nodes": "0"}, "max-nodes must be a whole number of at least 1"),
                       ({"priority": "spot"}, "not dedicated or low")]:
        with pytest.raises(ToolkitError, match=match):
            azure_settings.compute_for(settings, "gpu-cluster", **bad)
    with pytest.raises(ToolkitError, match="not valid for Azure ML .3-24 letters"):
        azure_settings.compute_for(settings, "gpu_cluster!")
    with pytest.raises(ToolkitError, match="has no VM size"):
        compute.validate(azure_settings.compute_for(settings, "adhoc"))


def test_azure_settings_from_invoke_yaml_and_overrides():
    settings = azure_settings.from_config(load_config({"azure": {"registry": {"address": "localhost:5000/"},
                                                            "push": {"retries": 1}}}))
    assert (settings.auth, settings.registry.auth, settings.registry.address) == ("auto", "aad", "localhost:5000")
    assert settings.registry.repository == "amltrain/train" and settings.push_retries == 1
    assert settings.shm_size == "2g" and set(settings.computes) == {"cpu-cluster", "gpu-cluster"}
    for bad, match in [({"auth": "password"}, "azure.auth 'password' is not one of"),
                       ({"submit": {"shm_size": "lots"}}, "not a size"),
                       ({"push": {"backoff_seconds": "soon"}}, "backoff_seconds"),
                       ({"computes": {"x": "Standard_D2s_v5"}}, "must be a mapping")]:
        with pytest.raises(ToolkitError, match=match):
            azure_settings.from_config(load_config({"azure": bad}))


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_workspace_config_is_searched_like_from_config(tmp_path):
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    write(tmp_path / "config.json", {"subscription_id": "s0", "resource_group": "r0", "workspace_name": "plain"})
    write(tmp_path / "a" / ".azureml" / "config.json", {"Scope": "/subscriptions/s1/resourceGroups/r1/providers/"
                                                        "Microsoft.MachineLearningServices/workspaces/scoped"})
    ref = workspace.workspace_ref(AzureSettings(), deep)  # .azureml/ anywhere above beats a plain config.json
    assert (ref.subscription_id, ref.resource_group, ref.workspace_name) == ("s1", "r1", "scoped")
    assert workspace.workspace_ref(AzureSettings(), tmp_path).workspace_name == "plain"
    named = AzureSettings(subscription_id="s", resource_group="r", workspace_name="w")
    assert workspace.workspace_ref(named, deep).source == "azure.* settings"


def test_the_search_order_is_the_sdks_and_config_file_may_be_a_folder(tmp_path):
    """from_config: .azureml/ upwards, then aml_config/ upwards, then the folder itself upwards;
    config.json before the legacy project.json at each of those steps."""
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    write(deep / "config.json", {"subscription_id": "s", "resource_group": "r", "workspace_name": "here"})
    write(tmp_path / "aml_config" / "project.json", {"subscription_id": "s", "resource_group": "r",
                                                     "workspace_name": "legacy-above"})
    assert workspace.workspace_ref(AzureSettings(), deep).workspace_name == "legacy-above"
    write(tmp_path / "aml_config" / "config.json", {"subscription_id": "s", "resource_group": "r",
                                                    "workspace_name": "config-above"})
    assert workspace.workspace_ref(AzureSettings(), deep).workspace_name == "config-above"
    folder = AzureSettings(config_file=str(deep))
    assert workspace.workspace_ref(folder, tmp_path).workspace_name == "config-above"


def test_no_or_partial_workspace_configuration_is_one_line_with_what_to_do(tmp_path):
    with pytest.raises(ToolkitError, match="no Azure ML workspace configured") as e:
        workspace.workspace_ref(AzureSettings(), tmp_path)
    assert "config.json" in e.value.hint and "\n" not in str(e.value)
    with pytest.raises(ToolkitError, match="must be set together"):
        workspace.workspace_ref(AzureSettings(workspace_name="w"), tmp_path)
    write(tmp_path / "config.json", {"workspace_name": "w"})
    with pytest.raises(ToolkitError, match="has no subscription_id"):
        workspace.workspace_ref(AzureSettings(), tmp_path)


def test_the_credential_is_chosen_from_the_environment():
    sp = {"AZURE_CLIENT_ID": "id", "AZURE_TENANT_ID": "t", "AZURE_CLIENT_SECRET": "s"}
    assert workspace.auth_mode("auto", sp) == "service-principal"
    assert workspace.auth_mode("auto", {"AZURE_CLIENT_ID": "id", "AZURE_TENANT_ID": "t"}) == "cli"  # OIDC login
    assert workspace.auth_mode("auto", {"IDENTITY_ENDPOINT": "http://169.254.169.254"}) == "managed-identity"
    assert workspace.auth_mode("cli", sp) == "cli"


def test_credentials_are_azureml_cores_own_classes_and_need_no_network():
    from azureml.core.authentication import MsiAuthentication, ServicePrincipalAuthentication

    sp = {"AZURE_CLIENT_ID": "id", "AZURE_TENANT_ID": "t", "AZURE_CLIENT_SECRET": "s"}
    assert isinstance(v1_auth.make_auth("service-principal", sp), ServicePrincipalAuthentication)
    assert isinstance(v1_auth.make_auth("managed-identity", {}), MsiAuthentication)
    with pytest.raises(ToolkitError, match="needs AZURE_CLIENT_SECRET"):
        v1_auth.make_auth("service-principal", {"AZURE_CLIENT_ID": "id", "AZURE_TENANT_ID": "t"})


def test_cli_auth_without_az_says_how_to_sign_in(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolkitError, match=r"Azure CLI \(az\) is not installed") as e:
        v1_auth.make_auth("cli", {})
    assert "az login" in e.value.hint


def test_cli_auth_takes_the_token_az_prints_and_fetches_a_new_one_when_it_gets_old(monkeypatch, tmp_path):
    fake_az = tmp_path / "az"
    fake_az.write_text("#!/bin/sh\necho arm-token-from-az\n")
    fake_az.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    auth = v1_auth.make_auth("cli", {})
    assert auth.get_authentication_header() == {"Authorization": "Bearer arm-token-from-az"}
    fake_az.write_text("#!/bin/sh\necho newer-token\n")
    assert auth.get_authentication_header() == {"Authorization": "Bearer arm-token-from-az"}  # still fresh
    auth.REFRESH_AFTER = 0
    assert auth.get_authentication_header() == {"Authorization": "Bearer newer-token"}


def test_cli_auth_when_az_has_no_login_is_one_line(monkeypatch, tmp_path):
    fake_az = tmp_path / "az"
    fake_az.write_text("#!/bin/sh\necho 'ERROR: Please run az login to setup account.' >&2\nexit 1\n")
    fake_az.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolkitError, match="the Azure CLI gave no token: ERROR: Please run az login") as e:
        v1_auth.make_auth("cli", {})
    assert e.value.hint == workspace.LOGIN_HINT
