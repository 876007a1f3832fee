"""SDK v2's network seam: ``MLClientBackend`` is azure-ai-ml's ``MLClient`` against one workspace, behind the same
methods as v1's ``WorkspaceBackend`` (``amltrain.azure.backend.AzureBackend``), so one set of flows drives either
SDK. Every SDK call is wrapped in ``azure_errors``: a failure is one line with what to do.

The credential is azure-identity's for each ``azure.auth`` mode (``workspace.auth_mode`` resolves ``auto``). A
v2 credential renews its own tokens, so a long ``submit --wait`` keeps working without v1's refreshing wrapper;
for ``github-oidc`` it asks GitHub for a fresh ID token whenever Entra needs a new assertion.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import time
from collections.abc import Mapping
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
from ..checkpoints import OUTPUT
from ..settings import AzureSettings, WorkspaceRef
from ..workspace import (
    ACR_EXCHANGE_HINT,
    ARM_SCOPE,
    GITHUB_OIDC_VARS,
    LOGIN_HINT,
    SP_VARS,
    acr_refresh_token,
    auth_mode,
    github_id_token,
    workspace_ref,
)
from .build import model, quiet_sdk

POLL_SECONDS = 15.0  # between looks at a cluster being created or updated
IN_PROGRESS = ("creating", "updating")  # provisioning states a cluster leaves by itself
DEFAULT_ARTIFACTS = "azureml://datastores/workspaceartifactstore/ExperimentRun/dcid.{}"  # when a job names none
RUN_HINT = "check the job name (`invoke submit` prints it)"


def credential(mode: str, environ: Mapping[str, str]):
    """azure-identity's credential for ``mode``; building it contacts nothing."""
    from azure.identity import (
        AzureCliCredential,
        ClientAssertionCredential,
        ClientSecretCredential,
        ManagedIdentityCredential,
    )

    if mode == "service-principal":
        _require(environ, SP_VARS, mode, "set them in the environment")
        return ClientSecretCredential(environ["AZURE_TENANT_ID"], environ["AZURE_CLIENT_ID"],
                                      environ["AZURE_CLIENT_SECRET"])
    if mode == "managed-identity":  # AZURE_CLIENT_ID: a user-assigned identity; else the system-assigned one
        return ManagedIdentityCredential(client_id=environ.get("AZURE_CLIENT_ID") or None)
    if mode == "github-oidc":
        _require(environ, GITHUB_OIDC_VARS, mode, "run it in a GitHub Actions job with `permissions: id-token: "
                 "write` and set AZURE_CLIENT_ID and AZURE_TENANT_ID from secrets")
        return ClientAssertionCredential(environ["AZURE_TENANT_ID"], environ["AZURE_CLIENT_ID"],
                                         lambda: github_id_token(environ))
    if shutil.which("az") is None:
        raise ToolkitError("the Azure CLI (az) is not installed, and no service principal or managed identity is "
                           "configured", LOGIN_HINT)
    return AzureCliCredential()


def _require(environ: Mapping[str, str], names: tuple[str, ...], mode: str, hint: str) -> None:
    missing = [name for name in names if not environ.get(name)]
    if missing:
        raise ToolkitError(f"{mode} auth needs {', '.join(missing)}", hint)


def connect(settings: AzureSettings, start: Path) -> MLClientBackend:
    """The workspace, as the configured credential. It is read once here, so a wrong workspace or a failed
    sign-in is reported before anything else is done (as v1's ``Workspace`` does)."""
    ref = workspace_ref(settings, start)
    mode = auth_mode(settings.auth, os.environ)
    with azure_errors(f"signing in ({mode}) to workspace {ref.workspace_name}",
                      f"check subscription_id, resource_group and workspace_name ({ref.source})"):
        from azure.ai.ml import MLClient

        quiet_sdk()
        token_source = credential(mode, os.environ)
        client = MLClient(token_source, ref.subscription_id, ref.resource_group, ref.workspace_name)
        details = client.workspaces.get(ref.workspace_name)
    return MLClientBackend(client, token_source, ref, details=details)


