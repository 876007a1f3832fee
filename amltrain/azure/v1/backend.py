"""SDK v1's network seam: ``WorkspaceBackend`` is azureml-core against one workspace, behind the same methods as
v2's (``amltrain.azure.backend.AzureBackend``), so one set of flows drives either SDK."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from ...errors import ToolkitError
from ...signals import signals_as_interrupts
from ..backend import (
    QUOTA_HINT,
    ComputeInfo,
    EnvironmentInfo,
    RunInfo,
    azure_errors,
    azure_message,
    identity_of,
    login_server,
    run_error,
)
from ..checkpoints import ENV
from ..settings import AzureSettings, WorkspaceRef
from ..workspace import ACR_EXCHANGE_HINT, acr_refresh_token, auth_mode, workspace_ref
from .auth import make_auth


def connect(settings: AzureSettings, start: Path) -> WorkspaceBackend:
    """The workspace, as the configured credential; the first call that contacts Azure."""
    ref = workspace_ref(settings, start)
    mode = auth_mode(settings.auth, os.environ)
    with azure_errors(f"signing in ({mode}) to workspace {ref.workspace_name}",
                      f"check subscription_id, resource_group and workspace_name ({ref.source})"):
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
        self._runs: dict = {}  # run id -> Run
        self._computes: dict = {}  # name -> ComputeTarget
        self._login_server: str | None = None

    # --- registry -------------------------------------------------------------------------------------------
    def registry_login_server(self) -> str | None:
        """Asked of the workspace once (it does not change during a task)."""
        if self._login_server is None:
            with azure_errors("reading the workspace's details"):
                arm_id = self._ws.get_details().get("containerRegistry") or ""
            self._login_server = login_server(arm_id) or ""
        return self._login_server or None

    def registry_admin_credentials(self) -> tuple[str, str]:
        with azure_errors("reading the registry's admin credentials (ws.list_keys)",
                          "enable the ACR admin user, or use azure.registry.auth: aad"):
            credentials = self._ws.list_keys()["containerRegistryCredentials"]
            return credentials["username"], credentials["passwords"][0]["value"]

    def acr_refresh_token(self, login_server: str) -> str:
        """The workspace credential's ARM token exchanged for an ACR refresh token (``workspace.acr_refresh_token``)."""
        with azure_errors(f"exchanging an AAD token for a registry token at {login_server}", ACR_EXCHANGE_HINT):
            arm_token = self._auth.get_authentication_header()["Authorization"].split(" ", 1)[1]
            return acr_refresh_token(login_server, arm_token)

    # --- environments ---------------------------------------------------------------------------------------
    def get_environment(self, name: str, version: str) -> EnvironmentInfo | None:
        from azureml.core import Environment

        try:
            env = Environment.get(self._ws, name, version=version)
            return EnvironmentInfo(env.name, str(env.version), env.docker.base_image)
        except Exception as exc:  # the environment client raises bare Exception("… Code: 404 …")
            if "Code: 404" in str(exc):
                return None
            with azure_errors(f"looking up environment {name}:{version}"):
                raise

    def register_environment(self, environment) -> EnvironmentInfo:
        with azure_errors(f"registering environment {environment.name}:{environment.version}"):
            env = environment.register(self._ws)
            return EnvironmentInfo(env.name, str(env.version), env.docker.base_image)

    # --- compute --------------------------------------------------------------------------------------------
    def get_compute(self, name: str) -> ComputeInfo | None:
        from azureml.core.compute import ComputeTarget
        from azureml.exceptions import ComputeTargetException

        try:
            target = ComputeTarget(workspace=self._ws, name=name)
        except ComputeTargetException as exc:
            if "ComputeTargetNotFound" in str(exc):
                return None
            with azure_errors(f"looking up compute {name}"):
                raise
        self._computes[name] = target
        return _compute_info(target)

    def create_compute(self, name: str, provisioning_configuration) -> ComputeInfo:
        """Create and wait. A cluster whose provisioning failed is deleted again, so a rerun starts clean; one
        that could not be waited for (the network) is left alone."""
        from azureml.core.compute import ComputeTarget

        with azure_errors(f"creating compute {name}", QUOTA_HINT):
            self._computes[name] = target = ComputeTarget.create(self._ws, name, provisioning_configuration)
        try:
            return self.wait_for_compute(name)
        except ToolkitError as exc:
            raise ToolkitError(f"{exc.message}; {_delete_if_failed(target)}", exc.hint) from None

    def wait_for_compute(self, name: str) -> ComputeInfo:
        if name not in self._computes and self.get_compute(name) is None:
            raise ToolkitError(f"unknown compute {name!r} in workspace {self.workspace.workspace_name}")
        target = self._computes[name]
        with azure_errors(f"waiting for compute {name}", QUOTA_HINT):
            target.wait_for_completion(show_output=True)
        info = _compute_info(target)
        if info.state.lower() == "failed":
            first = (getattr(target, "provisioning_errors", None) or ["provisioning failed"])[0]
            said = azure_message(Exception(first if isinstance(first, str) else json.dumps(first, default=str)))
            raise ToolkitError(f"compute {name} failed to provision: {said}", QUOTA_HINT)
        return info

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
        """Stream the run's logs to its end. Ctrl-C, SIGTERM or SIGHUP (a cancelled CI job) stop following it:
        a ToolkitError with exit code 128 + the signal's number; the run itself is not touched here."""
        run = self._run(run_id)
        with azure_errors(f"following run {run_id}"), signals_as_interrupts() as received:
            try:
                run.wait_for_completion(show_output=show_output, raise_on_error=False)
            except (KeyboardInterrupt, Exception) as exc:  # the SDK re-raises an interrupt as its own exception
                if not (isinstance(exc, KeyboardInterrupt) or "interrupted" in str(exc)):
                    raise
                signum = received[-1] if received else signal.SIGINT
                raise ToolkitError(f"stopped following run {run_id}; it keeps running: {run.get_portal_url()}",
                                   "cancel it in the studio if that was meant, or use --cancel-on-interrupt",
                                   exit_code=128 + signum) from None
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> RunInfo:
        """The run's status, its error (``get_details()['error']``, set once it failed), its tags and its
        checkpoint output's datastore path (``runDefinition.outputData``, as submitted)."""
        run = self._run(run_id)
        with azure_errors(f"reading run {run_id}"):
            details = run.get_details()
            status = details.get("status") or run.get_status()
            return RunInfo(run.id, run.get_portal_url(), status, run_error(details.get("error")),
                           dict(run.get_tags() or {}), _checkpoint_output(details))

    def cancel(self, run_id: str) -> RunInfo:
        run = self._run(run_id)
        with azure_errors(f"cancelling run {run_id}"):
            run.cancel()
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

    def download_files(self, run_id: str, prefix: str, directory: Path) -> None:
        run = self._run(run_id)
        with azure_errors(f"downloading {prefix} of run {run_id}"):
            run.download_files(prefix=prefix, output_directory=str(directory), append_prefix=True)


