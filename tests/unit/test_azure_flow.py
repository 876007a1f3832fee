"""The push/register/compute/submit/wait/model flows against the recording backend (the network seam).

The SDK objects are real; only the calls that would reach Azure are answered by ``tests.azure_fake``.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import time

import pytest

from amltrain.azure import acr, backend, environment, submit, v1
from amltrain.azure import compute as azure_compute
from amltrain.azure import model as azure_model
from amltrain.azure import plan as azure_plan
from amltrain.azure.settings import AzureSettings, ComputeSpec, RegistrySettings
from amltrain.azure.v1 import backend as v1_backend
from amltrain.errors import ToolkitError
from amltrain.registry import KnownImage
from amltrain.spec import Distribution, JobSpec, frozen_map
from tests.azure_fake import RecordingBackend

LOCAL_REF = "amltrain/train:gpu-0123456789ab"
SETTINGS = AzureSettings(compute="gpu-cluster", registry=RegistrySettings(repository="amltrain/train"),
                         computes=frozen_map({"gpu-cluster": ComputeSpec("gpu-cluster", "Standard_NC96ads_A100_v4")}))
IMAGE = KnownImage(LOCAL_REF, "sha256:" + "ab" * 32,  # pushed to two registries: the tag names the workspace's
                   ("localhost:5000/amltrain/train@sha256:" + "ef" * 32,
                    "wsacr.azurecr.io/amltrain/train@sha256:" + "cd" * 32))


def registered_env(fake, settings=SETTINGS):
    ref = environment.environment_ref(settings, "gpu", LOCAL_REF, acr.registry_address(settings, fake),
                                      IMAGE.digest_in(f"{acr.registry_address(settings, fake)}/amltrain/train"))
    return ref, v1.environment(ref, settings, environ={})


def test_register_is_idempotent_same_image_same_version():
    fake = RecordingBackend()
    ref, env = registered_env(fake)
    first, new = environment.ensure_registered(fake, ref, env, out=io.StringIO())
    second, again = environment.ensure_registered(fake, ref, v1.environment(ref, SETTINGS, environ={}),
                                                  out=io.StringIO())
    assert (new, again) == (True, False)
    assert fake.names().count("register_environment") == 1
    assert (second.name, second.version) == ("amltrain-gpu", "0123456789ab")
    assert second.image == "wsacr.azurecr.io/amltrain/train@sha256:" + "cd" * 32  # pinned to the pushed digest


def test_register_refuses_a_version_that_points_at_another_image():
    fake = RecordingBackend()
    ref, env = registered_env(fake)
    environment.ensure_registered(fake, ref, env, out=io.StringIO())
    fake.login_server = "otheracr.azurecr.io"
    moved, env = registered_env(fake)
    with pytest.raises(ToolkitError, match="exists with image wsacr.azurecr.io"):
        environment.ensure_registered(fake, moved, env, out=io.StringIO())


def test_a_workspace_without_a_registry_yet_is_said_so():
    fake = RecordingBackend(login_server=None)
    with pytest.raises(ToolkitError, match="workspace ws has no container registry yet") as e:
        acr.push_request(SETTINGS, LOCAL_REF, fake)
    assert "first environment image build" in e.value.hint


def test_push_logins_aad_admin_basic_docker():
    fake = RecordingBackend()
    aad = acr.push_request(SETTINGS, LOCAL_REF, fake)
    assert aad.remote == "wsacr.azurecr.io/amltrain/train:gpu-0123456789ab"
    assert (aad.credentials.username, aad.credentials.password) == (backend.ACR_TOKEN_USER, fake.refresh_token)
    assert ("acr_refresh_token", "wsacr.azurecr.io") in fake.calls
    admin = acr.push_request(AzureSettings(registry=RegistrySettings(auth="admin")), LOCAL_REF, fake)
    assert admin.credentials.password == "admin-password-canary"
    basic = AzureSettings(registry=RegistrySettings(address="localhost:5000", auth="basic", username="u"))
    assert acr.push_request(basic, LOCAL_REF, environ={"AMLTRAIN_REGISTRY_PASSWORD": "p"}).credentials.password == "p"
    with pytest.raises(ToolkitError, match="AMLTRAIN_REGISTRY_PASSWORD is not set"):
        acr.push_request(basic, LOCAL_REF, environ={})
    docker = AzureSettings(registry=RegistrySettings(address="localhost:5000", auth="docker"))
    assert acr.push_request(docker, LOCAL_REF, None).credentials is None
    for request in (aad, admin):  # what a dry run or a log shows never has the secret
        assert request.credentials.password not in repr(request) + str(request.describe())


def test_compute_is_found_or_created():
    fake = RecordingBackend()
    spec = ComputeSpec("gpu-cluster", "Standard_NC24ads_A100_v4", max_nodes=3, low_priority=True)
    out = io.StringIO()
    created = azure_compute.ensure(fake, spec, v1.compute(spec), out=out)
    name, configuration = next(call[1:] for call in fake.calls if call[0] == "create_compute")
    assert (name, configuration.vm_size, configuration.vm_priority) == ("gpu-cluster", "Standard_NC24ads_A100_v4",
                                                                        "lowpriority")
    assert configuration.scale_settings.maximum_node_count == 3 and created.max_nodes == 3
    azure_compute.ensure(fake, spec, v1.compute(spec), out=out)
    assert fake.names().count("create_compute") == 1
    assert "exists (Succeeded): nothing created" in out.getvalue()


def test_an_existing_cluster_still_provisioning_is_waited_for_and_a_failed_one_refused():
    fake = RecordingBackend()
    spec = ComputeSpec("gpu-cluster", "Standard_NC24ads_A100_v4")
    fake.computes["gpu-cluster"] = backend.ComputeInfo("gpu-cluster", "Standard_NC24ads_A100_v4", 0, 4, "Creating")
    assert azure_compute.ensure(fake, spec, v1.compute(spec), out=io.StringIO()).state == "Succeeded"
    assert fake.names() == ["get_compute", "wait_for_compute"]
    fake.computes["gpu-cluster"] = backend.ComputeInfo("gpu-cluster", "Standard_NC24ads_A100_v4", 0, 4, "Failed")
    with pytest.raises(ToolkitError, match="exists but failed to provision") as e:
        azure_compute.ensure(fake, spec, v1.compute(spec), out=io.StringIO())
    assert "delete it" in e.value.hint and "create_compute" not in fake.names()


@pytest.mark.parametrize("state_after, deleted, outcome", [
    ("Failed", True, "; the failed cluster was deleted"),
    ("Creating", False, "; compute gpu-cluster is Creating: see it in the studio"),  # only the wait failed
])
def test_a_cluster_whose_provisioning_failed_is_deleted_again(monkeypatch, state_after, deleted, outcome):
    """WorkspaceBackend.create_compute with the SDK's calls to Azure answered here: the wait ends in a quota
    error; the cluster is deleted only when Azure reports it failed, and the error is one line with the hint."""
    from azureml.core.compute import ComputeTarget
    from azureml.exceptions import ComputeTargetException

    class Cluster:
        name, provisioning_state, deleted = "gpu-cluster", "Creating", False

        def wait_for_completion(self, show_output=False):
            raise ComputeTargetException(
                "Compute object provisioning polling reached non-successful terminal state, current provisioning "
                "state: Failed\nProvisioning operation error:\nStatusCode: 400\nMessage: {'code': 'QuotaExceeded'}")

        def refresh_state(self):
            self.provisioning_state = state_after

        def delete(self):
            self.deleted = True

    cluster = Cluster()
    monkeypatch.setattr(ComputeTarget, "create", lambda workspace, name, configuration: cluster)
    workspace_backend = v1_backend.WorkspaceBackend(None, None, RecordingBackend().workspace)
    with pytest.raises(ToolkitError) as e:
        workspace_backend.create_compute("gpu-cluster", v1.compute(
            ComputeSpec("gpu-cluster", "Standard_NC24ads_A100_v4")))
    assert cluster.deleted is deleted
    assert e.value.message.startswith("waiting for compute gpu-cluster failed: Compute object provisioning")
    assert e.value.message.endswith(outcome) and e.value.hint == backend.QUOTA_HINT


@pytest.fixture
def job(tmp_path):
    (tmp_path / "train.py").write_text("print('hi')\n")
    return JobSpec(experiment="fowl", target="gpu", source_dir=tmp_path, script="train.py",
                   distribution=Distribution("per-process", 2, 2))


def submission(job, fake, compute="gpu-cluster", settings=SETTINGS):
    plan = azure_plan.plan(job, settings, compute, [], True)
    ref, env = registered_env(fake, settings)
    request = submit.SubmitRequest(plan, "fowl", ref, v1.job(plan, ref, settings),
                                   azure_plan.tags(plan, ref, IMAGE, "abc123"))
    return plan, request


def ready_backend(**kwargs) -> RecordingBackend:
    fake = RecordingBackend(**kwargs)
    fake.computes["gpu-cluster"] = backend.ComputeInfo("gpu-cluster", "Standard_NC96ads_A100_v4", 0, 4, "Succeeded")
    ref, env = registered_env(fake)
    environment.ensure_registered(fake, ref, env, out=io.StringIO())
    fake.calls.clear()
    return fake


def test_submit_and_wait_for_a_completed_run(job):
    fake = ready_backend()
    plan, request = submission(job, fake)
    fake.calls.clear()
    out = io.StringIO()
    run = submit.execute(fake, request, wait=True, out=out)
    assert fake.names() == ["get_compute", "get_environment", "submit", "wait"]
    experiment, src, tags = fake.submitted[0]
    assert v1.job_body(src)["pytorch"] == {"communicationBackend": "nccl", "processCount": 4,
                                                            "nodeCount": 2}
    assert tags["amltrain.image_digest"] == "sha256:" + "cd" * 32 and tags["amltrain.git_commit"] == "abc123"
    assert tags["amltrain.launch"] == "per-process 2x2"
    assert f"run {run.run_id} completed" in out.getvalue()


def test_a_failed_run_is_one_line_with_its_id_and_link(job):
    fake = ready_backend(final_status="Failed")
    plan, request = submission(job, fake)
    with pytest.raises(ToolkitError) as e:
        submit.execute(fake, request, wait=True, out=io.StringIO())
    run_id = next(call[2] for call in fake.calls if call[0] == "submit")
    assert str(e.value).startswith(f"run {run_id} ended Failed: https://ml.azure.com/runs/{run_id}")
    assert e.value.exit_code == 1 and "\n" not in str(e.value)


def summary_rows(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| (\S[^|]*?) \| (.*) \|$", text, re.M)}


@pytest.mark.parametrize(("final_status", "raises", "status_line"), [
    ("Completed", False, "Status: **Completed**"),
    ("Failed", True, "Status: **Failed**"),
    ("interrupted", True, "Status: not followed to its end (stopped following run"),
])
def test_the_summary_names_the_run_its_link_the_image_digest_and_how_it_ended(job, tmp_path, final_status, raises,
                                                                              status_line):
    fake = ready_backend(final_status=final_status)
    plan, request = submission(job, fake)
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")  # GitHub's file collects every step's summary: appended, not replaced
    try:
        submit.execute(fake, request, wait=True, out=io.StringIO(), summary=summary)
    except ToolkitError:
        assert raises
    else:
        assert not raises
    run_id = next(call[2] for call in fake.calls if call[0] == "submit")
    text = summary.read_text()
    assert text.startswith("earlier step\n") and f"### Azure ML run `{run_id}`" in text
    rows = summary_rows(text)
    portal = f"https://ml.azure.com/runs/{run_id}?wsid=/subscriptions/sub/resourcegroups/rg/workspaces/ws"
    assert rows["Run"] == f"[`{run_id}`]({portal})" and rows["Studio"] == portal
    assert rows["Image digest"] == "`sha256:" + "cd" * 32 + "`"
    assert rows["Image"] == f"`{request.tags['amltrain.image']}`" and rows["Git commit"] == "`abc123`"
    assert rows["Compute"] == "gpu-cluster: per-process, 2 node(s) x 2 process(es)"
    assert text.rstrip().splitlines()[-1].startswith(status_line)
    assert "cancel" not in fake.names()


def test_an_interrupted_wait_cancels_the_run_only_when_asked(job, tmp_path):
    fake = ready_backend(final_status="interrupted")
    plan, request = submission(job, fake)
    with pytest.raises(ToolkitError) as kept:
        submit.execute(fake, request, wait=True, out=io.StringIO())
    assert kept.value.exit_code == 130 and "it keeps running" in kept.value.message
    assert "cancel" not in fake.names()

    summary = tmp_path / "summary.md"
    with pytest.raises(ToolkitError) as cancelled:
        submit.execute(fake, request, wait=True, out=io.StringIO(), summary=summary, cancel_on_interrupt=True)
    run_id = fake.calls[-1][1]
    assert fake.calls[-2:] == [("wait", run_id, True), ("cancel", run_id)]
    assert cancelled.value.exit_code == 130
    assert str(cancelled.value).startswith(f"interrupted: cancelled run {run_id} (CancelRequested): "
                                           "https://ml.azure.com/runs/")
    assert summary.read_text().rstrip().endswith(
        "Status: **CancelRequested** (the job following it was interrupted, so the run was cancelled)")


class CancelUnderFire(RecordingBackend):
    """GitHub cancels with SIGINT and, 7.5 s later, SIGTERM: here the SIGTERM lands while the cancel request is
    on its way, and (``fails``) the service refuses the cancel."""

    fails: bool = False

    def cancel(self, run_id):
        os.kill(os.getpid(), signal.SIGTERM)  # ignored while cancelling: the default action would end the test
        if self.fails:
            self._record("cancel", run_id)
            raise ToolkitError(f"cancelling run {run_id} failed: (AuthorizationFailed) no cancel permission")
        return super().cancel(run_id)


@pytest.mark.parametrize("fails", [False, True])
def test_a_second_signal_does_not_cut_the_cancel_short_and_a_failed_cancel_is_said(job, tmp_path, fails):
    fake = CancelUnderFire(final_status="interrupted")
    fake.fails = fails
    fake.computes["gpu-cluster"] = backend.ComputeInfo("gpu-cluster", "Standard_NC96ads_A100_v4", 0, 4, "Succeeded")
    environment.ensure_registered(fake, *registered_env(fake), out=io.StringIO())
    plan, request = submission(job, fake)
    summary = tmp_path / "summary.md"
    with pytest.raises(ToolkitError) as e:
        submit.execute(fake, request, wait=True, out=io.StringIO(), summary=summary, cancel_on_interrupt=True)
    run_id = fake.calls[-1][1]
    assert fake.names()[-2:] == ["wait", "cancel"] and e.value.exit_code == 130
    if fails:
        assert e.value.message == (f"interrupted, and cancelling run {run_id} failed: cancelling run {run_id} "
                                   "failed: (AuthorizationFailed) no cancel permission")
        assert e.value.hint.startswith("cancel it in the studio: https://ml.azure.com/runs/")
        assert "cancelling the run failed" in summary.read_text()
    else:
        assert e.value.message.startswith(f"interrupted: cancelled run {run_id} (CancelRequested)")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_run_not_followed_says_so_in_the_summary(job, tmp_path):
    fake = ready_backend()
    plan, request = submission(job, fake)
    summary = tmp_path / "summary.md"
    submit.execute(fake, request, wait=False, out=io.StringIO(), summary=summary)
    assert "wait" not in fake.names()
    assert summary.read_text().rstrip().endswith("Submitted; not followed (`invoke submit` without `--wait`).")


def test_unknown_compute_and_a_smaller_real_cluster_submit_nothing(job):
    fake = ready_backend()
    plan, request = submission(job, fake, compute="nowhere",
                               settings=AzureSettings(registry=SETTINGS.registry))
    with pytest.raises(ToolkitError, match="unknown compute 'nowhere' in workspace ws") as e:
        submit.execute(fake, request, wait=False, out=io.StringIO())
    assert "invoke compute --name nowhere" in e.value.hint
    fake.computes["gpu-cluster"] = backend.ComputeInfo("gpu-cluster", "Standard_NC24ads_A100_v4", 0, 1)
    plan, request = submission(job, fake)
    with pytest.raises(ToolkitError, match="2 nodes asked, but compute gpu-cluster scales to at most 1"):
        submit.execute(fake, request, wait=False, out=io.StringIO())
    assert "submit" not in fake.names()


def test_an_unregistered_environment_submits_nothing(job):
    fake = ready_backend()
    fake.environments.clear()
    plan, request = submission(job, fake)
    with pytest.raises(ToolkitError, match="amltrain-gpu:0123456789ab is not registered") as e:
        submit.execute(fake, request, wait=False, out=io.StringIO())
    assert e.value.hint == "invoke push --target gpu && invoke register --target gpu"
    assert "submit" not in fake.names()


def test_declared_compute_limits_are_checked_offline(job):
    with pytest.raises(ToolkitError, match="5 nodes asked, but compute gpu-cluster scales to at most 4"):
        azure_plan.plan(JobSpec(**{**job.__dict__, "distribution": Distribution("per-process", 5, 1)}), SETTINGS,
                    "gpu-cluster", [], True)
    with pytest.raises(ToolkitError, match="5 processes per node on Standard_NC96ads_A100_v4, which has 4 GPU"):
        azure_plan.plan(JobSpec(**{**job.__dict__, "distribution": Distribution("mpi", 1, 5)}), SETTINGS,
                    "gpu-cluster", [], True)


def test_an_undeclared_cluster_of_the_wrong_kind_submits_nothing(job):
    """Planned for a GPU target (nccl) on an undeclared cluster that turns out to be a CPU size."""
    fake = ready_backend()
    fake.computes["adhoc"] = backend.ComputeInfo("adhoc", "Standard_D4s_v5", 0, 4, "Succeeded")
    plan, request = submission(job, fake, compute="adhoc")
    with pytest.raises(ToolkitError, match="Standard_D4s_v5, where PyTorch needs gloo, but the job was planned "
                                           "with nccl"):
        submit.execute(fake, request, wait=False, out=io.StringIO())
    assert "submit" not in fake.names()


def test_snapshot_over_the_file_limit_is_refused_before_anything(job):
    for i in range(2001):
        (job.source_dir / f"f{i}.txt").write_text("x")
    with pytest.raises(ToolkitError, match="has 2002 files, 0.0 MB; Azure ML allows 2000 files"):
        azure_plan.plan(job, SETTINGS, "gpu-cluster", [], True)


def test_snapshot_over_the_size_limit_is_refused_and_amlignore_honoured(job):
    with open(job.source_dir / "weights.bin", "wb") as big:  # sparse: 301 MB that take no disk
        big.truncate(301 * 2**20)
    with pytest.raises(ToolkitError, match="has 2 files, 301.0 MB; Azure ML allows 2000 files and 300 MB"):
        azure_plan.plan(job, SETTINGS, "gpu-cluster", [], True)
    (job.source_dir / ".amlignore").write_text("*.bin\n")
    assert azure_plan.plan(job, SETTINGS, "gpu-cluster", [], True).snapshot_files == 2  # train.py, .amlignore


def test_a_download_that_breaks_off_leaves_nothing_behind(tmp_path):
    fake = RecordingBackend(download_fails_after=1)
    with pytest.raises(ToolkitError, match="connection reset"):
        azure_model.execute(fake, azure_model.model_request("run-1", None, "model", None, tmp_path),
                            out=io.StringIO())
    assert not (tmp_path / "model").exists()
    (tmp_path / "model" / "outputs").mkdir(parents=True)
    with pytest.raises(ToolkitError, match="model/outputs exists already"):
        azure_model.model_request("run-1", None, "model", None, tmp_path)


def test_model_is_registered_and_downloaded(tmp_path):
    fake = RecordingBackend()
    request = azure_model.model_request("run-1", "pytorch-birds", "model", "outputs/model.pt2", tmp_path)
    azure_model.execute(fake, request, out=io.StringIO())
    assert ("register_model", "run-1", "pytorch-birds", "outputs/model.pt2", {"amltrain.run_id": "run-1"}) \
        in fake.calls
    assert (tmp_path / "model" / "outputs" / "model.pt2").read_bytes() == b"model"
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["outputs"]  # no logs/, no staging folder


def test_model_path_must_exist_and_something_must_be_asked(tmp_path):
    fake = RecordingBackend()
    with pytest.raises(ToolkitError, match="has no artifact outputs/model.pt") as e:
        azure_model.execute(fake, azure_model.model_request("run-1", "m", None, "outputs/model.pt", tmp_path),
                            out=io.StringIO())
    assert "outputs/model.pt2" in e.value.hint and "register_model" not in fake.names()
    with pytest.raises(ToolkitError, match="nothing to do"):
        azure_model.model_request("run-1", None, None, None, tmp_path)
    with pytest.raises(ToolkitError, match="'outputs_old/model.pt' is not under outputs/"):
        azure_model.model_request("run-1", "m", None, "outputs_old/model.pt", tmp_path)


# --- Azure's failures, as the SDK raises them, become one line with what to do -----------------------------

RP_QUOTA = ("Received bad response from Resource Provider:\nResponse Code: 400\nHeaders: {'x-ms-request-id': "
            "'4011-abc'}\nContent: b'{\"error\": {\"code\": \"QuotaExceeded\", \"message\": \"Operation could not be "
            "completed as it results in exceeding approved standardNCADSA100v4Family Cores quota.\"}}'")


def sdk_errors():
    from azureml.exceptions import AuthenticationException, ComputeTargetException, ProjectSystemException
    from requests.exceptions import ConnectionError as RequestsConnectionError

    forbidden = json.dumps({"error_details": {"error": {"code": "AuthorizationFailed", "message": "The client 'x' "
                            "does not have authorization to perform action 'read'"}}, "status_code": 403})
    return [
        (ComputeTargetException(RP_QUOTA), "QuotaExceeded: Operation could not be completed as it results in "
         "exceeding approved standardNCADSA100v4Family Cores quota.", backend.QUOTA_HINT),
        (AuthenticationException("Could not retrieve user token. Please run 'az login'"),
         "Could not retrieve user token. Please run 'az login'", backend.LOGIN_HINT),
        (Exception("AADSTS7000215: Invalid client secret provided.\nTrace ID: 1"),
         "AADSTS7000215: Invalid client secret provided.", backend.LOGIN_HINT),
        (ProjectSystemException(forbidden), "AuthorizationFailed: The client 'x' does not have authorization to "
         "perform action 'read'", backend.ROLE_HINT),
        (ProjectSystemException("workspace not found."), "workspace not found.", "the caller's hint"),
        (RequestsConnectionError("HTTPSConnectionPool(host='management.azure.com', port=443): Max retries exceeded"),
         "HTTPSConnectionPool(host='management.azure.com', port=443): Max retries exceeded", backend.NETWORK_HINT),
        (Exception("Connection reset by peer while reading https://st.blob.core.windows.net/azureml/outputs/m.pt"
                   "?sv=2019-02-02&sr=b&sig=SAS-canary%3D&se=2030 (read 5 of 9 bytes)"),
         "Connection reset by peer while reading https://st.blob.core.windows.net/azureml/outputs/m.pt?**** "
         "(read 5 of 9 bytes)", backend.NETWORK_HINT),
    ]


@pytest.mark.parametrize("exc, said, hint", sdk_errors())
def test_azure_failures_are_one_line_with_what_to_do(exc, said, hint):
    with pytest.raises(ToolkitError) as e, backend.azure_errors("doing it", "the caller's hint"):
        raise exc
    assert e.value.message == f"doing it failed: {said}"
    assert e.value.hint == hint and "\n" not in str(e.value)


def streaming_run(signum: int):
    """azureml-core's own ``Run`` with only its network parts replaced: the log stream is interrupted by
    ``signum``, and ``wait_for_completion`` (the SDK's, unchanged) turns the KeyboardInterrupt into its error."""
    from azureml.core import Run

    class StreamingRun(Run):
        id = "fowl_1700000000_00000000"

        def __init__(self):  # no workspace, no service: the network parts below answer instead
            self.cancelled = False

        def _stream_run_output(self, *args, **kwargs):
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the signal arrives while the logs stream
            raise AssertionError("the signal did not interrupt the streaming")

        def get_portal_url(self):
            return f"https://ml.azure.com/runs/{self.id}"

        def get_status(self):
            return "CancelRequested" if self.cancelled else "Running"

        def cancel(self):
            self.cancelled = True

    return StreamingRun()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_while_following_a_run_is_one_line_with_its_exit_code(signum):
    workspace_backend = v1_backend.WorkspaceBackend(None, None, RecordingBackend().workspace)
    run = streaming_run(signum)
    workspace_backend._runs[run.id] = run
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ToolkitError) as e:
        workspace_backend.wait(run.id)
    assert e.value.exit_code == 128 + signum
    assert e.value.message == f"stopped following run {run.id}; it keeps running: {run.get_portal_url()}"
    assert signal.getsignal(signal.SIGTERM) == before  # the handlers are put back


def test_the_backend_cancels_through_the_sdks_run():
    workspace_backend = v1_backend.WorkspaceBackend(None, None, RecordingBackend().workspace)
    run = streaming_run(signal.SIGINT)
    workspace_backend._runs[run.id] = run
    assert workspace_backend.cancel(run.id).status == "CancelRequested" and run.cancelled
