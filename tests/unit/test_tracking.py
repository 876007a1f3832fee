"""The local MLflow tracking: tags, the final status written into MLflow's own file-store files, the UI image."""

from __future__ import annotations

import subprocess

import yaml

from amltrain.local import tracking

# meta.yaml as MLflow 3.15's file store wrote it for a local run still going (status 1: RUNNING).
RUNNING_META = """artifact_uri: file:///mnt/azureml/mlruns/901834763984294303/1bb7f83b80a9440d94df892c5fa1d74b/artifacts
end_time: null
entry_point_name: ''
experiment_id: '901834763984294303'
lifecycle_stage: active
run_id: 1bb7f83b80a9440d94df892c5fa1d74b
run_name: fowl-transfer_1795980386_b854f562
source_name: ''
source_type: 4
source_version: ''
start_time: 1795980393040
status: 1
tags: []
user_id: unknown
"""


def test_the_tags_say_shape_image_commit_and_a_status_until_the_end():
    tags = tracking.run_tags("exp_1_ab", "amltrain/train:cpu-0123", "mpi", 2, 2, "abc123")
    assert tags["amltrain.shape"] == "2x2 mpi" and tags["amltrain.image"] == "amltrain/train:cpu-0123"
    assert tags["mlflow.source.git.commit"] == "abc123" and tags["amltrain.status"] == "Running"
    assert "mlflow.source.git.commit" not in tracking.run_tags("r", "i", "per-process", 1, 1, "")


def test_finish_writes_the_outcome_into_the_file_store_as_mlflow_reads_it(tmp_path):
    run = tmp_path / "901834763984294303/1bb7f83b80a9440d94df892c5fa1d74b"
    run.mkdir(parents=True)
    (run / "meta.yaml").write_text(RUNNING_META)
    tracking.finish(tmp_path, "901834763984294303", "1bb7f83b80a9440d94df892c5fa1d74b", "Failed")
    meta = yaml.safe_load((run / "meta.yaml").read_text())
    assert meta["status"] == 4 and meta["end_time"] > meta["start_time"]  # FAILED, ended
    assert meta["run_name"] == "fowl-transfer_1795980386_b854f562"
    assert (run / "tags/amltrain.status").read_text() == "Failed"


def test_git_commit_names_the_source_folders_commit(tmp_path):
    assert tracking.git_commit(tmp_path) == ""  # not a repository
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a").write_text("1")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "a"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert tracking.git_commit(tmp_path) == head
    (tmp_path / "a").write_text("2")
    assert tracking.git_commit(tmp_path) == head + "-dirty"


def test_the_ui_image_is_the_jobs_image_plus_the_server_of_its_own_mlflow_version():
    text = tracking.ui_dockerfile("amltrain/train:cpu-0123")
    assert text.startswith("FROM amltrain/train:cpu-0123\n") and "mlflow==$(python -c" in text
    assert tracking.ui_image("amltrain/train:cpu-0123") == "amltrain/train:cpu-0123-mlflow-ui"
    assert "file:///mnt/azureml/mlruns" in tracking.ui_command()
