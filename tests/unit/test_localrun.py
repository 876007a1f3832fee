from pathlib import Path

import pytest

from amltrain import localrun
from amltrain.errors import ToolkitError
from amltrain.spec import ContainerRequest, JobSpec, LocalSettings, Mount, frozen_map


@pytest.fixture
def source(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    (src / "train/job.py").write_text("print('hi')\n")
    (src / "data").mkdir()
    return src


@pytest.fixture
def job(source, tmp_path) -> JobSpec:
    return JobSpec(experiment="fowl", target="cpu", source_dir=source, script="train/job.py",
                   arguments=("--data-dir", "${{inputs.data}}", "--lr", "0.1"),
                   inputs=frozen_map({"data": tmp_path / "fowl"}),
                   environment=frozen_map({"MY_API_KEY": "abc", "WORLD_SIZE": "99", "FOO": "bar"}))


@pytest.fixture
def settings(tmp_path) -> LocalSettings:
    return LocalSettings(runs_dir=tmp_path / "runs", user="1000:1000")


def test_request_is_exactly_azure_mls_single_node_contract(job, settings, tmp_path):
    request = localrun.local_request(job, "amltrain/train:cpu-abc", settings, run_id="fowl_1_ab")
    run_dir = tmp_path / "runs/fowl_1_ab"
    assert request.run_dir == run_dir
    assert request.snapshot_files == ("train/job.py",)
    assert request.containers == (ContainerRequest(
        name="fowl_1_ab",
        image="amltrain/train:cpu-abc",
        command=("python", "train/job.py", "--data-dir", "/mnt/azureml/inputs/data", "--lr", "0.1"),
        working_dir="/mnt/azureml/wd",
        hostname="fowl-1-ab",
        user="1000:1000",
        shm_size="2g",
        environment=frozen_map({
            "MY_API_KEY": "abc", "FOO": "bar",
            "MASTER_ADDR": "fowl-1-ab", "MASTER_PORT": "6105", "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0",
            "NODE_RANK": "0", "AZUREML_RUN_ID": "fowl_1_ab", "AZUREML_ARM_PROJECT_NAME": "fowl",
            "AZUREML_NODE_COUNT": "1", "MLFLOW_TRACKING_URI": "file:///mnt/azureml/mlruns",
            "MLFLOW_EXPERIMENT_NAME": "fowl", "MLFLOW_ALLOW_FILE_STORE": "true",
            "AZUREML_DATAREFERENCE_data": "/mnt/azureml/inputs/data", "HOME": "/tmp",
        }),
        mounts=(
            Mount(str(run_dir / "outputs"), "/mnt/azureml/wd/outputs"),
            Mount(str(run_dir / "logs"), "/mnt/azureml/wd/logs"),
            Mount(str(run_dir / "mlruns"), "/mnt/azureml/mlruns"),
            Mount(str(tmp_path / "fowl"), "/mnt/azureml/inputs/data", read_only=True),
        ),
        labels=frozen_map({"amltrain.run-id": "fowl_1_ab", "amltrain.node-rank": "0",
                           "amltrain.experiment": "fowl"}),
    ),)


def test_building_a_request_touches_nothing(job, settings):
    localrun.local_request(job, "img", settings)
    assert not settings.runs_dir.exists()


def test_root_runs_keep_the_image_home(job, settings):
    request = localrun.local_request(job, "img", LocalSettings(runs_dir=settings.runs_dir, user="0:0"))
    assert "HOME" not in request.containers[0].environment


def test_unknown_input_reference_is_refused(job, settings):
    bad = JobSpec(**{**job.__dict__, "arguments": ("${{inputs.missing}}",)})
    with pytest.raises(ToolkitError, match="input 'missing'"):
        localrun.local_request(bad, "img", settings)


def test_script_excluded_by_amlignore_is_refused(job, settings, source):
    (source / ".amlignore").write_text("train/\n")
    with pytest.raises(ToolkitError, match="excluded from the snapshot"):
        localrun.local_request(job, "img", settings)


def test_describe_masks_secrets(job, settings):
    env = localrun.describe(localrun.local_request(job, "img", settings))["containers"][0]["environment"]
    assert env["MY_API_KEY"] == "****" and env["FOO"] == "bar"
    assert localrun.mask("DB_URL", "https://u:p@host/x") == "https://****@host/x"


def test_run_ids_look_like_azure_mls_and_are_unique():
    a, b = localrun.new_run_id("fowl transfer"), localrun.new_run_id("fowl transfer")
    assert a != b
    name, stamp, suffix = a.split("_")
    assert name == "fowl-transfer" and stamp.isdigit() and len(suffix) == 8


def test_gpus_and_the_run_cache_reach_the_request(job, settings, tmp_path):
    cached = LocalSettings(runs_dir=settings.runs_dir, user="1000:1000", gpus="0,1", cache_dir=tmp_path / "cache")
    request = localrun.local_request(job, "img", cached)
    container = request.containers[0]
    assert container.gpus == "0,1" and request.cache_dir == tmp_path / "cache"
    assert Mount(str(tmp_path / "cache"), "/mnt/azureml/cache") in container.mounts
    assert container.environment["AMLTRAIN_CACHE_DIR"] == "/mnt/azureml/cache"
    assert container.environment["TORCH_HOME"] == "/mnt/azureml/cache/torch"
    assert localrun.describe(request)["containers"][0]["gpus"] == "0,1"


@pytest.mark.parametrize("name, value", [
    ("STORAGE_CONNECTION_STRING", "x"),
    ("BLOB", "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=abc=="),
    ("URL", "https://a.blob.core.windows.net/c?sv=2024&sig=abc"),
    ("HF_AUTH", "x"),
])
def test_secret_looking_values_are_masked(name, value):
    assert localrun.mask(name, value) == "****"
