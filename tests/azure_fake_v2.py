"""Azure's side of the wire for azure-ai-ml (SDK v2): the lowest seam there is, the HTTP request itself.

Every call the SDK makes (its generated ARM clients, the run-history and storage clients) leaves through azure-core's
``RequestsTransport``, which calls ``requests.Session.request``. ``AzureNetwork`` takes that call: it records the
request, answers it from the routes a test declared, and refuses anything else, so a test says exactly what was
asked of Azure. Everything above the socket (the SDK's entities, serializers, pipelines, pollers, retries) is the
real SDK. ``RecordingBackend`` (``azure_fake``) serves both SDKs one level up, at ``AzureBackend``.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
import urllib3

SUB, RG, WS = "sub", "rg", "ws"
ARM = "https://management.azure.com"
WORKSPACE_ID = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.MachineLearningServices/workspaces/{WS}"
# ARM ids of the workspace's assets, as the SDK writes them when it resolves ``azureml:`` references
ASSET_ID = WORKSPACE_ID + "/{kind}/{name}/versions/{version}"
COMPUTE_ID = WORKSPACE_ID + "/computes/{name}"
STUDIO = "https://ml.azure.com/runs/{name}?wsid=" + WORKSPACE_ID
# Git properties the SDK adds to a job from the current directory or from these variables
GIT_VARIABLES = ("AZUREML_GIT_REPOSITORY_URI", "AZUREML_GIT_BRANCH", "AZUREML_GIT_COMMIT", "AZUREML_GIT_DIRTY",
                 "AZUREML_GIT_BUILD_ID", "AZUREML_GIT_BUILD_URI")


class Credential:
    """A TokenCredential that never signs in: the bearer token azure-core's policy asks for."""

    token = "arm-token-canary"

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        self.scopes = scopes
        return AccessToken(self.token, int(time.time()) + 3600)

    def get_token_info(self, *scopes, options=None):
        from azure.core.credentials import AccessTokenInfo

        self.scopes = scopes
        return AccessTokenInfo(self.token, int(time.time()) + 3600)


@dataclass
class Sent:
    method: str
    url: str
    body: object  # parsed JSON, or the raw bytes/str

    @property
    def path(self) -> str:
        return self.url.split("?", 1)[0]


@dataclass
class Route:
    method: str
    pattern: re.Pattern
    answer: Callable[[Sent], tuple[int, object, dict]]
    times: int | None  # None: any number of times


@dataclass
class AzureNetwork:
    routes: list = field(default_factory=list)
    sent: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)

    def answer(self, method: str, pattern: str, body=None, status: int = 200, headers: dict | None = None,
               times: int | None = None):
        """Answer ``method`` on a URL matching ``pattern`` with ``body`` (JSON; bytes or str as they are; a
        callable gets the ``Sent`` request and returns the body). The first route that matches answers."""
        def reply(sent: Sent):
            return status, body(sent) if callable(body) else body, dict(headers or {})

        self.routes.append(Route(method, re.compile(pattern), reply, times))

    def requests_of(self, method: str, pattern: str) -> list[Sent]:
        return [s for s in self.sent if s.method == method and re.search(pattern, s.url)]

    def install(self, monkeypatch) -> AzureNetwork:
        """Take ``requests.Session.request`` for the test's duration."""
        def request(session, method, url, **kwargs):
            return self.session_request(session, method, url, **kwargs)

        monkeypatch.setattr(requests.Session, "request", request)
        return self

    def session_request(self, session, method, url, data=None, headers=None, **kwargs):
        """``requests.Session.request``'s place: what azure-core's transport calls for every request."""
        method = method.upper()  # requests.post() says "post"
        sent = Sent(method, url, _parsed(data))
        self.sent.append(sent)
        for route in self.routes:
            if route.method == method and route.pattern.search(url) and route.times != 0:
                if route.times is not None:
                    route.times -= 1
                return _response(method, url, *route.answer(sent))
        self.unexpected.append(f"{method} {url}")
        raise AssertionError(f"unexpected request to Azure: {method} {url}")  # the SDK may swallow it: see check

    def check(self) -> None:
        assert not self.unexpected, f"requests nobody answered: {self.unexpected}"


