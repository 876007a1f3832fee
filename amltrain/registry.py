"""Push a content-addressed image to a registry with docker-py, and nothing more than needed.

- Credentials go to the engine only: ``login`` (checked up front, so a wrong password is one line before
  any upload) and ``auth_config`` on each call. docker-py keeps them in memory and writes no config file;
  with ``auth: docker`` none are given and Docker's own credential store answers.
- Skip: the registry's manifest digest for the tag (``inspect_distribution``) is compared with the digests
  this engine recorded when it pushed the image (``RepoDigests``); equal means already there, nothing sent.
- The registry is also a build cache: the tag is a hash of the image's inputs, so an image some other machine
  pushed under it (an earlier CI run) is the image this machine would build. ``pushed_image`` finds it, so a
  fresh runner builds, pushes and pulls nothing that did not change.
- docker-py does not raise when a push fails: the failure is an ``error`` event in the stream, so every
  event is checked.
- Transient failures (connection refused or reset, timeouts, 5xx) are retried with exponential backoff;
  authentication and "not found" errors are not.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ToolkitError
from .masking import MASK

TRANSIENT = ("connection refused", "connection reset", "connection aborted", "timeout", "timed out", "eof",
             "502", "503", "504", "500 internal", "too many requests", "429", "temporarily unavailable",
             "broken pipe", "tls handshake")
AUTH = ("unauthorized", "authentication required", "denied", "401", "403", "forbidden", "incorrect username")


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}


@dataclass(frozen=True)
class KnownImage:
    """An image as far as this machine knows it: built here (``image_id`` set), or only seen in a registry."""

    ref: str
    image_id: str  # "" when the image is only in a registry
    repo_digests: tuple[str, ...] = ()

    @property
    def pushed_as(self) -> str:
        """``registry/repository:tag@digest`` of the first push this machine knows of, or ""."""
        if not self.repo_digests:
            return ""
        repository, _, digest = self.repo_digests[0].partition("@")
        return f"{repository}:{self.ref.rsplit(':', 1)[1]}@{digest}"

    def digest_in(self, repository: str) -> str:
        """The manifest digest this engine recorded for ``repository`` (registry/name), or ""."""
        for entry in self.repo_digests:
            name, _, digest = entry.partition("@")
            if name == repository:
                return digest
        return ""


@dataclass(frozen=True)
class PushRequest:
    local: str  # amltrain/train:gpu-<hash>
    registry: str  # host[:port]
    repository: str  # path in the registry, e.g. amltrain/train
    credentials: Credentials | None  # None: Docker's own credential store
    credential_source: str = ""  # how they were obtained, for the dry run (never the secret)
    retries: int = 3
    backoff_seconds: float = 2.0

    @property
    def tag(self) -> str:
        return self.local.rsplit(":", 1)[1]

    @property
    def remote_repository(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def remote(self) -> str:
        return f"{self.remote_repository}:{self.tag}"

    def describe(self) -> dict:
        login = (f"{self.credentials.username} / {MASK} ({self.credential_source})" if self.credentials
                 else self.credential_source or "Docker's credential store")
        return {"image": self.local, "push_to": self.remote, "registry": self.registry, "login": login,
                "skip": "when the registry's digest for the tag is the one this engine pushed, or when this "
                        "machine never built the image and the registry has the tag (pushed from elsewhere)",
                "retries": self.retries, "backoff_seconds": self.backoff_seconds}


@dataclass(frozen=True)
class PushResult:
    remote: str
    digest: str
    pushed: bool
    seconds: float


def built_image(client, ref: str) -> KnownImage | None:
    """The image ``invoke build`` made on this engine, or None."""
    import docker

    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    return KnownImage(ref, image.id, tuple(image.attrs.get("RepoDigests") or ()))


def not_built(ref: str, target: str = "", elsewhere: str = "") -> ToolkitError:
    return ToolkitError(f"image {ref} is not built on this machine{elsewhere}",
                        f"run `invoke build --target {target or ref.rsplit(':', 1)[1].split('-')[0]}` first; "
                        "the tag is a hash of the image's inputs, so a changed Dockerfile or spec needs a build")


def local_image(client, ref: str, target: str = "") -> KnownImage:
    """The image ``invoke build`` made; a tag it has not made is refused (one line, with the fix)."""
    image = built_image(client, ref)
    if image is None:
        raise not_built(ref, target)
    return image


def classify(message: str) -> str:
    lowered = message.lower()
    if any(word in lowered for word in AUTH):
        return "auth"
    if any(word in lowered for word in TRANSIENT):
        return "transient"
    return "other"


def _explain(exc) -> str:
    import docker

    if isinstance(exc, docker.errors.APIError):
        return str(exc.explanation or exc)
    return str(exc)


def retrying(request: PushRequest, what: str, action: Callable[[], object],
             sleep: Callable[[float], None] = time.sleep, out=None):
    """Run ``action``; retry transient failures with exponential backoff, refuse the rest in one line."""
    out = out or sys.stdout
    import docker
    import requests

    attempt = 0
    while True:
        attempt += 1
        try:
            return action()
        except (docker.errors.DockerException, requests.exceptions.RequestException, PushFailed) as exc:
            explained = _explain(exc).strip()
            message = explained.splitlines()[0][:240] if explained else type(exc).__name__
        kind = classify(message)
        if kind == "auth":
            raise ToolkitError(f"registry {request.registry} refused {what}: {message}",
                               "check the registry credentials (azure.registry.auth); for an ACR your identity "
                               "needs AcrPush")
        if kind != "transient" or attempt > request.retries:
            tried = f" after {attempt} attempt(s)" if kind == "transient" else ""
            raise ToolkitError(f"{what} at {request.registry} failed{tried}: {message}",
                               "check azure.registry.address and that the registry is reachable")
        delay = request.backoff_seconds * 2 ** (attempt - 1)
        print(f"{what} at {request.registry}: {message}; retrying in {delay:g} s "
              f"({attempt}/{request.retries})", file=out, flush=True)
        sleep(delay)


class PushFailed(Exception):
    """An ``error`` event in docker-py's push stream (it raises nothing by itself)."""


