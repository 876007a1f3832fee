"""SDK v1's credentials: azureml-core authentication objects for each ``azure.auth`` mode.

``github-oidc`` and ``cli`` wrap an ARM token that is fetched again before it gets old: azureml-core cannot renew
the CLI login ``azure/login`` makes (AADSTS700024 after about an hour), which would cut off a long
``submit --wait``. (SDK v2's azure-identity credentials renew themselves: ``v2.backend.credential``.)
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping

from ...errors import ToolkitError, cut
from ..workspace import ARM_SCOPE, GITHUB_OIDC_VARS, LOGIN_HINT, OIDC_HINT, SP_VARS, _http_json, github_id_token


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
    if mode == "github-oidc":
        missing = [name for name in GITHUB_OIDC_VARS if not environ.get(name)]
        if missing:
            raise ToolkitError(f"github-oidc auth needs {', '.join(missing)}",
                               "run it in a GitHub Actions job with `permissions: id-token: write` and set "
                               "AZURE_CLIENT_ID and AZURE_TENANT_ID from secrets")
        return refreshing_arm_token(lambda: github_oidc_arm_token(environ))
    return refreshing_arm_token(cli_arm_token)


def refreshing_arm_token(fetch: Callable[[], str]):
    """An azureml-core credential for an ARM token from ``fetch``, fetched again before it gets old, so SDK calls
    during a long ``--wait`` keep working (tokens live 60-90 minutes). The class is made on first use: it
    derives from azureml-core's, which is imported only by the Azure tasks."""
    from azureml.core.authentication import ArmTokenAuthentication

    class _refreshing_arm_token(ArmTokenAuthentication):
        REFRESH_AFTER = 30 * 60

        def __init__(self):
            self._fetched_at = time.monotonic()
            super().__init__(fetch(), cloud="AzureCloud")

        def _get_arm_token(self):  # the hook AbstractAuthentication.get_authentication_header calls
            if time.monotonic() - self._fetched_at > self.REFRESH_AFTER:
                self.update_arm_access_token(fetch())
                self._fetched_at = time.monotonic()
            return super()._get_arm_token()

    return _refreshing_arm_token()


def github_oidc_arm_token(environ: Mapping[str, str]) -> str:
    """A new GitHub Actions ID token exchanged at Entra for an ARM token of the app it federates (SDK v1)."""
    assertion = github_id_token(environ)
    authority = environ.get("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com").rstrip("/")
    form = urllib.parse.urlencode({
        "client_id": environ["AZURE_CLIENT_ID"], "scope": ARM_SCOPE, "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion}).encode()
    exchange = urllib.request.Request(f"{authority}/{environ['AZURE_TENANT_ID']}/oauth2/v2.0/token", data=form,
                                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    token = _http_json(exchange, "exchanging the GitHub ID token for an Azure token", OIDC_HINT).get("access_token")
    if not token:
        raise ToolkitError("Entra ID answered without an access token", OIDC_HINT)
    return token


def cli_arm_token() -> str:
    """The Azure CLI login's ARM token, from ``az account get-access-token``. Not azureml-core's own
    ``AzureCliAuthentication``: it imports the ``azure-cli`` package into this interpreter, and azure-cli-core's
    pins (knack 0.14) conflict with azureml-core's (knack<0.13); the ``az`` on a user's PATH or a GitHub runner
    lives in its own environment."""
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
        reason = cut((result.stderr.strip().splitlines() or ["no token"])[-1], 200)
        raise ToolkitError(f"the Azure CLI gave no token: {reason}", LOGIN_HINT)
    return token
