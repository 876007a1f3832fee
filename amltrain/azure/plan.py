"""What ``invoke submit`` decides offline, for either SDK: the job against the cluster's declaration (or the
serverless instance type), its cloud inputs and the snapshot limits; the run's tags. Refused here when wrong,
before anything is built, uploaded or contacted."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import snapshot
from ..errors import ToolkitError
from ..registry import KnownImage
from ..spec import JobSpec
from . import preflight
from .checkpoints import ENV as CHECKPOINT_ENV
from .checkpoints import CheckpointLocation
from .data import RemoteInput, check_references, remote_inputs
from .environment import EnvironmentRef
from .settings import AzureSettings, ComputeSpec

SERVERLESS = "serverless"  # --compute serverless: no cluster; the job names its instance type (SDK v2)


@dataclass(frozen=True)
class Plan:
    """What was decided offline: refused here when wrong, before anything is contacted."""

    job: JobSpec
    compute: ComputeSpec  # serverless: name "serverless", vm_size the instance type
    inputs: Mapping[str, RemoteInput]
    communication: str  # PyTorch's backend: nccl | gloo
    snapshot_files: int
    snapshot_bytes: int
    warnings: tuple[str, ...] = ()
    checkpoints: CheckpointLocation | None = None  # the folder AMLTRAIN_CHECKPOINT_DIR names on every attempt

    @property
    def serverless(self) -> bool:
        return self.compute.name == SERVERLESS

    @property
    def instance_type(self) -> str:
        return self.compute.vm_size if self.serverless else ""


def plan(job: JobSpec, settings: AzureSettings, compute: str | None, inputs: Iterable[str], gpu_target: bool,
         instance_type: str | None = None, checkpoints: CheckpointLocation | None = None) -> Plan:
    """The job against the cluster's declaration (or the serverless instance type), its names, its inputs and
    the snapshot limits (the base image is checked where the image is chosen: ``preflight.check_base_image``).
    ``checkpoints``: the job's checkpoint folder (``checkpoints.location``); None mounts none."""
    spec = _compute(settings, compute, instance_type)
    preflight.check_name(job.experiment, "experiment", "job.experiment")
    warnings: list[str] = []
    if spec.declared:
        if not spec.vm_size:
            raise ToolkitError(f"azure.computes.{spec.name} has no vm_size", "declare its vm_size in invoke.yaml")
        warnings += preflight.check_shape(job.distribution, spec.name, spec.vm_size, spec.max_nodes)
        communication = preflight.communication_backend(spec.vm_size)
        if communication == "nccl" and not gpu_target:
            warnings.append(f"target {job.target} is a CPU image on {spec.vm_size}, a GPU size: its GPUs stay idle "
                            "(use --target gpu, or a CPU cluster)")
    else:
        warnings.append(f"compute {spec.name} is not declared in azure.computes: its VM size and node limit are "
                        "checked against the workspace when submitting")
        communication = "nccl" if gpu_target else "gloo"
    remote = remote_inputs(settings.inputs, inputs)
    for text in (*job.arguments, job.command):
        check_references(text, remote)
    names = snapshot.files(job.source_dir)
    size = snapshot.check_limits(job.source_dir, names)
    if not job.command:
        snapshot.check_script(job.source_dir, job.script, names)
    if checkpoints is not None and CHECKPOINT_ENV in job.environment:
        warnings.append(f"{CHECKPOINT_ENV} set in the job's environment is replaced by the checkpoint folder's "
                        "mount point")
    return Plan(job=job, compute=spec, inputs=remote, communication=communication, snapshot_files=len(names),
                snapshot_bytes=size, warnings=tuple(warnings), checkpoints=checkpoints)


def _compute(settings: AzureSettings, compute: str | None, instance_type: str | None) -> ComputeSpec:
    name = compute or settings.compute
    if not name:
        raise ToolkitError("no compute given", "use --compute NAME (or serverless) or set azure.compute")
    if name == SERVERLESS:
        size = instance_type or settings.instance_type
        if not size:
            raise ToolkitError("serverless compute needs an instance type",
                               "give --instance-type SIZE (e.g. Standard_NC24ads_A100_v4) or set azure.instance_type")
        preflight.check_vm_size(size, "--instance-type")
        return ComputeSpec(name=SERVERLESS, vm_size=size, max_nodes=0, declared=True)
    if instance_type:
        raise ToolkitError(f"--instance-type is for serverless compute; cluster {name} has its own VM size",
                           "drop --instance-type, or give --compute serverless")
    if name in settings.computes:
        return settings.computes[name]
    preflight.check_name(name, "compute", "--compute or azure.compute")
    return ComputeSpec(name=name, declared=False)


def git_commit(folder: Path) -> str:
    """HEAD of the source directory's repository, ``-dirty`` when it has uncommitted changes."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty else "")


def tags(p: Plan, env: EnvironmentRef, image: KnownImage | None, commit: str) -> dict[str, str]:
    d = p.job.distribution
    return {
        "amltrain.git_commit": commit,
        "amltrain.image": env.image,
        "amltrain.image_id": (image.image_id if image else "") or "unknown",
        "amltrain.image_digest": (image.digest_in(env.repository) if image else "") or "unknown",
        "amltrain.environment": f"{env.name}:{env.version}",
        "amltrain.launch": f"{d.launch} {d.nodes}x{d.procs_per_node}",
        "amltrain.target": p.job.target,
    }