def remote_digest(client, request: PushRequest) -> str:
    """The registry's manifest digest for the tag, "" when the registry does not have it."""
    import docker

    auth = request.credentials.auth_config() if request.credentials else None
    try:
        return client.api.inspect_distribution(request.remote, auth_config=auth)["Descriptor"]["digest"]
    except docker.errors.NotFound:
        return ""
    except docker.errors.APIError as exc:
        if "manifest unknown" in _explain(exc).lower() or "not found" in _explain(exc).lower():
            return ""
        raise


def _push_stream(client, request: PushRequest, out) -> str:
    auth = request.credentials.auth_config() if request.credentials else None
    digest, layers = "", set()
    for event in client.api.push(request.remote_repository, request.tag, stream=True, decode=True,
                                 auth_config=auth):
        if "error" in event:
            raise PushFailed(event.get("errorDetail", {}).get("message") or event["error"])
        if event.get("status") in ("Pushed", "Layer already exists", "Mounted from") and event.get("id"):
            if event["id"] not in layers:
                layers.add(event["id"])
                print(f"  {event['id']}: {event['status'].lower()}", file=out, flush=True)
        digest = (event.get("aux") or {}).get("Digest", digest)
    if not digest:
        raise PushFailed("the push ended without a digest")
    return digest


def registry_digest(client, request: PushRequest, out=None, sleep: Callable[[float], None] = time.sleep) -> str:
    """Log in (checked up front) and read the tag's digest in the registry; "" when it lacks the tag."""
    out = out or sys.stdout
    if request.credentials:
        retrying(request, f"login as {request.credentials.username}",
                 lambda: client.login(request.credentials.username, request.credentials.password,
                                      registry=request.registry, reauth=True), sleep, out)
    return retrying(request, "reading the tag's digest", lambda: remote_digest(client, request), sleep, out)


def pushed_image(client, request: PushRequest, out=None,
                 sleep: Callable[[float], None] = time.sleep) -> KnownImage | None:
    """The image the registry holds under the content-addressed tag (pushed from any machine), or None."""
    out = out or sys.stdout
    digest = registry_digest(client, request, out, sleep)
    return KnownImage(request.local, "", (f"{request.remote_repository}@{digest}",)) if digest else None


def push(client, request: PushRequest, image: KnownImage, out=None,
         sleep: Callable[[float], None] = time.sleep) -> PushResult:
    out = out or sys.stdout
    started = time.monotonic()
    there = registry_digest(client, request, out, sleep)
    ours = image.digest_in(request.remote_repository)
    if there and there == ours:
        return PushResult(request.remote, there, False, time.monotonic() - started)
    client.images.get(image.image_id).tag(request.remote_repository, request.tag)
    digest = retrying(request, "push", lambda: _push_stream(client, request, out), sleep, out)
    return PushResult(request.remote, digest, True, time.monotonic() - started)
