"""The Azure tasks under SDK v2 (the default) as a user meets them: dry runs print the job YAML that
``az ml job create -f`` reads (checked with the SDK's own ``load_job``), ``--emit-yaml`` writes it, nothing is
contacted, and an environment without the SDKs says in one line how to install them."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import ROOT
from tests.unit.test_azure_tasks import OFFLINE, SECRET, one_line_error
from tests.unit.test_tasks import invoke

V2 = {**OFFLINE, "INVOKE_AZURE_SDK": "v2"}
TORCHRUN = ("torchrun --nnodes 2 --nproc_per_node 2 --node_rank $NODE_RANK --master_addr $MASTER_ADDR "
            "--master_port $MASTER_PORT train/pytorch_train.py --num-epochs 1")
MODES = {
    "single": ([], None, 1),
    "per-process 2x2": (["--nodes", "2", "--procs-per-node", "2", "--input", "data=azureml:fowl:3",
                         "--args", "--data-dir ${{inputs.data}} --hf-token " + SECRET], "pytorch", 2),
    "per-node 2x2": (["--nodes", "2", "--launch", "per-node", "--command", TORCHRUN], "pytorch", 2),
    "mpi 2x2": (["--nodes", "2", "--procs-per-node", "2", "--launch", "mpi", "--script",
                 "train/pytorch_horovod_mnist.py"], "mpi", 2),
    "serverless 2x1": (["--nodes", "2", "--compute", "serverless", "--instance-type", "Standard_NC24ads_A100_v4"],
                       "pytorch", 2),
}




def load_job(text: str, folder):
    """The SDK's own reader, as ``az ml job create -f`` uses it, on a file in ``folder``."""
    from azure.ai.ml import load_job as sdk_load_job

    path = folder / "job.yml"
    path.write_text(text)
    return sdk_load_job(path)


@pytest.mark.parametrize("mode", MODES)
def test_v2_dry_run_prints_job_yaml_that_load_job_accepts(mode, workspace_config, tmp_path):
    args, distribution, nodes = MODES[mode]
    result = invoke("submit", "--target", "gpu", *args, "--dry-run", env={**V2, **workspace_config})
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    document = yaml.safe_load(result.stdout)
    assert document["type"] == "command" and document["experiment_name"] == "fowl-transfer"
    assert "# workspace: ws (resource group rg" in result.stdout  # the plan, as comments above the job
    code = document["code"]
    job = load_job(result.stdout.replace(f"code: {code}", f"code: {ROOT / code}"), tmp_path)
    assert job.resources.instance_count == nodes and job.resources.shm_size == "2g"
    assert (job.distribution.type if job.distribution else None) == distribution
    assert str(job.environment).removeprefix("azureml:") == document["tags"]["amltrain.environment"]
    if mode.startswith("serverless"):
        assert job.compute is None and job.resources.instance_type == "Standard_NC24ads_A100_v4"
    else:
        assert job.compute == "gpu-cluster"
    if mode.startswith("per-process"):
        assert "${{inputs.data}}" in job.command and "--hf-token ****" in job.command
        assert job.inputs["data"].path.removeprefix("azureml:") == "fowl:3"


def test_emit_yaml_writes_the_job_and_submits_nothing(workspace_config, tmp_path):
    out = tmp_path / "job.yml"
    result = invoke("submit", "--target", "gpu", "--nodes", "2", "--procs-per-node", "2", "--emit-yaml", str(out),
                    env={**V2, **workspace_config})
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout and "submitted" not in result.stdout.replace("nothing submitted", "")
    job = load_job(out.read_text(), tmp_path)  # the code path is written relative to the file's folder
    assert job.distribution.process_count_per_instance == 2 and job.resources.instance_count == 2
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize("args, fragments", [
    (["--sdk", "v1", "--emit-yaml", "{tmp}/j.yml"], ["--emit-yaml writes an SDK v2 job", "--sdk v2"]),
    (["--emit-yaml", "{tmp}/missing/j.yml"], ["cannot write the job YAML file"]),
    (["--emit-yaml", ""], ["--emit-yaml needs a file name"]),  # not a real submit: an unset $OUT
    (["--emit-yaml", "{tmp}"], ["is not a regular file"]),
    (["--emit-yaml", "/dev/stdout"], ["is not a regular file"]),
    (["--emit-yaml", "{tmp}/j.yml", "--wait"], ["submits nothing: --wait would not apply"]),
    (["--emit-yaml", "{tmp}/j.yml", "--dry-run", "--summary", "s.md"], ["--dry-run, --summary would not apply"]),
])
def test_emit_yaml_refusals_are_one_line_and_write_nothing(args, fragments, workspace_config, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    before = sorted(tmp_path.rglob("*"))
    one_line_error(invoke("submit", *args, env={**V2, **workspace_config}), *fragments)
    assert sorted(tmp_path.rglob("*")) == before


def test_emitted_yaml_names_what_was_masked_and_records_no_placeholder(workspace_config, tmp_path):
    out = tmp_path / "job.yml"
    result = invoke("submit", "--env", f"HF_TOKEN={SECRET}", "--env", "NCCL_DEBUG=INFO", "--emit-yaml", str(out),
                    env={**V2, **workspace_config})
    assert result.returncode == 0, result.stderr
    assert "warning: masked in" in result.stdout and "environment_variables.HF_TOKEN" in result.stdout
    text = out.read_text()
    assert SECRET not in text + result.stdout and "NCCL_DEBUG: INFO" in text
    assert "<the workspace" not in text and "unknown" not in text  # only tags this machine knows


def test_v2_dry_run_masks_secret_variables_and_options(workspace_config):
    result = invoke("submit", "--env", f"AZURE_STORAGE_KEY={SECRET}", "--command",
                    f"python train/pytorch_train.py --api-key={SECRET} --data https://u:{SECRET}@h/d", "--dry-run",
                    env={**V2, **workspace_config})
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout.replace("# ", "#"))
    assert SECRET not in result.stdout + result.stderr
    assert document["environment_variables"]["AZURE_STORAGE_KEY"] == "****"
    assert "--api-key=**** --data https://****@h/d" in document["command"]


