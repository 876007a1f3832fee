"""SDK v2 at its boundary: the job amltrain builds for each launch mode, as the SDK itself writes and sends it.

Two checks per job, both through the SDK's own code: (a) the YAML ``az ml job create -f`` would read, written to a
file, loads back through ``azure.ai.ml.load_job`` into a job that the SDK submits with the same body; (b) the body
``MLClient.jobs.create_or_update`` really puts on the wire (the HTTP request, answered by ``AzureNetwork``: code
asset lookup, latest data version, the PUT) is the dry run's ``job_body`` once the values only the SDK knows at
submit (the code asset, the job name, ARM ids of ``azureml:`` references) are put in. Any other request fails.
"""

from __future__ import annotations

import copy
import os
import shlex

import pytest

from amltrain.azure.data import RemoteInput
from amltrain.azure.environment import EnvironmentRef
from amltrain.azure.plan import Plan, plan
from amltrain.azure.settings import AzureSettings, ComputeSpec
from amltrain.azure.v2 import build
from amltrain.errors import ToolkitError
from amltrain.spec import Distribution, JobSpec, frozen_map
from tests.azure_fake_v2 import (
    ASSET_ID,
    CODE_ID,
    COMPUTE_ID,
    GIT_VARIABLES,
    WORKSPACE_ID,
    AzureNetwork,
    answer_code_asset,
    answer_data_plane,
    client,
    model_version,
    workspace_resource,
)

SETTINGS = AzureSettings(computes=frozen_map({"gpu4": ComputeSpec("gpu4", "Standard_NC96ads_A100_v4", max_nodes=4)}),
                         compute="gpu4", shm_size="16g", max_run_duration_seconds=7200)
ENV = EnvironmentRef("amltrain-gpu", "0123456789ab", "wsacr.azurecr.io/amltrain/train", "gpu-0123456789ab",
                     "sha256:" + "7" * 64)
LATEST = "7"  # the data asset's newest version, as the service answers
TORCHRUN = ("torchrun --nnodes 2 --nproc_per_node 2 --node_rank $NODE_RANK --master_addr $MASTER_ADDR "
            "--master_port $MASTER_PORT train/pytorch_train.py --data ${{inputs.raw}}")

# launch, nodes, procs, command, inputs, compute, instance type -> the distribution and resources sent
MODES = {
    "1x1": ("per-process", 1, 1, "", ["fowl=azureml:fowl-images:3"], "gpu4", None,
            None, {"instanceCount": 1, "shmSize": "16g"}),
    "2x2 per-process": ("per-process", 2, 2, "", ["fowl=azureml:fowl-images:3"], "gpu4", None,
                        {"processCountPerInstance": 2, "distributionType": "PyTorch"},
                        {"instanceCount": 2, "shmSize": "16g"}),
    "2x2 per-node": ("per-node", 2, 2, TORCHRUN, ["raw=datastore:workspaceblobstore/raw/2024"], "gpu4", None,
                     {"processCountPerInstance": 1, "distributionType": "PyTorch"},
                     {"instanceCount": 2, "shmSize": "16g"}),
    "2x4 mpi": ("mpi", 2, 4, "", [], "gpu4", None, {"processCountPerInstance": 4, "distributionType": "Mpi"},
                {"instanceCount": 2, "shmSize": "16g"}),
    "2x2 serverless": ("per-process", 2, 2, "", ["fowl=azureml:fowl-images"], "serverless",
                       "Standard_NC48ads_A100_v4", {"processCountPerInstance": 2, "distributionType": "PyTorch"},
                       {"instanceCount": 2, "instanceType": "Standard_NC48ads_A100_v4", "shmSize": "16g"}),
}


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "project" / "src"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "pytorch_train.py").write_text("print('hi')\n")
    return folder


