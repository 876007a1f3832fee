"""The network boundary: every call that reaches Azure goes through an ``AzureBackend``.

Each SDK has its real one (``v1.backend.WorkspaceBackend``: azureml-core; ``v2.backend.MLClientBackend``:
azure-ai-ml), with the same methods, so the flows in ``environment``, ``compute``, ``submit`` and ``model`` are
written once. The tests replace it with a recording fake, so the flows run without Azure while the SDK objects
they hand over are the real ones. Azure's failures become one ``ToolkitError`` line here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import ToolkitError, cut
from ..masking import mask_url_credentials
from .settings import WorkspaceRef
from .workspace import LOGIN_HINT

ACR_TOKEN_USER = "00000000-0000-0000-0000-000000000000"  # the user name ACR expects with an AAD refresh token


def login_server(registry_arm_id: str) -> str | None:
    """The workspace's ACR as ``docker`` names it, from its ARM id (``…/registries/NAME``); None for none yet."""
    name = registry_arm_id.rstrip("/").rsplit("/", 1)[-1].lower() if registry_arm_id else ""
    return f"{name}.azurecr.io" if name else None


@dataclass(frozen=True)
class ComputeInfo:
    name: str
    vm_size: str
    min_nodes: int
    max_nodes: int
    state: str = ""
    kind: str = "AmlCompute"
    identity: str | None = None  # "" none, "system", or user-assigned resource ids ("," between); None: not known


def identity_of(kind: str, user_assigned=()) -> str:
    """A cluster's managed identity in ``ComputeSpec.identity``'s words, from the service's kind and ids."""
    kind = str(kind or "").lower().replace("_", "")
    if "user" in kind:
        return ",".join(sorted(str(i) for i in user_assigned or ()))
    return "system" if "system" in kind else ""


@dataclass(frozen=True)
class EnvironmentInfo:
    name: str
    version: str
    image: str  # the image reference it runs


@dataclass(frozen=True)
class RunError:
    """The service's error on a run that did not complete (v1: ``get_details()['error']['error']``; v2: the run
    history's ``RunDetails.error.error``, what ``jobs.stream`` prints): what ``faults.classify`` reads."""

    code: str = ""
    message: str = ""


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    portal_url: str
    status: str = ""
    error: RunError | None = None  # set when the run ended Failed (read once it ended)
    tags: Mapping[str, str] = field(default_factory=dict)  # read by get_run (--resume finds the checkpoint folder)
    checkpoints: str = ""  # the URI of its checkpoint output, where the SDK says (v2's outputs.checkpoints)


def run_error(error) -> RunError | None:
    """A service ``ErrorResponse`` (a dict as v1 reads it, or v2's model) as a RunError; None when absent."""
    root = error.get("error") if isinstance(error, Mapping) else getattr(error, "error", None)
    if root is None:
        return None
    code = root.get("code") if isinstance(root, Mapping) else getattr(root, "code", "")
    message = root.get("message") if isinstance(root, Mapping) else getattr(root, "message", "")
    return RunError(str(code or ""), str(message or ""))


class AzureBackend(Protocol):
    workspace: WorkspaceRef

    def registry_login_server(self) -> str | None: ...  # the workspace's ACR, None until Azure made one
    def registry_admin_credentials(self) -> tuple[str, str]: ...
    def acr_refresh_token(self, login_server: str) -> str: ...
    def get_environment(self, name: str, version: str) -> EnvironmentInfo | None: ...
    def register_environment(self, environment) -> EnvironmentInfo: ...  # the SDK's Environment
    def get_compute(self, name: str) -> ComputeInfo | None: ...
    def create_compute(self, name: str, definition) -> ComputeInfo: ...  # the SDK's cluster definition
    def wait_for_compute(self, name: str) -> ComputeInfo: ...  # until its provisioning operation ends
    def submit(self, experiment: str, job, tags: dict[str, str]) -> RunInfo: ...  # the SDK's job object
    def wait(self, run_id: str, show_output: bool = True) -> RunInfo: ...
    def get_run(self, run_id: str) -> RunInfo: ...
    def cancel(self, run_id: str) -> RunInfo: ...
    def run_file_names(self, run_id: str) -> list[str]: ...
    def register_model(self, run_id: str, name: str, path: str, tags: dict[str, str]) -> tuple[str, str]: ...
    def download_files(self, run_id: str, prefix: str, directory: Path) -> None: ...  # into DIR/prefix/


QUOTA_HINT = ("ask for more quota for the VM family in the workspace's region (Azure portal: Quotas), or use "
              "another VM size or fewer nodes")
ROLE_HINT = ("your identity lacks a role on the workspace or resource (e.g. AzureML Data Scientist, AcrPush): "
             "ask its owner, or sign in as another identity")
NETWORK_HINT = "Azure could not be reached: check the network, a proxy (HTTPS_PROXY) or DNS"
# The service's own words inside the SDK's wrappers: ``Content: b'{"error": {"code": …, "message": …}}'``
# (compute), a JSON dump of the response (workspace, environments).
_SERVICE_CODE = re.compile(r'"code"\s*:\s*"([^"]+)"')
_SERVICE_MESSAGE = re.compile(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)"')


def _said(exc: BaseException) -> str:
    """The exception's text without response headers (request ids and cookies: noise, never the cause).
    azureml-core's own exceptions keep the text in ``message``; their ``str()`` starts with the class name."""
    text = str(getattr(exc, "message", "") or exc)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("Headers:"))


def azure_message(exc: BaseException) -> str:
    """What Azure said, on one line: the service's error code and message when the SDK wrapped a response,
    else the first line of the exception."""
    text = _said(exc)
    found = _SERVICE_MESSAGE.search(text)
    if found:
        try:
            line = json.loads(f'"{found.group(1)}"')
        except ValueError:
            line = found.group(1)
        code = _SERVICE_CODE.search(text)
        if code and code.group(1) not in line:
            line = f"{code.group(1)}: {line}"
    else:
        line = next((part.strip() for part in text.splitlines() if part.strip()), type(exc).__name__)
    return cut(mask_url_credentials(line), 240)


def azure_hint(exc: BaseException, default: str = "") -> str:
    """What to do about the failures any Azure call can meet (sign-in, permissions, quota, network); else
    ``default``, the caller's hint."""
    text = f"{type(exc).__name__}\n{_said(exc)}".lower()
    if "quota" in text:
        return QUOTA_HINT
    if "authentication" in text or "aadsts" in text or re.search(r"\b401\b|unauthorized|token.{0,30}expired", text):
        return LOGIN_HINT
    if re.search(r"\b403\b|authorizationfailed|forbidden|does not have authorization", text):
        return ROLE_HINT
    if re.search(r"max retries exceeded|connection (refused|reset|aborted)|name resolution|timed out", text):
        return NETWORK_HINT
    return default or "AMLTRAIN_DEBUG=1 shows the whole error"


@contextlib.contextmanager
def azure_errors(action: str, hint: str = "") -> Iterator[None]:
    """Azure's exceptions as one line: what was being done, what Azure said, what to do."""
    try:
        yield
    except ToolkitError:
        raise
    except Exception as exc:  # the SDK raises bare Exception for REST errors, plus its own and msrest's types
        if os.environ.get("AMLTRAIN_DEBUG"):
            raise
        raise ToolkitError(f"{action} failed: {azure_message(exc)}", azure_hint(exc, hint)) from None