def _checkpoint_output(details: dict) -> str:
    """The checkpoint output's folder as an ``azureml://`` URI, from the run definition the service kept."""
    output = ((details.get("runDefinition") or {}).get("outputData") or {}).get(ENV) or {}
    data_path = (output.get("outputLocation") or {}).get("dataPath") or {}
    store, path = data_path.get("datastoreName"), data_path.get("relativePath")
    return f"azureml://datastores/{store}/paths/{path.strip('/')}" if store and path else ""


def _delete_if_failed(target) -> str:
    """Delete a cluster Azure reports as failed; say what became of it."""
    try:
        target.refresh_state()
        if str(target.provisioning_state).lower() != "failed":
            return f"compute {target.name} is {target.provisioning_state}: see it in the studio"
        target.delete()
        return "the failed cluster was deleted"
    except Exception:  # noqa: BLE001 - the first failure is the one to report
        return f"if compute {target.name} failed, delete it in the studio"


def _compute_info(target) -> ComputeInfo:
    scale = getattr(target, "scale_settings", None)
    return ComputeInfo(
        name=target.name,
        vm_size=str(getattr(target, "vm_size", "") or ""),
        min_nodes=int(getattr(scale, "minimum_node_count", 0) or 0),
        max_nodes=int(getattr(scale, "maximum_node_count", 0) or 0),
        state=str(getattr(target, "provisioning_state", "") or ""),
        kind=str(getattr(target, "type", "") or type(target).__name__),
        identity=identity_of(getattr(target, "identity_type", ""), getattr(target, "identity_id", None) or ()),
    )
