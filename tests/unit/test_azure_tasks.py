"""The Azure tasks as a user meets them, with no Docker engine and no Azure: help, dry runs, one-line refusals.

A dry run contacts nothing (no engine either: DOCKER_HOST points nowhere), so it must work here; bad input
must end in one ``error:`` line before anything would be contacted.
"""

from __future__ import annotations

import pytest

from tests.unit.test_tasks import ENGINE_DOWN, invoke, task_names

AZURE_TASKS = ["push", "register", "compute", "submit", "model"]
SECRET = "canary-secret-7f3a"
# No engine, every HTTP(S) request sent to a closed port (a task that tried to reach Azure would fail), and
# secrets in the environment. (test_tasks checks every task's --help and --dry-run option.)
NO_NETWORK = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "",
              "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "no_proxy": ""}
OFFLINE = {**ENGINE_DOWN, **NO_NETWORK, "AZURE_CLIENT_ID": "client", "AZURE_TENANT_ID": "tenant",
           "AZURE_CLIENT_SECRET": SECRET, "AMLTRAIN_REGISTRY_PASSWORD": SECRET, "INVOKE_AZURE_SDK": "v1"}


def one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.strip().count("\n") == 0, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr




def test_the_azure_tasks_exist():
    assert set(AZURE_TASKS) <= set(task_names())


@pytest.mark.parametrize("args", [
    ["push", "--target", "gpu"], ["register", "--target", "gpu"],
    ["compute", "--name", "gpu-cluster", "--max-nodes", "2"],
    ["submit", "--target", "gpu", "--nodes", "2"],
    ["submit", "--target", "cpu", "--compute", "cpu-cluster", "--nodes", "2", "--procs-per-node", "2",
     "--launch", "mpi"],
    ["submit", "--target", "gpu", "--nodes", "2", "--launch", "per-node", "--command",
     "torchrun --nnodes 2 --node_rank $NODE_RANK train/pytorch_train.py"],
    ["model", "--run", "fowl_1_abc", "--register", "pytorch-birds", "--download", "model"],
])
def test_dry_runs_contact_nothing_and_print_no_secret(args, workspace_config):
    result = invoke(*args, "--dry-run", env={**OFFLINE, **workspace_config})
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert "workspace: ws (resource group rg, from " in result.stdout, result.stdout


def test_submit_dry_run_prints_the_sdk_body_with_secrets_masked(workspace_config):
    import yaml

    result = invoke("submit", "--target", "gpu", "--nodes", "2", "--env", f"WANDB_API_KEY={SECRET}",
                    "--env", "NCCL_DEBUG=INFO", "--dry-run", env={**OFFLINE, **workspace_config})
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    body = printed["run_configuration"]
    assert (body["framework"], body["nodeCount"], body["target"]) == ("PyTorch", 2, "gpu-cluster")
    assert body["environmentVariables"] == {"WANDB_API_KEY": "****", "NCCL_DEBUG": "INFO"}
    assert body["environment"]["python"]["userManagedDependencies"] is True
    assert printed["workspace"].startswith("ws (resource group rg") and "auth service-principal" in printed["workspace"]
    assert SECRET not in result.stdout


@pytest.mark.parametrize("options, field, expected", [
    (["--args", f"--hf-token {SECRET} --api-key={SECRET} --lr 0.1"], "arguments",
     ["--hf-token", "****", "--api-key=****", "--lr", "0.1"]),
    (["--launch", "per-node", "--command", f"torchrun train.py --hf-token {SECRET} --data https://u:{SECRET}@h/d"],
     "command", "torchrun train.py --hf-token **** --data https://****@h/d"),
])
def test_submit_dry_run_masks_secret_options_of_the_script_and_the_command(workspace_config, options, field,
                                                                            expected):
    import yaml

    result = invoke("submit", "--target", "gpu", *options, "--dry-run", env={**OFFLINE, **workspace_config})
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["run_configuration"][field] == expected
    assert SECRET not in result.stdout


def test_push_dry_run_to_the_workspace_registry_says_how_it_would_log_in(workspace_config):
    result = invoke("push", "--target", "gpu", "--dry-run", env={**OFFLINE, **workspace_config})
    assert result.returncode == 0, result.stderr
    assert "push_to: <the workspace's ACR>/amltrain/train:gpu-" in result.stdout
    assert "login: AAD token exchanged for an ACR token, asked of the workspace when pushing" in result.stdout


