"""Local distributed runs in real containers: every launch mode, gang failure, cancel from another shell."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CLI, ROOT

from .conftest import containers_labelled, invoke, left_by, own_experiment, run_dir_of

TORCHRUN = ("torchrun --nproc_per_node 2 --nnodes 2 --node_rank $NODE_RANK --master_addr $MASTER_ADDR "
            "--master_port $MASTER_PORT dist_probe.py")


def ranks(run_dir: Path) -> dict[int, dict]:
    return {r["rank"]: r for r in (json.loads(p.read_text()) for p in (run_dir / "outputs").glob("rank_*.json"))}


def assert_gone(client, run_dir: Path) -> None:
    assert containers_labelled(client, f"amltrain.run-id={run_dir.name}") == []
    assert client.networks.list(filters={"label": f"amltrain.run-id={run_dir.name}"}) == []


def test_ddp_per_process_two_nodes_by_two(cpu_image, probe_env, docker_client):
    result = invoke("run-local", "--script", "dist_probe.py", "--nodes", "2", "--procs-per-node", "2", env=probe_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    run_dir = Path(run_dir_of(result.stdout))
    seen = ranks(run_dir)
    assert sorted(seen) == [0, 1, 2, 3]
    for rank, report in seen.items():
        assert report["sum"] == 15  # 2**0 + 2**1 + 2**2 + 2**3: every rank took part
        node = rank // 2
        assert report["hostname"] == f"node-{node}"
        assert report["env"] | {"AZUREML_RUN_ID": "x"} == {
            "MASTER_ADDR": "node-0", "MASTER_PORT": "6105", "WORLD_SIZE": "4", "NODE_RANK": str(node),
            "RANK": str(rank), "LOCAL_RANK": str(rank % 2), "AZUREML_RUN_ID": "x",
            "AZUREML_ARM_PROJECT_NAME": "probe", "AZUREML_NODE_COUNT": "2"}
        log = (run_dir / f"logs/user_logs/std_log_process_{rank}.txt").read_text()
        assert log == f"all-reduce sum 15 on node-{node}\n"
        assert f"[rank {rank}] all-reduce sum 15 on node-{node}" in result.stdout
    assert json.loads((run_dir / "result.json").read_text())["status"] == "Completed"
    assert_gone(docker_client, run_dir)


def test_per_node_launch_runs_torchrun_once_per_node(cpu_image, probe_env, docker_client):
    result = invoke("run-local", "--nodes", "2", "--procs-per-node", "2", "--launch", "per-node",
                    "--command", TORCHRUN, env=probe_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    run_dir = Path(run_dir_of(result.stdout))
    seen = ranks(run_dir)
    assert sorted(seen) == [0, 1, 2, 3] and {r["sum"] for r in seen.values()} == {15}
    for rank, report in seen.items():
        # the platform gave NODE_RANK/MASTER_*/WORLD_SIZE (nodes); torchrun gave RANK and LOCAL_RANK
        assert report["env"]["NODE_RANK"] == str(rank // 2) and report["env"]["GROUP_RANK"] == str(rank // 2)
        assert report["env"]["LOCAL_RANK"] == str(rank % 2)
    assert sorted(p.name for p in (run_dir / "logs/user_logs").iterdir()) == [
        "std_log_process_0.txt", "std_log_process_1.txt"]  # one process per node started by us
    assert "[node 1] all-reduce sum 15 on node-1" in result.stdout
    assert_gone(docker_client, run_dir)


def test_horovod_over_mpi_two_nodes(cpu_image, docker_client, tmp_path):
    env = {"INVOKE_LOCAL_RUNS_DIR": str(tmp_path / "runs"), "INVOKE_LOCAL_CACHE_DIR": str(tmp_path / "cache")}
    result = invoke("run-local", "--script", "train/pytorch_horovod_mnist.py",
                    "--nodes", "2", "--procs-per-node", "1", "--launch", "mpi", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    run_dir = Path(run_dir_of(result.stdout))
    for rank in (0, 1):
        assert f"[rank {rank}] horovod rank {rank}/2" in result.stdout
        assert "all-reduce check 3 (expected 3)" in (run_dir / f"logs/user_logs/std_log_process_{rank}.txt").read_text()
    metrics = json.loads((run_dir / "outputs/metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["test_accuracy"] > 0.5  # learnt, with both processes
    assert (run_dir / "outputs/model.pt").is_file()
    assert (run_dir / "logs/user_logs/mpi_log.txt").is_file()
    assert_gone(docker_client, run_dir)


@pytest.mark.parametrize("launch", ["per-process", "mpi"])
def test_a_crashing_rank_stops_every_node_and_its_exit_code_is_the_runs(cpu_image, probe_env, docker_client, launch):
    started = time.monotonic()
    result = invoke("run-local", "--script", "dist_probe.py", "--args", "--fail-rank 3 --exit-code 7 --sleep 300",
                    "--nodes", "2", "--procs-per-node", "2", "--launch", launch, env=probe_env)
    elapsed = time.monotonic() - started
    assert result.returncode == 7, result.stdout[-3000:] + result.stderr
    assert elapsed < 120  # the other ranks sleep 300 s: they were stopped, not waited for
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error:") and "rank 3 (node 1) exited with code 7" in line and "std_log_process_3" in line
    run_dir = Path(run_dir_of(result.stdout))
    assert sorted(ranks(run_dir)) == [0, 1, 2, 3]  # partial outputs of every rank are kept
    result_json = json.loads((run_dir / "result.json").read_text())
    assert (result_json["status"], result_json["exit_code"], result_json["failed"]) == ("Failed", 7, "rank 3 (node 1)")
    (record,) = [json.loads(p.read_text()) for p in (run_dir / "logs/system_logs/launcher").glob("*.json")]
    stopped_within = (run_dir / "result.json").stat().st_mtime - record["time"]
    assert stopped_within < 15, f"from rank 3's exit to everything stopped and removed: {stopped_within:.1f} s"
    assert_gone(docker_client, run_dir)


def started_two_node_run(probe_env) -> tuple[subprocess.Popen, Path]:
    """A 2-node run of ranks that sleep 300 s, once both ranks have written their report."""
    proc = subprocess.Popen([CLI, "run-local", "--script", "dist_probe.py",
                             "--args", "--sleep 300", "--nodes", "2"], cwd=ROOT, env={**os.environ, **probe_env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = Path(run_dir_of(proc.stdout.readline()))
    deadline = time.monotonic() + 120
    while not all((run_dir / f"outputs/rank_{r}.json").exists() for r in (0, 1)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run did not start: {proc.communicate()[1][-2000:]}")
        time.sleep(0.5)
    return proc, run_dir


def test_local_status_logs_and_cancel_work_from_another_shell(cpu_image, probe_env, docker_client):
    proc, run_dir = started_two_node_run(probe_env)
    follow = None
    try:
        status = invoke("local-status", env=probe_env)
        assert f"{run_dir.name}" in status.stdout and "Running" in status.stdout, status.stdout + status.stderr
        logs = invoke("local-logs", "--run", run_dir.name, env=probe_env)
        assert "[rank 1] all-reduce sum 3 on node-1" in logs.stdout, logs.stdout + logs.stderr
        follow = subprocess.Popen([CLI, "local-logs", "--run", run_dir.name, "--follow"],
                                  cwd=ROOT, env={**os.environ, **probe_env}, stdout=subprocess.PIPE, text=True)
        started = time.monotonic()
        dry = invoke("local-cancel", "--run", run_dir.name, "--dry-run", env=probe_env)
        assert dry.stdout == f"would cancel {run_dir.name}: 2 container(s) and 1 network(s)\n", dry.stdout + dry.stderr
        cancel = invoke("local-cancel", "--run", run_dir.name, env=probe_env)
        assert cancel.returncode == 0, cancel.stderr
        assert cancel.stdout == f"cancelled {run_dir.name}: 2 container(s) and 1 network(s) removed; results kept\n"
        _, stderr = proc.communicate(timeout=60)
        assert time.monotonic() - started < 30
        followed, _ = follow.communicate(timeout=30)  # --follow ends by itself when the run does
        assert follow.returncode == 0 and "[rank 0] all-reduce sum 3 on node-0" in followed
    finally:
        for process in (proc, follow):
            if process is not None and process.poll() is None:
                process.kill()
    assert proc.returncode == 130 and "cancelled (invoke local-cancel)" in stderr, stderr
    assert_gone(docker_client, run_dir)
    assert json.loads((run_dir / "result.json").read_text())["status"] == "Canceled"
    assert "Canceled" in invoke("local-status", env=probe_env).stdout


def test_sigterm_stops_every_node_and_exits_143(cpu_image, probe_env, docker_client):
    proc, run_dir = started_two_node_run(probe_env)
    try:
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert_gone(docker_client, run_dir)  # containers and the run's network
    assert json.loads((run_dir / "result.json").read_text())["status"] == "Canceled"


def test_dry_run_prints_every_container_the_network_and_each_ranks_environment(cpu_image, probe_env, docker_client):
    env, experiment = own_experiment(probe_env)
    result = invoke("run-local", "--script", "dist_probe.py", "--nodes", "2", "--procs-per-node", "2",
                    "--launch", "mpi", "--env", "HF_TOKEN=s3cr3t", "--args", "--api-token t0ken", "--dry-run",
                    env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"name: amltrain-{experiment}_" in out and "hostname: node-1" in out and "- mpirun" in out
    assert "OMPI_COMM_WORLD_RANK: '3'" in out and "AZ_BATCH_MASTER_NODE: node-0:6105" in out
    assert "s3cr3t" not in out and "HF_TOKEN: '****'" in out
    assert "t0ken" not in out and "- --api-token\n" in out
    assert left_by(docker_client, env, experiment) == ([], [], [])


@pytest.mark.parametrize("args, env, message", [
    (["--nodes", "0"], {}, "nodes must be a whole number of at least 1, got '0'"),
    (["--procs-per-node", "-1"], {}, "procs-per-node must be a whole number of at least 1, got '-1'"),
    (["--launch", "ring"], {}, "unknown launch mode 'ring'"),
    (["--launch", "per-node", "--nodes", "2"], {}, "no command was given"),
    (["--target", "gpu", "--procs-per-node", "2"], {"INVOKE_LOCAL_GPUS": "0"},
     "2 processes per node need 2 GPUs per node, but 1 GPU(s) over 1 node(s) give 1 each"),
])
def test_bad_shapes_are_one_line_and_start_nothing(probe_env, docker_client, args, env, message):
    own, experiment = own_experiment(probe_env)
    result = invoke("run-local", "--script", "dist_probe.py", *args, env={**own, **env})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert left_by(docker_client, own, experiment) == ([], [], [])


SAMPLE_ARGS = "--data-dir ${{inputs.data}} --num-epochs 1 --weights none --image-size 64 --batch-size 8 --num-workers 1"


@pytest.fixture(scope="module")
def fowl(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fowl") / "data"
    result = invoke("fowl-data", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("launch", ["per-process", "per-node", "mpi"])
def test_the_transfer_learning_sample_runs_unchanged_in_every_mode(cpu_image, docker_client, tmp_path, fowl, launch):
    env = {"INVOKE_LOCAL_RUNS_DIR": str(tmp_path / "runs"), "INVOKE_LOCAL_CACHE_DIR": str(tmp_path / "cache")}
    how = ["--args", SAMPLE_ARGS]
    if launch == "per-node":
        how = ["--command", "torchrun --nproc_per_node 1 --nnodes 2 --node_rank $NODE_RANK --master_addr $MASTER_ADDR "
                            f"--master_port $MASTER_PORT train/pytorch_train.py {SAMPLE_ARGS}"]
    result = invoke("run-local", "--nodes", "2", "--launch", launch, "--input", f"data={fowl}", *how, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    run_dir = Path(run_dir_of(result.stdout))
    metrics = json.loads((run_dir / "outputs/metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["world_size"] == 2
    # saved by rank 0 alone, without DDP's "module." prefix: a plain ResNet-18 program
    check = docker_client.containers.run(
        cpu_image, ["python", "-c", "import torch; p = torch.export.load('/m/model.pt2'); "
                    "assert not any(k.startswith('module.') for k in p.state_dict); "
                    "print(tuple(p.module()(torch.randn(3, 3, 64, 64)).shape))"],
        volumes={str(run_dir / "outputs"): {"bind": "/m", "mode": "ro"}}, remove=True)
    assert check.decode().strip() == "(3, 2)"
    assert_gone(docker_client, run_dir)
