"""SDK v1: an AmlCompute cluster as ``AmlCompute.provisioning_configuration``, and the ARM body it sends."""

from __future__ import annotations

from ..settings import ComputeSpec


def provisioning_configuration(spec: ComputeSpec):
    from azureml.core.compute import AmlCompute

    identity = {}
    if spec.identity == "system":
        identity = {"identity_type": "SystemAssigned"}
    elif spec.identity:  # a user-assigned identity's resource id
        identity = {"identity_type": "UserAssigned", "identity_id": [spec.identity]}
    return AmlCompute.provisioning_configuration(
        vm_size=spec.vm_size, vm_priority="lowpriority" if spec.low_priority else "dedicated",
        min_nodes=spec.min_nodes, max_nodes=spec.max_nodes, idle_seconds_before_scaledown=spec.idle_seconds,
        **identity)


def compute_body(definition, location: str = "<workspace location>", subscription_id: str = "<subscription>") -> dict:
    """The ARM body ``ComputeTarget.create`` sends, from the SDK's own builder (for the dry run)."""
    from azureml.core.compute import AmlCompute

    return AmlCompute._build_create_payload(definition, location, subscription_id)