def test_push_dry_run_with_basic_auth_masks_the_password():
    env = {**OFFLINE, "INVOKE_AZURE_REGISTRY_ADDRESS": "localhost:5000", "INVOKE_AZURE_REGISTRY_AUTH": "basic",
           "INVOKE_AZURE_REGISTRY_USERNAME": "pusher"}
    result = invoke("push", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert "login: pusher / ****" in result.stdout and "push_to: localhost:5000/amltrain/train:cpu-" in result.stdout
    assert SECRET not in result.stdout


@pytest.mark.parametrize("args, fragments", [
    (["submit", "--target", "gpu", "--nodes", "5", "--dry-run"], ["5 nodes asked", "at most 4", "--max-nodes 5"]),
    (["submit", "--target", "gpu", "--procs-per-node", "3", "--dry-run"],
     ["3 processes per node on Standard_NC48ads_A100_v4, which has 2 GPU(s)", "Duplicate GPU"]),
    (["submit", "--args", "--data-dir ${{inputs.data}}", "--input", "data=./fowl", "--dry-run"],
     ["cannot mount a local folder", "azureml:DATASET"]),
    (["compute", "--name", "old", "--vm-size", "STANDARD_NC6", "--dry-run"],
     ["STANDARD_NC6 was retired", "Standard_NC24ads_A100_v4"]),
    (["compute", "--name", "x_y", "--vm-size", "Standard_D2s_v5", "--dry-run"], ["is not valid for Azure ML (3-24"]),
    (["model", "--run", "r1", "--dry-run"], ["nothing to do"]),
    (["submit", "--cancel-on-interrupt"], ["--cancel-on-interrupt needs --wait"]),
    (["build", "--target", "gpu", "--unless-pushed", "--bake"], ["--bake and --unless-pushed do not go together"]),
    (["build", "--unless-pushed", "--no-cache"], ["--no-cache and --unless-pushed do not go together"]),
])
def test_bad_input_is_one_line_before_anything_is_contacted(args, fragments):
    one_line_error(invoke(*args, env=OFFLINE), *fragments)


def test_an_unwritable_summary_file_is_refused_before_anything_is_submitted(tmp_path, workspace_config):
    for path in (tmp_path / "missing-folder" / "summary.md", tmp_path):
        one_line_error(invoke("submit", "--wait", "--summary", str(path), env={**OFFLINE, **workspace_config}),
                       f"cannot write the summary file {path}")
    assert not (tmp_path / "missing-folder").exists()


def test_no_workspace_configuration_is_one_line_before_docker_or_azure(tmp_path):
    env = {**OFFLINE, "INVOKE_AZURE_CONFIG_FILE": str(tmp_path / "missing.json")}
    for task in (["submit"], ["register"], ["push"], ["compute"], ["model", "--run", "r", "--download", "m"]):
        one_line_error(invoke(*task, env=env), "does not exist")


def test_a_snapshot_over_the_limit_is_refused(tmp_path, workspace_config):
    (tmp_path / "train.py").write_text("print('hi')\n")
    for i in range(2001):
        (tmp_path / f"f{i}.txt").write_text("x")
    env = {**OFFLINE, **workspace_config, "INVOKE_JOB_SOURCE_DIR": str(tmp_path), "INVOKE_JOB_SCRIPT": "train.py"}
    one_line_error(invoke("submit", env=env), "files, 0.0 MB", "Azure ML allows 2000 files")


def test_a_deprecated_base_image_is_warned_and_a_removed_one_refused(workspace_config):
    env = {**OFFLINE, **workspace_config}
    old = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04:20250217.v1"
    result = invoke("register", "--target", "cpu", "--dry-run", env={**env, "INVOKE_IMAGES_CPU_BASE_IMAGE": old})
    assert result.returncode == 0 and "warning: base image " + old + " is deprecated" in result.stdout
    gone = "mcr.microsoft.com/azureml/openmpi3.1.2-ubuntu18.04"
    one_line_error(invoke("push", "--target", "cpu", "--dry-run",
                          env={**env, "INVOKE_IMAGES_CPU_BASE_IMAGE": gone}), "no longer published")
