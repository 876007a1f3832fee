"""run-local end to end in real containers: the smoke training, the runtime contract, failures and cleanup."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from amltrain import engine
from tests.conftest import CLI, ROOT
from train import fowl_synthetic

from .conftest import containers_labelled, invoke, left_by, own_experiment, run_dir_of


def test_smoke_trains_a_model_that_loads_without_the_training_code(cpu_image, docker_client, tmp_path):
    result = invoke("smoke", env={"INVOKE_LOCAL_RUNS_DIR": str(tmp_path / "runs"),
                                  "INVOKE_LOCAL_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    run_dir = Path(run_dir_of(result.stdout))
    outputs = run_dir / "outputs"
    assert {"model.pt2", "model.onnx", "labels.json", "metrics.json"} == {p.name for p in outputs.iterdir()}
    metrics = json.loads((outputs / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and 0.0 <= metrics["best_val_acc"] <= 1.0
    assert json.loads((outputs / "labels.json").read_text()) == ["chickens", "turkeys"]
    # MLflow metrics, as Azure ML would record them, in the project's tracking store: one run, made before the
    # job started (the script's start_run continued it), named by the run id, tagged with shape, image, status
    mlflow = json.loads((run_dir / "result.json").read_text())["mlflow"]
    assert mlflow["store"] == str(tmp_path / "runs/mlruns")
    mlrun = Path(mlflow["store"], mlflow["experiment_id"], mlflow["run_id"])
    assert [p.parent.parent.name for p in Path(mlflow["store"]).glob("*/*/meta.yaml")] == [mlflow["experiment_id"]]
    assert "name: fowl-transfer" in (mlrun.parent / "meta.yaml").read_text()
    assert f"run_name: {run_dir.name}" in (mlrun / "meta.yaml").read_text()
    assert "status: 3" in (mlrun / "meta.yaml").read_text()  # FINISHED
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "best_val_acc"} <= {p.name for p in mlrun.glob(
        "metrics/*")}
    tags = {p.name: p.read_text() for p in (mlrun / "tags").iterdir()}
    assert tags["amltrain.status"] == "Completed" and tags["amltrain.image"] == cpu_image
    assert tags["amltrain.shape"] == "1x1 per-process" and tags["amltrain.run_id"] == run_dir.name
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", tags["mlflow.source.git.commit"])
    log = (run_dir / "logs/user_logs/std_log.txt").read_text()
    assert "epoch 1/1" in log and "epoch 1/1" in result.stdout
    # the model loads in a bare interpreter: no train/ code, no torchvision import
    shape = docker_client.containers.run(
        cpu_image, ["python", "-c", "import sys, torch; p = torch.export.load('/model/model.pt2'); "
                    "y = p.module()(torch.randn(2, 3, 112, 112)); assert 'torchvision' not in sys.modules; "
                    "print(tuple(y.shape))"],
        volumes={str(outputs): {"bind": "/model", "mode": "ro"}}, remove=True)
    assert shape.decode().strip() == "(2, 2)"
    # the ONNX export computes what the PyTorch program computes, in onnxruntime. Tolerance: 1e-4 absolute plus 1e-3
    # relative on the logits, for float32 kernels that sum in another order (measured: about 1e-6 on ResNet-18).
    agree = docker_client.containers.run(
        cpu_image, ["python", "-c", ONNX_CHECK], volumes={str(outputs): {"bind": "/model", "mode": "ro"}}, remove=True)
    assert agree.decode().split()[-1] == "agree", agree.decode()


ONNX_CHECK = """
import numpy, onnxruntime, torch
torch.manual_seed(0)
batch = torch.randn(5, 3, 112, 112)
expected = torch.export.load('/model/model.pt2').module()(batch).detach().numpy()
session = onnxruntime.InferenceSession('/model/model.onnx', providers=['CPUExecutionProvider'])
(got,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
print('max abs difference', float(numpy.abs(got - expected).max()), got.shape)
print('agree' if got.shape == expected.shape and numpy.allclose(got, expected, rtol=1e-3, atol=1e-4) else 'differ')
"""


def test_the_samples_gpu_flags_train_and_export_on_cpu_too(cpu_image, tmp_path):
    """--amp (bfloat16 autocast here), --channels-last and --process-group (DDP as the only process, gloo here):
    what bench/gpu_checks.py runs on a GPU must at least train, report its rate and export on CPU."""
    data = fowl_synthetic.generate(tmp_path / "fowl", train_per_class=8, val_per_class=4, size=72, seed=0)
    result = invoke("run-local", "--input", f"data={data}", "--args",
                    "--data-dir ${{inputs.data}} --num-epochs 1 --weights none --image-size 64 --batch-size 8 "
                    "--num-workers 1 --amp --channels-last --process-group",
                    env={"INVOKE_LOCAL_RUNS_DIR": str(tmp_path / "runs"), "INVOKE_LOCAL_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "world size 1 (gloo process group)" in result.stdout
    assert re.search(r"epoch 1/1 .*train [0-9.]+ img/s\)", result.stdout)
    outputs = Path(run_dir_of(result.stdout), "outputs")
    assert {"model.pt2", "model.onnx"} <= {p.name for p in outputs.iterdir()}


def test_the_script_sees_azure_mls_runtime_contract(cpu_image, probe_env, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "sample.txt").write_text("x")
    # As root, run as someone else to see that outputs belong to the run's user, not to root.
    uid, gid = (1234, 1234) if os.getuid() == 0 else (os.getuid(), os.getgid())
    result = invoke("run-local", "--user", f"{uid}:{gid}", "--input", f"data={data}",
                    "--args", "--input ${{inputs.data}}", env=probe_env)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = Path(run_dir_of(result.stdout))
    run_id = run_dir.name
    report = json.loads((run_dir / "outputs/probe.json").read_text())
    env = report["env"]
    assert {k: env[k] for k in ("MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")} == {
        "MASTER_PORT": "6105", "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "NODE_RANK": "0"}
    assert env["AZUREML_RUN_ID"] == run_id and env["MASTER_ADDR"]
    assert report["shm_bytes"] == 2 * 1024**3
    assert report["cwd"] == "/mnt/azureml/wd" and report["cwd_writable"] == "yes"
    assert report["files"] == [".amlignore", "dist_probe.py", "probe.py"]  # the snapshot, less .amlignore's
    assert report["argv"] == ["--input", "/mnt/azureml/inputs/data"]
    assert report["input_files"] == ["sample.txt"] and report["input_writable"] == "EROFS"
    assert (report["uid"], report["gid"]) == (uid, gid)
    written = (run_dir / "outputs/probe.json").stat()
    assert (written.st_uid, written.st_gid) == (uid, gid)
    log = (run_dir / "logs/user_logs/std_log.txt").read_text()
    assert "probe: to stdout" in log and "probe: to stderr" in log


def test_a_failing_script_fails_the_task_with_its_exit_code_and_leaves_nothing_running(
        cpu_image, probe_env, docker_client):
    result = invoke("run-local", "--args", "--exit-code 3", env=probe_env)
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "exited with code 3" in lines[0]
    assert "Traceback" not in result.stderr
    run_dir = Path(run_dir_of(result.stdout))
    assert (run_dir / "outputs/probe.json").is_file()  # partial outputs are kept
    assert containers_labelled(docker_client, f"amltrain.run-id={run_dir.name}") == []


def test_dry_run_prints_the_request_and_runs_nothing(cpu_image, probe_env, docker_client, tmp_path):
    before = len(docker_client.containers.list(all=True))
    result = invoke("run-local", "--dry-run", "--env", "MY_TOKEN=s3cr3t", env=probe_env)
    assert result.returncode == 0, result.stderr
    assert "shm_size: 2g" in result.stdout and "MASTER_PORT: '6105'" in result.stdout
    assert "MY_TOKEN: '****'" in result.stdout and "s3cr3t" not in result.stdout
    assert len(docker_client.containers.list(all=True)) == before
    assert not (tmp_path / "runs").exists()


def test_ctrl_c_stops_and_removes_the_container(cpu_image, probe_env, docker_client):
    before = {c.id for c in docker_client.containers.list(all=True)}  # other runs may share the engine
    proc = subprocess.Popen([CLI, "run-local", "--args", "--sleep 120"], cwd=ROOT,
                            env={**os.environ, **probe_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (started := [c for c in docker_client.containers.list(filters={"label": "amltrain.experiment=probe"})
                           if c.id not in before]):
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.2)
    run_id = started[0].labels["amltrain.run-id"]
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert containers_labelled(docker_client, f"amltrain.run-id={run_id}") == []


@pytest.mark.parametrize("args, message", [
    (["--script", "missing.py"], "script missing.py not found"),
    (["--input", "data=/nonexistent/dir"], "is not a directory"),
    (["--args", "${{inputs.nope}}"], "input 'nope'"),
    (["--target", "tpu"], "unknown target 'tpu'"),
])
def test_bad_input_is_one_line_and_starts_nothing(cpu_image, probe_env, docker_client, args, message):
    env, experiment = own_experiment(probe_env)
    result = invoke("run-local", *args, env=env)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert left_by(docker_client, env, experiment) == ([], [], [])


def test_an_image_that_was_not_built_is_named(probe_env, docker_client):
    result = invoke("run-local", env={**probe_env, "INVOKE_IMAGES_CPU_SYSTEM_PACKAGES": "never-built"})
    assert result.returncode != 0
    assert "is not built" in result.stderr and "invoke build" in result.stderr


def test_a_container_docker_refuses_leaves_no_run_folder_and_no_container(cpu_image, docker_client, tmp_path):
    from amltrain import config
    from amltrain.errors import ToolkitError
    from amltrain.local import executor as local_executor
    from amltrain.local import request as local_request
    from tests.conftest import load_config

    cfg = load_config({"job": {"source_dir": "tests/docker/probe", "script": "probe.py", "experiment": "probe",
                               "distribution": {"nodes": 2}},
                       "local": {"runs_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")}})
    job = config.job_spec(cfg, ROOT)
    run_id = f"probe_conflict_{os.getpid()}"
    request = local_request.local_request(job, cpu_image, config.local_settings(cfg, ROOT), run_id=run_id)
    # node-0 is made, node-1's name is taken: what was made must go again, the run's network too
    squatter = docker_client.containers.create(cpu_image, ["true"], name=f"{run_id}-node-1")
    try:
        with pytest.raises(ToolkitError, match=f"Docker refused run {run_id}") as err:
            local_executor.run(request)
        assert "docker rm" in err.value.hint
        assert not request.run_dir.exists()
        assert [c.id for c in docker_client.containers.list(all=True, filters={"name": run_id})] == [squatter.id]
        assert docker_client.networks.list(names=[request.network]) == []
    finally:
        squatter.remove(force=True)


@pytest.fixture
def restore_latest_code_tag(cpu_image, docker_client):
    """The bake test moves <cpu image>-code-latest: put back what the user had, remove what the test made."""
    latest = f"{cpu_image}-code-latest"
    before = docker_client.images.get(latest).id if engine.image_exists(docker_client, latest) else None
    yield
    for image in docker_client.images.list(name=cpu_image.split(":")[0]):
        for tag in image.tags:
            if tag.startswith(f"{cpu_image}-code-") and image.id != before:
                docker_client.images.remove(tag, force=True)
    if before:
        docker_client.images.get(before).tag(*latest.rsplit(":", 1))


def test_baked_code_runs_from_the_image_not_from_the_working_tree(cpu_image, probe_env, tmp_path,
                                                                  restore_latest_code_tag):
    source = tmp_path / "src"
    shutil.copytree(ROOT / "tests/docker/probe", source)
    (source / "unique.txt").write_text(str(tmp_path))  # a snapshot no earlier run has baked
    env = {**probe_env, "INVOKE_JOB_SOURCE_DIR": str(source)}
    first = invoke("build", "--bake", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    code_image = re.search(r"(amltrain/\S+-code-[0-9a-f]{12})", first.stdout).group(1)
    again = invoke("build", "--bake", env=env)
    assert f"{code_image} is up to date: nothing changed, nothing built" in again.stdout
    (source / "added_after_bake.py").write_text("")  # the working tree moves on; the baked image does not
    runs = {}
    for mode in ("--baked", "--working-tree"):
        result = invoke("run-local", *([mode] if mode == "--baked" else []), env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads((Path(run_dir_of(result.stdout)) / "outputs/probe.json").read_text())
        assert report["cwd_writable"] == "yes"
        runs[mode] = report["files"]
    assert runs["--baked"] == [".amlignore", "dist_probe.py", "probe.py", "unique.txt"]
    assert runs["--working-tree"] == [".amlignore", "added_after_bake.py", "dist_probe.py", "probe.py", "unique.txt"]