class MLClientBackend:
    """``MLClient`` against one workspace. Jobs are named by the SDK at submit; that name is the run id."""

    def __init__(self, client, token_source, ref: WorkspaceRef, poll_seconds: float = POLL_SECONDS, details=None):
        self._client = client
        self._credential = token_source
        self.workspace = ref
        self._poll_seconds = poll_seconds
        self._details = details  # the SDK's Workspace, when already read

    def workspace_details(self):
        """The SDK's Workspace, asked once (its registry does not change during a task)."""
        if self._details is None:
            with azure_errors(f"reading workspace {self.workspace.workspace_name}"):
                self._details = self._client.workspaces.get(self.workspace.workspace_name)
        return self._details

    # --- registry -------------------------------------------------------------------------------------------
    def registry_login_server(self) -> str | None:
        return login_server(self.workspace_details().container_registry or "")

    def registry_admin_credentials(self) -> tuple[str, str]:
        hint = "enable the ACR admin user, or use azure.registry.auth: aad"
        with azure_errors("reading the registry's admin credentials (workspaces.get_keys)", hint):
            keys = self._client.workspaces.get_keys(self.workspace.workspace_name).container_registry_credentials
        if keys is None or not keys.username or not keys.passwords:
            raise ToolkitError("the workspace's registry has no admin credentials", hint)
        password = keys.passwords[0]
        return keys.username, str(getattr(password, "value", password))

    def acr_refresh_token(self, login_server: str) -> str:
        """The credential's ARM token exchanged for an ACR refresh token (``workspace.acr_refresh_token``)."""
        with azure_errors(f"exchanging an AAD token for a registry token at {login_server}", ACR_EXCHANGE_HINT):
            return acr_refresh_token(login_server, self._credential.get_token(ARM_SCOPE).token)

    # --- environments ---------------------------------------------------------------------------------------
    def get_environment(self, name: str, version: str) -> EnvironmentInfo | None:
        from azure.core.exceptions import ResourceNotFoundError

        with azure_errors(f"looking up environment {name}:{version}"):
            try:
                env = self._client.environments.get(name, version=version)
            except ResourceNotFoundError:
                return None
            return EnvironmentInfo(env.name, str(env.version), env.image or "")

    def register_environment(self, environment) -> EnvironmentInfo:
        with azure_errors(f"registering environment {environment.name}:{environment.version}"):
            env = self._client.environments.create_or_update(environment)
            return EnvironmentInfo(env.name, str(env.version), env.image or "")

    # --- compute --------------------------------------------------------------------------------------------
    def _compute(self, name: str):
        from azure.core.exceptions import ResourceNotFoundError

        with azure_errors(f"looking up compute {name}"):
            try:
                return self._client.compute.get(name)
            except ResourceNotFoundError:
                return None

    def get_compute(self, name: str) -> ComputeInfo | None:
        target = self._compute(name)
        return None if target is None else _compute_info(target)

    def create_compute(self, name: str, definition) -> ComputeInfo:
        """Create and wait. A cluster whose provisioning failed is deleted again, so a rerun starts clean; one
        that could not be waited for (the network) is left alone."""
        with azure_errors(f"creating compute {name}", QUOTA_HINT):
            poller = self._client.compute.begin_create_or_update(definition)
        try:
            with azure_errors(f"creating compute {name}", QUOTA_HINT):
                poller.result()
            return self.wait_for_compute(name)
        except ToolkitError as exc:
            raise ToolkitError(f"{exc.message}; {self._delete_if_failed(name)}", exc.hint) from None

    def wait_for_compute(self, name: str) -> ComputeInfo:
        """Until the cluster's provisioning ends (v2 cannot resume another process's operation: it looks)."""
        target = self._compute(name)
        while target is not None and _text(target.provisioning_state).lower() in IN_PROGRESS:
            time.sleep(self._poll_seconds)
            target = self._compute(name)
        if target is None:
            raise ToolkitError(f"unknown compute {name!r} in workspace {self.workspace.workspace_name}")
        info = _compute_info(target)
        if info.state.lower() == "failed":
            said = azure_message(Exception(str(target.provisioning_errors or "provisioning failed")))
            raise ToolkitError(f"compute {name} failed to provision: {said}", QUOTA_HINT)
        return info

    def _delete_if_failed(self, name: str) -> str:
        """Delete a cluster Azure reports as failed; say what became of it."""
        try:
            target = self._client.compute.get(name)
            state = _text(target.provisioning_state)
            if state.lower() != "failed":
                return f"compute {name} is {state}: see it in the studio"
            self._client.compute.begin_delete(name).result()
            return "the failed cluster was deleted"
        except Exception:  # noqa: BLE001 - the first failure is the one to report
            return f"if compute {name} failed, delete it in the studio"

    # --- jobs -----------------------------------------------------------------------------------------------
    def submit(self, experiment: str, job, tags: dict[str, str]) -> RunInfo:
        """``jobs.create_or_update``: uploads the code (a content-hashed asset), resolves the environment and
        compute to their ids, and creates the job under a name the SDK generates."""
        with azure_errors(f"submitting to experiment {experiment}"):
            created = self._client.jobs.create_or_update(job, experiment_name=experiment, tags=dict(tags))
            return RunInfo(created.name, created.studio_url or "", _text(created.status))

    def get_run(self, run_id: str) -> RunInfo:
        """The job's status, tags and checkpoint output; once it failed, its error. The job resource has no error
        field: the run history's details have it (``RunDetails.error``, what ``jobs.stream`` prints when a job
        fails), read through the SDK's own run operations."""
        with azure_errors(f"reading job {run_id}", RUN_HINT):
            job = self._client.jobs.get(run_id)
            status = _text(job.status)
            error = None
            if status == "Failed":
                error = run_error(self._client.jobs._runs_operations.get_run_details(run_id).error)
            output = (job.outputs or {}).get(OUTPUT)
            return RunInfo(job.name, job.studio_url or "", status, error, dict(job.tags or {}),
                           str(getattr(output, "path", "") or ""))

    def wait(self, run_id: str, show_output: bool = True) -> RunInfo:
        """Stream the job's logs (rank 0's) to its end. A job that fails is a result (status Failed), not an
        error, as v1's ``wait_for_completion(raise_on_error=False)``. Ctrl-C, SIGTERM or SIGHUP (a cancelled CI
        job) stop following it: a ToolkitError with exit code 128 + the signal's number; the job keeps running."""
        from azure.ai.ml.exceptions import JobException
        from azure.ai.ml.operations._run_history_constants import RunHistoryConstants

        started = self.get_run(run_id)  # the studio link, known before anything can interrupt
        quiet = contextlib.nullcontext() if show_output else contextlib.redirect_stdout(io.StringIO())
        raised = None
        with azure_errors(f"following job {run_id}", RUN_HINT), signals_as_interrupts() as received:
            try:
                with quiet:
                    self._client.jobs.stream(run_id)
            except (KeyboardInterrupt, JobException) as exc:  # the SDK turns an interrupt into a JobException
                if isinstance(exc, KeyboardInterrupt) or "interrupted" in str(exc):
                    signum = received[-1] if received else signal.SIGINT
                    raise ToolkitError(f"stopped following job {run_id}; it keeps running: {started.portal_url}",
                                       "cancel it in the studio if that was meant, or use --cancel-on-interrupt",
                                       exit_code=128 + signum) from None
                raised = exc  # the SDK raises when the job failed: its status says so
        final = self.get_run(run_id)
        if raised is not None and final.status not in RunHistoryConstants.TERMINAL_STATUSES:
            raise ToolkitError(f"following job {run_id} failed: {azure_message(raised)}", RUN_HINT)
        return final

    def cancel(self, run_id: str) -> RunInfo:
        """Asks for the cancel without waiting for the job to stop (a CI job being cancelled has seconds left):
        ``begin_cancel`` sends it; ``polling=False`` keeps its poller from following the operation in a thread."""
        with azure_errors(f"cancelling job {run_id}", RUN_HINT):
            self._client.jobs.begin_cancel(run_id, polling=False)
        return self.get_run(run_id)

    def register_model(self, run_id: str, name: str, path: str, tags: dict[str, str]) -> tuple[str, str]:
        with azure_errors(f"registering model {name} from job {run_id}"):
            registered = self._client.models.create_or_update(model(run_id, name, path, tags))
            return registered.name, str(registered.version)

    # --- artifacts ------------------------------------------------------------------------------------------
    def run_file_names(self, run_id: str) -> list[str]:
        """The job's artifacts (``outputs/…``, ``user_logs/…``) as v1's ``get_file_names`` names them. v2 has no
        listing call: this lists the job's artifact folder in its datastore, as ``jobs.download`` finds it, without
        downloading anything."""
        from azure.ai.ml._artifacts._artifact_utilities import get_datastore_info
        from azure.ai.ml._utils._storage_utils import AzureMLDatastorePathUri, get_storage_client

        with azure_errors(f"listing the files of job {run_id}", RUN_HINT):
            default = self._client.jobs.get(run_id).outputs.get("default")
            location = AzureMLDatastorePathUri(getattr(default, "path", None) or DEFAULT_ARTIFACTS.format(run_id))
            storage = get_storage_client(**get_datastore_info(self._client.datastores, location.datastore))
            prefix = location.path.rstrip("/") + "/"
            return sorted(name[len(prefix):] for name in storage.list(starts_with=prefix))

    def download_files(self, run_id: str, prefix: str, directory: Path) -> None:
        """Into DIR/PREFIX/, as v1. ``jobs.download`` writes the job's artifacts (logs and outputs) to
        DIR/artifacts/: PREFIX is moved up from there and the rest removed."""
        with azure_errors(f"downloading {prefix} of job {run_id}", RUN_HINT):
            self._client.jobs.download(run_id, download_path=str(directory))
        artifacts = directory / "artifacts"
        source, target = artifacts / prefix.strip("/"), directory / prefix.strip("/")
        if source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            source.rename(target)
        shutil.rmtree(artifacts, ignore_errors=True)


def _compute_info(target) -> ComputeInfo:
    return ComputeInfo(
        name=target.name,
        vm_size=str(getattr(target, "size", "") or ""),
        min_nodes=int(getattr(target, "min_instances", 0) or 0),
        max_nodes=int(getattr(target, "max_instances", 0) or 0),
        state=_text(target.provisioning_state),
        kind="AmlCompute" if str(target.type).lower() == "amlcompute" else str(target.type or type(target).__name__),
        identity=_identity(getattr(target, "identity", None)),
    )


def _identity(identity) -> str:
    if identity is None:
        return ""
    ids = [i.resource_id for i in (identity.user_assigned_identities or []) if getattr(i, "resource_id", None)]
    return identity_of(identity.type, ids)


def _text(value) -> str:
    """A state as the service words it: the SDK hands some over as enum members (``ProvisioningState.SUCCEEDED``
    is "Succeeded")."""
    return str(getattr(value, "value", value) or "")