@pytest.fixture
def azure(monkeypatch, tmp_path):
    """Azure answered at the HTTP request. The SDK adds git properties of the current directory to a job: the
    test runs outside any repository so the bodies hold only what amltrain gave."""
    network = AzureNetwork().install(monkeypatch)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for name in GIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    answer_data_plane(network)
    answer_code_asset(network)
    network.answer("GET", r"/data/fowl-images\?", {"id": f"{WORKSPACE_ID}/data/fowl-images", "name": "fowl-images",
                                                   "properties": {"latestVersion": LATEST, "dataType": "uri_folder"}})
    network.answer("GET", rf"/data/fowl-images/versions/{LATEST}\?", {
        "id": ASSET_ID.format(kind="data", name="fowl-images", version=LATEST), "name": LATEST,
        "properties": {"dataType": "uri_folder", "dataUri": "azureml://datastores/workspaceblobstore/paths/fowl/"}})
    network.answer("PUT", r"/jobs/[^/?]+\?", lambda sent: {
        **sent.body, "id": f"{WORKSPACE_ID}/jobs/{job_name(sent)}", "name": job_name(sent)})
    yield network
    network.check()


def job_name(sent) -> str:
    return sent.path.rsplit("/", 1)[1]


def job_spec(source, launch="per-process", nodes=1, procs=1, command="", arguments=("--num-epochs", "1"), env=None):
    return JobSpec(experiment="fowl", target="gpu", source_dir=source, script="" if command else
                   "train/pytorch_train.py", arguments=() if command else arguments,
                   environment=frozen_map(env or {}), command=command,
                   distribution=Distribution(launch=launch, nodes=nodes, procs_per_node=procs))


def built(source, mode: str):
    launch, nodes, procs, command, inputs, compute, instance_type, _, _ = MODES[mode]
    arguments = ("--data-dir", "${{inputs.fowl}}", "--num-epochs", "1") if inputs and not command else \
        ("--num-epochs", "1")
    spec = job_spec(source, launch, nodes, procs, command, arguments, env={"NCCL_DEBUG": "INFO"})
    p = plan(spec, SETTINGS, compute, inputs, True, instance_type=instance_type)
    return build.command_job(p, ENV, SETTINGS, {"amltrain.launch": f"{launch} {nodes}x{procs}"})


def submitted(network: AzureNetwork, job) -> dict:
    """The body ``jobs.create_or_update`` PUT for ``job``."""
    before = len(network.requests_of("PUT", r"/jobs/"))
    client().jobs.create_or_update(job)
    puts = network.requests_of("PUT", r"/jobs/")
    assert len(puts) == before + 1
    return puts[-1].body | {"_name": job_name(puts[-1])}


def resolved(body: dict, name: str) -> dict:
    """``job_body`` with what only submitting knows: the code asset the SDK found for the snapshot's hash, the
    job name it generated, and the ARM ids it writes for ``azureml:`` references and the compute's name."""
    expected = copy.deepcopy(body)
    p = expected["properties"]
    assert p["codeId"].startswith("<code asset uploaded from ") and p["displayName"] == build.NAME_PLACEHOLDER
    p["codeId"], p["displayName"] = CODE_ID, name
    assert p["environmentId"] == f"azureml:{ENV.name}:{ENV.version}"
    p["environmentId"] = ASSET_ID.format(kind="environments", name=ENV.name, version=ENV.version)
    if "computeId" in p:
        p["computeId"] = COMPUTE_ID.format(name=p["computeId"])
    for value in p.get("inputs", {}).values():
        uri = value["uri"]
        if uri.startswith("azureml:fowl-images:"):
            value["uri"] = ASSET_ID.format(kind="data", name="fowl-images", version=uri.rsplit(":", 1)[1])
        elif uri == "fowl-images@latest":
            value["uri"] = ASSET_ID.format(kind="data", name="fowl-images", version=LATEST)
    return expected


@pytest.mark.parametrize("mode", MODES)
def test_what_the_sdk_sends_is_the_dry_run_body(source, azure, mode):
    job = built(source, mode)
    printed = build.job_body(job)
    sent = submitted(azure, job)
    name = sent.pop("_name")
    assert sent == resolved(printed, name)
    *_, distribution, resources = MODES[mode]  # and it is this job's, not an empty one
    assert sent["properties"].get("distribution") == distribution
    assert sent["properties"]["resources"] == {**resources, "properties": {}}
    assert sent["properties"]["limits"] == {"timeout": "PT2H", "jobLimitsType": "Command"}
    assert sent["properties"]["environmentVariables"] == {"NCCL_DEBUG": "INFO"}
    assert ("computeId" in sent["properties"]) == (mode != "2x2 serverless")


