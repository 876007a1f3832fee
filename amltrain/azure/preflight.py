"""Checks that refuse, before anything is sent, what Azure ML would run badly or refuse late.

- GPUs per node of the VM sizes people train on: more processes per node than GPUs is NCCL's "Duplicate GPU
  detected" failure (azureml-examples #675), found here instead of minutes into a run.
- Retired VM sizes (the seed's ``STANDARD_NC6``): Azure deallocates them; the replacement is named.
- Deprecated AzureML base images: long-gone ones are refused, deprecated ones warned, with the replacement.

Sources (Microsoft Learn, "GPU accelerated VM sizes" and the retirement notices in
``azure-docs/articles/virtual-machines``): NCasT4_v3, NC A100 v4, NCads H100 v5, ND A100 v4, NDm A100 v4,
ND H100 v5, ND H200 v5, NDv2, NVv3 size tables; NC (v1), NCv2, ND (v1) and NV (v1) retired 2023-09-06
(``sizes/migration-guides/n*-series-retirement.md``); NC6s_v3, NC12s_v3, NC24s_v3 retired 2025-09-30 with
NC A100 v4 named as the replacement (``ncv3-nc6s-nc12s-nc24s-retirement.md``), NC24rs_v3 by its own notice
(aka.ms/nc24rsv3migrationguide). Base images: github.com/Azure/AzureML-Containers release notes.
"""

from __future__ import annotations

import re

from ..errors import ToolkitError
from ..spec import Distribution

GPUS_PER_NODE = {
    # NCasT4_v3 (NVIDIA T4)
    "standard_nc4as_t4_v3": 1, "standard_nc8as_t4_v3": 1, "standard_nc16as_t4_v3": 1, "standard_nc64as_t4_v3": 4,
    # NC A100 v4 (A100 PCIe 80 GB)
    "standard_nc24ads_a100_v4": 1, "standard_nc48ads_a100_v4": 2, "standard_nc96ads_a100_v4": 4,
    # NCads H100 v5 (H100 NVL)
    "standard_nc40ads_h100_v5": 1, "standard_nc80adis_h100_v5": 2,
    # ND-series with InfiniBand: A100 v4, NDm A100 v4, H100 v5, H200 v5, NDv2 (V100)
    "standard_nd96asr_v4": 8, "standard_nd96amsr_a100_v4": 8, "standard_nd96isr_h100_v5": 8,
    "standard_nd96isr_h200_v5": 8, "standard_nd40rs_v2": 8,
    # NVv3 (Tesla M60; visualization sizes, listed so they are not mistaken for CPU sizes)
    "standard_nv12s_v3": 1, "standard_nv24s_v3": 2, "standard_nv48s_v3": 4,
}

_A100 = {1: "Standard_NC24ads_A100_v4", 2: "Standard_NC48ads_A100_v4", 4: "Standard_NC96ads_A100_v4"}


def _retired(sizes: dict[str, int], when: str) -> dict[str, tuple[str, str]]:
    return {size.lower(): (when, _A100[gpus]) for size, gpus in sizes.items()}


RETIRED = {
    **_retired({"Standard_NC6": 1, "Standard_NC12": 2, "Standard_NC24": 4, "Standard_NC24r": 4}, "2023-09-06"),
    **_retired({"Standard_NC6s_v2": 1, "Standard_NC12s_v2": 2, "Standard_NC24s_v2": 4, "Standard_NC24rs_v2": 4},
               "2023-09-06"),
    **_retired({"Standard_ND6s": 1, "Standard_ND12s": 2, "Standard_ND24s": 4, "Standard_ND24rs": 4}, "2023-09-06"),
    **_retired({"Standard_NV6": 1, "Standard_NV12": 2, "Standard_NV24": 4}, "2023-09-06"),
    **_retired({"Standard_NC6s_v3": 1, "Standard_NC12s_v3": 2, "Standard_NC24s_v3": 4}, "2025-09-30"),
    **_retired({"Standard_NC24rs_v3": 4}, "2025"),
}

# AzureML base images (mcr.microsoft.com/azureml/<name>): gone ones refused, deprecated ones warned.
GONE_IMAGES = re.compile(r"azureml/(openmpi3\.1\.2-|intelmpi2018\.3-|base(-gpu)?:|lite)|ubuntu1[68]\.04")
DEPRECATED_IMAGES = re.compile(r"azureml/openmpi4\.1\.0-(ubuntu20\.04|cuda11[^/]*)|cudnn8")
CPU_REPLACEMENT = "mcr.microsoft.com/azureml/openmpi5.0-ubuntu24.04"
GPU_REPLACEMENT = "mcr.microsoft.com/azureml/openmpi5.0-cuda13.1-ubuntu24.04"


