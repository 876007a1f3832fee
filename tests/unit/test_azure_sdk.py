"""SDK v1 at the SDK boundary: real azureml-core objects, read back through the SDK's own serializers.

Each launch mode is built from the same JobSpec run-local runs, turned into a real ScriptRunConfig, and
serialized the way ``Experiment.submit`` serializes it for the service; the test compares that body with the
expected configuration. Nothing is mocked and nothing is contacted.
"""

from __future__ import annotations

import pytest

from amltrain import masking
from amltrain.azure import environment, v1
from amltrain.azure import plan as azure_plan
from amltrain.azure.settings import AzureSettings, ComputeSpec, RegistrySettings
from amltrain.azure.v1 import run_config as v1_job
from amltrain.errors import ToolkitError
from amltrain.spec import Distribution, JobSpec, frozen_map

COMPUTES = {
    "gpu4": ComputeSpec("gpu4", "Standard_NC96ads_A100_v4", max_nodes=4),
    "cpu": ComputeSpec("cpu", "Standard_D4s_v5", max_nodes=4),
}
SETTINGS = AzureSettings(computes=frozen_map(COMPUTES), compute="gpu4", max_run_duration_seconds=7200,
                         shm_size="16g", registry=RegistrySettings(repository="amltrain/train"))
LOCAL_REF = "amltrain/train:gpu-0123456789ab"


@pytest.fixture
def source(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "pytorch_train.py").write_text("print('hi')\n")
    return tmp_path


def job(source, launch="per-process", nodes=1, procs=1, command="", arguments=("--num-epochs", "1"), env=None):
    return JobSpec(experiment="fowl", target="gpu", source_dir=source, script="" if command else
                   "train/pytorch_train.py", arguments=() if command else arguments,
                   environment=frozen_map(env or {}), command=command,
                   distribution=Distribution(launch=launch, nodes=nodes, procs_per_node=procs))


def body(j, compute="gpu4", inputs=(), settings=SETTINGS) -> dict:
    """What Experiment.submit would send as the run's configuration."""
    plan = azure_plan.plan(j, settings, compute, inputs, True)
    v1.check(plan, settings)
    ref = environment.environment_ref(settings, "gpu", LOCAL_REF, "wsacr.azurecr.io")
    src = v1_job.script_run_config(plan, v1.environment(ref, settings, environ={}), settings)
    return v1.job_body(src)


def shape(config: dict) -> dict:
    keys = ("script", "arguments", "command", "target", "framework", "communicator", "nodeCount")
    result = {k: config[k] for k in keys}
    if config["framework"] == "PyTorch":
        result["pytorch"] = config["pytorch"]
    if config["communicator"] == "IntelMpi":
        result["mpi"] = config["mpi"]
    return result


def test_per_process_two_nodes_two_processes_is_pytorch_nccl_with_four_processes(source):
    assert shape(body(job(source, nodes=2, procs=2))) == {
        "script": "train/pytorch_train.py", "arguments": ["--num-epochs", "1"], "command": "",
        "target": "gpu4", "framework": "PyTorch", "communicator": "nccl", "nodeCount": 2,
        "pytorch": {"communicationBackend": "nccl", "processCount": 4, "nodeCount": 2}}


def test_per_node_sends_the_command_and_only_the_node_count(source):
    command = "torchrun --nnodes 2 --nproc_per_node 2 --node_rank $NODE_RANK train/pytorch_train.py"
    assert shape(body(job(source, launch="per-node", nodes=2, procs=2, command=command))) == {
        "script": None, "arguments": [], "command": command, "target": "gpu4", "framework": "PyTorch",
        "communicator": "nccl", "nodeCount": 2,
        "pytorch": {"communicationBackend": "nccl", "processCount": None, "nodeCount": 2}}


def test_mpi_is_the_python_framework_with_process_count_per_node(source):
    assert shape(body(job(source, launch="mpi", nodes=2, procs=2))) == {
        "script": "train/pytorch_train.py", "arguments": ["--num-epochs", "1"], "command": "",
        "target": "gpu4", "framework": "Python", "communicator": "IntelMpi", "nodeCount": 2,
        "mpi": {"processCountPerNode": 2, "nodeCount": 2}}


