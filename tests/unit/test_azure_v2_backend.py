"""``MLClientBackend`` driving the real ``MLClient`` operations, with only the HTTP requests answered
(``AzureNetwork``): what each method asks of Azure, and what it makes of the answers (found, not found, failed,
interrupted). Any request nobody answered fails the test."""

from __future__ import annotations

import io
import os
import signal

import pytest

from amltrain.azure import model as model_flow
from amltrain.azure.backend import ComputeInfo, EnvironmentInfo, RunError, RunInfo
from amltrain.azure.environment import EnvironmentRef
from amltrain.azure.settings import ComputeSpec, WorkspaceRef
from amltrain.azure.v2 import backend as v2_backend
from amltrain.azure.v2 import build
from amltrain.azure.v2.backend import MLClientBackend
from amltrain.errors import ToolkitError
from tests.azure_fake_v2 import (
    ASSET_ID,
    COMPUTE_ID,
    GIT_VARIABLES,
    STUDIO,
    WORKSPACE_ID,
    AzureNetwork,
    Credential,
    answer_blobs,
    answer_code_asset,
    answer_data_plane,
    client,
    job_resource,
    model_version,
    run_details,
)

HISTORY = r"/history/v1\.0/.*/runs/{}/details\?"
ARTIFACTS = {"ExperimentRun/dcid.job1/outputs/model.pt2": b"model", "ExperimentRun/dcid.job1/outputs/sub/a.json": b"[]",
             "ExperimentRun/dcid.job1/user_logs/std_log.txt": b"epoch 1 loss 0.5\n",
             "ExperimentRun/dcid.job10/outputs/other.pt2": b"another job's"}  # a name job1 is a prefix of
NOT_FOUND = {"error": {"code": "UserError", "message": "Not found"}}


@pytest.fixture
def azure(monkeypatch, tmp_path):
    network = AzureNetwork().install(monkeypatch)
    monkeypatch.chdir(tmp_path)  # the SDK adds git properties of the current directory to a submitted job
    for name in GIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    answer_data_plane(network)
    yield network
    network.check()


@pytest.fixture
def backend(azure):
    return MLClientBackend(client(), Credential(), WorkspaceRef("sub", "rg", "ws", "test"), poll_seconds=0)


def compute_resource(state: str, errors: list | None = None) -> dict:
    return {"id": COMPUTE_ID.format(name="gpu4"), "name": "gpu4", "location": "westeurope", "properties": {
        "computeType": "AmlCompute", "provisioningState": state, "provisioningErrors": errors, "properties": {
            "vmSize": "Standard_NC24ads_A100_v4", "vmPriority": "Dedicated",
            "scaleSettings": {"minNodeCount": 0, "maxNodeCount": 4, "nodeIdleTimeBeforeScaleDown": "PT30M"}}}}


# --- registry -----------------------------------------------------------------------------------------------------
def test_the_registry_is_the_workspaces_and_is_asked_once(backend, azure):
    assert backend.registry_login_server() == "wsacr.azurecr.io"
    assert backend.registry_login_server() == "wsacr.azurecr.io"
    assert len(azure.requests_of("GET", r"/workspaces/ws\?")) == 1


def test_admin_credentials_come_from_the_workspace_keys(backend, azure):
    azure.answer("POST", r"/workspaces/ws/listKeys\?", {"containerRegistryCredentials": {
        "location": "westeurope", "username": "wsacr", "passwords": [{"name": "password", "value": "pw-canary"}]}})
    assert backend.registry_admin_credentials() == ("wsacr", "pw-canary")


def test_the_aad_token_is_exchanged_for_a_registry_token(backend, azure):
    azure.answer("POST", r"^https://wsacr\.azurecr\.io/oauth2/exchange$", {"refresh_token": "acr-refresh-canary"})
    assert backend.acr_refresh_token("wsacr.azurecr.io") == "acr-refresh-canary"
    (sent,) = azure.requests_of("POST", r"oauth2/exchange")
    assert sent.body == {"grant_type": "access_token", "service": "wsacr.azurecr.io",
                         "access_token": Credential.token}


# --- environments -------------------------------------------------------------------------------------------------
def test_an_environment_is_found_or_none(backend, azure):
    image = "wsacr.azurecr.io/amltrain/train@sha256:" + "7" * 64
    azure.answer("GET", r"/environments/amltrain-gpu/versions/0123\?", {
        "id": ASSET_ID.format(kind="environments", name="amltrain-gpu", version="0123"), "name": "0123",
        "properties": {"image": image, "isAnonymous": False}})
    azure.answer("GET", r"/environments/amltrain-gpu/versions/4567\?", NOT_FOUND, status=404)
    assert backend.get_environment("amltrain-gpu", "0123") == EnvironmentInfo("amltrain-gpu", "0123", image)
    assert backend.get_environment("amltrain-gpu", "4567") is None


