"""`invoke push` (and the Azure flows behind it) against a real registry with basic auth standing in for ACR.

The image pushed is tiny (one 6-byte file, made with ``docker import``) and tagged with the content-addressed
name ``invoke build`` would give the CPU target under a test repository, so the real task pushes it without a
6 GB training image. Tests: push, then nothing sent when the registry has that digest (no blob upload in the
registry's log), a wrong password, an unreachable registry after retries, an upload refused in the push stream
(a read-only registry), an image never built, credentials kept out of every output and out of Docker's config
file, and the AAD login path with a workspace backend stand-in (tests.azure_fake) feeding register and submit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import tarfile
import time
import uuid
from pathlib import Path

import pytest
from invoke import Context, Exit

from amltrain import config
from amltrain.azure import backend as azure_backend
from amltrain.azure import v1, v2
from tests.azure_fake import RecordingBackend
from tests.conftest import ROOT
from tests.docker import local_registry
from tests.docker.conftest import invoke

REPOSITORY = "amltrain-pushtest/train"
USER, PASSWORD = "pusher", f"pw-{uuid.uuid4().hex}"
TOKEN = f"acr-refresh-token-{uuid.uuid4().hex}"  # what the AAD exchange would return, accepted by the registry


@pytest.fixture(scope="module")
def registry(docker_client, tmp_path_factory):
    started = local_registry.start(tmp_path_factory.mktemp("registry"),
                                   {USER: PASSWORD, azure_backend.ACR_TOKEN_USER: TOKEN})
    yield started
    local_registry.stop(started)


def basic_env(registry, **extra) -> dict:
    return {"INVOKE_IMAGES_REPOSITORY": REPOSITORY, "INVOKE_AZURE_REGISTRY_ADDRESS": registry.address,
            "INVOKE_AZURE_REGISTRY_AUTH": "basic", "INVOKE_AZURE_REGISTRY_USERNAME": USER,
            "AMLTRAIN_REGISTRY_PASSWORD": PASSWORD, **extra}


def tiny_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = uuid.uuid4().hex[:6].encode()  # a new image each session: no digest recorded from before
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cpu_ref(docker_client, registry):
    """The CPU target's content-addressed tag under the test repository, on a tiny image."""
    result = invoke("image-ref", "--target", "cpu", env={"INVOKE_IMAGES_REPOSITORY": REPOSITORY})
    assert result.returncode == 0, result.stderr
    ref = result.stdout.strip()
    repository, tag = ref.rsplit(":", 1)
    docker_client.api.import_image_from_data(tiny_tar(), repository=repository, tag=tag)
    yield ref
    for image_ref in (ref, f"{registry.address}/{ref}"):
        try:
            docker_client.images.remove(image_ref)
        except Exception:  # noqa: BLE001 - cleanup of our own tags only
            pass


