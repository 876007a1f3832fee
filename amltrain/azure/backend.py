"""The network boundary: every call that reaches Azure goes through an ``AzureBackend``.

``WorkspaceBackend`` is the real one (azureml-core against a workspace); the tests replace it with a
recording fake, so the flows in ``environment``, ``compute``, ``submit`` and ``model`` run without Azure while
the SDK objects they hand over are the real ones. Azure's failures become one ``ToolkitError`` line here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import ToolkitError
from .spec import AzureSettings, WorkspaceRef
from .workspace import LOGIN_HINT, auth_mode, make_auth, workspace_ref

ACR_TOKEN_USER = "00000000-0000-0000-0000-000000000000"  # the user name ACR expects with an AAD refresh token
FINAL_STATES = ("Completed", "Failed", "Canceled")


@dataclass(frozen=True)
class ComputeInfo:
    name: str
    vm_size: str
    min_nodes: int
    max_nodes: int
    state: str = ""
    kind: str = "AmlCompute"


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    portal_url: str
    status: str = ""


class AzureBackend(Protocol):
    workspace: WorkspaceRef

    def registry_login_server(self) -> str | None: ...  # the workspace's ACR, None until Azure made one
    def registry_admin_credentials(self) -> tuple[str, str]: ...
    def acr_refresh_token(self, login_server: str) -> str: ...
    def get_environment(self, name: str, version: str): ...  # an azureml Environment, or None
    def register_environment(self, environment): ...
    def get_compute(self, name: str) -> ComputeInfo | None: ...
    def create_compute(self, name: str, provisioning_configuration) -> ComputeInfo: ...
    def submit(self, experiment: str, script_run_config, tags: dict[str, str]) -> RunInfo: ...
    def wait(self, run_id: str, show_output: bool = True) -> RunInfo: ...
    def get_run(self, run_id: str) -> RunInfo: ...
    def run_file_names(self, run_id: str) -> list[str]: ...
    def register_model(self, run_id: str, name: str, path: str, tags: dict[str, str]) -> tuple[str, str]: ...
    def download_files(self, run_id: str, prefix: str, directory: Path) -> list[str]: ...


@contextlib.contextmanager
def azure_errors(action: str, hint: str = "") -> Iterator[None]:
    """Azure's exceptions as one line: what was being done, Azure's first line, what to do."""
    try:
        yield
    except ToolkitError:
        raise
    except Exception as exc:  # the SDK raises bare Exception for REST errors, plus its own and msrest's types
        if os.environ.get("AMLTRAIN_DEBUG"):
            raise
        kind = type(exc).__name__
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), kind)[:240]
        if "Authentication" in kind or "AADSTS" in first or "401" in first:
            hint = hint or LOGIN_HINT
        raise ToolkitError(f"{action} failed: {first}", hint or "AMLTRAIN_DEBUG=1 shows the whole error") from None


def connect(settings: AzureSettings, start: Path) -> WorkspaceBackend:
    """The workspace, as the configured credential; the first call that contacts Azure."""
    ref = workspace_ref(settings, start)
    mode = auth_mode(settings.auth, os.environ)
    with azure_errors(f"signing in ({mode}) to workspace {ref.workspace_name}", LOGIN_HINT):
        from azureml.core import Workspace

        auth = make_auth(mode, os.environ)
        workspace = Workspace(ref.subscription_id, ref.resource_group, ref.workspace_name, auth=auth)
    return WorkspaceBackend(workspace, auth, ref)


class WorkspaceBackend:
    """azureml-core against one workspace. Runs are kept by id, so submit -> wait needs no second lookup."""

    def __init__(self, workspace, auth, ref: WorkspaceRef):
        self._ws = workspace
        self._auth = auth
        self.workspace = ref
        self._runs: dict = {}

    # --- registry -------------------------------------------------------------------------------------------
    def registry_login_server(self) -> str | None:
        with azure_errors("reading the workspace's details"):
            arm_id = self._ws.get_details().get("containerRegistry") or ""
        return f"{arm_id.rstrip('/').rsplit('/', 1)[-1].lower()}.azurecr.io" if arm_id else None

    def registry_admin_credentials(self) -> tuple[str, str]:
        with azure_errors("reading the registry's admin credentials (ws.list_keys)",
                          "enable the ACR admin user, or use azure.registry.auth: aad"):
            credentials = self._ws.list_keys()["containerRegistryCredentials"]
            return credentials["username"], credentials["passwords"][0]["value"]

    def acr_refresh_token(self, login_server: str) -> str:
        """ACR's documented AAD exchange (POST /oauth2/exchange): an ARM token for an ACR refresh token, which
        ``docker login`` takes as the password of user 00000000-0000-0000-0000-000000000000 (as az acr login)."""
        import requests

        with azure_errors(f"exchanging an AAD token for a registry token at {login_server}",
                          "your identity needs AcrPush on the registry"):
            arm_token = self._auth.get_authentication_header()["Authorization"].split(" ", 1)[1]
            response = requests.post(f"https://{login_server}/oauth2/exchange", timeout=60, data={
                "grant_type": "access_token", "service": login_server, "access_token": arm_token})
            if response.status_code != 200:
                raise ToolkitError(f"{login_server} refused the AAD token exchange (HTTP {response.status_code})",
                                   "your identity needs AcrPush on the registry")
            return response.json()["refresh_token"]

    # --- environments ---------------------------------------------------------------------------------------
    def get_environment(self, name: str, version: str):
        from azureml.core import Environment

        try:
            return Environment.get(self._ws, name, version=version)
        except Exception as exc:  # the environment client raises bare Exception("… Code: 404 …")
            if "404" in str(exc):
                return None
            with azure_errors(f"looking up environment {name}:{version}"):
                raise

    def register_environment(self, environment):
        with azure_errors(f"registering environment {environment.name}:{environment.version}"):
            return environment.register(self._ws)

    # --- compute --------------------------------------------------------------------------------------------
    def get_compute(self, name: str) -> ComputeInfo | None:
        from azureml.core.compute import ComputeTarget
        from azureml.exceptions import ComputeTargetException

        try:
            target = ComputeTarget(workspace=self._ws, name=name)
        except ComputeTargetException as exc:
            if "not found" in str(exc).lower() or "404" in str(exc):
                return None
            with azure_errors(f"looking up compute {name}"):
                raise
        return _compute_info(target)

    def create_compute(self, name: str, provisioning_configuration) -> ComputeInfo:
        from azureml.core.compute import ComputeTarget

        with azure_errors(f"creating compute {name}", "check the VM size's quota in the workspace's region "
                          "(Azure portal: Quotas) and the name"):
            target = ComputeTarget.create(self._ws, name, provisioning_configuration)
            target.wait_for_completion(show_output=True)
            if str(target.provisioning_state).lower() == "failed":
                errors = getattr(target, "provisioning_errors", None) or ["provisioning failed"]
                raise ToolkitError(f"compute {name} failed to provision: {str(errors[0])[:240]}",
                                   "check the VM size's quota in the workspace's region")
        return _compute_info(target)

    # --- runs -----------------------------------------------------------------------------------------------
    def submit(self, experiment: str, script_run_config, tags: dict[str, str]) -> RunInfo:
        from azureml.core import Experiment

        with azure_errors(f"submitting to experiment {experiment}"):
            run = Experiment(self._ws, experiment).submit(script_run_config, tags=tags)
            self._runs[run.id] = run
            return RunInfo(run.id, run.get_portal_url(), run.get_status())

    def _run(self, run_id: str):
        from azureml.core import Run

        if run_id not in self._runs:
            with azure_errors(f"finding run {run_id}", "check the run id (`invoke submit` prints it)"):
                self._runs[run_id] = Run.get(self._ws, run_id)
        return self._runs[run_id]

    def wait(self, run_id: str, show_output: bool = True) -> RunInfo:
        run = self._run(run_id)
        with azure_errors(f"following run {run_id}"):
            try:
                run.wait_for_completion(show_output=show_output, raise_on_error=False)
            except Exception as exc:  # Ctrl-C while streaming: the SDK re-raises it as its own exception
                if "interrupted" in str(exc):
                    raise ToolkitError(f"stopped following run {run_id}; it keeps running: {run.get_portal_url()}",
                                       "cancel it in the studio if that was meant", exit_code=130) from None
                raise
            return RunInfo(run.id, run.get_portal_url(), run.get_status())

    def get_run(self, run_id: str) -> RunInfo:
        run = self._run(run_id)
        with azure_errors(f"reading run {run_id}"):
            return RunInfo(run.id, run.get_portal_url(), run.get_status())

    def run_file_names(self, run_id: str) -> list[str]:
        run = self._run(run_id)
        with azure_errors(f"listing the files of run {run_id}"):
            return list(run.get_file_names())

    def register_model(self, run_id: str, name: str, path: str, tags: dict[str, str]) -> tuple[str, str]:
        run = self._run(run_id)
        with azure_errors(f"registering model {name} from run {run_id}"):
            model = run.register_model(model_name=name, model_path=path, tags=tags)
            return model.name, str(model.version)

    def download_files(self, run_id: str, prefix: str, directory: Path) -> list[str]:
        run = self._run(run_id)
        with azure_errors(f"downloading {prefix} of run {run_id}"):
            names = [n for n in run.get_file_names() if n == prefix or n.startswith(prefix.rstrip("/") + "/")]
            run.download_files(prefix=prefix, output_directory=str(directory), append_prefix=True)
            return names


def _compute_info(target) -> ComputeInfo:
    scale = getattr(target, "scale_settings", None)
    return ComputeInfo(
        name=target.name,
        vm_size=str(getattr(target, "vm_size", "") or ""),
        min_nodes=int(getattr(scale, "minimum_node_count", 0) or 0),
        max_nodes=int(getattr(scale, "maximum_node_count", 0) or 0),
        state=str(getattr(target, "provisioning_state", "") or ""),
        kind=str(getattr(target, "type", "") or type(target).__name__),
    )