def test_registering_an_environment_says_what_was_registered(backend, azure):
    azure.answer("PUT", r"/environments/amltrain-gpu/versions/0123\?", lambda sent: {
        **sent.body, "id": ASSET_ID.format(kind="environments", name="amltrain-gpu", version="0123"),
        "name": "0123"})
    ref = EnvironmentRef("amltrain-gpu", "0123", "wsacr.azurecr.io/amltrain/train", "gpu-0123")
    assert backend.register_environment(build.environment(ref)) == \
        EnvironmentInfo("amltrain-gpu", "0123", "wsacr.azurecr.io/amltrain/train:gpu-0123")


def test_a_refusal_is_one_line_with_what_to_do(backend, azure):
    azure.answer("GET", r"/environments/", {"error": {"code": "AuthorizationFailed", "message":
                                                       "The client 'x' does not have authorization to perform "
                                                       "action 'read'"}}, status=403)
    with pytest.raises(ToolkitError) as raised:
        backend.get_environment("amltrain-gpu", "0123")
    assert raised.value.message.startswith("looking up environment amltrain-gpu:0123 failed: ")
    assert "does not have authorization" in raised.value.message and "\n" not in raised.value.message
    assert "lacks a role" in raised.value.hint


# --- compute ------------------------------------------------------------------------------------------------------
def test_a_cluster_is_found_or_none(backend, azure):
    azure.answer("GET", r"/computes/gpu4\?", compute_resource("Succeeded"))
    azure.answer("GET", r"/computes/cpu2\?", NOT_FOUND, status=404)
    assert backend.get_compute("gpu4") == ComputeInfo("gpu4", "Standard_NC24ads_A100_v4", 0, 4, "Succeeded",
                                                      "AmlCompute", identity="")
    assert backend.get_compute("cpu2") is None


def test_waiting_for_a_cluster_looks_until_it_is_no_longer_being_created(backend, azure):
    azure.answer("GET", r"/computes/gpu4\?", compute_resource("Creating"), times=2)
    azure.answer("GET", r"/computes/gpu4\?", compute_resource("Succeeded"))
    assert backend.wait_for_compute("gpu4").state == "Succeeded"
    assert len(azure.requests_of("GET", r"/computes/gpu4\?")) == 3


def test_creating_a_cluster_waits_for_it(backend, azure):
    azure.answer("PUT", r"/computes/gpu4\?", lambda sent: {**compute_resource("Succeeded"), **sent.body})
    azure.answer("GET", r"/computes/gpu4\?", compute_resource("Succeeded"))
    created = backend.create_compute("gpu4", build.compute(ComputeSpec("gpu4", "Standard_NC24ads_A100_v4")))
    assert created == ComputeInfo("gpu4", "Standard_NC24ads_A100_v4", 0, 4, "Succeeded", "AmlCompute", identity="")


def test_a_clusters_identity_is_read_back(backend, azure):
    identity = {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/s/resourceGroups/r/providers/"
                "Microsoft.ManagedIdentity/userAssignedIdentities/puller": {}}}
    azure.answer("GET", r"/computes/gpu4\?", {**compute_resource("Succeeded"), "identity": identity})
    assert backend.get_compute("gpu4").identity == ("/subscriptions/s/resourceGroups/r/providers/"
                                                    "Microsoft.ManagedIdentity/userAssignedIdentities/puller")


@pytest.mark.parametrize("operation_fails", [True, False])
def test_a_cluster_that_failed_to_provision_is_deleted_again(backend, azure, operation_fails):
    """Either the create operation fails (ARM's asynchronous operation says so) or it ends with the cluster in
    state Failed; either way the cluster is deleted, so the next try starts clean."""
    failed = compute_resource("Failed", [{"error": {"code": "QuotaExceeded", "message": "no quota"}}])
    operation = f"https://management.azure.com{WORKSPACE_ID}/computeOperations/op1?api-version=x"
    if operation_fails:
        azure.answer("PUT", r"/computes/gpu4\?", compute_resource("Creating"), status=201, headers={
            "Azure-AsyncOperation": operation, "Retry-After": "0"})
        azure.answer("GET", r"/computeOperations/op1\?", {"status": "Failed", "error": {
            "code": "QuotaExceeded", "message": "Operation could not be completed as it results in exceeding "
                                                "approved standardNCADSA100v4Family Cores quota"}})
    else:
        azure.answer("PUT", r"/computes/gpu4\?", failed)
    azure.answer("GET", r"/computes/gpu4\?", failed)
    azure.answer("DELETE", r"/computes/gpu4\?", None, status=200)
    with pytest.raises(ToolkitError) as raised:
        backend.create_compute("gpu4", build.compute(ComputeSpec("gpu4", "Standard_NC24ads_A100_v4")))
    said = raised.value.message
    assert said.startswith("creating compute gpu4 failed: " if operation_fails else
                           "compute gpu4 failed to provision: QuotaExceeded")
    assert said.endswith("; the failed cluster was deleted") and "\n" not in said
    assert "quota" in raised.value.hint
    assert len(azure.requests_of("DELETE", r"/computes/gpu4\?")) == 1


