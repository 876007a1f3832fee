"""The Docker engine connection: one place that turns "no engine" into one line with what to do."""

from __future__ import annotations

import functools

from .errors import ToolkitError, first_line

ENGINE_HINT = "start it (e.g. `sudo dockerd &` or `sudo systemctl start docker`) or set DOCKER_HOST"


def _client_from_context():
    """A client for the docker CLI's current context (Docker Desktop, rootless, remote with TLS), read by
    docker-py's own context support, so containers go to the engine the builds go to. DOCKER_HOST wins."""
    import os

    import docker
    from docker.context import ContextAPI

    if os.environ.get("DOCKER_HOST"):
        return docker.from_env()
    context = ContextAPI.get_current_context()
    if context is None or not context.Host:
        return docker.from_env()
    return docker.DockerClient(base_url=context.Host, tls=context.TLSConfig or False,
                               use_ssh_client=context.Host.startswith("ssh://"))


@functools.lru_cache(maxsize=1)
def connect():
    """A docker-py client that has answered a ping; made once per process (a failure is not remembered)."""
    import docker

    try:
        client = _client_from_context()
        client.ping()
    except docker.errors.DockerException as exc:
        reason = first_line(exc, 160)
        raise ToolkitError(f"the Docker engine is not reachable: {reason}", ENGINE_HINT) from None
    return client


def local_image(client, ref: str):
    """The image in the engine's local store (docker-py's ``Image``), or None if it is not there."""
    import docker

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None


def image_exists(client, ref: str) -> bool:
    return local_image(client, ref) is not None


@functools.lru_cache(maxsize=1)
def host_gpu_count() -> int:
    """NVIDIA GPUs on this host, as nvidia-smi lists them (0 without the driver, or when it hangs); asked
    once per process."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return 0
    return sum(line.startswith("GPU ") for line in result.stdout.splitlines()) if result.returncode == 0 else 0
