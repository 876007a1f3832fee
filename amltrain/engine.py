"""The Docker engine connection: one place that turns "no engine" into one line with what to do."""

from __future__ import annotations

from .errors import ToolkitError

ENGINE_HINT = "start it (e.g. `sudo dockerd &` or `sudo systemctl start docker`) or set DOCKER_HOST"


def context_host() -> str | None:
    """The engine the docker CLI's current context points at (Docker Desktop, rootless, remote), so that
    docker-py talks to the same engine as the builds. None when DOCKER_HOST decides or no CLI answers."""
    import os
    import shutil
    import subprocess

    cli = shutil.which("docker")
    if os.environ.get("DOCKER_HOST") or cli is None:
        return None
    try:
        result = subprocess.run([cli, "context", "inspect", "--format", "{{.Endpoints.docker.Host}}"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    host = result.stdout.strip()
    return host if result.returncode == 0 and host.startswith(("unix://", "tcp://", "npipe://")) else None


def connect():
    """A docker-py client that has answered a ping."""
    import docker

    try:
        host = context_host()
        client = docker.DockerClient(base_url=host) if host else docker.from_env()
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


def host_gpu_count() -> int:
    """NVIDIA GPUs on this host, as nvidia-smi lists them (0 without the driver)."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return 0
    result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in result.stdout.splitlines()) if result.returncode == 0 else 0