def gpus_per_node(vm_size: str) -> int | None:
    """GPUs of one node; 0 for a CPU size; None for an N-series (GPU) size this table does not know."""
    key = vm_size.strip().lower()
    if key in GPUS_PER_NODE:
        return GPUS_PER_NODE[key]
    return None if key.startswith("standard_n") else 0


def check_vm_size(vm_size: str, option: str = "--vm-size") -> None:
    retired = RETIRED.get(vm_size.strip().lower())
    if retired:
        when, replacement = retired
        raise ToolkitError(f"VM size {vm_size} was retired by Azure ({when}); clusters of it no longer run",
                           f"use {replacement} (same GPU count), e.g. {option} {replacement}")


def communication_backend(vm_size: str) -> str:
    """PyTorchConfiguration's backend: NCCL where there are GPUs, gloo on CPU sizes."""
    return "gloo" if gpus_per_node(vm_size) == 0 else "nccl"


def check_shape(distribution: Distribution, compute: str, vm_size: str, max_nodes: int) -> list[str]:
    """Refuse a job the cluster cannot run; return warnings for what cannot be checked."""
    check_vm_size(vm_size)
    if max_nodes and distribution.nodes > max_nodes:  # 0: serverless, no cluster limit to check
        raise ToolkitError(f"{distribution.nodes} nodes asked, but compute {compute} scales to at most {max_nodes}",
                           f"lower --nodes, or raise the cluster's maximum: invoke compute --name {compute} "
                           f"--max-nodes {distribution.nodes}")
    gpus = gpus_per_node(vm_size)
    if gpus is None:
        return [f"VM size {vm_size} is not in the GPU table: processes per node were not checked against its GPUs"]
    if gpus and distribution.procs_per_node > gpus:
        raise ToolkitError(
            f"{distribution.procs_per_node} processes per node on {vm_size}, which has {gpus} GPU(s) per node",
            f"NCCL would fail with 'Duplicate GPU detected'; use --procs-per-node {gpus} or a larger VM size")
    return []


def check_base_image(base_image: str, gpu: bool) -> list[str]:
    """Refuse a base image Microsoft removed; warn about a deprecated one. Returns the warnings."""
    replacement = GPU_REPLACEMENT if gpu or "cuda" in base_image else CPU_REPLACEMENT
    if GONE_IMAGES.search(base_image):
        raise ToolkitError(f"base image {base_image} is no longer published or patched by Microsoft",
                           f"use {replacement}:<dated tag> as images.<target>.base_image")
    if DEPRECATED_IMAGES.search(base_image):
        return [f"base image {base_image} is deprecated (no more patches); move to {replacement}:<dated tag>"]
    return []


# What the service accepts, so a bad name is refused before anything is uploaded (Azure ML's REST validation).
NAME_RULES = {
    "experiment": (re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,254}"),
                   "1-255 letters, digits, _ or -, starting with a letter or digit"),
    "environment": (re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}"),
                    "1-255 letters, digits, _, . or -, starting with a letter or digit"),
    "compute": (re.compile(r"[A-Za-z][A-Za-z0-9-]{2,23}"), "3-24 letters, digits or -, starting with a letter"),
    "job": (re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,254}"),
            "1-255 letters, digits, _ or -, starting with a letter or digit"),
    "model": (re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}"),
              "1-255 letters, digits, _, . or -, starting with a letter or digit"),
}


def check_name(name: str, kind: str, where: str) -> str:
    """Refuse a name Azure ML would reject (``where``: the setting or option it came from)."""
    pattern, rule = NAME_RULES[kind]
    if not pattern.fullmatch(name or ""):
        raise ToolkitError(f"{kind} name {name!r} is not valid for Azure ML ({rule})", f"change {where}")
    return name


def pull_warnings(settings, cluster=None, serverless: bool = False) -> list[str]:
    """When the compute may not be able to pull the image (a job then waits, then fails on the image pull):
    a registry other than the workspace's that Azure ML gets no credentials for, or serverless compute, which
    pulls the workspace's ACR with its admin user or the workspace's user-assigned identity."""
    registry = settings.registry
    identity = getattr(cluster, "identity", "") if cluster is not None else ""
    foreign = bool(registry.address)
    credentials = settings.sdk == "v1" and bool(registry.username)  # v2 Environments carry no credentials
    warnings = []
    if foreign and not credentials and not identity:
        who = ("the workspace's user-assigned identity (serverless compute has no identity of its own)" if serverless
               else "the compute's identity (azure.computes.NAME.identity)")
        warnings.append(f"Azure ML gets no credentials for {registry.address}: the compute can pull from it only if "
                        f"it is public or {who} has AcrPull on it"
                        + (", or with azure.registry.username (SDK v1)" if settings.sdk == "v1" else ""))
    if serverless and not foreign and registry.auth != "admin":
        warnings.append("serverless compute pulls the workspace's ACR with its admin user or the workspace's "
                        "user-assigned identity: if the admin user is disabled, give the workspace an identity "
                        "with AcrPull")
    return warnings
