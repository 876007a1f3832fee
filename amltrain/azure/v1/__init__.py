"""SDK v1 (azureml-core): what the reference document teaches. Microsoft ended its support on 2026-06-30; it stays
complete and tested, one setting away (``azure.sdk: v1``).

The adapter every flow uses, with the same names as ``amltrain.azure.v2``: ``connect`` (the network seam),
``environment``/``environment_body``, ``compute``/``compute_body``, ``job``/``job_document`` (what a dry run
prints: the run configuration as the SDK serializes it into the request).
"""

from __future__ import annotations

from ..plan import Plan
from ..settings import AzureSettings
from .backend import connect
from .compute import compute_body
from .compute import provisioning_configuration as compute
from .environment import definition as environment
from .environment import environment_body
from .run_config import cluster_arguments, cluster_command, job, job_body

NAME = "v1"
PACKAGE = "azureml-core"
__all__ = ["NAME", "PACKAGE", "check", "compute", "compute_body", "connect", "environment", "environment_body",
           "job", "job_body", "job_document"]


def check(p: Plan, settings: AzureSettings) -> None:
    """What only v1 refuses offline: a dataset inside an argument (the service replaces its placeholder only as a
    whole argument)."""
    cluster_arguments(p.job.arguments, p.inputs)
    if p.job.command:
        cluster_command(p.job.command, p.inputs)
    if p.serverless:
        from ...errors import ToolkitError

        raise ToolkitError("serverless compute is SDK v2's", "use --sdk v2, or a cluster: --compute NAME")


def job_document(src, folder=None) -> dict:
    """What a dry run prints: the run configuration as the SDK serializes it into the request (v1 has no job
    file, so ``folder`` is unused)."""
    return {"run_configuration": job_body(src)}
