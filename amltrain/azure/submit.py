"""``invoke submit``: the job ``run-local`` runs, as an Azure ML ``ScriptRunConfig`` (SDK v1).

Launch modes map one to one (the same ``Distribution`` as run-local):

- one process: no distributed configuration;
- per-process: ``PyTorchConfiguration(process_count=nodes*procs, node_count=nodes)``: Azure ML starts every rank;
- per-node: the job's ``command`` + ``PyTorchConfiguration(node_count=nodes)``: one launcher (torchrun) per node;
- mpi: ``MpiConfiguration(process_count_per_node=procs, node_count=nodes)``: mpirun, for Horovod.

Always ``DockerConfiguration(use_docker=True, shm_size=azure.submit.shm_size)`` and a maximum run duration.

Data inputs: ``${{inputs.NAME}}`` in the arguments is a path on the cluster. An input is given as
``azureml:DATASET[:VERSION]`` (a registered FileDataset, mounted; version ``latest`` by default), or
``datastore:STORE/PATH`` (also ``azureml://datastores/STORE/paths/PATH``; a folder of a datastore, mounted as a
data reference). A dataset must be a whole argument (the SDK's ``DatasetConsumptionConfig:NAME`` placeholder,
which the service replaces); a datastore path may sit inside an argument or a command
(``$AZUREML_DATAREFERENCE_NAME``, set by Azure ML on the node). Local folders cannot be mounted by a cluster
and are refused. Both are built offline from the SDK's own ``Data``/``DataReferenceConfiguration``.

What is sent is what a dry run prints: the SDK's own path from ``ScriptRunConfig`` to the request body
(``get_run_config_from_script_run`` then ``_commands._serialize_run_config_to_dict``, as ``Experiment.submit``
does), with secrets masked.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import snapshot
from ..config import key_values
from ..errors import ToolkitError
from ..localrun import INPUT_REF, mask, mask_words
from ..registry import KnownImage
from ..signals import STOP_SIGNALS, signals_ignored
from ..spec import Distribution, JobSpec
from . import preflight
from .environment import EnvironmentRef, definition, registered
from .spec import AzureSettings, ComputeSpec

DATASET_INPUT = re.compile(r"azureml:(?!//)([A-Za-z0-9_.-]+)(?::([A-Za-z0-9_.-]+))?")
DATASTORE_INPUT = re.compile(r"datastore:([A-Za-z0-9_]+)/(.*)|azureml://datastores/([A-Za-z0-9_]+)/paths/(.*)")
INTERRUPTED = {128 + signum for signum in STOP_SIGNALS}  # exit codes of a task stopped by Ctrl-C, SIGTERM, SIGHUP
INPUT_HINT = ("upload the data once (e.g. Dataset.File.upload_directory, or to a datastore) and give --input "
              "NAME=azureml:DATASET[:VERSION] or --input NAME=datastore:STORE/PATH (or azure.submit.inputs)")


@dataclass(frozen=True)
class RemoteInput:
    name: str
    kind: str  # "dataset" | "datastore"
    source: str  # dataset name | datastore name
    detail: str  # dataset version | path on the datastore

    @property
    def placeholder(self) -> str:
        return f"DatasetConsumptionConfig:{self.name}" if self.kind == "dataset" else \
            f"$AZUREML_DATAREFERENCE_{self.name}"

    def attach(self, run_config) -> None:
        """Declare the input in the run configuration, as ``Data.create`` / ``DataReference.to_config`` would."""
        from azureml.core.runconfig import Data, DataLocation, DataReferenceConfiguration
        from azureml.core.runconfig import Dataset as DatasetReference

        if self.kind == "dataset":
            run_config.data[self.name] = Data(
                data_location=DataLocation(dataset=DatasetReference(dataset_name=self.source,
                                                                    dataset_version=self.detail)),
                create_output_directories=False, mechanism="mount", environment_variable_name=self.name,
                overwrite=False)
        else:
            run_config.data_references[self.name] = DataReferenceConfiguration(
                datastore_name=self.source, mode="mount", path_on_datastore=self.detail or None)


def remote_inputs(configured: Mapping[str, str], given: Iterable[str]) -> dict[str, RemoteInput]:
    """``azure.submit.inputs`` with ``--input NAME=REF`` winning; anything but a cloud reference is refused."""
    result = {}
    for name, value in {**configured, **key_values(given, "input")}.items():
        value = value.strip()
        dataset, datastore = DATASET_INPUT.fullmatch(value), DATASTORE_INPUT.fullmatch(value)
        if dataset:
            result[name] = RemoteInput(name, "dataset", dataset.group(1), dataset.group(2) or "latest")
        elif datastore:
            store = datastore.group(1) or datastore.group(3)
            path = (datastore.group(2) if datastore.group(1) else datastore.group(4)).strip("/")
            result[name] = RemoteInput(name, "datastore", store, path)
        else:
            raise ToolkitError(f"input {name}={value} is not a cloud data reference; a cluster cannot mount a "
                               "local folder", INPUT_HINT)
    return result


def _substitute(text: str, inputs: Mapping[str, RemoteInput], argument: bool) -> str:
    """``${{inputs.NAME}}`` -> the cluster's placeholder. ``argument``: ``text`` is one script argument, where a
    dataset may stand alone; in a command (a shell line) only datastore paths can be expanded."""
    whole = INPUT_REF.fullmatch(text) if argument else None

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in inputs:
            raise ToolkitError(f"argument refers to input {name!r}, which has no cloud reference",
                               f"add --input {name}=azureml:DATASET or {name}=datastore:STORE/PATH")
        remote = inputs[name]
        if remote.kind == "dataset" and not whole:
            raise ToolkitError(f"dataset input {name!r} must be a whole script argument (the service replaces "
                               f"{remote.placeholder} only as one); here it is inside {text!r}",
                               f"make it its own argument, or give {name} as datastore:STORE/PATH")
        return remote.placeholder

    return replace(whole) if whole else INPUT_REF.sub(replace, text)


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


@dataclass(frozen=True)
class Plan:
    """What was decided offline: refused here when wrong, before anything is contacted."""

    job: JobSpec
    compute: ComputeSpec
    inputs: Mapping[str, RemoteInput]
    communication: str  # PyTorch's backend: nccl | gloo
    snapshot_files: int
    snapshot_bytes: int
    warnings: tuple[str, ...] = ()


def plan(job: JobSpec, settings: AzureSettings, compute: str | None, inputs: Iterable[str], gpu_target: bool) -> Plan:
    """The job against the cluster's declaration, its inputs and the snapshot limits (the base image is checked
    where the image is chosen: ``preflight.check_base_image``)."""
    name = compute or settings.compute
    if not name:
        raise ToolkitError("no compute given", "use --compute NAME or set azure.compute")
    spec = settings.computes.get(name) or ComputeSpec(name=name, declared=False)
    warnings: list[str] = []
    if spec.declared:
        if not spec.vm_size:
            raise ToolkitError(f"azure.computes.{name} has no vm_size", "declare its vm_size in invoke.yaml")
        warnings += preflight.check_shape(job.distribution, name, spec.vm_size, spec.max_nodes)
        communication = preflight.communication_backend(spec.vm_size)
    else:
        warnings.append(f"compute {name} is not declared in azure.computes: its VM size and node limit are "
                        "checked against the workspace when submitting")
        communication = "nccl" if gpu_target else "gloo"
    remote = remote_inputs(settings.inputs, inputs)
    cluster_arguments(job.arguments, remote)  # refuse bad references now
    if job.command:
        cluster_command(job.command, remote)
    names = snapshot.files(job.source_dir)
    size = snapshot.check_limits(job.source_dir, names)
    return Plan(job=job, compute=spec, inputs=remote, communication=communication, snapshot_files=len(names),
                snapshot_bytes=size, warnings=tuple(warnings))


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
        remote.attach(src.run_config)
    return src


def service_configuration(src) -> dict:
    """The run configuration as the SDK serializes it into the request (``Experiment.submit`` ->
    ``script_run_config.submit`` -> ``_commands.start_run``: the ``Configuration`` field of the body)."""
    from azureml._execution import _commands
    from azureml.core.script_run_config import get_run_config_from_script_run

    run_config = get_run_config_from_script_run(src)
    _commands._run_config_modification(run_config)
    return _commands._serialize_run_config_to_dict(run_config)


def masked(value, key: str = ""):
    """A copy with secret-looking values replaced: environment variables, registry passwords, and options
    named like secrets in the script's arguments or the command (``--hf-token X``), as run-local masks them."""
    if isinstance(value, Mapping):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        words = mask_words(value) if key == "arguments" and all(isinstance(v, str) for v in value) else value
        return [masked(v, key) for v in words]
    if isinstance(value, str):
        return " ".join(mask_words(value.split(" "))) if key == "command" else mask(key, value)
    return value


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


