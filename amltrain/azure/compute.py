"""Find-or-create an AmlCompute cluster and wait for it, for either SDK (each builds its own definition:
``v1.compute``, ``v2.build.compute``).

An existing cluster is never changed behind your back: when its VM size or node limits differ from what was
asked, that is reported and the cluster is used as it is (its VM size cannot change; delete and recreate it,
or update the scale settings in the studio).
"""

from __future__ import annotations

import sys

from ..errors import ToolkitError
from .preflight import check_name, check_vm_size, gpus_per_node
from .settings import ComputeSpec


def validate(spec: ComputeSpec) -> None:
    if not spec.vm_size:
        raise ToolkitError(f"compute {spec.name} has no VM size",
                           f"give --vm-size (e.g. Standard_NC24ads_A100_v4) or declare azure.computes.{spec.name}")
    check_vm_size(spec.vm_size)
    check_name(spec.name, "compute", "--name or azure.compute")


def describe(spec: ComputeSpec) -> str:
    gpus = gpus_per_node(spec.vm_size)
    kind = "CPU" if gpus == 0 else f"{gpus} GPU(s)/node" if gpus else "GPUs unknown"
    return (f"{spec.name}: {spec.vm_size} ({kind}), {spec.min_nodes}-{spec.max_nodes} nodes, "
            f"{'low priority' if spec.low_priority else 'dedicated'}, scale down after {spec.idle_seconds} s idle"
            + (f", identity {spec.identity}" if spec.identity else ""))


def ensure(backend, spec: ComputeSpec, definition, out=None):
    """The cluster, created (and waited for) when the workspace has none of that name."""
    out = out or sys.stdout
    validate(spec)
    existing = backend.get_compute(spec.name)
    if existing is not None:
        return _existing(backend, spec, existing, out)
    print(f"creating compute {describe(spec)}; waiting for it", file=out, flush=True)
    created = backend.create_compute(spec.name, definition)
    print(f"compute {created.name} is {created.state or 'ready'}", file=out)
    return created


def _existing(backend, spec: ComputeSpec, existing, out):
    """A cluster of that name is there: used as it is once its provisioning has ended well."""
    if existing.kind and "amlcompute" not in existing.kind.lower():
        raise ToolkitError(f"compute {spec.name} exists but is a {existing.kind}, not an AmlCompute cluster",
                           "choose another --name")
    state = existing.state.lower()
    if state == "failed":
        raise ToolkitError(f"compute {spec.name} exists but failed to provision",
                           f"delete it in the studio (Compute > Compute clusters), then run invoke compute "
                           f"--name {spec.name} again")
    if state == "deleting":
        raise ToolkitError(f"compute {spec.name} is being deleted", "run invoke compute again once it is gone")
    if state in ("creating", "updating"):
        print(f"compute {spec.name} exists and is {existing.state}: waiting for it", file=out, flush=True)
        existing = backend.wait_for_compute(spec.name)
    if (existing.vm_size.lower(), existing.min_nodes, existing.max_nodes) != \
            (spec.vm_size.lower(), spec.min_nodes, spec.max_nodes):
        print(f"warning: compute {spec.name} exists as {existing.vm_size}, {existing.min_nodes}-"
              f"{existing.max_nodes} nodes (asked {spec.vm_size}, {spec.min_nodes}-{spec.max_nodes}); "
              "used as it is", file=out)
    if spec.identity and existing.identity is not None and existing.identity.lower() != spec.identity.lower():
        print(f"warning: compute {spec.name} has identity {existing.identity or 'none'}, not {spec.identity}: it "
              "is not changed here, so its nodes pull images as before (set the identity in the studio or with "
              "az ml compute update)", file=out)
    print(f"compute {spec.name} exists ({existing.state or 'state unknown'}): nothing created", file=out)
    return existing