def _parsed(data):
    if isinstance(data, bytes):
        try:
            return json.loads(data)
        except ValueError:
            return data
    if isinstance(data, str) and data[:1] in "{[":
        return json.loads(data)
    return data


def _response(method: str, url: str, status: int, body, headers: dict) -> requests.Response:
    """A ``requests.Response`` as the socket would have produced it (urllib3 raw stream included: azure-core
    reads from it)."""
    content = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else \
        b"" if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(content)), **headers}
    response = requests.Response()
    response.status_code = status
    response.url = url
    response.headers.update(headers)
    response.raw = urllib3.HTTPResponse(body=io.BytesIO(content), preload_content=False, status=status,
                                        headers=headers)
    response.request = requests.Request(method, url).prepare()
    response.reason = "OK" if status < 400 else "Error"
    return response


def client():
    """A real ``MLClient`` for workspace sub/rg/ws; constructing it contacts nothing."""
    from azure.ai.ml import MLClient

    return MLClient(Credential(), SUB, RG, WS)


def job_resource(name: str, status: str = "Completed", experiment: str = "fowl", properties: dict | None = None,
                 outputs: dict | None = None) -> dict:
    """A command job as the service returns it (``GET …/jobs/NAME``)."""
    return {
        "id": f"{WORKSPACE_ID}/jobs/{name}", "name": name, "type": "Microsoft.MachineLearningServices/jobs",
        "properties": {
            "jobType": "Command", "status": status, "experimentName": experiment, "displayName": name,
            "command": "python train.py", "computeId": COMPUTE_ID.format(name="gpu4"),
            "environmentId": ASSET_ID.format(kind="environments", name="amltrain-gpu", version="1"),
            "services": {"Studio": {"endpoint": STUDIO.format(name=name), "jobServiceType": "Studio"}},
            "outputs": outputs if outputs is not None else {"default": {
                "jobOutputType": "uri_folder", "mode": "ReadWriteMount",
                "uri": f"azureml://datastores/workspaceartifactstore/ExperimentRun/dcid.{name}"}},
            "properties": properties or {}, "tags": {},
        },
    }


REGION_API = "https://westeurope.api.azureml.ms"


def workspace_resource(registry: str | None = "WsAcr") -> dict:
    """The workspace as ARM returns it: its registry, location and the discovery URL of its data plane."""
    properties = {"discoveryUrl": f"{REGION_API}/discovery", "workspaceId": "00000000-0000-0000-0000-000000000001",
                  "friendlyName": WS, "provisioningState": "Succeeded",
                  "storageAccount": f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Storage/"
                                    "storageAccounts/wsstorage"}
    if registry:
        properties["containerRegistry"] = (f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/"
                                           f"Microsoft.ContainerRegistry/registries/{registry}")
    return {"id": WORKSPACE_ID, "name": WS, "location": "westeurope", "kind": "Default", "properties": properties}


STORAGE = "https://wsstorage.blob.core.windows.net"
ACCOUNT_KEY = "c3RvcmFnZS1rZXktY2FuYXJ5"  # base64 of storage-key-canary: the SDK signs SAS URLs with it


def datastore_resource(name: str, container: str, default: bool = False) -> dict:
    """A blob datastore of the workspace's storage account, with an account key (``listSecrets`` gives it)."""
    return {"id": f"{WORKSPACE_ID}/datastores/{name}", "name": name, "properties": {
        "datastoreType": "AzureBlob", "accountName": "wsstorage", "containerName": container,
        "endpoint": "core.windows.net", "protocol": "https", "isDefault": default,
        "credentials": {"credentialsType": "AccountKey"}}}


