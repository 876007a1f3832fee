"""SDK v2 (azure-ai-ml, the SDK behind ``az ml``): the same tasks as v1, with v2's own objects.

Concept map, v1 (azureml-core) -> v2 (azure-ai-ml):

- ``Workspace`` + an azureml-core auth object -> ``MLClient`` + an azure-identity credential (cli ->
  ``AzureCliCredential``, service-principal -> ``ClientSecretCredential``, managed-identity ->
  ``ManagedIdentityCredential``, github-oidc -> ``ClientAssertionCredential`` fed fresh GitHub ID tokens);
- ``Environment.from_docker_image`` (user-managed dependencies) -> ``Environment(name, version, image)`` with no
  conda file: the image runs as it is. No registry credentials travel with it (a workspace connection or the
  compute's identity pulls from another registry);
- ``AmlCompute.provisioning_configuration`` -> ``AmlCompute(size, min_instances, max_instances,
  idle_time_before_scale_down, tier, identity)``;
- ``ScriptRunConfig`` + ``Experiment.submit`` -> a ``command`` job + ``jobs.create_or_update``; the run id is the
  job's name. ``PyTorchConfiguration(process_count=N*P, node_count=N)`` -> ``PyTorchDistribution(
  process_count_per_instance=P)`` with ``instance_count=N``; per-node (``node_count`` only) -> the same with one
  process per instance; ``MpiConfiguration`` -> ``MpiDistribution``; ``DockerConfiguration(shm_size)`` ->
  ``resources.shm_size``; ``max_run_duration_seconds`` -> ``limits.timeout``. Serverless compute (no cluster:
  ``resources.instance_type``) exists only here;
- data: ``DatasetConsumptionConfig:NAME`` / ``$AZUREML_DATAREFERENCE_NAME`` placeholders -> ``${{inputs.NAME}}``
  kept as written (v2's own syntax) with ``Input(uri_folder, azureml:NAME:VERSION | azureml:NAME@latest |
  azureml://datastores/STORE/paths/PATH, ro_mount)``; a dataset may sit anywhere in an argument;
- ``run.wait_for_completion`` -> ``jobs.stream``; ``run.cancel`` -> ``jobs.begin_cancel``;
  ``run.register_model`` -> ``models.create_or_update(Model(custom_model, azureml://jobs/JOB/outputs/artifacts/
  paths/PATH))``; ``run.download_files`` -> ``jobs.download`` (``artifacts/`` moved away); ``run.get_file_names``
  -> a listing of the job's artifact folder in its datastore;
- the dry run's body: ``_serialize_run_config_to_dict`` -> the entity's REST object as the generated client
  serializes it; and the YAML ``az ml job create -f`` takes (``job_yaml``).

The adapter every flow uses has the same names as ``amltrain.azure.v1``.
"""

from __future__ import annotations

from ..plan import Plan
from ..settings import AzureSettings
from .backend import connect
from .build import command_job as job
from .build import compute, compute_body, environment, environment_body, job_body, job_command, job_yaml

NAME = "v2"
PACKAGE = "azure-ai-ml"
__all__ = ["NAME", "PACKAGE", "check", "compute", "compute_body", "connect", "environment", "environment_body",
           "job", "job_body", "job_document", "job_yaml"]


def check(p: Plan, settings: AzureSettings) -> None:
    """What v2 refuses offline: a reference to an input with no cloud reference (the plan checked it already;
    the job's command is where it lands)."""
    job_command(p)


def job_document(job, folder=None) -> dict:
    """What a dry run prints and ``--emit-yaml`` writes: the job as ``az ml job create -f`` reads it (``code``
    relative to ``folder``, where the file goes, when given)."""
    import yaml

    return yaml.safe_load(job_yaml(job, folder))
