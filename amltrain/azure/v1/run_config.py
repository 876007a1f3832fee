"""SDK v1: the job as a ``ScriptRunConfig`` (azureml-core), and what the SDK serializes from it.

Launch modes map one to one (the same ``Distribution`` as run-local):

- one process: no distributed configuration;
- per-process: ``PyTorchConfiguration(process_count=nodes*procs, node_count=nodes)``: Azure ML starts every rank;
- per-node: the job's ``command`` + ``PyTorchConfiguration(node_count=nodes)``: one launcher (torchrun) per node;
- mpi: ``MpiConfiguration(process_count_per_node=procs, node_count=nodes)``: mpirun, for Horovod.

Always ``DockerConfiguration(use_docker=True, shm_size=azure.submit.shm_size)`` and a maximum run duration; with a
checkpoint folder, an ``OutputFileDatasetConfig(...).as_mount()`` named ``AMLTRAIN_CHECKPOINT_DIR``.

Data inputs: v1 has no ``${{inputs.NAME}}``; it is replaced by the SDK's placeholder. A dataset must be a whole
argument (``DatasetConsumptionConfig:NAME``, which the service replaces); a datastore path may sit inside an
argument or a command (``$AZUREML_DATAREFERENCE_NAME``, set by Azure ML on the node). Both are declared with the
SDK's own ``Data``/``DataReferenceConfiguration``.

What is sent is what a dry run prints: the SDK's own path from ``ScriptRunConfig`` to the request body
(``get_run_config_from_script_run`` then ``_commands._serialize_run_config_to_dict``, as ``Experiment.submit``
does).
"""

from __future__ import annotations

from collections.abc import Mapping

from ...errors import ToolkitError
from ...inputs import substitute, whole_reference
from ...spec import Distribution
from .. import checkpoints
from ..data import RemoteInput
from ..environment import EnvironmentRef
from ..plan import Plan
from ..settings import AzureSettings
from .environment import definition


def placeholder(remote: RemoteInput) -> str:
    return f"DatasetConsumptionConfig:{remote.name}" if remote.kind == "dataset" else \
        f"$AZUREML_DATAREFERENCE_{remote.name}"


def attach(remote: RemoteInput, run_config) -> None:
    """Declare the input in the run configuration, as ``Data.create`` / ``DataReference.to_config`` would."""
    from azureml.core.runconfig import Data, DataLocation, DataReferenceConfiguration
    from azureml.core.runconfig import Dataset as DatasetReference

    if remote.kind == "dataset":
        run_config.data[remote.name] = Data(
            data_location=DataLocation(dataset=DatasetReference(dataset_name=remote.source,
                                                                dataset_version=remote.detail)),
            create_output_directories=False, mechanism="mount", environment_variable_name=remote.name,
            overwrite=False)
    else:
        run_config.data_references[remote.name] = DataReferenceConfiguration(
            datastore_name=remote.source, mode="mount", path_on_datastore=remote.detail or None)


def _substitute(text: str, inputs: Mapping[str, RemoteInput], argument: bool) -> str:
    """``${{inputs.NAME}}`` -> the cluster's placeholder. ``argument``: ``text`` is one script argument, where a
    dataset may stand alone; in a command (a shell line) only datastore paths can be expanded."""
    whole = whole_reference(text) if argument else None

    def replace(name: str) -> str:
        if name not in inputs:
            raise ToolkitError(f"argument refers to input {name!r}, which has no cloud reference",
                               f"add --input {name}=azureml:DATASET or {name}=datastore:STORE/PATH")
        remote = inputs[name]
        if remote.kind == "dataset" and not whole:
            raise ToolkitError(f"dataset input {name!r} must be a whole script argument (the service replaces "
                               f"{placeholder(remote)} only as one); here it is inside {text!r}",
                               f"make it its own argument, or give {name} as datastore:STORE/PATH")
        return placeholder(remote)

    return replace(whole) if whole else substitute(text, replace)