def test_one_process_has_no_distributed_configuration(source):
    assert shape(body(job(source))) == {
        "script": "train/pytorch_train.py", "arguments": ["--num-epochs", "1"], "command": "",
        "target": "gpu4", "framework": "Python", "communicator": "None", "nodeCount": 1}


def test_a_cpu_cluster_gets_gloo(source):
    config = body(job(source, nodes=2, procs=2), compute="cpu")
    assert (config["communicator"], config["pytorch"]["communicationBackend"]) == ("gloo", "gloo")


def test_docker_runtime_duration_environment_and_variables(source):
    config = body(job(source, env={"NCCL_DEBUG": "INFO"}))
    assert config["docker"] == {"useDocker": True, "sharedVolumes": True, "arguments": [], "shmSize": "16g"}
    assert config["maxRunDurationSeconds"] == 7200
    assert config["environmentVariables"] == {"NCCL_DEBUG": "INFO"}
    env = config["environment"]
    assert (env["name"], env["version"]) == ("amltrain-gpu", "0123456789ab")
    assert env["docker"]["baseImage"] == "wsacr.azurecr.io/amltrain/train:gpu-0123456789ab"
    assert env["python"]["userManagedDependencies"] is True
    assert env["environmentVariables"] == {}
    assert env["docker"]["baseImageRegistry"]["password"] is None  # the workspace's ACR needs no credentials


def test_inputs_become_the_sdks_dataset_and_data_reference_entries(source):
    j = job(source, arguments=("--data-dir", "${{inputs.fowl}}", "--extra=${{inputs.raw}}/x"))
    config = body(j, inputs=["fowl=azureml:fowl-images:3", "raw=datastore:workspaceblobstore/raw/2024"])
    assert config["arguments"] == ["--data-dir", "DatasetConsumptionConfig:fowl",
                                   "--extra=$AZUREML_DATAREFERENCE_raw/x"]
    assert config["data"]["fowl"] == {
        "dataLocation": {"dataset": {"id": None, "name": "fowl-images", "version": "3"}, "dataPath": None,
                         "uri": None},
        "createOutputDirectories": False, "mechanism": "mount", "environmentVariableName": "fowl",
        "pathOnCompute": None, "overwrite": False, "options": None}
    assert config["dataReferences"]["raw"] == {"dataStoreName": "workspaceblobstore", "pathOnDataStore": "raw/2024",
                                               "mode": "mount", "overwrite": False, "pathOnCompute": None}


def test_a_v2_style_datastore_uri_and_a_latest_dataset_are_understood(source):
    config = body(job(source, arguments=("${{inputs.a}}", "${{inputs.b}}")),
                  inputs=["a=azureml://datastores/store1/paths/x/y/", "b=azureml:fowl"])
    assert config["dataReferences"]["a"]["pathOnDataStore"] == "x/y"
    assert config["data"]["b"]["dataLocation"]["dataset"]["version"] == "latest"


@pytest.mark.parametrize("inputs, arguments, expected", [
    (["data=./fowl"], ("${{inputs.data}}",), "cannot mount a local folder"),
    ([], ("${{inputs.data}}",), "has no cloud reference"),
    (["data=azureml:fowl"], ("--data=${{inputs.data}}",), "must be a whole script argument"),
])
def test_inputs_a_cluster_cannot_use_are_refused(source, inputs, arguments, expected):
    with pytest.raises(ToolkitError, match=expected):
        body(job(source, arguments=arguments), inputs=inputs)


