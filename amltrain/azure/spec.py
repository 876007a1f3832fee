"""Frozen, I/O-free Azure settings: what ``config.azure_settings`` makes from ``azure:`` and task options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..spec import frozen_map

AUTH_MODES = ("auto", "cli", "service-principal", "managed-identity", "github-oidc")
REGISTRY_AUTH_MODES = ("aad", "admin", "basic", "docker")
# The one place a registry password may come from (basic auth): never a file, never an option.
REGISTRY_PASSWORD_ENV = "AMLTRAIN_REGISTRY_PASSWORD"


@dataclass(frozen=True)
class WorkspaceRef:
    subscription_id: str
    resource_group: str
    workspace_name: str
    source: str  # where it came from: a config.json path or "azure.* settings"


@dataclass(frozen=True)
class RegistrySettings:
    """Where images go. ``address`` empty means the workspace's own ACR (found through the workspace)."""

    address: str = ""
    repository: str = "amltrain/train"
    auth: str = "aad"  # aad (AAD token exchange) | admin (ACR admin user) | basic | docker (Docker's own store)
    username: str = ""  # basic only; the password is REGISTRY_PASSWORD_ENV


@dataclass(frozen=True)
class ComputeSpec:
    """An AmlCompute cluster. ``declared`` ones come from ``azure.computes``, so submit can check a job
    against them before contacting anything."""

    name: str
    vm_size: str = ""
    min_nodes: int = 0
    max_nodes: int = 4
    idle_seconds: int = 1800
    low_priority: bool = False
    declared: bool = True


@dataclass(frozen=True)
class AzureSettings:
    subscription_id: str = ""
    resource_group: str = ""
    workspace_name: str = ""
    config_file: str = ""  # a workspace config.json; empty: searched like Workspace.from_config
    auth: str = "auto"
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    push_retries: int = 3
    push_backoff_seconds: float = 2.0
    environment_name: str = ""  # empty: amltrain-<target>
    compute: str = ""  # default --compute
    computes: Mapping[str, ComputeSpec] = field(default_factory=frozen_map)
    shm_size: str = "2g"
    max_run_duration_seconds: int = 86400
    inputs: Mapping[str, str] = field(default_factory=frozen_map)  # NAME -> azureml:DATASET[:VERSION] | datastore:…
