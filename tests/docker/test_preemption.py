"""The preemption drill end to end: a 2-node DDP run of the sample, preempted twice, ends exactly where an
uninterrupted run with the same seed ends (bitwise: the same model file, metrics and MLflow history)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import ROOT
from train import fowl_synthetic

from .conftest import invoke, run_dir_of

# Small, to be quick on two shared cores. Wherever a preemption lands (starting up, mid-epoch, validating),
# SIGTERM is acted on at the next step with a save, so every attempt moves on, and the end must be the same.
# The grace is long so that a slow start under load is not cut short by SIGKILL. EPOCHS is more work than two
# attempts of PREEMPT_AFTER seconds can do on a fast, idle machine (about 2.5 s an epoch there), so that both
# preemptions land before the job ends: with 4 epochs and 12 s, a fast CI machine finished in attempt 2.
EPOCHS, PREEMPT_AFTER = 10, "8"
ARGS = (f"--data-dir ${{{{inputs.data}}}} --weights none --image-size 32 --batch-size 4 --num-epochs {EPOCHS} "
        "--num-workers 1 --checkpoint-every 1 --seed 3")


def mlflow_history(run_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """Each metric's (value, step) lines of the run's one MLflow run (result.json names it in the project's
    store): every attempt's processes log into it, so a continued run has one history."""
    tracked = json.loads((run_dir / "result.json").read_text())["mlflow"]
    run = Path(tracked["store"]) / tracked["experiment_id"] / tracked["run_id"]
    return {m.name: [tuple(line.split()[1:]) for line in m.read_text().splitlines()]
            for m in sorted((run / "metrics").iterdir())}


def test_a_preempted_two_node_run_ends_bitwise_like_an_uninterrupted_one(cpu_image, tmp_path):
    data = fowl_synthetic.generate(tmp_path / "fowl", train_per_class=8, val_per_class=4, size=40, seed=1)
    env = {"INVOKE_LOCAL_RUNS_DIR": str(tmp_path / "runs"), "INVOKE_LOCAL_CACHE_DIR": str(tmp_path / "cache")}
    common = ("run-local", "--input", f"data={data}", "--nodes", "2", "--args", ARGS)

    plain = invoke(*common, env=env)
    assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr
    drilled = invoke(*common, "--preempt-after", PREEMPT_AFTER, "--restarts", "2", "--grace", "60", env=env)
    assert drilled.returncode == 0, drilled.stdout[-3000:] + drilled.stderr
    a, b = Path(run_dir_of(plain.stdout)), Path(run_dir_of(drilled.stdout))

    result = json.loads((b / "result.json").read_text())
    assert [(x["attempt"], x["status"]) for x in result["attempts"]] == [
        (1, "Preempted"), (2, "Preempted"), (3, "Completed")]
    assert result["status"] == "Completed" and result["checkpoints"] == str(b / "checkpoints")
    for k in (1, 2):  # each preempted attempt saved on SIGTERM, and the next one resumed from it
        assert "stopped by SIGTERM at" in (b / f"logs/attempt-{k}/user_logs/std_log_process_0.txt").read_text()
        resumed = (b / f"logs/attempt-{k + 1}/user_logs/std_log_process_0.txt").read_text()
        assert "resuming from checkpoint /mnt/azureml/checkpoints/ckpt-" in resumed
    status = invoke("local-status", env=env).stdout
    assert f"{b.name}" in status and "3 attempt(s), 2 preempted" in status, status

    assert (a / "outputs/model.pt2").read_bytes() == (b / "outputs/model.pt2").read_bytes()
    assert (a / "outputs/metrics.json").read_text() == (b / "outputs/metrics.json").read_text()
    history = mlflow_history(b)
    assert history == mlflow_history(a)
    assert [step for _, step in history["val_acc"]] == [str(e) for e in range(1, EPOCHS + 1)]  # no epoch twice


def test_the_sample_resumes_from_the_newest_complete_checkpoint_only(cpu_image, docker_client, tmp_path):
    """A file being written (another name) is never read; a damaged newest one is skipped, said so."""
    fowl_synthetic.generate(tmp_path / "fowl", train_per_class=4, val_per_class=2, size=40, seed=1)
    script = (
        "set -e; A='--data-dir /w/fowl --weights none --image-size 32 --batch-size 4 --num-workers 0 "
        "--checkpoint-dir /w/ckpt --output-dir /w/out'; "
        "python train/pytorch_train.py $A --num-epochs 1; "
        "head -c 1000 /w/ckpt/ckpt-e0002-s000000.pt > /w/ckpt/.ckpt-e0009-s000000.pt.1.tmp; "
        "head -c 1000 /w/ckpt/ckpt-e0002-s000000.pt > /w/ckpt/ckpt-e0003-s000001.pt; "
        "python train/pytorch_train.py $A --num-epochs 2")
    log = docker_client.containers.run(
        cpu_image, ["sh", "-c", script], working_dir="/src", user=f"{os.getuid()}:{os.getgid()}",
        environment={"HOME": "/tmp"}, remove=True, stderr=True,
        volumes={str(ROOT): {"bind": "/src", "mode": "ro"}, str(tmp_path): {"bind": "/w", "mode": "rw"}}).decode()
    assert "warning: skipping checkpoint ckpt-e0003-s000001.pt" in log, log
    assert "resuming from checkpoint /w/ckpt/ckpt-e0002-s000000.pt: epoch 2, step 0" in log, log
    assert "epoch 2/2" in log and "epoch 1/2" not in log, log
