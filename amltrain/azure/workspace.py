"""Which workspace, and as whom: resolved from files and the environment without contacting Azure.

The workspace is ``azure.subscription_id/resource_group/workspace_name`` when all three are set, else the
file ``Workspace.from_config`` would find: ``.azureml/``, then ``aml_config/``, then the folder itself, each
searched from the start folder upwards, ``config.json`` before the legacy ``project.json`` (``config.json`` is
the file the portal's "Download config.json" gives).

The credential is chosen like this (``azure.auth: auto``): a service principal when ``AZURE_CLIENT_ID``,
``AZURE_TENANT_ID`` and ``AZURE_CLIENT_SECRET`` are all set; a managed identity when the host provides one
(``IDENTITY_ENDPOINT`` or ``MSI_ENDPOINT``); GitHub Actions' OIDC (``github-oidc``) in a job that may mint
ID tokens (``ACTIONS_ID_TOKEN_REQUEST_URL``/``_TOKEN``) with ``AZURE_CLIENT_ID`` and ``AZURE_TENANT_ID`` set;
otherwise the Azure CLI's login (``az login``).

``github-oidc`` exists because the CLI's login from ``azure/login`` cannot outlive its first token: the CLI
renews with the GitHub token it was given, which expires within the hour (AADSTS700024), so a longer
``submit --wait`` would lose track of its run. It asks GitHub for a new ID token whenever Azure's gets old
and exchanges it (client credentials with a federated client assertion) for an ARM token.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from ..errors import ToolkitError, cut
from ..snapshot import present
from .settings import AzureSettings, WorkspaceRef

# Workspace.from_config's order: each of these, in the start folder and then every folder above, before the next.
SEARCHED = (".azureml/config.json", ".azureml/project.json", "aml_config/config.json", "aml_config/project.json",
            "config.json", "project.json")
SP_VARS = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET")
GITHUB_OIDC_VARS = ("ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "AZURE_CLIENT_ID",
                    "AZURE_TENANT_ID")
ARM_SCOPE = "https://management.azure.com/.default"
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"  # what Entra expects of a federated credential's token
OIDC_HINT = ("check the app's federated credential (issuer https://token.actions.githubusercontent.com, subject "
             "repo:OWNER/REPO:environment:azureml or the immutable repo:OWNER@ID/REPO@ID:… form your repository's "
             "tokens carry, audience api://AzureADTokenExchange), AZURE_CLIENT_ID and AZURE_TENANT_ID, and "
             "`permissions: id-token: write`")
NO_WORKSPACE_HINT = ("download config.json from the workspace's page in the Azure portal into the project "
                     "(or .azureml/), or set azure.subscription_id, azure.resource_group and azure.workspace_name "
                     "(INVOKE_AZURE_SUBSCRIPTION_ID, …)")
ACR_EXCHANGE_HINT = "your identity needs AcrPush on the registry"
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
        if present(path, Path.is_file):
            return read_config(path)
        if not present(path, Path.is_dir):
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
    if all(environ.get(name) for name in GITHUB_OIDC_VARS):
        return "github-oidc"
    return "cli"


def _http_json(request: urllib.request.Request, what: str, hint: str) -> dict:
    """One HTTP exchange whose answer is JSON; a refusal is one line with the service's own description."""
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        said = body.get("error_description") or body.get("message") or body.get("error") or exc.reason
        said = cut(str(said).strip().splitlines()[0]) if str(said).strip() else f"HTTP {exc.code}"
        raise ToolkitError(f"{what} was refused (HTTP {exc.code}): {said}", hint) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ToolkitError(f"{what} failed: {reason}", hint) from None
    if not isinstance(body, dict):
        raise ToolkitError(f"{what} failed: the answer is not a JSON object", hint)
    return body


def github_id_token(environ: Mapping[str, str]) -> str:
    """A new GitHub Actions ID token for Entra's token exchange (the client assertion of a federated app): both
    SDKs ask for one whenever Azure's token gets old."""
    url = environ["ACTIONS_ID_TOKEN_REQUEST_URL"]
    url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"audience": TOKEN_EXCHANGE_AUDIENCE})
    asked = urllib.request.Request(url, headers={
        "Authorization": f"bearer {environ['ACTIONS_ID_TOKEN_REQUEST_TOKEN']}", "Accept": "application/json"})
    assertion = _http_json(asked, "asking GitHub for an ID token",
                           "the job needs `permissions: id-token: write`").get("value", "")
    if not assertion:
        raise ToolkitError("GitHub gave no ID token", "the job needs `permissions: id-token: write`")
    return assertion


def acr_refresh_token(login_server: str, arm_token: str) -> str:
    """ACR's documented AAD exchange (POST /oauth2/exchange): an ARM token for an ACR refresh token, which
    ``docker login`` takes as the password of user 00000000-0000-0000-0000-000000000000 (as az acr login)."""
    import requests

    response = requests.post(f"https://{login_server}/oauth2/exchange", timeout=60, data={
        "grant_type": "access_token", "service": login_server, "access_token": arm_token})
    if response.status_code != 200:
        raise ToolkitError(f"{login_server} refused the AAD token exchange (HTTP {response.status_code})",
                           ACR_EXCHANGE_HINT)
    return response.json()["refresh_token"]