@dataclass(frozen=True)
class SubmitRequest:
    experiment: str
    environment: EnvironmentRef
    script_run_config: object
    tags: Mapping[str, str]

    def configuration(self) -> dict:
        return service_configuration(self.script_run_config)


def submit_request(p: Plan, settings: AzureSettings, env: EnvironmentRef, image: KnownImage | None) -> SubmitRequest:
    """What ``Experiment.submit`` is given: the ScriptRunConfig on ``env``'s Environment, and the run's tags."""
    src = script_run_config(p, definition(env, settings), settings)
    return SubmitRequest(p.job.experiment, env, src, tags(p, env, image, git_commit(p.job.source_dir)))


def describe(p: Plan, request: SubmitRequest, workspace: str) -> dict:
    c = p.compute
    d = p.job.distribution
    return {
        "workspace": workspace,
        "experiment": request.experiment,
        "compute": (f"{c.name}: {c.vm_size}, up to {c.max_nodes} nodes (declared)" if c.declared else
                    f"{c.name} (not declared: checked against the workspace when submitting)"),
        "launch": f"{d.launch}, {d.nodes} node(s) x {d.procs_per_node} process(es)",
        "environment": f"{request.environment.name}:{request.environment.version} "
                       f"({request.environment.image}; must be registered: invoke register)",
        "snapshot": f"{p.job.source_dir}: {p.snapshot_files} files, {p.snapshot_bytes / 2**20:.1f} MB "
                    "(.amlignore honoured; limits 2000 files, 300 MB)",
        "tags": dict(request.tags),
        "run_configuration": masked(request.configuration()),
    }