@pytest.mark.parametrize("args", [
    ["push", "--target", "gpu"], ["register", "--target", "gpu"],
    ["compute", "--name", "gpu-cluster", "--max-nodes", "2", "--identity", "system"],
    ["model", "--run", "fowl_1_abc", "--register", "pytorch-birds", "--download", "model"],
])
def test_v2_dry_runs_contact_nothing_and_print_no_secret(args, workspace_config):
    result = invoke(*args, "--dry-run", env={**V2, **workspace_config})
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "SDK v2" in result.stdout or "sdk: v2" in result.stdout, result.stdout


def test_v2_compute_dry_run_is_the_sdks_amlcompute_body_with_its_identity(workspace_config):
    result = invoke("compute", "--name", "gpu-cluster", "--identity", "system", "--priority", "low", "--dry-run",
                    env={**V2, **workspace_config})
    body = yaml.safe_load(result.stdout)["created_when_missing"]
    text = json.dumps(body)
    assert "SystemAssigned" in text and "LowPriority" in text and "Standard_NC48ads_A100_v4" in text, text


def test_serverless_needs_an_instance_type_and_checks_it_offline(workspace_config):
    one_line_error(invoke("submit", "--compute", "serverless", "--dry-run", env={**V2, **workspace_config}),
                   "serverless compute needs an instance type", "--instance-type")
    one_line_error(invoke("submit", "--compute", "serverless", "--instance-type", "Standard_NC6", "--dry-run",
                          env={**V2, **workspace_config}), "VM size Standard_NC6 was retired")
    one_line_error(invoke("submit", "--compute", "serverless", "--instance-type", "Standard_NC24ads_A100_v4",
                          "--procs-per-node", "2", "--dry-run", env={**V2, **workspace_config}),
                   "2 processes per node on Standard_NC24ads_A100_v4, which has 1 GPU")


@pytest.mark.parametrize("args, fragments", [
    (["submit", "--nodes", "1", "--launch", "per-node", "--command", TORCHRUN],
     ["waits for 2 node(s) (--nnodes) but the job has 1", "$AZUREML_NODE_COUNT"]),
    (["compute", "--name", "ab", "--vm-size", "Standard_D2s_v5"], ["compute name 'ab' is not valid", "3-24"]),
    (["model", "--run", "r1", "--register", "bad name!"], ["model name 'bad name!' is not valid"]),
])
def test_names_and_shapes_the_service_rejects_are_refused_offline(args, fragments, workspace_config):
    one_line_error(invoke(*args, "--dry-run", env={**V2, **workspace_config}), *fragments)


def test_a_foreign_registry_without_credentials_is_warned_in_the_dry_run(workspace_config):
    env = {**V2, **workspace_config, "INVOKE_AZURE_REGISTRY_ADDRESS": "other.azurecr.io",
           "INVOKE_AZURE_REGISTRY_AUTH": "docker"}
    for task in ("register", "submit"):
        result = invoke(task, "--dry-run", env=env)
        assert result.returncode == 0, result.stderr
        assert "warning: Azure ML gets no credentials for other.azurecr.io" in result.stdout, result.stdout
    serverless = invoke("submit", "--compute", "serverless", "--instance-type", "Standard_D4s_v5", "--target", "cpu",
                        "--dry-run", env={**V2, **workspace_config})
    assert "warning: serverless compute pulls the workspace's ACR" in serverless.stdout, serverless.stdout


# Hides the Azure SDKs from the interpreter, as on an install without the `azure` extra.
WITHOUT_SDKS = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "azureml" or name.startswith("azure.ai"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Hide())
"""


@pytest.mark.parametrize("sdk", ["v1", "v2"])
@pytest.mark.parametrize("args", [["push"], ["register"], ["compute"], ["submit"], ["model", "--run", "r"]])
def test_without_the_azure_extra_every_azure_task_says_how_to_install_it(tmp_path, args, sdk):
    (tmp_path / "sitecustomize.py").write_text(WITHOUT_SDKS)
    result = invoke(*args, "--sdk", sdk, "--dry-run", env={**OFFLINE, "PYTHONPATH": str(tmp_path)})
    one_line_error(result, f"Azure ML SDK {sdk}", "is not installed", "pip install -e '.[azure]'")