@pytest.mark.parametrize("mode", MODES)
def test_the_yaml_file_loads_back_into_the_same_job(source, azure, tmp_path, mode):
    from azure.ai.ml import load_job

    job = built(source, mode)
    folder = tmp_path / "project" / ".amltrain"
    folder.mkdir(parents=True)
    (folder / "job.yml").write_text(build.job_yaml(job, folder))
    loaded = load_job(folder / "job.yml")
    assert build.job_yaml(loaded, folder) == build.job_yaml(job, folder)
    sent, sent_loaded = submitted(azure, job), submitted(azure, loaded)
    for body in (sent, sent_loaded):
        body.pop("_name")
        body["properties"].pop("displayName")
    assert sent_loaded == sent


def test_the_yaml_of_a_two_by_two_job(source, tmp_path):
    """The file's ``code`` is relative to the file's folder (the SDK reads it so); without a folder, absolute."""
    import yaml

    job = built(source, "2x2 per-process")
    text = build.job_yaml(job, source.parent / ".amltrain")
    document = yaml.safe_load(text)
    assert text.startswith(f"$schema: {build.SCHEMA}\ntype: command\n")
    assert document["code"] == "../src"
    assert yaml.safe_load(build.job_yaml(job))["code"] == str(source)
    assert {k: document[k] for k in ("experiment_name", "command", "environment", "compute", "distribution",
                                     "resources", "limits", "inputs")} == {
        "experiment_name": "fowl",
        "command": "python train/pytorch_train.py --data-dir ${{inputs.fowl}} --num-epochs 1",
        "environment": "azureml:amltrain-gpu:0123456789ab", "compute": "azureml:gpu4",
        "distribution": {"process_count_per_instance": 2, "type": "pytorch"},
        "resources": {"instance_count": 2, "properties": {}, "shm_size": "16g"}, "limits": {"timeout": 7200},
        "inputs": {"fowl": {"mode": "ro_mount", "path": "azureml:fowl-images:3", "type": "uri_folder"}}}


def test_arguments_are_shell_words_with_input_references_kept_as_written(source):
    arguments = ("--note", "two words", "it's", "--data=${{inputs.raw}}/sub dir", "${{ inputs.fowl }}", "")
    spec = job_spec(source, arguments=arguments)
    p = plan(spec, SETTINGS, "gpu4", ["fowl=azureml:fowl-images:3", "raw=datastore:store/raw"], True)
    command = build.command_job(p, ENV, SETTINGS).command
    assert "${{inputs.raw}}" in command and "${{ inputs.fowl }}" in command  # v2 replaces them in the text
    # what the node's shell gets once Azure ML has put the mount paths in
    mounted = command.replace("${{inputs.raw}}", "/mnt/raw").replace("${{ inputs.fowl }}", "/mnt/fowl")
    assert shlex.split(mounted) == ["python", "train/pytorch_train.py", "--note", "two words", "it's",
                                    "--data=/mnt/raw/sub dir", "/mnt/fowl", ""]


def test_an_input_without_a_cloud_reference_is_refused(source):
    spec = job_spec(source, arguments=("--data", "${{inputs.fowl}}", "--other", "${{inputs.missing}}"))
    p = Plan(job=spec, compute=SETTINGS.computes["gpu4"], communication="nccl", snapshot_files=1, snapshot_bytes=1,
             inputs={"fowl": RemoteInput("fowl", "dataset", "fowl-images", "3")})
    with pytest.raises(ToolkitError, match="input 'missing', which has no cloud reference") as raised:
        build.command_job(p, ENV, SETTINGS)
    assert "--input missing=" in raised.value.hint
    per_node = job_spec(source, launch="per-node", nodes=2, command="torchrun x.py ${{inputs.nope}}")
    with pytest.raises(ToolkitError, match="'nope'"):
        build.command_job(Plan(per_node, SETTINGS.computes["gpu4"], {}, "nccl", 1, 1), ENV, SETTINGS)