# --- jobs ---------------------------------------------------------------------------------------------------------
def test_submitting_names_the_job_and_its_studio_page(backend, azure, tmp_path):
    from azure.ai.ml import command

    answer_code_asset(azure)
    azure.answer("PUT", r"/jobs/[^/?]+\?", lambda sent: job_resource(sent.path.rsplit("/", 1)[1], "Starting"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text("print()\n")
    job = command(code=str(tmp_path / "src"), command="python train.py", environment="azureml:amltrain-gpu:1",
                  compute="gpu4")
    run = backend.submit("fowl", job, {"amltrain.launch": "per-process 1x1"})
    (sent,) = azure.requests_of("PUT", r"/jobs/")
    name = sent.path.rsplit("/", 1)[1]
    assert run == RunInfo(name, STUDIO.format(name=name), "Starting")
    assert sent.body["properties"]["experimentName"] == "fowl"
    assert sent.body["properties"]["tags"] == {"amltrain.launch": "per-process 1x1"}


def test_following_a_job_streams_its_log_to_its_end(backend, azure, capsys):
    azure.answer("GET", r"/jobs/job1\?", job_resource("job1", "Running"), times=2)
    azure.answer("GET", r"/jobs/job1\?", job_resource("job1", "Completed"))
    azure.answer("GET", HISTORY.format("job1"), run_details("job1", "Running"), times=1)
    azure.answer("GET", HISTORY.format("job1"), run_details("job1", "Completed"))
    answer_blobs(azure, "azureml", ARTIFACTS)
    assert backend.wait("job1") == RunInfo("job1", STUDIO.format(name="job1"), "Completed")
    assert "epoch 1 loss 0.5" in capsys.readouterr().out  # rank 0's log, read from the artifact store


def test_a_failed_job_is_a_result_not_an_error(backend, azure, capsys):
    azure.answer("GET", r"/jobs/job1\?", job_resource("job1", "Failed"))
    azure.answer("GET", HISTORY.format("job1"), run_details("job1", "Failed", {"error": {
        "code": "UserError", "message": "Execution failed: exit code 1"}}))
    answer_blobs(azure, "azureml", ARTIFACTS)
    assert backend.wait("job1", show_output=False) == RunInfo(  # the error, from run history (what stream prints)
        "job1", STUDIO.format(name="job1"), "Failed", RunError("UserError", "Execution failed: exit code 1"))
    assert "RunId" not in capsys.readouterr().out  # show_output=False: the SDK's stream is not printed


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_while_following_stops_following_only(backend, azure, signum):
    """The signal arrives while the SDK asks run history for the job's state (the stream's loop)."""
    def running_then_stopped(sent):
        os.kill(os.getpid(), signum)
        return run_details("job1", "Running")

    azure.answer("GET", r"/jobs/job1\?", job_resource("job1", "Running"))
    azure.answer("GET", HISTORY.format("job1"), running_then_stopped)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with pytest.raises(ToolkitError) as raised:
        backend.wait("job1")
    assert raised.value.exit_code == 128 + signum
    assert raised.value.message == f"stopped following job job1; it keeps running: {STUDIO.format(name='job1')}"
    assert {s: signal.getsignal(s) for s in before} == before
    assert not azure.requests_of("POST", r"/cancel")  # following stopped; the job was not touched


def test_cancelling_asks_for_it_without_waiting(backend, azure):
    azure.answer("POST", r"/jobs/job1/cancel\?", None, status=202, headers={
        "Location": f"https://management.azure.com{WORKSPACE_ID}/operationResults/cancel1?api-version=x"})
    azure.answer("GET", r"/jobs/job1\?", job_resource("job1", "CancelRequested"))
    assert backend.cancel("job1").status == "CancelRequested"
    assert len(azure.requests_of("POST", r"/jobs/job1/cancel\?")) == 1
    assert not azure.requests_of("GET", r"/operationResults/")  # the operation is not followed


def test_an_unknown_job_is_one_line(backend, azure):
    azure.answer("GET", r"/jobs/nope\?", NOT_FOUND, status=404)
    with pytest.raises(ToolkitError, match="reading job nope failed: .*Not found") as raised:
        backend.get_run("nope")
    assert "job name" in raised.value.hint


# --- artifacts and models -----------------------------------------------------------------------------------------
def test_a_jobs_files_are_listed_from_its_artifact_store(backend, azure):
    azure.answer("GET", r"/jobs/job1\?", job_resource("job1"))
    answer_blobs(azure, "azureml", ARTIFACTS)
    assert backend.run_file_names("job1") == ["outputs/model.pt2", "outputs/sub/a.json", "user_logs/std_log.txt"]
    assert not azure.requests_of("GET", r"dcid\.job1/outputs/model\.pt2")  # listed, nothing downloaded


def test_outputs_are_downloaded_into_the_same_layout_as_v1(backend, azure, tmp_path):
    azure.answer("GET", r"/jobs/job1\?", job_resource("job1"))
    azure.answer("POST", r"/history/v1\.0/.*/rundata\?", {"runMetadata": {"runId": "job1", "outputs": {}}})
    answer_blobs(azure, "azureml", ARTIFACTS)
    backend.download_files("job1", "outputs", tmp_path / "dl")
    files = sorted(p.relative_to(tmp_path / "dl").as_posix() for p in (tmp_path / "dl").rglob("*") if p.is_file())
    assert files == ["outputs/model.pt2", "outputs/sub/a.json"]
    assert (tmp_path / "dl" / "outputs" / "model.pt2").read_bytes() == b"model"


def test_invoke_model_registers_and_downloads_through_the_sdk(backend, azure, tmp_path):
    """The SDK-neutral ``model`` flow on v2: the job's state, its files, the model's registration, the download."""
    azure.answer("GET", r"/jobs/job1\?", job_resource("job1"))
    azure.answer("POST", r"/history/v1\.0/.*/rundata\?", {"runMetadata": {"runId": "job1", "outputs": {}}})
    answer_blobs(azure, "azureml", ARTIFACTS)
    azure.answer("GET", r"/models/birds/versions\?", {"value": []})
    azure.answer("GET", r"/models/birds\?", NOT_FOUND, status=404)
    azure.answer("PUT", r"/models/birds/versions/1\?", lambda sent: model_version(
        "birds", "1", sent.body["properties"]["modelUri"]))
    request = model_flow.model_request("job1", "birds", "model", "outputs/model.pt2", tmp_path)
    said = io.StringIO()
    model_flow.execute(backend, request, out=said)
    assert "registered model birds:1 from outputs/model.pt2 of run job1" in said.getvalue()
    (sent,) = azure.requests_of("PUT", r"/models/")
    assert sent.body["properties"]["modelUri"] == "azureml://jobs/job1/outputs/artifacts/paths/outputs/model.pt2"
    assert sent.body["properties"]["tags"] == {"amltrain.run_id": "job1"}
    assert (tmp_path / "model" / "outputs" / "model.pt2").read_bytes() == b"model"
    assert not (tmp_path / "model" / "artifacts").exists()


# --- sign-in ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode, environ, kind", [
    ("service-principal", {"AZURE_CLIENT_ID": "c", "AZURE_TENANT_ID": "t", "AZURE_CLIENT_SECRET": "s"},
     "ClientSecretCredential"),
    ("managed-identity", {"AZURE_CLIENT_ID": "c"}, "ManagedIdentityCredential"),
    ("managed-identity", {}, "ManagedIdentityCredential"),
    ("github-oidc", {"ACTIONS_ID_TOKEN_REQUEST_URL": "https://gh/x", "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "r",
                     "AZURE_CLIENT_ID": "c", "AZURE_TENANT_ID": "t"}, "ClientAssertionCredential"),
])
def test_each_auth_mode_gets_its_azure_identity_credential(mode, environ, kind):
    assert type(v2_backend.credential(mode, environ)).__name__ == kind


