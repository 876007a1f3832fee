"""The Azure ML Environment of an image: ``Environment.from_docker_image`` with user-managed dependencies.

Name ``amltrain-<target>`` (``azure.environment.name``), version = the 12-hex content hash of the image tag.
So the same image is always the same version, a different image a different one, and both are known before
contacting Azure (a dry run prints the exact definition). With user-managed dependencies Azure ML runs the
image as it is: no conda layer is solved and built on top (the custom-image pitfall of MLN #1484).
Registry credentials go into the definition only for a registry other than the workspace's, and only when a
user name is configured for it (``azure.registry.username``, basic auth); the workspace's ACR needs none.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ToolkitError
from .spec import REGISTRY_PASSWORD_ENV, AzureSettings


@dataclass(frozen=True)
class EnvironmentRef:
    name: str
    version: str
    image: str  # the registry reference Azure ML pulls

    @property
    def repository(self) -> str:
        """registry/repository of ``image``: where an engine records the digest it pushed."""
        return self.image.rsplit(":", 1)[0]


def environment_ref(settings: AzureSettings, target: str, local_ref: str, registry: str) -> EnvironmentRef:
    tag = local_ref.rsplit(":", 1)[1]
    version = tag.rsplit("-", 1)[1]
    name = (settings.environment_name or "amltrain-{target}").replace("{target}", target)
    if name.lower().startswith(("microsoft", "azureml")):
        raise ToolkitError(f"environment name {name!r} is reserved by Azure ML (Microsoft*/AzureML*)",
                           "choose another azure.environment.name")
    return EnvironmentRef(name=name, version=version, image=f"{registry}/{settings.registry.repository}:{tag}")


def definition(ref: EnvironmentRef, settings: AzureSettings, environ: Mapping[str, str] = os.environ):
    """The SDK's Environment object, exactly what ``register`` sends and a run's configuration carries."""
    from azureml.core import Environment
    from azureml.core.container_registry import ContainerRegistry

    registry = None
    if settings.registry.address and settings.registry.username:
        registry = ContainerRegistry()
        registry.address = settings.registry.address
        registry.username = settings.registry.username
        registry.password = environ.get(REGISTRY_PASSWORD_ENV) or None
        if not registry.password:
            raise ToolkitError(f"the Environment needs the password of {settings.registry.username}@"
                               f"{settings.registry.address} for Azure ML to pull, and {REGISTRY_PASSWORD_ENV} is "
                               "not set", f"export {REGISTRY_PASSWORD_ENV}, or push to the workspace's ACR")
    env = Environment.from_docker_image(ref.name, ref.image, container_registry=registry)
    env.version = ref.version
    env.python.user_managed_dependencies = True  # from_docker_image sets it already; the point of it all
    # Environment() starts with EXAMPLE_ENV_VAR=EXAMPLE_VALUE; run variables belong in the run configuration.
    env.environment_variables.clear()
    return env


def serialized(env) -> dict:
    """``Environment._serialize_to_dict``: the body ``Environment.register`` posts."""
    from azureml.core import Environment

    return Environment._serialize_to_dict(env)


def registered(backend, name: str, version: str, image: str):
    """The workspace's Environment name:version, or None; one that points at another image is refused (the
    same content hash pushed to another registry)."""
    existing = backend.get_environment(name, version)
    if existing is not None and existing.docker.base_image != image:
        raise ToolkitError(f"environment {name}:{version} exists with image {existing.docker.base_image}, "
                           f"not {image}", "the same content hash from another registry: set "
                           "azure.environment.name to keep them apart")
    return existing


def ensure_registered(backend, env, out=None) -> tuple[object, bool]:
    """Register ``env`` unless its name:version exists (pointing at the same image)."""
    out = out or sys.stdout
    existing = registered(backend, env.name, env.version, env.docker.base_image)
    if existing is not None:
        return existing, False
    new = backend.register_environment(env)
    print(f"registered environment {new.name}:{new.version} ({env.docker.base_image})", file=out)
    return new, True