def summary_markdown(run, p: Plan, request: SubmitRequest) -> str:
    """The run as a Markdown table (run id, studio link, image and digest, …): a CI job summary's body."""
    def cell(value: str) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    d = p.job.distribution
    rows = [("Run", f"[`{cell(run.run_id)}`]({run.portal_url})"),
            ("Studio", run.portal_url),
            ("Experiment", cell(request.experiment)),
            ("Compute", cell(f"{p.compute.name}: {d.launch}, {d.nodes} node(s) x {d.procs_per_node} process(es)")),
            ("Environment", f"`{cell(request.tags['amltrain.environment'])}`"),
            ("Image", f"`{cell(request.tags['amltrain.image'])}`"),
            ("Image digest", f"`{cell(request.tags['amltrain.image_digest'])}`"),
            ("Git commit", f"`{cell(request.tags['amltrain.git_commit'])}`")]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"### Azure ML run `{cell(run.run_id)}`\n\n| | |\n|---|---|\n{table}\n\n"


def _append(summary: Path | None, text: str) -> None:
    if summary is not None:
        with open(summary, "a", encoding="utf-8") as file:
            file.write(text)


def execute(backend, p: Plan, request: SubmitRequest, wait: bool, out=None, summary: Path | None = None,
            cancel_on_interrupt: bool = False):
    """Check the job against the real cluster and the registered environment, submit, and (``wait``) follow
    the run to its end. A run that does not complete is a ToolkitError naming the run and its studio link.
    ``summary``: a file (GitHub's $GITHUB_STEP_SUMMARY) the run's table and final status are appended to.
    ``cancel_on_interrupt``: following interrupted (Ctrl-C, SIGTERM: a cancelled CI job) cancels the run too,
    so no cluster keeps training for a job nobody waits for."""
    out = out or sys.stdout
    cluster = backend.get_compute(p.compute.name)
    if cluster is None:
        raise ToolkitError(f"unknown compute {p.compute.name!r} in workspace {backend.workspace.workspace_name}",
                           f"create it: invoke compute --name {p.compute.name} --vm-size VM_SIZE --max-nodes N")
    for warning in preflight.check_shape(p.job.distribution, cluster.name, cluster.vm_size, cluster.max_nodes):
        print(f"warning: {warning}", file=out)
    needed = preflight.communication_backend(cluster.vm_size)
    pytorch = p.job.distribution.launch != "mpi" and not p.job.distribution.single_process
    if pytorch and needed != p.communication:
        raise ToolkitError(f"compute {cluster.name} is {cluster.vm_size}, where PyTorch needs {needed}, but the job "
                           f"was planned with {p.communication}",
                           f"declare azure.computes.{cluster.name}.vm_size as {cluster.vm_size}, or choose a cluster "
                           "that fits the target")
    env = request.environment
    if registered(backend, env.name, env.version, env.image) is None:
        raise ToolkitError(f"environment {env.name}:{env.version} is not registered in workspace "
                           f"{backend.workspace.workspace_name}",
                           f"invoke push --target {p.job.target} && invoke register --target {p.job.target}")
    run = backend.submit(request.experiment, request.script_run_config, dict(request.tags))
    print(f"submitted run {run.run_id} to {p.compute.name}: {run.portal_url}", file=out, flush=True)
    _append(summary, summary_markdown(run, p, request))
    if not wait:
        _append(summary, "Submitted; not followed (`invoke submit` without `--wait`).\n\n")
        return run
    try:
        final = backend.wait(run.run_id, show_output=True)
    except ToolkitError as exc:
        if not (cancel_on_interrupt and exc.exit_code in INTERRUPTED):
            _append(summary, f"Status: not followed to its end ({exc.message}).\n\n")
            raise
        with signals_ignored():  # CI follows its SIGINT with a SIGTERM: the cancel request must still go out
            try:
                cancelled = backend.cancel(run.run_id)
            except ToolkitError as failed:
                _append(summary, f"Status: interrupted; cancelling the run failed ({failed.message})\n\n")
                raise ToolkitError(f"interrupted, and cancelling run {run.run_id} failed: {failed.message}",
                                   f"cancel it in the studio: {run.portal_url}", exit_code=exc.exit_code) from None
            _append(summary, f"Status: **{cancelled.status or 'CancelRequested'}** (the job following it was "
                             "interrupted, so the run was cancelled)\n\n")
        raise ToolkitError(f"interrupted: cancelled run {run.run_id} ({cancelled.status or 'CancelRequested'}): "
                           f"{run.portal_url}", exit_code=exc.exit_code) from None
    _append(summary, f"Status: **{final.status}**\n\n")
    if final.status != "Completed":
        raise ToolkitError(f"run {final.run_id} ended {final.status}: {final.portal_url}",
                           "its logs: the studio link, user_logs/std_log*.txt")
    print(f"run {final.run_id} completed: {final.portal_url}", file=out)
    return final
