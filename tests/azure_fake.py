"""A recording stand-in for either SDK's backend (``amltrain.azure.backend.AzureBackend``): the one seam at the
network boundary.

It keeps what a workspace would keep (environments, clusters, runs, artifacts) in memory and records every
call, so a test can say what was asked of Azure and what was not. What it is handed are the real SDK objects,
v1's or v2's.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from amltrain.azure.backend import ComputeInfo, EnvironmentInfo, RunInfo
from amltrain.azure.settings import WorkspaceRef
from amltrain.errors import ToolkitError

PORTAL = "https://ml.azure.com/runs/{run_id}?wsid=/subscriptions/sub/resourcegroups/rg/workspaces/ws"


@dataclass
class RecordingBackend:
    workspace: WorkspaceRef = field(default_factory=lambda: WorkspaceRef("sub", "rg", "ws", "test"))
    login_server: str | None = "wsacr.azurecr.io"
    admin: tuple[str, str] = ("wsacr", "admin-password-canary")
    refresh_token: str = "acr-refresh-token-canary"
    environments: dict = field(default_factory=dict)  # (name, version) -> EnvironmentInfo
    registered: list = field(default_factory=list)  # the SDK's Environment objects handed over
    computes: dict = field(default_factory=dict)  # name -> ComputeInfo
    final_status: str = "Completed"  # "interrupted": following the run is stopped (Ctrl-C, a cancelled CI job)
    # How the runs end, one per wait, in order: "Completed", ("Failed", RunError(code, message)), "interrupted";
    # when used up, final_status. So a test scripts "this run is preempted, the next one completes".
    outcomes: list = field(default_factory=list)
    runs: dict = field(default_factory=dict)  # run id -> its tags: runs submitted here, or earlier ones (--resume)
    absent: set = field(default_factory=set)  # run ids the workspace does not have
    artifacts: dict = field(default_factory=lambda: {"outputs/model.pt2": b"model", "outputs/labels.json": b"[]",
                                                     "logs/user_logs/std_log.txt": b"log"})
    download_fails_after: int | None = None  # files written before a download breaks off, like a lost connection
    calls: list = field(default_factory=list)
    submitted: list = field(default_factory=list)  # (experiment, the SDK's job object, tags)

    def _record(self, name, *args):
        self.calls.append((name, *args))

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]

    def registry_login_server(self):
        self._record("registry_login_server")
        return self.login_server

    def registry_admin_credentials(self):
        self._record("registry_admin_credentials")
        return self.admin

    def acr_refresh_token(self, login_server):
        self._record("acr_refresh_token", login_server)
        return self.refresh_token

    def get_environment(self, name, version):
        self._record("get_environment", name, version)
        return self.environments.get((name, version))

    def register_environment(self, environment):
        self._record("register_environment", environment.name, str(environment.version))
        self.registered.append(copy.deepcopy(environment))
        docker = getattr(environment, "docker", None)  # v1: docker.base_image; v2: image
        image = docker.base_image if docker is not None else environment.image
        stored = EnvironmentInfo(environment.name, str(environment.version), image)
        self.environments[(stored.name, stored.version)] = stored
        return stored

    def get_compute(self, name):
        self._record("get_compute", name)
        return self.computes.get(name)

    def create_compute(self, name, definition):
        self._record("create_compute", name, definition)
        c = definition
        if hasattr(c, "scale_settings"):  # v1's provisioning configuration
            info = ComputeInfo(name, c.vm_size, c.scale_settings.minimum_node_count,
                               c.scale_settings.maximum_node_count, "Succeeded")
        else:  # v2's AmlCompute
            info = ComputeInfo(name, c.size, c.min_instances, c.max_instances, "Succeeded")
        self.computes[name] = info
        return info

    def wait_for_compute(self, name):
        self._record("wait_for_compute", name)
        self.computes[name] = dataclasses.replace(self.computes[name], state="Succeeded")
        return self.computes[name]

    def submit(self, experiment, job, tags):
        run_id = f"{experiment}_1700000000_{len(self.submitted):08x}"
        self._record("submit", experiment, run_id)
        self.submitted.append((experiment, job, dict(tags)))
        self.runs[run_id] = dict(tags)
        return RunInfo(run_id, PORTAL.format(run_id=run_id), "Queued", tags=dict(tags))

    def wait(self, run_id, show_output=True):
        self._record("wait", run_id, show_output)
        outcome = self.outcomes.pop(0) if self.outcomes else self.final_status
        status, error = (outcome, None) if isinstance(outcome, str) else outcome
        if status == "interrupted":  # what WorkspaceBackend.wait raises on Ctrl-C or SIGTERM
            raise ToolkitError(f"stopped following run {run_id}; it keeps running: {PORTAL.format(run_id=run_id)}",
                               "cancel it in the studio if that was meant", exit_code=130)
        return RunInfo(run_id, PORTAL.format(run_id=run_id), status, error, self.runs.get(run_id, {}))

    def cancel(self, run_id):
        self._record("cancel", run_id)
        return RunInfo(run_id, PORTAL.format(run_id=run_id), "CancelRequested")

    def get_run(self, run_id):
        self._record("get_run", run_id)
        if run_id in self.absent:  # what either SDK's backend says of a job the workspace does not have
            raise ToolkitError(f"reading job {run_id} failed: (UserError) Run {run_id} not found",
                               "check the job name (`invoke submit` prints it)")
        return RunInfo(run_id, PORTAL.format(run_id=run_id), self.final_status, tags=self.runs.get(run_id, {}))

    def run_file_names(self, run_id):
        self._record("run_file_names", run_id)
        return sorted(self.artifacts)

    def register_model(self, run_id, name, path, tags):
        self._record("register_model", run_id, name, path, dict(tags))
        return name, "1"

    def download_files(self, run_id, prefix, directory: Path):
        self._record("download_files", run_id, prefix, directory)
        names = [n for n in self.artifacts if n.startswith(prefix.rstrip("/") + "/")]
        for written, name in enumerate(names):
            if written == self.download_fails_after:
                raise ToolkitError(f"downloading {prefix} of run {run_id} failed: connection reset")
            (directory / name).parent.mkdir(parents=True, exist_ok=True)  # append_prefix=True: DIR/outputs/…
            (directory / name).write_bytes(self.artifacts[name])