def test_the_environment_the_sdk_registers_is_the_dry_run_body(azure):
    azure.answer("PUT", r"/environments/amltrain-gpu/versions/0123456789ab\?", lambda sent: {
        **sent.body, "id": ASSET_ID.format(kind="environments", name=ENV.name, version=ENV.version),
        "name": ENV.version})
    env = build.environment(ENV)
    registered = client().environments.create_or_update(env)
    (sent,) = azure.requests_of("PUT", r"/environments/")
    assert sent.body == build.environment_body(env)
    assert sent.body == {"properties": {"image": ENV.image, "isAnonymous": False, "isArchived": False}}
    assert ENV.image.startswith("wsacr.azurecr.io/amltrain/train@sha256:")  # the digest is what runs
    assert (registered.name, registered.version, registered.image) == (ENV.name, ENV.version, ENV.image)


@pytest.mark.parametrize("identity, sent_identity", [
    ("", None),
    ("system", {"type": "SystemAssigned"}),
    ("/subscriptions/s/resourceGroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/puller",
     {"type": "UserAssigned", "userAssignedIdentities": {
         "/subscriptions/s/resourceGroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/puller": {}}}),
])
def test_the_cluster_the_sdk_creates_is_the_dry_run_body(azure, identity, sent_identity):
    azure.answer("PUT", r"/computes/gpu4\?", lambda sent: {**sent.body, "id": COMPUTE_ID.format(name="gpu4"),
                                                          "name": "gpu4", "properties": {
                                                              **sent.body["properties"],
                                                              "provisioningState": "Succeeded"}})
    spec = ComputeSpec("gpu4", "Standard_NC24ads_A100_v4", min_nodes=0, max_nodes=3, idle_seconds=600,
                       low_priority=True, identity=identity)
    cluster = build.compute(spec)
    printed = build.compute_body(cluster)
    created = client().compute.begin_create_or_update(cluster).result()
    (sent,) = azure.requests_of("PUT", r"/computes/")
    assert printed["location"] == build.LOCATION_PLACEHOLDER  # asked of the workspace at submit:
    assert sent.body == {**printed, "location": workspace_resource()["location"]}
    assert sent.body["properties"]["properties"]["vmPriority"] == "LowPriority"
    assert sent.body["properties"]["properties"]["scaleSettings"] == {
        "maxNodeCount": 3, "minNodeCount": 0, "nodeIdleTimeBeforeScaleDown": "PT10M"}
    assert sent.body.get("identity") == sent_identity
    assert (created.name, created.size) == ("gpu4", "Standard_NC24ads_A100_v4")


def test_the_model_the_sdk_registers_is_the_dry_run_body(azure):
    azure.answer("GET", r"/models/birds/versions\?", {"value": [model_version("birds", "1")]})
    azure.answer("GET", r"/models/birds\?", {"id": f"{WORKSPACE_ID}/models/birds", "name": "birds",
                                              "properties": {"latestVersion": "1", "nextVersion": "2"}})
    azure.answer("PUT", r"/models/birds/versions/2\?", lambda sent: model_version(
        "birds", "2", sent.body["properties"]["modelUri"]))
    entity = build.model("fowl_1700000000_0", "birds", "outputs/model.pt2", {"amltrain.run_id": "fowl_1"})
    registered = client().models.create_or_update(entity)
    (sent,) = azure.requests_of("PUT", r"/models/")
    assert sent.body == build.model_body(entity)
    assert sent.body["properties"]["modelUri"] == \
        "azureml://jobs/fowl_1700000000_0/outputs/artifacts/paths/outputs/model.pt2"
    assert (registered.name, registered.version) == ("birds", "2")


def test_the_dry_run_document_is_the_job_file(source, tmp_path):
    from amltrain.azure import v2

    job = built(source, "2x4 mpi")
    document = v2.job_document(job)
    assert document["distribution"] == {"type": "mpi", "process_count_per_instance": 4}
    assert document["code"] == str(source.resolve())  # absolute: the dry run is read where it is printed
    assert v2.job_document(job, tmp_path)["code"] == os.path.relpath(source.resolve(), tmp_path.resolve())
    assert (v2.NAME, v2.PACKAGE) == ("v2", "azure-ai-ml")