def project_tasks():
    """This project's tasks.py as a module of its own name (another test may have loaded a "tasks" module)."""
    spec = importlib.util.spec_from_file_location("amltrain_project_tasks", ROOT / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def docker_config_text() -> str:
    path = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"
    return path.read_text() if path.exists() else ""


def test_push_then_nothing_is_sent_when_the_registry_has_it(registry, cpu_ref):
    config_before = docker_config_text()
    started = time.monotonic()
    first = invoke("push", "--target", "cpu", env=basic_env(registry))
    first_s = time.monotonic() - started
    assert first.returncode == 0, first.stdout + first.stderr
    match = re.search(r"pushed (\S+)@(sha256:[0-9a-f]{64})", first.stdout)
    assert match and match.group(1) == f"{registry.address}/{cpu_ref}", first.stdout
    tag = cpu_ref.rsplit(":", 1)[1]
    assert registry.manifest_digest(REPOSITORY, tag) == match.group(2)
    uploads = registry.blob_uploads()
    assert uploads >= 1

    started = time.monotonic()
    second = invoke("push", "--target", "cpu", env=basic_env(registry))
    second_s = time.monotonic() - started
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"is already in the registry ({match.group(2)}): nothing pushed" in second.stdout
    assert registry.blob_uploads() == uploads, "the second push uploaded a blob"
    assert registry.requests_matching(r'"PUT /v2/[^ ]+/manifests/') == 1
    print(f"first push {first_s:.2f} s, second (skipped) {second_s:.2f} s for the whole `invoke push`")
    for result in (first, second):
        assert PASSWORD not in result.stdout + result.stderr
    assert PASSWORD not in docker_config_text() and docker_config_text() == config_before


def test_a_wrong_password_is_one_line_and_not_retried(registry, cpu_ref):
    result = invoke("push", "--target", "cpu", env=basic_env(registry, AMLTRAIN_REGISTRY_PASSWORD="wrong-pw-canary"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: registry {registry.address} refused login as {USER}")
    assert result.stderr.strip().count("\n") == 0 and "retrying" not in result.stdout
    assert "wrong-pw-canary" not in result.stdout + result.stderr


def test_an_unreachable_registry_is_one_line_after_retries(registry, cpu_ref):
    address = f"127.0.0.1:{local_registry.free_port()}"  # nothing listens there
    env = basic_env(registry, INVOKE_AZURE_REGISTRY_ADDRESS=address, INVOKE_AZURE_PUSH_RETRIES="2",
                    INVOKE_AZURE_PUSH_BACKOFF_SECONDS="0.05")
    result = invoke("push", "--target", "cpu", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: login as {USER} at {address} failed after 3 attempt(s)")
    assert "connection refused" in result.stderr and result.stderr.strip().count("\n") == 0
    assert result.stdout.count("retrying in") == 2
    assert PASSWORD not in result.stdout + result.stderr


def test_a_push_refused_in_the_stream_is_one_line_and_not_retried(docker_client, tmp_path_factory, cpu_ref):
    """docker-py raises nothing when a push fails: here a read-only registry accepts the login and refuses the
    upload, the engine says so only in an event of the push stream, and the task reports it."""
    read_only = local_registry.start(tmp_path_factory.mktemp("read-only-registry"), {USER: PASSWORD},
                                     read_only=True)
    try:
        result = invoke("push", "--target", "cpu", env=basic_env(read_only))
    finally:
        local_registry.stop(read_only)
        with contextlib.suppress(Exception):  # the remote tag push made on this engine
            docker_client.images.remove(f"{read_only.address}/{cpu_ref}")
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith(f"error: push at {read_only.address} failed: "), result.stderr
    assert "405" in result.stderr and result.stderr.strip().count("\n") == 0
    assert "retrying" not in result.stdout and "pushed " not in result.stdout
    assert PASSWORD not in result.stdout + result.stderr


def test_an_image_neither_built_nor_pushed_is_one_line_naming_both(registry, cpu_ref):
    result = invoke("push", "--target", "gpu", env=basic_env(registry))
    assert result.returncode == 1
    assert re.match(rf"error: image {REPOSITORY}:gpu-[0-9a-f]{{12}} is not built on this machine and "
                    rf"{re.escape(registry.address)}/{REPOSITORY}:gpu-[0-9a-f]{{12}} is not in the registry \(run "
                    r"`invoke build --target gpu` first", result.stderr), result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "pushing" not in result.stdout and registry.requests_matching(r'"PUT /v2/[^ ]+/gpu-') == 0


def test_register_and_submit_of_an_image_never_built_contact_no_workspace(registry, cpu_ref, tmp_path):
    workspace = tmp_path / "config.json"
    workspace.write_text(json.dumps({"subscription_id": "s", "resource_group": "r", "workspace_name": "w"}))
    env = {**basic_env(registry), "INVOKE_AZURE_CONFIG_FILE": str(workspace)}
    for task in ("register", "submit"):
        result = invoke(task, "--target", "gpu", env=env)
        assert result.returncode == 1 and "is not built on this machine and" in result.stderr, result.stderr
        assert "signing in" not in result.stderr and result.stderr.strip().count("\n") == 0


def test_an_image_pushed_from_another_machine_is_neither_built_nor_pushed_again(
        docker_client, registry, tmp_path, monkeypatch, capsys):
    """A fresh CI runner: the registry has the content-addressed tag (an earlier run pushed it), this engine has
    never seen the image. build --unless-pushed builds nothing, push sends nothing, and register and submit take
    the registry's digest."""
    repository = f"amltrain-pushtest/elsewhere-{uuid.uuid4().hex[:8]}"
    env = basic_env(registry, INVOKE_IMAGES_REPOSITORY=repository)
    ref = invoke("image-ref", "--target", "gpu", env=env).stdout.strip()
    image_repository, tag = ref.rsplit(":", 1)
    docker_client.api.import_image_from_data(tiny_tar(), repository=image_repository, tag=tag)
    pushed = invoke("push", "--target", "gpu", env=env)  # "the other machine"
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    digest = registry.manifest_digest(repository, tag)
    for name in (ref, f"{registry.address}/{ref}"):  # this engine forgets the image
        docker_client.images.remove(name, force=True)
    uploads = registry.blob_uploads()

    dry = invoke("build", "--target", "gpu", "--unless-pushed", "--dry-run", env=env)
    assert dry.returncode == 0 and f"asks {registry.address}/{ref} for the tag first" in dry.stdout, dry.stdout
    build = invoke("build", "--target", "gpu", "--unless-pushed", env=env)
    assert build.returncode == 0, build.stdout + build.stderr
    assert f"{registry.address}/{ref}@{digest} is in the registry: the same inputs, so nothing built" in build.stdout
    assert not docker_client.images.list(name=image_repository), "it built (or pulled) the image"
    push = invoke("push", "--target", "gpu", env=env)
    assert push.returncode == 0, push.stdout + push.stderr
    assert push.stdout.splitlines() == [
        f"{ref} is not built on this machine; the registry has it: {registry.address}/{ref}@{digest}",
        "nothing pushed: pushed from another machine under the same content-addressed tag"], push.stdout
    assert registry.blob_uploads() == uploads

    # The workflow's own path: the workspace's ACR, found and logged in to through the workspace (aad).
    tasks, fake, c = aad_tasks(registry, tmp_path, monkeypatch, repository)
    capsys.readouterr()
    tasks.build(c, target="gpu", unless_pushed=True)
    assert f"{registry.address}/{ref}@{digest} is in the registry" in capsys.readouterr().out
    assert fake.calls == [("registry_login_server",), ("acr_refresh_token", registry.address)]  # once each
    fake.calls.clear()
    tasks.register(c, target="gpu")
    assert fake.names().count("acr_refresh_token") == 1
    summary = tmp_path / "summary.md"
    tasks.submit(c, target="gpu", compute="gpu-cluster", wait=True, summary=str(summary))
    out = capsys.readouterr().out
    assert f"{ref} is not built on this machine; the registry has it: {registry.address}/{ref}@{digest}" in out
    assert "warning" not in out, out
    assert TOKEN not in out
    _, _, tags = fake.submitted[0]
    assert tags["amltrain.image_digest"] == digest and tags["amltrain.image_id"] == "unknown"
    assert f"| Image digest | `{digest}` |" in summary.read_text()
    assert "Status: **Completed**" in summary.read_text()
    assert not docker_client.images.list(name=image_repository)


def aad_tasks(registry, tmp_path, monkeypatch, repository: str):
    """The tasks module, a workspace stand-in whose ACR is the test registry (its AAD exchange gives the token
    the registry accepts), and a Context configured for it."""
    tasks = project_tasks()
    workspace = tmp_path / "config.json"
    workspace.write_text(json.dumps({"subscription_id": "s", "resource_group": "r", "workspace_name": "ws"}))
    fake = RecordingBackend(login_server=registry.address, refresh_token=TOKEN)
    fake.computes["gpu-cluster"] = azure_backend.ComputeInfo("gpu-cluster", "Standard_NC48ads_A100_v4", 0, 4)
    for sdk in (v1, v2):  # the network seam of either SDK (the session asks the chosen SDK's adapter)
        monkeypatch.setattr(sdk, "connect", lambda settings, start: fake)
    c = Context(config=config.load(ROOT, {"images": {"repository": repository},
                                          "azure": {"config_file": str(workspace),
                                                    "registry": {"address": "", "auth": "aad"}}}))
    return tasks, fake, c


def test_build_unless_pushed_builds_when_the_registry_lacks_the_tag(docker_client, registry, cpu_image, tmp_path,
                                                                      monkeypatch, capsys):
    """The CPU image under a repository the registry has never seen: asked through the workspace's ACR, the tag
    is missing, so it is built (from BuildKit's cache of the CPU image: seconds)."""
    repository = f"amltrain-pushtest/fresh-{uuid.uuid4().hex[:8]}"
    tasks, fake, c = aad_tasks(registry, tmp_path, monkeypatch, repository)
    ref = f"{repository}:{cpu_image.rsplit(':', 1)[1]}"
    try:
        tasks.build(c, target="cpu", unless_pushed=True)
        out = capsys.readouterr().out
        assert re.search(rf"^built {re.escape(ref)} in \d", out, re.M), out
        assert ("acr_refresh_token", registry.address) in fake.calls
        assert docker_client.images.get(ref).id == docker_client.images.get(cpu_image).id
    finally:
        with contextlib.suppress(Exception):
            docker_client.images.remove(ref)


def test_the_aad_path_feeds_push_register_and_submit(registry, cpu_ref, tmp_path, monkeypatch, capsys):
    """The workspace's ACR via an AAD token exchange (here: the stand-in backend's token, which the registry
    accepts for ACR's token user), then register and submit --wait of a run that fails, all through the tasks."""
    tasks = project_tasks()
    workspace = tmp_path / "config.json"
    workspace.write_text(json.dumps({"subscription_id": "s", "resource_group": "r", "workspace_name": "ws"}))
    fake = RecordingBackend(login_server=registry.address, refresh_token=TOKEN, final_status="Failed")
    fake.computes["gpu-cluster"] = azure_backend.ComputeInfo("gpu-cluster", "Standard_NC24ads_A100_v4", 0, 4)
    for sdk in (v1, v2):  # the network seam of either SDK (the session asks the chosen SDK's adapter)
        monkeypatch.setattr(sdk, "connect", lambda settings, start: fake)
    c = Context(config=config.load(ROOT, {"images": {"repository": REPOSITORY},
                                          "azure": {"config_file": str(workspace),
                                                    "registry": {"address": "", "auth": "aad"}}}))
    tasks.push(c, target="cpu")
    assert ("acr_refresh_token", registry.address) in fake.calls
    remote = re.escape(f"{registry.address}/{cpu_ref}")
    assert re.search(rf"pushed {remote}@sha256|{remote} is already in the registry", capsys.readouterr().out)
    tasks.register(c, target="cpu")
    tasks.register(c, target="cpu")
    assert fake.names().count("register_environment") == 1
    (env,) = fake.environments.values()
    digest = registry.manifest_digest(REPOSITORY, cpu_ref.rsplit(":", 1)[1])
    assert env.image == f"{registry.address}/{REPOSITORY}@{digest}"  # pinned to the pushed digest
    assert fake.registered[0].image == env.image and not fake.registered[0].conda_file  # SDK v2: the image as is
    with pytest.raises(Exit) as failed:
        tasks.submit(c, target="cpu", compute="gpu-cluster", wait=True)
    run_id = next(call[2] for call in fake.calls if call[0] == "submit")
    assert failed.value.code == 1 and str(failed.value.message).startswith(f"error: run {run_id} ended Failed")
    _, src, tags = fake.submitted[0]
    assert tags["amltrain.image_digest"] == registry.manifest_digest(REPOSITORY, cpu_ref.rsplit(":", 1)[1])
    assert TOKEN not in capsys.readouterr().out


def test_a_connection_dropped_mid_push_is_retried_and_the_registry_gets_the_local_digest(docker_client, registry):
    """The network drops the push's manifest upload (after every layer went up): the engine gives up on that push
    and says so in the stream, the retry resumes it (the layers are there already, only the manifest goes again),
    and the digest the registry serves is the one this engine computed."""
    repository = f"amltrain-pushtest/dropped-{uuid.uuid4().hex[:8]}"
    proxy = local_registry.DroppingProxy(registry.address, rb"PUT /v2/[^ ]+/manifests/")
    env = basic_env(registry, INVOKE_IMAGES_REPOSITORY=repository, INVOKE_AZURE_REGISTRY_ADDRESS=proxy.address,
                    INVOKE_AZURE_PUSH_BACKOFF_SECONDS="0.1")
    ref = invoke("image-ref", "--target", "gpu", env=env).stdout.strip()
    image_repository, tag = ref.rsplit(":", 1)
    docker_client.api.import_image_from_data(tiny_tar(), repository=image_repository, tag=tag)
    uploads = registry.blob_uploads()
    try:
        result = invoke("push", "--target", "gpu", env=env)
        local_digests = docker_client.images.get(ref).attrs["RepoDigests"]
    finally:
        proxy.close()
        for name in (ref, f"{proxy.address}/{ref}"):
            with contextlib.suppress(Exception):
                docker_client.images.remove(name, force=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert proxy.dropped == 1
    retried = rf"push at {re.escape(proxy.address)}: .*; retrying in 0.1 s \(1/3\)"
    assert re.search(retried, result.stdout), result.stdout
    # resumed: the second attempt found the layer there and sent only what was missing
    assert "layer already exists" in result.stdout and registry.blob_uploads() - uploads == 2  # layer, config
    match = re.search(r"pushed (\S+)@(sha256:[0-9a-f]{64})", result.stdout)
    assert match and match.group(1) == f"{proxy.address}/{ref}", result.stdout
    assert registry.manifest_digest(repository, tag) == match.group(2)
    assert local_digests == [f"{proxy.address}/{repository}@{match.group(2)}"]
