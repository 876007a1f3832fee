"""SDK v1: the Environment of an image, ``Environment.from_docker_image`` with user-managed dependencies.

With user-managed dependencies Azure ML runs the image as it is: no conda layer is solved and built on top (the
custom-image pitfall of MLN #1484). Registry credentials go into the definition only for a registry other than
the workspace's, and only when a user name is configured for it (``azure.registry.username``, basic auth); the
workspace's ACR needs none.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ...errors import ToolkitError
from ..environment import EnvironmentRef
from ..settings import REGISTRY_PASSWORD_ENV, AzureSettings


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
    # Environment() also starts with the SDK's placeholder conda spec (python 3.8, azureml-defaults), unused
    # with user-managed dependencies but shown in the studio as if it were the image's: none is sent.
    env.python.conda_dependencies = None
    return env


def environment_body(env) -> dict:
    """``Environment._serialize_to_dict``: the body ``Environment.register`` posts."""
    from azureml.core import Environment

    return Environment._serialize_to_dict(env)
