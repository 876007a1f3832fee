"""`azure.auth: github-oidc` against real HTTP: a loopback server answers as GitHub's ID-token endpoint and as
Entra ID's token endpoint, so the requests the credential makes (headers, audience, form) are what is checked."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from amltrain.azure import workspace
from amltrain.azure.v1 import auth as v1_auth
from amltrain.errors import ToolkitError

TENANT, CLIENT = "tenant-0001", "client-0002"
REQUEST_TOKEN = "gh-request-token-canary"


class Endpoints(BaseHTTPRequestHandler):
    """GET /idtoken (GitHub) and POST /<tenant>/oauth2/v2.0/token (Entra); records what each request carried."""

    def log_message(self, *args):
        pass

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_raw(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        server = self.server
        url = urllib.parse.urlsplit(self.path)
        server.seen.append(("github", url.path, dict(urllib.parse.parse_qsl(url.query)),
                            self.headers.get("Authorization")))
        server.issued += 1
        self.answer(200, {"value": f"github-jwt-{server.issued}"})

    def do_POST(self):
        server = self.server
        form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
        server.seen.append(("entra", self.path, form, self.headers.get("Content-Type")))
        if server.refuse:
            self.answer(400, {"error": "invalid_request", "error_description":
                              "AADSTS70021: No matching federated identity record found for presented assertion. "
                              "Assertion Issuer: 'https://token.actions.githubusercontent.com'.\r\nTrace ID: x"})
        else:
            self.answer(200, {"token_type": "Bearer", "access_token": f"arm-for-{form['client_assertion']}"})


@pytest.fixture
def endpoints():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoints)
    server.seen, server.issued, server.refuse = [], 0, False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def environ(server) -> dict[str, str]:
    base = f"http://127.0.0.1:{server.server_port}"
    return {"ACTIONS_ID_TOKEN_REQUEST_URL": f"{base}/idtoken?api-version=2.0",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": REQUEST_TOKEN, "AZURE_CLIENT_ID": CLIENT, "AZURE_TENANT_ID": TENANT,
            "AZURE_AUTHORITY_HOST": base}


def test_auto_picks_github_oidc_in_a_job_that_may_mint_id_tokens(endpoints):
    env = environ(endpoints)
    assert workspace.auth_mode("auto", env) == "github-oidc"
    assert workspace.auth_mode("auto", {**env, "AZURE_CLIENT_SECRET": "s"}) == "service-principal"
    no_id_tokens = {k: v for k, v in env.items() if not k.startswith("ACTIONS_")}
    assert workspace.auth_mode("auto", no_id_tokens) == "cli"  # azure/login's CLI login, outside such a job


def test_a_github_id_token_is_exchanged_for_an_arm_token_and_again_when_it_gets_old(endpoints):
    auth = v1_auth.make_auth("github-oidc", environ(endpoints))
    assert auth.get_authentication_header() == {"Authorization": "Bearer arm-for-github-jwt-1"}
    github, entra = endpoints.seen
    assert github == ("github", "/idtoken", {"api-version": "2.0", "audience": "api://AzureADTokenExchange"},
                      f"bearer {REQUEST_TOKEN}")
    assert entra == ("entra", f"/{TENANT}/oauth2/v2.0/token", {
        "client_id": CLIENT, "scope": "https://management.azure.com/.default", "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": "github-jwt-1"}, "application/x-www-form-urlencoded")
    assert auth.get_authentication_header() == {"Authorization": "Bearer arm-for-github-jwt-1"}  # still fresh
    assert len(endpoints.seen) == 2
    auth.REFRESH_AFTER = 0  # as if 30 minutes had passed: a new GitHub token, a new Azure token
    assert auth.get_authentication_header() == {"Authorization": "Bearer arm-for-github-jwt-2"}
    assert [seen[0] for seen in endpoints.seen] == ["github", "entra", "github", "entra"]


def test_a_refused_exchange_is_one_line_with_entras_words_and_what_to_check(endpoints):
    endpoints.refuse = True
    with pytest.raises(ToolkitError) as e:
        v1_auth.make_auth("github-oidc", environ(endpoints))
    assert e.value.message == ("exchanging the GitHub ID token for an Azure token was refused (HTTP 400): "
                               "AADSTS70021: No matching federated identity record found for presented assertion. "
                               "Assertion Issuer: 'https://token.actions.githubusercontent.com'.")
    assert "repo:OWNER/REPO:environment:azureml" in e.value.hint and "id-token: write" in e.value.hint
    said = str(e.value)
    assert REQUEST_TOKEN not in said and "github-jwt" not in said  # no token in what is printed


def test_an_answer_that_is_not_a_json_object_is_one_line(endpoints, monkeypatch):
    monkeypatch.setattr(Endpoints, "answer", lambda self, status, body: Endpoints.send_raw(self, b"[1, 2]"))
    with pytest.raises(ToolkitError, match=r"^asking GitHub for an ID token failed: the answer is not a JSON object"):
        v1_auth.make_auth("github-oidc", environ(endpoints))


def test_outside_a_job_that_may_mint_id_tokens_it_says_what_is_missing():
    with pytest.raises(ToolkitError, match="github-oidc auth needs ACTIONS_ID_TOKEN_REQUEST_URL, "
                                           "ACTIONS_ID_TOKEN_REQUEST_TOKEN") as e:
        v1_auth.make_auth("github-oidc", {"AZURE_CLIENT_ID": CLIENT, "AZURE_TENANT_ID": TENANT})
    assert "id-token: write" in e.value.hint


def test_github_unreachable_is_one_line():
    env = {"ACTIONS_ID_TOKEN_REQUEST_URL": "http://127.0.0.1:9/idtoken", "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "t",
           "AZURE_CLIENT_ID": CLIENT, "AZURE_TENANT_ID": TENANT}
    with pytest.raises(ToolkitError, match=r"^asking GitHub for an ID token failed: .*refused"):
        v1_auth.make_auth("github-oidc", env)
