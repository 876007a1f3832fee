"""The ``azure:`` settings: frozen, I/O-free, validated here from invoke configuration and task options (the Azure
side's part of ``amltrain.config``), so a bad value is one line before anything is contacted."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import choice, flag, key_values, number, section, size, whole
from ..errors import ToolkitError
from ..spec import frozen_map
from .preflight import check_name

SDKS = ("v2", "v1")
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
    # The cluster's managed identity: "" none, "system", or a user-assigned identity's resource id. With AcrPull
    # on a registry it lets the nodes pull images where the ACR admin user is disabled.
    identity: str = ""


@dataclass(frozen=True)
class CheckpointSettings:
    """Where a job's checkpoint folder lives on Azure (``job.checkpoints``): a datastore and a path template with
    ``{experiment}`` and ``{key}``, the job key every attempt and ``submit --resume`` of the job shares."""

    datastore: str = "workspaceblobstore"
    path: str = "amltrain-checkpoints/{experiment}/{key}"


@dataclass(frozen=True)
class AzureSettings:
    sdk: str = "v2"  # v2 (azure-ai-ml) | v1 (azureml-core, support ended 2026-06-30)
    subscription_id: str = ""
    resource_group: str = ""
    workspace_name: str = ""
    config_file: str = ""  # a workspace config.json; empty: searched like Workspace.from_config
    auth: str = "auto"
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    push_retries: int = 3
    push_backoff_seconds: float = 2.0
    environment_name: str = ""  # empty: amltrain-<target>
    compute: str = ""  # default --compute; "serverless" (v2) runs on instance_type without a cluster
    instance_type: str = ""  # default --instance-type for serverless compute
    computes: Mapping[str, ComputeSpec] = field(default_factory=frozen_map)
    shm_size: str = "2g"
    max_run_duration_seconds: int = 86400
    inputs: Mapping[str, str] = field(default_factory=frozen_map)  # NAME -> azureml:DATASET[:VERSION] | datastore:…
    checkpoints: CheckpointSettings = field(default_factory=CheckpointSettings)


def from_config(cfg: Mapping[str, Any], sdk: str | None = None) -> AzureSettings:
    """``azure:`` as validated settings. Reads no file and contacts nothing (the workspace config.json is
    searched later, by ``amltrain.azure.workspace``, only by the tasks that need a workspace)."""
    azure = section(cfg, "azure")
    registry = section(cfg, "azure.registry")
    push = section(cfg, "azure.push")
    submit = section(cfg, "azure.submit")
    shm_size = size(submit.get("shm_size"), "azure.submit.shm_size")
    backoff = number(push.get("backoff_seconds", 2), "azure.push.backoff_seconds", 0, "seconds, e.g. 2")
    computes = {name: _declared_compute(name, body) for name, body in section(cfg, "azure.computes").items()}
    address = str(registry.get("address") or "").strip().rstrip("/")
    if "@" in address:  # user:password@host would be printed by every dry run and kept in the Environment
        raise ToolkitError("azure.registry.address carries credentials",
                           f"give the host only; for a password: azure.registry.auth basic, azure.registry.username "
                           f"and ${REGISTRY_PASSWORD_ENV}")
    return AzureSettings(
        sdk=choice(sdk or azure.get("sdk"), "azure.sdk (or --sdk)", SDKS, "v2"),
        subscription_id=str(azure.get("subscription_id") or ""),
        resource_group=str(azure.get("resource_group") or ""),
        workspace_name=str(azure.get("workspace_name") or ""),
        config_file=str(azure.get("config_file") or ""),
        auth=choice(azure.get("auth"), "azure.auth", AUTH_MODES, "auto"),
        registry=RegistrySettings(
            address=address,
            repository=str(registry.get("repository") or section(cfg, "images").get("repository") or "amltrain"),
            auth=choice(registry.get("auth"), "azure.registry.auth", REGISTRY_AUTH_MODES, "aad"),
            username=str(registry.get("username") or ""),
        ),
        push_retries=whole(push.get("retries", 3), "azure.push.retries"),
        push_backoff_seconds=backoff,
        environment_name=str(section(cfg, "azure.environment").get("name") or ""),
        compute=str(azure.get("compute") or ""),
        instance_type=str(azure.get("instance_type") or ""),
        computes=frozen_map(computes),
        shm_size=shm_size,
        max_run_duration_seconds=whole(submit.get("max_run_duration_seconds", 86400),
                                        "azure.submit.max_run_duration_seconds", 1),
        inputs=frozen_map(key_values((f"{k}={v}" for k, v in section(cfg, "azure.submit.inputs").items()), "input")),
        checkpoints=checkpoint_settings(section(cfg, "job.checkpoints")),
    )


CHECKPOINT_PLACEHOLDERS = ("{experiment}", "{key}")
_DATASTORE_NAME = re.compile(r"[A-Za-z0-9_]{1,255}")
_CHECKPOINT_PATH = re.compile(r"[A-Za-z0-9_.{}-]+(/[A-Za-z0-9_.{}-]+)*")


def checkpoint_settings(configured: Mapping[str, Any]) -> CheckpointSettings:
    """``job.checkpoints``, refused in one line when a job's folder could be shared with another job's (no
    ``{key}``), leave the datastore (``..``) or carry characters a datastore path URI would have to escape."""
    default = CheckpointSettings()
    datastore = str(configured.get("datastore") or default.datastore).strip()
    path = str(configured.get("path") or default.path).strip().strip("/")
    if not _DATASTORE_NAME.fullmatch(datastore):
        raise ToolkitError(f"job.checkpoints.datastore {datastore!r} is not a datastore name (letters, digits, _)",
                           "e.g. workspaceblobstore")
    hint = f"e.g. {default.path}"
    if not _CHECKPOINT_PATH.fullmatch(path) or ".." in path.split("/"):
        raise ToolkitError(f"job.checkpoints.path {path!r} is not a relative datastore path of letters, digits, "
                           "'.', '_', '-' and '/'", hint)
    unknown = set(re.findall(r"{[^}]*}", path)) - set(CHECKPOINT_PLACEHOLDERS)
    if unknown or re.sub(r"{[^}]*}", "", path).count("{") + re.sub(r"{[^}]*}", "", path).count("}"):
        raise ToolkitError(f"job.checkpoints.path {path!r} has placeholders other than "
                           f"{' and '.join(CHECKPOINT_PLACEHOLDERS)}", hint)
    if "{key}" not in path:
        raise ToolkitError(f"job.checkpoints.path {path!r} has no {{key}}: every job would resume from the same "
                           "folder", f"{hint}; submit --resume JOB continues one job's checkpoints")
    return CheckpointSettings(datastore, path)


def _declared_compute(name: str, body: Any):
    if not isinstance(body, Mapping):
        raise ToolkitError(f"azure.computes.{name} must be a mapping (vm_size, min_nodes, max_nodes, …), got "
                           f"{body!r}", "fix invoke.yaml")
    return compute_spec(name, body, declared=True)


def compute_spec(name: str, configured: Mapping[str, Any] | None = None, *, vm_size: str | None = None,
                 min_nodes: Any = None, max_nodes: Any = None, idle_seconds: Any = None,
                 low_priority: bool | None = None, identity: str | None = None, declared: bool = False):
    """A cluster from its declaration (``azure.computes.NAME``) with task options winning."""
    configured = configured or {}
    check_name(name, "compute", "--name, azure.compute or azure.computes")
    if name == "serverless":
        raise ToolkitError("serverless is not a cluster: `submit --compute serverless` needs none",
                           "give --instance-type to submit instead, or another --name")

    def option(value, key: str, default):  # the option when given, else the declaration; named as given
        return (value, f"--{key.replace('_', '-')}") if value is not None else \
            (configured.get(key, default), f"azure.computes.{name}.{key}")

    spec = ComputeSpec(
        name=name,
        vm_size=str(vm_size or configured.get("vm_size") or ""),
        min_nodes=whole(*option(min_nodes, "min_nodes", 0)),
        max_nodes=whole(*option(max_nodes, "max_nodes", 4), 1),
        idle_seconds=whole(*option(idle_seconds, "idle_seconds", 1800)),
        low_priority=flag(low_priority if low_priority is not None else configured.get("low_priority")),
        identity=_identity(identity if identity is not None else configured.get("identity"), name),
        declared=declared,
    )
    if spec.min_nodes > spec.max_nodes:
        raise ToolkitError(f"compute {name}: min nodes {spec.min_nodes} > max nodes {spec.max_nodes}",
                           "lower --min-nodes or raise --max-nodes")
    return spec


def _identity(value: Any, name: str) -> str:
    value = str(value or "").strip()
    if value.lower() in ("", "none"):
        return ""
    if value.lower() in ("system", "systemassigned"):
        return "system"
    if not value.lower().startswith("/subscriptions/") or "/userassignedidentities/" not in value.lower():
        raise ToolkitError(f"compute {name}: identity {value!r} is not none, system or a user-assigned identity's "
                           "resource id", "e.g. /subscriptions/SUB/resourceGroups/RG/providers/"
                           "Microsoft.ManagedIdentity/userAssignedIdentities/NAME")
    return value


def compute_for(settings, name: str, *, priority: str | None = None, **options):
    """The cluster ``invoke compute`` makes: its declaration (if any) with the task's options winning."""
    declared = settings.computes.get(name)
    low = None
    if priority is not None:
        value = str(priority).strip().lower()
        if value not in ("dedicated", "low", "lowpriority"):
            raise ToolkitError(f"priority {priority!r} is not dedicated or low", "e.g. --priority low")
        low = value != "dedicated"
    return compute_spec(name, dataclasses.asdict(declared) if declared else {}, low_priority=low,
                        declared=declared is not None, **options)