@pytest.mark.parametrize("mode, missing", [("service-principal", "AZURE_CLIENT_SECRET"),
                                           ("github-oidc", "ACTIONS_ID_TOKEN_REQUEST_TOKEN")])
def test_a_mode_without_its_variables_is_refused_before_signing_in(mode, missing):
    environ = {"AZURE_CLIENT_ID": "c", "AZURE_TENANT_ID": "t", "ACTIONS_ID_TOKEN_REQUEST_URL": "https://gh/x"}
    with pytest.raises(ToolkitError, match=f"{mode} auth needs .*{missing}"):
        v2_backend.credential(mode, environ)


@pytest.fixture
def github():
    """GitHub's ID-token endpoint on loopback (``github_id_token`` asks it with urllib); records each request."""
    import json
    import threading
    import urllib.parse
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Endpoint(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            self.server.seen.append((dict(urllib.parse.parse_qsl(url.query)), self.headers.get("Authorization")))
            data = json.dumps({"value": f"github-jwt-{len(self.server.seen)}"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_github_oidc_exchanges_a_fresh_github_token_for_each_azure_token(azure, github):
    azure.answer("POST", r"^https://login\.microsoftonline\.com/tenant-1/oauth2/v2\.0/token$", lambda sent: {
        "token_type": "Bearer", "expires_in": 3600, "access_token": f"arm-for-{sent.body['client_assertion']}"})
    environ = {"ACTIONS_ID_TOKEN_REQUEST_URL": f"http://127.0.0.1:{github.server_port}/idtoken?api-version=2.0",
               "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "gh-request-token", "AZURE_CLIENT_ID": "client-1",
               "AZURE_TENANT_ID": "tenant-1"}
    credential = v2_backend.credential("github-oidc", environ)
    assert credential.get_token("https://management.azure.com/.default").token == "arm-for-github-jwt-1"
    assert credential.get_token("https://storage.azure.com/.default").token == "arm-for-github-jwt-2"
    assert github.seen[0] == ({"api-version": "2.0", "audience": "api://AzureADTokenExchange"},
                              "bearer gh-request-token")
    sent = azure.requests_of("POST", r"/oauth2/v2\.0/token")[0].body
    assert (sent["client_id"], sent["grant_type"], sent["client_assertion_type"]) == (
        "client-1", "client_credentials", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")


def answer_entra(network: AzureNetwork) -> None:
    """Entra ID for a service principal: its tenant's OpenID configuration, then the token."""
    network.answer("GET", r"^https://login\.microsoftonline\.com/[^/]+/v2\.0/\.well-known/openid-configuration$",
                   lambda sent: {key: sent.url.replace("v2.0/.well-known/openid-configuration", path) for key, path in (
                       ("token_endpoint", "oauth2/v2.0/token"), ("authorization_endpoint", "oauth2/v2.0/authorize"),
                       ("issuer", "v2.0"))})
    network.answer("POST", r"^https://login\.microsoftonline\.com/[^/]+/oauth2/v2\.0/token$", {
        "token_type": "Bearer", "expires_in": 3600, "access_token": "arm-token"})


def test_connect_signs_in_and_reads_the_workspace_once(azure, monkeypatch, tmp_path):
    from amltrain.azure.settings import AzureSettings

    for name, value in (("AZURE_CLIENT_ID", "client-1"), ("AZURE_TENANT_ID", "tenant-1"),
                        ("AZURE_CLIENT_SECRET", "secret-canary")):
        monkeypatch.setenv(name, value)
    answer_entra(azure)
    settings = AzureSettings(subscription_id="sub", resource_group="rg", workspace_name="ws", auth="auto")
    connected = v2_backend.connect(settings, tmp_path)
    assert connected.workspace == WorkspaceRef("sub", "rg", "ws", "azure.* settings")
    assert connected.registry_login_server() == "wsacr.azurecr.io"
    assert [s.url.split("?")[0].rsplit("/", 1)[-1] for s in azure.sent] == ["openid-configuration", "token", "ws"]
    assert azure.requests_of("POST", "oauth2")[0].body["client_secret"] == "secret-canary"


def test_connect_to_a_workspace_that_is_not_there_is_one_line(azure, monkeypatch, tmp_path):
    from amltrain.azure.settings import AzureSettings

    for name, value in (("AZURE_CLIENT_ID", "c"), ("AZURE_TENANT_ID", "t"), ("AZURE_CLIENT_SECRET", "s")):
        monkeypatch.setenv(name, value)
    azure.routes.clear()
    answer_entra(azure)
    azure.answer("GET", r"/workspaces/nows\?", {"error": {"code": "ResourceNotFound", "message":
                                                         "The Resource 'Microsoft.MachineLearningServices/workspaces/"
                                                         "nows' under resource group 'rg' was not found."}},
                 status=404)
    settings = AzureSettings(subscription_id="sub", resource_group="rg", workspace_name="nows")
    with pytest.raises(ToolkitError) as raised:
        v2_backend.connect(settings, tmp_path)
    assert raised.value.message.startswith("signing in (service-principal) to workspace nows failed: ")
    assert "was not found" in raised.value.message
    assert "check subscription_id, resource_group and workspace_name" in raised.value.hint
