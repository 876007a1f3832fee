"""The Docker engine connection: one place that turns "no engine" into one line with what to do."""

from __future__ import annotations

from .errors import ToolkitError

ENGINE_HINT = "start it (e.g. `sudo dockerd &` or `sudo systemctl start docker`) or set DOCKER_HOST"


def connect():
    """A docker-py client that has answered a ping."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        reason = str(exc).splitlines()[0][:160]
        raise ToolkitError(f"the Docker engine is not reachable: {reason}", ENGINE_HINT) from None
    return client


def image_exists(client, ref: str) -> bool:
    import docker

    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True
