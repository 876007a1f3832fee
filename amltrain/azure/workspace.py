"""Which workspace, and as whom: resolved from files and the environment without contacting Azure.

The workspace is ``azure.subscription_id/resource_group/workspace_name`` when all three are set, else the
file ``Workspace.from_config`` would find: ``.azureml/``, then ``aml_config/``, then the folder itself, each
searched from the start folder upwards, ``config.json`` before the legacy ``project.json`` (``config.json`` is
the file the portal's "Download config.json" gives).

The credential is chosen like this (``azure.auth: auto``): a service principal when ``AZURE_CLIENT_ID``,
``AZURE_TENANT_ID`` and ``AZURE_CLIENT_SECRET`` are all set; a managed identity when the host provides one
(``IDENTITY_ENDPOINT`` or ``MSI_ENDPOINT``); otherwise the Azure CLI's login (``az login``, or GitHub's
``azure/login`` with OIDC).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from ..errors import ToolkitError
from .spec import AzureSettings, WorkspaceRef

# Workspace.from_config's order: each of these, in the start folder and then every folder above, before the next.
SEARCHED = (".azureml/config.json", ".azureml/project.json", "aml_config/config.json", "aml_config/project.json",
            "config.json", "project.json")
SP_VARS = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET")
NO_WORKSPACE_HINT = ("download config.json from the workspace's page in the Azure portal into the project "
                     "(or .azureml/), or set azure.subscription_id, azure.resource_group and azure.workspace_name "
                     "(INVOKE_AZURE_SUBSCRIPTION_ID, …)")
LOGIN_HINT = ("run `az login` (or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET for a service "
              "principal)")


def find_config(start: Path) -> Path | None:
    """The config.json ``Workspace.from_config`` would read, searching ``start`` and its parents."""
    for relative in SEARCHED:
        for folder in (start.resolve(), *start.resolve().parents):
            if (folder / relative).is_file():
                return folder / relative
    return None


def read_config(path: Path) -> WorkspaceRef:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ToolkitError(f"workspace config {path} cannot be read: {exc}", NO_WORKSPACE_HINT) from None
    if isinstance(data, Mapping) and data.get("Scope"):  # the older ARM-scope form
        parts = str(data["Scope"]).split("/")
        if len(parts) > 8:
            return WorkspaceRef(parts[2], parts[4], parts[8], str(path))
    if isinstance(data, Mapping) and all(data.get(k) for k in ("subscription_id", "resource_group",
                                                               "workspace_name")):
        return WorkspaceRef(str(data["subscription_id"]), str(data["resource_group"]), str(data["workspace_name"]),
                            str(path))
    raise ToolkitError(f"workspace config {path} has no subscription_id, resource_group and workspace_name",
                       NO_WORKSPACE_HINT)


def workspace_ref(settings: AzureSettings, start: Path) -> WorkspaceRef:
    names = (settings.subscription_id, settings.resource_group, settings.workspace_name)
    if all(names):
        return WorkspaceRef(*names, source="azure.* settings")
    if any(names):
        raise ToolkitError("azure.subscription_id, azure.resource_group and azure.workspace_name must be set "
                           "together", NO_WORKSPACE_HINT)
    if settings.config_file:  # a file, or a folder to search from (as from_config's path)
        path = (start / os.path.expanduser(settings.config_file)).resolve()
        if path.is_file():
            return read_config(path)
        if not path.is_dir():
            raise ToolkitError(f"azure.config_file {path} does not exist", NO_WORKSPACE_HINT)
        start = path
    found = find_config(start)
    if found is None:
        raise ToolkitError(f"no Azure ML workspace configured: no config.json in {start}, .azureml/ or "
                           "aml_config/ there or above, and no azure.workspace_name", NO_WORKSPACE_HINT)
    return read_config(found)


def auth_mode(configured: str, environ: Mapping[str, str]) -> str:
    """The credential ``auto`` picks, from the environment alone."""
    if configured != "auto":
        return configured
    if all(environ.get(name) for name in SP_VARS):
        return "service-principal"
    if environ.get("IDENTITY_ENDPOINT") or environ.get("MSI_ENDPOINT"):
        return "managed-identity"
    return "cli"


def make_auth(mode: str, environ: Mapping[str, str]):
    """azureml-core's credential object for ``mode``; building it contacts nothing."""
    from azureml.core.authentication import MsiAuthentication, ServicePrincipalAuthentication

    if mode == "service-principal":
        missing = [name for name in SP_VARS if not environ.get(name)]
        if missing:
            raise ToolkitError(f"service-principal auth needs {', '.join(missing)}", "set them in the environment")
        return ServicePrincipalAuthentication(tenant_id=environ["AZURE_TENANT_ID"],
                                              service_principal_id=environ["AZURE_CLIENT_ID"],
                                              service_principal_password=environ["AZURE_CLIENT_SECRET"])
    if mode == "managed-identity":
        client_id = environ.get("AZURE_CLIENT_ID")  # a user-assigned identity; else the system-assigned one
        return MsiAuthentication(identity_config={"client_id": client_id} if client_id else None)
    return az_cli_auth()


def az_cli_auth():
    """The Azure CLI's login as an azureml-core credential.

    azureml-core's own ``AzureCliAuthentication`` imports the ``azure-cli`` package into this interpreter, and
    azure-cli-core's pins (knack 0.14) conflict with azureml-core's (knack<0.13); the ``az`` on a user's PATH
    or a GitHub runner lives in its own environment. So the ARM token comes from ``az account get-access-token``
    and is fetched again before it gets old: SDK calls during a long ``--wait`` keep working.
    """
    from azureml.core.authentication import ArmTokenAuthentication

    class AzCliTokenAuthentication(ArmTokenAuthentication):
        REFRESH_AFTER = 30 * 60  # az hands out tokens valid for 60-90 minutes

        def __init__(self):
            self._fetched_at = time.monotonic()
            super().__init__(cli_arm_token(), cloud="AzureCloud")

        def _get_arm_token(self):  # the hook AbstractAuthentication.get_authentication_header calls
            if time.monotonic() - self._fetched_at > self.REFRESH_AFTER:
                self.update_arm_access_token(cli_arm_token())
                self._fetched_at = time.monotonic()
            return super()._get_arm_token()

    return AzCliTokenAuthentication()


def cli_arm_token() -> str:
    az = shutil.which("az")
    if az is None:
        raise ToolkitError("the Azure CLI (az) is not installed, and no service principal or managed identity "
                           "is configured", "install the Azure CLI and run `az login`, or set AZURE_CLIENT_ID, "
                           "AZURE_TENANT_ID and AZURE_CLIENT_SECRET")
    result = subprocess.run([az, "account", "get-access-token", "--resource", "https://management.azure.com/",
                             "--query", "accessToken", "--output", "tsv"], capture_output=True, text=True,
                            timeout=120)
    token = result.stdout.strip()
    if result.returncode != 0 or not token:
        reason = (result.stderr.strip().splitlines() or ["no token"])[-1][:200]
        raise ToolkitError(f"the Azure CLI gave no token: {reason}", LOGIN_HINT)
    return token
