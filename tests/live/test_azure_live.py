"""Against a real Azure ML workspace: runs only when asked (AZUREML_LIVE=1) and a workspace and Azure
credentials are there.

    AZUREML_LIVE=1 AZUREML_LIVE_COMPUTE=cpu-cluster ./dev pytest tests/live -rs

Credentials are whatever `invoke` would use (az login, a service principal, a managed identity); the
workspace is the config.json / azure.* settings the tasks read. With each SDK (v2 and v1) it signs in, reads the
workspace's registry, and, with AZUREML_LIVE_COMPUTE naming an existing cluster and the CPU image built, pushes,
registers and submits a one-process job of the probe script with --wait (minutes, and it costs compute time).
Otherwise every test says in its skip reason that it did not run, and why (not asked, no workspace, no
credentials).
"""

from __future__ import annotations

import os

import pytest

from amltrain.azure import settings as azure_settings
from amltrain.azure.v1 import auth as v1_auth
from amltrain.errors import ToolkitError
from tests.conftest import ROOT, load_config
from tests.docker.conftest import invoke

LIVE = os.environ.get("AZUREML_LIVE") == "1"


SDKS = pytest.mark.parametrize("sdk", ["v2", "v1"])


def _workspace_or_skip(sdk: str):
    """The workspace, when a live run was asked for and a workspace and a credential are there; else a skip
    that says which of them is missing."""
    from amltrain.azure import workspace

    if not LIVE:
        pytest.skip("live Azure test NOT RUN: set AZUREML_LIVE=1 (and configure a workspace) to run it")
    settings = azure_settings.from_config(load_config(), sdk)
    try:
        ref = workspace.workspace_ref(settings, ROOT)
    except ToolkitError as exc:
        pytest.skip(f"live Azure test NOT RUN: AZUREML_LIVE=1 but no workspace is configured: {exc}")
    mode = workspace.auth_mode(settings.auth, os.environ)
    try:
        if sdk == "v1":
            v1_auth.make_auth(mode, os.environ)  # for the Azure CLI this asks `az` for a token
        else:
            from amltrain.azure.v2.backend import credential

            credential(mode, os.environ).get_token(workspace.ARM_SCOPE)
    except Exception as exc:  # noqa: BLE001 - any credential failure means: not runnable here
        pytest.skip(f"live Azure test NOT RUN: AZUREML_LIVE=1 but no Azure credentials ({mode}): {exc}")
    return ref, settings


@SDKS
def test_sign_in_and_read_the_workspace_registry(sdk):
    ref, settings = _workspace_or_skip(sdk)
    from amltrain.azure import flow

    azure = flow.AzureSession(settings, ROOT).backend()
    server = azure.registry_login_server()
    assert azure.workspace.workspace_name == ref.workspace_name
    assert server is None or server.endswith(".azurecr.io")


@SDKS
def test_push_register_submit_wait(sdk):
    _workspace_or_skip(sdk)
    compute = os.environ.get("AZUREML_LIVE_COMPUTE")
    if not compute:
        pytest.skip("live submit NOT RUN: set AZUREML_LIVE_COMPUTE to an existing cluster to run a real job")
    ref = invoke("image-ref", "--target", "cpu").stdout.strip()
    if invoke("push", "--target", "cpu", "--dry-run").returncode != 0:
        pytest.skip("live submit NOT RUN: the push configuration is incomplete (see `invoke push --dry-run`)")
    steps = [["push", "--target", "cpu"], ["register", "--target", "cpu"],
             ["submit", "--target", "cpu", "--compute", compute, "--script", "probe.py", "--wait"]]
    env = {"INVOKE_JOB_SOURCE_DIR": "tests/docker/probe", "INVOKE_JOB_EXPERIMENT": "amltrain-live",
           "INVOKE_AZURE_SDK": sdk}
    for step in steps:
        result = invoke(*step, env=env, timeout=3600)
        if step[0] == "push" and "is not built" in result.stderr:
            pytest.skip(f"live submit NOT RUN: {ref} is not built here (invoke build --target cpu)")
        assert result.returncode == 0, f"invoke {' '.join(step)}: {result.stdout[-3000:]}{result.stderr}"