def test_registry_credentials_only_for_another_registry_with_a_user(source):
    other = AzureSettings(registry=RegistrySettings(address="myacr.azurecr.io", username="puller",
                                                    repository="amltrain/train"))
    ref = environment.environment_ref(other, "gpu", LOCAL_REF, "myacr.azurecr.io")
    env = v1.environment_body(v1.environment(ref, other, environ={"AMLTRAIN_REGISTRY_PASSWORD": "pw1"}))
    assert env["docker"]["baseImageRegistry"]["address"] == "myacr.azurecr.io"
    assert env["docker"]["baseImageRegistry"]["username"] == "puller"
    assert env["docker"]["baseImageRegistry"]["password"] == "pw1"  # Azure ML needs it to pull
    assert masking.masked(env)["docker"]["baseImageRegistry"]["password"] == "****"
    with pytest.raises(ToolkitError, match="AMLTRAIN_REGISTRY_PASSWORD"):
        v1.environment(ref, other, environ={})


@pytest.fixture
def posted_by_the_sdk(monkeypatch):
    """The run configuration azureml-core's own submit path (``script_run_config.submit``, which
    ``Experiment.submit`` calls) puts in its request, taken where it leaves for the network: service discovery,
    the snapshot upload and the HTTP calls are answered here; everything from the ScriptRunConfig to the request
    body is the SDK's. Any other call to Azure fails the test."""
    import requests
    from azureml._execution import _commands
    from azureml._restclient import service_context
    from azureml._restclient.clientbase import ClientBase
    from azureml.core import Workspace, script_run_config
    from azureml.core.authentication import ArmTokenAuthentication

    class Posted(Exception):
        pass

    posted = {}

    def network(func, *args, **kwargs):
        if func is requests.post and "Configuration" in (kwargs.get("json") or {}):
            posted.update(kwargs["json"])
            raise Posted
        raise AssertionError(f"unexpected call to Azure: {getattr(func, '__name__', func)} {args[:1]}")

    class Snapshots:
        def __init__(self, *_):
            pass

        def create_snapshot(self, *_args, **_kwargs):
            return "snapshot-id"

    def no_network(*args, **_kwargs):
        raise AssertionError(f"unexpected HTTP request: {args[1:3]}")

    monkeypatch.setattr(service_context, "get_service_url", lambda *a, **k: "https://westeurope.api.azureml.ms")
    monkeypatch.setattr(_commands, "SnapshotsClient", Snapshots)
    monkeypatch.setattr(ClientBase, "_execute_func", staticmethod(network))
    monkeypatch.setattr(requests.Session, "request", no_network)
    workspace = Workspace("sub", "rg", "ws", auth=ArmTokenAuthentication("arm-token", cloud="AzureCloud"),
                          _location="westeurope", _workspace_id="00000000-0000-0000-0000-000000000000",
                          _disable_service_check=True)

    def configuration(src) -> dict:
        posted.clear()
        with pytest.raises(Posted):
            script_run_config.submit(src, workspace, "fowl")
        return posted["Configuration"]

    return configuration


@pytest.mark.parametrize("launch, nodes, procs, command, inputs", [
    ("per-process", 1, 1, "", []),
    ("per-process", 2, 2, "", ["fowl=azureml:fowl-images:3"]),
    ("per-node", 2, 2, "torchrun --nnodes 2 --node_rank $NODE_RANK train/pytorch_train.py "
                       "--data $AZUREML_DATAREFERENCE_raw", ["raw=datastore:workspaceblobstore/raw"]),
    ("mpi", 2, 4, "", []),
])
def test_the_dry_run_body_is_what_the_sdk_posts(source, posted_by_the_sdk, launch, nodes, procs, command, inputs):
    arguments = ("--data-dir", "${{inputs.fowl}}") if inputs and not command else ("--num-epochs", "1")
    j = job(source, launch=launch, nodes=nodes, procs=procs, command=command, arguments=arguments,
            env={"NCCL_DEBUG": "INFO"})
    plan = azure_plan.plan(j, SETTINGS, "gpu4", inputs, True)
    ref = environment.environment_ref(SETTINGS, "gpu", LOCAL_REF, "wsacr.azurecr.io")
    src = v1_job.script_run_config(plan, v1.environment(ref, SETTINGS, environ={}), SETTINGS)
    printed = v1.job_body(src)
    sent = posted_by_the_sdk(src)
    assert sent == printed
    assert (sent["nodeCount"], sent["target"]) == (nodes, "gpu4")  # and it is this job's, not an empty one
