"""Which registry an image goes to, and with what login.

The workspace's ACR is the default: Azure ML pulls from it with the workspace's own identity, so the
Environment needs no credentials. Azure creates that ACR lazily (on the first image build in the workspace),
so a fresh workspace may have none: that is said in one line, with how to get one. ``azure.registry.address``
points at another registry (an ACR of your own, or a local one in tests).

Login per ``azure.registry.auth``: ``aad`` exchanges the workspace credential's AAD token for an ACR refresh
token (what ``az acr login`` does); ``admin`` reads the ACR admin user through the workspace (``list_keys``);
``basic`` is ``azure.registry.username`` + ``$AMLTRAIN_REGISTRY_PASSWORD``; ``docker`` leaves it to Docker's own
credential store (after ``az acr login`` or ``docker login``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from ..errors import ToolkitError
from ..registry import Credentials, KnownImage, PushRequest, built_image, not_built, pushed_image
from .backend import ACR_TOKEN_USER
from .settings import REGISTRY_PASSWORD_ENV, AzureSettings

WORKSPACE_ACR = "<the workspace's ACR>"  # what a dry run shows where it would ask the workspace
NO_ACR_HINT = ("Azure ML creates it on the first environment image build; or attach one: "
               "`az ml workspace update -n WORKSPACE -g GROUP --container-registry ACR_ID`, or set "
               "azure.registry.address")


def needs_workspace(settings: AzureSettings) -> bool:
    return not settings.registry.address or settings.registry.auth in ("aad", "admin")


def registry_address(settings: AzureSettings, backend=None) -> str:
    if settings.registry.address:
        return settings.registry.address
    if backend is None:
        return WORKSPACE_ACR
    server = backend.registry_login_server()
    if not server:
        raise ToolkitError(f"workspace {backend.workspace.workspace_name} has no container registry yet",
                           NO_ACR_HINT)
    return server


def basic_credentials(settings: AzureSettings, environ: Mapping[str, str]) -> Credentials:
    if not settings.registry.username:
        raise ToolkitError("azure.registry.auth is basic but azure.registry.username is empty",
                           "set azure.registry.username (INVOKE_AZURE_REGISTRY_USERNAME)")
    password = environ.get(REGISTRY_PASSWORD_ENV, "")
    if not password:
        raise ToolkitError(f"azure.registry.auth is basic but {REGISTRY_PASSWORD_ENV} is not set",
                           f"export {REGISTRY_PASSWORD_ENV} (it is read from the environment only)")
    return Credentials(settings.registry.username, password)


def credential_source(settings: AzureSettings, asked_of_azure: bool) -> str:
    """How the login is obtained, for the dry run and the log; never the secret."""
    source = {"aad": "AAD token exchanged for an ACR token", "admin": "ACR admin user, read through the workspace",
              "basic": f"azure.registry.username + ${REGISTRY_PASSWORD_ENV}",
              "docker": "Docker's credential store (docker login or az acr login)"}[settings.registry.auth]
    return source if asked_of_azure or settings.registry.auth not in ("aad", "admin") else \
        f"{source}, asked of the workspace when pushing"


def credentials(settings: AzureSettings, address: str, backend=None,
                environ: Mapping[str, str] = os.environ) -> Credentials | None:
    """The login for ``address``; None for ``docker`` (and for a dry run of aad/admin, which asks nobody)."""
    mode = settings.registry.auth
    if mode == "basic":
        return basic_credentials(settings, environ)
    if mode == "docker" or backend is None:
        return None
    if mode == "admin":
        return Credentials(*backend.registry_admin_credentials())
    return Credentials(ACR_TOKEN_USER, backend.acr_refresh_token(address))


def push_request(settings: AzureSettings, local_ref: str, backend=None, *, connect: Callable[[], object] | None = None,
                 environ: Mapping[str, str] = os.environ) -> PushRequest:
    """What ``invoke push`` does; with no backend (a dry run) nothing is asked of Azure. ``connect`` gives the
    workspace backend, asked for only when the registry's address or login comes from the workspace."""
    if connect is not None and needs_workspace(settings):
        backend = connect()
    address = registry_address(settings, backend)
    creds = credentials(settings, address, backend, environ)
    return PushRequest(local=local_ref, registry=address, repository=settings.registry.repository,
                       credentials=creds, credential_source=credential_source(settings, backend is not None),
                       retries=settings.push_retries, backoff_seconds=settings.push_backoff_seconds)


def built_or_pushed(client, settings: AzureSettings, local_ref: str, target: str,
                    connect: Callable[[], object]) -> KnownImage:
    """The image this engine built, or else the one the registry holds under the same content-addressed tag
    (what push, register and submit need on a machine that did not build it, e.g. a CI runner after
    ``invoke build --unless-pushed``). Neither: one line naming both places looked in."""
    image = built_image(client, local_ref)
    if image is not None:
        return image
    request = push_request(settings, local_ref, connect=connect)
    pushed = pushed_image(client, request)
    if pushed is None:
        raise not_built(local_ref, target, f" and {request.remote} is not in the registry")
    print(f"{local_ref} is not built on this machine; the registry has it: {pushed.pushed_as}", flush=True)
    return pushed