def answer_data_plane(network: AzureNetwork) -> None:
    """The workspace and what the SDK finds through it: the region's data plane (discovery) and the datastores
    where jobs keep their artifacts and code."""
    network.answer("GET", r"/workspaces/ws\?", workspace_resource())
    network.answer("GET", r"^https://westeurope\.api\.azureml\.ms/discovery$", {
        service: REGION_API for service in ("api", "catalog", "experimentation", "history", "modelmanagement",
                                            "pipelines", "studioservice")})
    for name, container in (("workspaceartifactstore", "azureml"), ("workspaceblobstore", "azureml-blobstore")):
        network.answer("GET", rf"/datastores/{name}\?", datastore_resource(name, container, default=name ==
                                                                           "workspaceblobstore"))
        network.answer("POST", rf"/datastores/{name}/listSecrets\?", {"secretsType": "AccountKey",
                                                                      "key": ACCOUNT_KEY})
    network.answer("GET", r"/datastores\?.*isDefault=true", {"value": [
        datastore_resource("workspaceblobstore", "azureml-blobstore", default=True)]})


def model_version(name: str, version: str, uri: str = "azureml://jobs/job0/outputs/artifacts/paths/outputs/") -> dict:
    """A registered model version as the service returns it."""
    return {"id": ASSET_ID.format(kind="models", name=name, version=version), "name": version, "properties": {
        "modelType": "custom_model", "modelUri": uri, "flavors": {}, "properties": {}, "tags": {},
        "isAnonymous": False, "isArchived": False}}


def answer_blobs(network: AzureNetwork, container: str, files: dict[str, bytes]) -> None:
    """A blob container of the workspace's storage account holding ``files`` (name -> content): its listing
    (``?comp=list&prefix=…``, XML, filtered by the prefix asked) and each blob's download."""
    from urllib.parse import parse_qs, urlsplit

    def listing(sent: Sent) -> str:
        prefix = parse_qs(urlsplit(sent.url).query).get("prefix", [""])[0]
        blobs = "".join(f"<Blob><Name>{name}</Name><Properties><Content-Length>{len(data)}</Content-Length>"
                        "<BlobType>BlockBlob</BlobType><Last-Modified>Sun, 29 Nov 2026 10:00:00 GMT</Last-Modified>"
                        "<Etag>0x8D0</Etag></Properties><Metadata /></Blob>"
                        for name, data in sorted(files.items()) if name.startswith(prefix))
        return (f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="{STORAGE}/" '
                f'ContainerName="{container}"><Prefix>{prefix}</Prefix><Blobs>{blobs}</Blobs><NextMarker />'
                "</EnumerationResults>")

    network.answer("GET", rf"^{STORAGE}/{container}\?.*comp=list", listing, headers={"Content-Type": "application/xml"})
    for name, data in files.items():
        network.answer("GET", rf"^{STORAGE}/{container}/{re.escape(name)}(\?|$)", data, status=206, headers={
            "Content-Type": "application/octet-stream", "Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}",
            "x-ms-blob-type": "BlockBlob", "ETag": '"0x8D0"', "Last-Modified": "Sun, 29 Nov 2026 10:00:00 GMT"})


CODE_ID = ASSET_ID.format(kind="codes", name="c0de", version="1")


def answer_code_asset(network: AzureNetwork) -> None:
    """The workspace already holds a code asset with the snapshot's content hash: ``jobs.create_or_update`` looks
    it up by hash and reuses it, so nothing is uploaded."""
    code = {"id": CODE_ID, "name": "1", "properties": {
        "codeUri": f"{STORAGE}/azureml-blobstore/LocalUpload/0123/src", "isAnonymous": True}}
    network.answer("GET", r"/codes/[^/]+/versions\?.*hash=", {"value": [code]})
    network.answer("GET", r"/codes/c0de/versions/1\?", code)


def run_details(name: str, status: str, error: dict | None = None) -> dict:
    """Run history's view of a job (``…/runs/NAME/details``), what ``jobs.stream`` polls."""
    return {"runId": name, "status": status, "logFiles": {}, "warnings": [], "error": error}