def cluster_arguments(arguments: tuple[str, ...], inputs: Mapping[str, RemoteInput]) -> list[str]:
    return [_substitute(a, inputs, argument=True) for a in arguments]


def cluster_command(command: str, inputs: Mapping[str, RemoteInput]) -> str:
    return _substitute(command, inputs, argument=False)


def distributed_config(d: Distribution, communication: str):
    from azureml.core.runconfig import MpiConfiguration, PyTorchConfiguration

    if d.launch == "mpi":
        return MpiConfiguration(process_count_per_node=d.procs_per_node, node_count=d.nodes)
    if d.launch == "per-node":
        return PyTorchConfiguration(communication_backend=communication, node_count=d.nodes)
    if d.single_process:
        return None
    return PyTorchConfiguration(communication_backend=communication, process_count=d.world_size,
                                node_count=d.nodes)


def script_run_config(p: Plan, environment, settings: AzureSettings):
    """The real ScriptRunConfig (nothing contacted): what ``Experiment.submit`` takes."""
    from azureml.core import ScriptRunConfig
    from azureml.core.runconfig import DockerConfiguration

    job = p.job
    kwargs = {}
    if job.command:
        kwargs["command"] = cluster_command(job.command, p.inputs)
    else:
        kwargs.update(script=job.script, arguments=cluster_arguments(job.arguments, p.inputs))
    src = ScriptRunConfig(
        source_directory=str(job.source_dir), compute_target=p.compute.name, environment=environment,
        distributed_job_config=distributed_config(job.distribution, p.communication),
        docker_runtime_config=DockerConfiguration(use_docker=True, shm_size=settings.shm_size),
        max_run_duration_seconds=settings.max_run_duration_seconds, **kwargs)
    src.run_config.environment_variables = dict(job.environment)
    for remote in p.inputs.values():
        attach(remote, src.run_config)
    if p.checkpoints is not None:
        src.run_config.environment_variables.pop(checkpoints.ENV, None)
        src.run_config.output_data[checkpoints.ENV] = checkpoint_output(p.checkpoints)
    return src


def checkpoint_output(location):
    """The checkpoint folder as an ``OutputFileDatasetConfig`` mounted read-write. It is named
    ``AMLTRAIN_CHECKPOINT_DIR`` because an output's name "will also become an environment variable which contains
    the local path" (the SDK's documentation of ``name``): the variable is its mount point on every node. A name
    is an output's only handle on the node (v1 has no ``${{outputs…}}``; ``DatasetOutputConfig:NAME`` is replaced
    in script arguments only, which belong to the script)."""
    from azureml.data import OutputFileDatasetConfig

    return OutputFileDatasetConfig(name=checkpoints.ENV, destination=(location.datastore, location.path)).as_mount()


def service_configuration(src) -> dict:
    """The run configuration as the SDK serializes it into the request (``Experiment.submit`` ->
    ``script_run_config.submit`` -> ``_commands.start_run``: the ``Configuration`` field of the body)."""
    from azureml._execution import _commands
    from azureml.core.script_run_config import _update_args_and_io, get_run_config_from_script_run

    run_config = get_run_config_from_script_run(src)
    # As submit does: outputs (the checkpoint folder) become the service's OutputData. The workspace is used only
    # to save a DatasetConsumptionConfig input, which amltrain never makes (its inputs are ``Data`` already).
    _update_args_and_io(OFFLINE_WORKSPACE, run_config)
    _commands._run_config_modification(run_config)
    return _commands._serialize_run_config_to_dict(run_config)


OFFLINE_WORKSPACE = "<no workspace: nothing saved offline>"


def job(p: Plan, env: EnvironmentRef, settings: AzureSettings, tags=None):
    """The SDK object ``submit`` hands over: the ScriptRunConfig on ``env``'s Environment (the tags travel with
    ``Experiment.submit``)."""
    return script_run_config(p, definition(env, settings), settings)


def job_body(src) -> dict:
    return service_configuration(src)
