"""The Azure ML Environment of an image, for either SDK.

Name ``amltrain-<target>`` (``azure.environment.name``), version = the 12-hex content hash of the image tag.
So the same image is always the same version, a different image a different one, and both are known before
contacting Azure (a dry run prints the exact definition). The image is named by its pushed digest
(``repo@sha256:…``), so a later push of the same tag from another machine cannot change what a registered
version runs. Each SDK builds its own definition (``v1.environment``, ``v2.build``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ..errors import ToolkitError
from .preflight import check_name
from .settings import AzureSettings


@dataclass(frozen=True)
class EnvironmentRef:
    name: str
    version: str
    repository: str  # registry/repository
    tag: str
    digest: str = ""  # sha256:… once the registry has it

    @property
    def image(self) -> str:
        """What Azure ML pulls: the digest when known, else the tag."""
        return f"{self.repository}@{self.digest}" if self.digest else self.tag_ref

    @property
    def tag_ref(self) -> str:
        return f"{self.repository}:{self.tag}"


def environment_ref(settings: AzureSettings, target: str, local_ref: str, registry: str,
                    digest: str = "") -> EnvironmentRef:
    tag = local_ref.rsplit(":", 1)[1]
    version = tag.rsplit("-", 1)[1]
    name = (settings.environment_name or "amltrain-{target}").replace("{target}", target)
    if name.lower().startswith(("microsoft", "azureml")):
        raise ToolkitError(f"environment name {name!r} is reserved by Azure ML (Microsoft*/AzureML*)",
                           "choose another azure.environment.name")
    check_name(name, "environment", "azure.environment.name")
    return EnvironmentRef(name=name, version=version, repository=f"{registry}/{settings.registry.repository}",
                          tag=tag, digest=digest.split("@")[-1] if digest else "")


def registered(backend, ref: EnvironmentRef):
    """The workspace's Environment name:version (an ``EnvironmentInfo``), or None; one that points at another
    image is refused (the same content hash pushed to another registry). One registered by tag before digests
    were pinned is the same image."""
    existing = backend.get_environment(ref.name, ref.version)
    if existing is not None and existing.image not in (ref.image, ref.tag_ref):
        raise ToolkitError(f"environment {ref.name}:{ref.version} exists with image {existing.image}, "
                           f"not {ref.image}", "the same content hash from another registry: set "
                           "azure.environment.name to keep them apart")
    return existing


def ensure_registered(backend, ref: EnvironmentRef, definition, out=None) -> tuple[object, bool]:
    """Register ``definition`` (the SDK's Environment for ``ref``) unless its name:version exists."""
    out = out or sys.stdout
    existing = registered(backend, ref)
    if existing is not None:
        return existing, False
    new = backend.register_environment(definition)
    print(f"registered environment {new.name}:{new.version} ({ref.image})", file=out)
    return new, True
