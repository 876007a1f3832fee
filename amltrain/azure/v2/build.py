"""SDK v2 (azure-ai-ml): the SDK's own entities for an environment, a cluster, a command job and a model, built
offline from amltrain's settings and ``Plan``, and what the SDK would send for each.

A body here is the SDK's own path to the wire: the entity's ``_to_rest_object()`` serialized with the generated
client's ``SdkJSONEncoder(exclude_readonly=True)``, as every ``arm_ml_service`` operation does before its PUT.
Only ``create_or_update`` knows some values (the uploaded code asset, a generated job name, the workspace's
location); the bodies show those as ``<…>`` placeholders. ``create_or_update`` also turns ``azureml:NAME:VERSION``
references and the compute's name into the workspace's ARM ids; the bodies keep the short forms as written.

azure-ai-ml is imported inside the functions: ``invoke --list`` and the local tasks never load it.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from ...inputs import INPUT_REF
from .. import checkpoints
from ..data import RemoteInput, check_references
from ..plan import Plan
from ..settings import AzureSettings, ComputeSpec

SCHEMA = "https://azuremlschemas.azureedge.net/latest/commandJob.schema.json"
CODE_PLACEHOLDER = "<code asset uploaded from {} at submit (.amlignore, else .gitignore, honoured)>"
NAME_PLACEHOLDER = "<job name generated at submit>"
LOCATION_PLACEHOLDER = "<the workspace's location>"
# The job's YAML reads in this order (the SDK's dump has its schema's field order, tags first); the rest follows.
YAML_ORDER = ("type", "experiment_name", "command", "code", "environment", "compute", "distribution", "resources",
              "limits", "inputs", "outputs", "environment_variables", "tags")
MODEL_URI = "azureml://jobs/{job}/outputs/artifacts/paths/{path}"  # the SDK's JOB_URI_FORMAT, default output


def quiet_sdk() -> None:
    """Before azure-ai-ml builds or dumps anything: its experimental schema classes log a warning each on first use
    (``AutoDeleteSettingSchema: This is an experimental class…``), noise about SDK internals, not about the job."""
    logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)


def rest_body(rest_object) -> dict:
    """A generated REST model as the client puts it on the wire (``json.dumps(body, cls=SdkJSONEncoder,
    exclude_readonly=True)`` in ``arm_ml_service/operations/_operations.py``), read back as plain data."""
    import json

    from azure.ai.ml._restclient.arm_ml_service._utils.model_base import SdkJSONEncoder

    return json.loads(json.dumps(rest_object, cls=SdkJSONEncoder, exclude_readonly=True))


# --- environment ------------------------------------------------------------------------------------------------
def environment(ref, settings: AzureSettings | None = None, environ: Mapping[str, str] | None = None):
    """The registered Environment of an image: image only, no conda file or build context, so Azure ML runs the
    image as it is (v1's user-managed dependencies). v2 has no registry credentials on an Environment: a registry
    other than the workspace's is reached through a workspace connection or the compute's identity (AcrPull), so
    ``settings`` and ``environ`` (v1's signature, where they give the pull credentials) are not needed here."""
    from azure.ai.ml.entities import Environment

    quiet_sdk()
    return Environment(name=ref.name, version=ref.version, image=ref.image)


def environment_body(env) -> dict:
    """What ``ml_client.environments.create_or_update`` PUTs (``env._to_rest_object()``, as there)."""
    return rest_body(env._to_rest_object())


# --- compute ----------------------------------------------------------------------------------------------------
def compute(spec: ComputeSpec):
    """An AmlCompute cluster; its identity (``system`` or a user-assigned identity's resource id) lets the nodes
    pull from a registry with AcrPull where the ACR admin user is disabled."""
    from azure.ai.ml.entities import AmlCompute, IdentityConfiguration, ManagedIdentityConfiguration

    quiet_sdk()
    identity = None
    if spec.identity == "system":
        identity = IdentityConfiguration(type="system_assigned")
    elif spec.identity:
        identity = IdentityConfiguration(type="user_assigned", user_assigned_identities=[
            ManagedIdentityConfiguration(resource_id=spec.identity)])
    return AmlCompute(name=spec.name, size=spec.vm_size, min_instances=spec.min_nodes, max_instances=spec.max_nodes,
                      idle_time_before_scale_down=spec.idle_seconds,
                      tier="low_priority" if spec.low_priority else "dedicated", identity=identity)


def compute_body(cluster, location: str = "") -> dict:
    """What ``ml_client.compute.begin_create_or_update`` PUTs. It fills in the workspace's location first (one GET
    of the workspace); offline that is ``location`` or a placeholder. ``cluster`` itself is left as it is."""
    cluster = copy.deepcopy(cluster)
    cluster.location = cluster.location or location or LOCATION_PLACEHOLDER
    return rest_body(cluster._to_rest_object())


# --- command job ------------------------------------------------------------------------------------------------
def input_path(remote: RemoteInput) -> str:
    """An input as v2 names it: a data asset version, or a folder of a datastore. The newest version is
    ``NAME@latest``, which the SDK looks up at submit; it takes no ``azureml:`` prefix there (it would look up a
    data asset named ``azureml:NAME``), and the YAML dump adds the prefix, which loading strips again."""
    if remote.kind == "dataset":
        return f"{remote.source}@latest" if remote.detail == "latest" else f"azureml:{remote.source}:{remote.detail}"
    return f"azureml://datastores/{remote.source}/paths/{remote.detail.strip('/')}"


def shell_word(argument: str) -> str:
    """One script argument as a shell word, each ``${{inputs.NAME}}`` kept bare and as written: Azure ML replaces
    it with the input's mount path in the command text before the shell runs it, so only the text around it is
    quoted."""
    pieces, end = [], 0
    for match in INPUT_REF.finditer(argument):
        pieces += [_quoted(argument[end:match.start()]), match.group(0)]
        end = match.end()
    pieces.append(_quoted(argument[end:]))
    return "".join(pieces) or "''"


def _quoted(text: str) -> str:
    return shlex.quote(text) if text else ""


def job_command(plan: Plan) -> str:
    """``python SCRIPT ARGS`` (or the job's own command, e.g. torchrun), after every input it refers to has been
    checked to have a cloud reference."""
    job = plan.job
    for text in (*job.arguments, job.command):
        check_references(text, plan.inputs)
    command = job.command or " ".join(["python", shlex.quote(job.script), *(shell_word(a) for a in job.arguments)])
    if plan.checkpoints is None:
        return command
    # Azure ML replaces ${{outputs.NAME}} in the command only, not in environment variables (their values are
    # passed as written: microsoft/physical-ai-toolchain#855), so the command exports the mount point itself.
    return f"export {checkpoints.ENV}=${{{{outputs.{checkpoints.OUTPUT}}}}} && {command}"


def _distribution(plan: Plan):
    from azure.ai.ml import MpiDistribution, PyTorchDistribution

    d = plan.job.distribution
    if d.launch == "mpi":
        return MpiDistribution(process_count_per_instance=d.procs_per_node)
    if d.launch == "per-node":  # the command (a launcher such as torchrun) once per node
        return PyTorchDistribution(process_count_per_instance=1)
    return None if d.single_process else PyTorchDistribution(process_count_per_instance=d.procs_per_node)


def command_job(plan: Plan, env, settings: AzureSettings, tags: Mapping[str, str] | None = None):
    """The ``Command`` ``ml_client.jobs.create_or_update`` takes (nothing contacted). ``env``: anything with the
    registered environment's ``name`` and ``version`` (an ``EnvironmentRef`` or the SDK's Environment)."""
    from azure.ai.ml import Input, Output, command

    quiet_sdk()
    sdk_inputs = {name: Input(type="uri_folder", path=input_path(remote), mode="ro_mount")
                  for name, remote in plan.inputs.items()}
    outputs = None
    environment = dict(plan.job.environment)
    if plan.checkpoints is not None:  # the same datastore folder on every node and every attempt
        outputs = {checkpoints.OUTPUT: Output(type="uri_folder", path=plan.checkpoints.uri, mode="rw_mount")}
        environment.pop(checkpoints.ENV, None)
    job = plan.job
    return command(
        experiment_name=job.experiment, code=str(Path(job.source_dir).resolve()), command=job_command(plan),
        environment=f"azureml:{env.name}:{env.version}", environment_variables=environment,
        compute=None if plan.serverless else plan.compute.name, distribution=_distribution(plan),
        instance_count=job.distribution.nodes, instance_type=plan.instance_type or None,
        shm_size=settings.shm_size, timeout=settings.max_run_duration_seconds, inputs=sdk_inputs or None,
        outputs=outputs, tags=dict(tags or {}))


def _as_job(job):
    """The standalone CommandJob of a ``Command`` (what ``az ml job create`` and the REST body describe); a job
    loaded from YAML already is one, and is copied so the caller's stays as it was."""
    return job._to_job() if hasattr(job, "_to_job") else copy.copy(job)


def job_yaml(job, folder: Path | None = None) -> str:
    """The YAML ``az ml job create -f FILE`` reads: the SDK's own dump of the job (``Job.dump`` is ``_to_dict()``
    written as YAML), commands on one line. The SDK dumps ``code`` absolute; with ``folder`` (where FILE will be)
    it is written relative to it, as the SDK reads it relative to the file, so the file moves with the project."""
    import json

    import yaml

    quiet_sdk()
    standalone = _as_job(job)
    local = isinstance(standalone.code, (str, os.PathLike)) and not _is_remote(str(standalone.code))
    if local:  # a loaded job's code is relative to its file; the SDK would resolve it against the cwd
        standalone.code = str(Path(job.base_path, standalone.code).resolve())
    data = json.loads(json.dumps(standalone._to_dict()))  # OrderedDicts -> plain mappings, order kept
    if local and folder is not None:
        data["code"] = Path(os.path.relpath(standalone.code, Path(folder).resolve())).as_posix()
    first = {key: data.pop(key) for key in YAML_ORDER if key in data}
    return yaml.safe_dump({"$schema": SCHEMA, **first, **data}, sort_keys=False, width=10_000)


def _is_remote(code: str) -> bool:
    return bool(re.match(r"(azureml:|https?://|/subscriptions/)", code))


def job_body(job) -> dict:
    """The body ``ml_client.jobs.create_or_update`` PUTs (``to_rest_job_object``, as in ``JobOperations``), with
    placeholders for the code asset it uploads and the job name it generates."""
    from azure.ai.ml.entities._job.to_rest_functions import to_rest_job_object

    quiet_sdk()
    body = rest_body(to_rest_job_object(job))
    properties = body["properties"]
    code = properties.get("codeId")
    if code and not _is_remote(code):
        properties["codeId"] = CODE_PLACEHOLDER.format(code)
    if not job.display_name:
        properties["displayName"] = NAME_PLACEHOLDER
    return body


# --- model ------------------------------------------------------------------------------------------------------
def model(job_name: str, name: str, path: str, tags: Mapping[str, str] | None = None):
    """A model registered from a job's artifacts (``outputs/…``, what rank 0 wrote to ./outputs); the path names
    the job, so the workspace records model -> job."""
    from azure.ai.ml.entities import Model

    quiet_sdk()
    return Model(name=name, type="custom_model", path=MODEL_URI.format(job=job_name, path=path.strip("/")),
                 tags=dict(tags or {}))


def model_body(entity) -> dict:
    """What ``ml_client.models.create_or_update`` PUTs."""
    return rest_body(entity._to_rest_object())
