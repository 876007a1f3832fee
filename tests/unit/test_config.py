import os
from pathlib import Path

import pytest

from amltrain import config
from amltrain.errors import ToolkitError
from tests.conftest import ROOT, load_config


def test_targets_come_from_the_images_section():
    assert config.targets(load_config()) == ("cpu", "gpu")


def test_default_base_images_are_current_mcr_images_pinned_to_a_dated_tag(monkeypatch):
    monkeypatch.delenv("INVOKE_RUNTIME_CONFIG", raising=False)
    for var in [v for v in os.environ if v.startswith("INVOKE_IMAGES_")]:
        monkeypatch.delenv(var)
    cfg = load_config()
    for target in ("cpu", "gpu"):
        base = config.image_spec(cfg, target, ROOT).base_image
        repo, _, tag = base.rpartition(":")
        assert repo.startswith("mcr.microsoft.com/azureml/openmpi5.0-") and repo.endswith("ubuntu24.04")
        assert tag[:8].isdigit() and tag[8:10] == ".v", base
        assert "cudnn8" not in base and "openmpi4.1.0" not in base


def test_environment_variable_overrides_invoke_yaml(monkeypatch):
    monkeypatch.setenv("INVOKE_IMAGES_CPU_BASE_IMAGE", "example/base:1")
    assert config.image_spec(load_config(), "cpu", ROOT).base_image == "example/base:1"


def test_task_option_wins_over_configuration():
    cfg = load_config({"job": {"script": "train/pytorch_train.py", "arguments": "--a 1"}})
    job = config.job_spec(cfg, ROOT, arguments="--b '2 3'")
    assert job.arguments == ("--b", "2 3")


def test_list_settings_accept_a_yaml_list_or_one_string():
    assert config.words(["a", 1]) == ("a", "1")
    assert config.words("a 'b c'") == ("a", "b c")
    assert config.words("") == ()


@pytest.mark.parametrize("target", ["nope", "CPU", ""])
def test_unknown_target_is_refused_with_the_known_ones(target):
    with pytest.raises(ToolkitError, match="unknown target") as err:
        config.image_spec(load_config(), target, ROOT)
    assert "cpu, gpu" in err.value.hint


def test_missing_dockerfile_is_named(tmp_path):
    cfg = load_config({"images": {"cpu": {"dockerfile": "Dockerfile.missing"}}})
    with pytest.raises(ToolkitError, match="Dockerfile.missing"):
        config.image_spec(cfg, "cpu", ROOT)


def test_missing_conda_spec_is_named():
    cfg = load_config({"images": {"cpu": {"conda": "conda/missing.yml"}}})
    with pytest.raises(ToolkitError, match="conda/missing.yml does not exist"):
        config.image_spec(cfg, "cpu", ROOT)


def test_malformed_conda_spec_names_file_and_line(tmp_path):
    (tmp_path / "conda").mkdir()
    (tmp_path / "conda/bad.yml").write_text("dependencies:\n  - pip\n  - pip: [torch\n")
    cfg = load_config({"images": {"cpu": {"conda": "conda/bad.yml", "dockerfile": str(ROOT / "Dockerfile.cpu")}}})
    with pytest.raises(ToolkitError, match=r"bad.yml is not valid YAML at line \d"):
        config.image_spec(cfg, "cpu", tmp_path)


def test_conda_spec_outside_conda_folder_is_refused(tmp_path):
    spec = tmp_path / "env.yml"
    spec.write_text("dependencies: [pip]\n")
    with pytest.raises(ToolkitError, match="is outside") as err:
        config.image_spec(load_config({"images": {"cpu": {"conda": str(spec)}}}), "cpu", ROOT)
    assert "conda/" in err.value.hint


def test_torch_index_with_credentials_is_refused():
    cfg = load_config({"images": {"cpu": {"torch_index_url": "https://u:p@mirror.example/whl"}}})
    with pytest.raises(ToolkitError, match="carries credentials"):
        config.image_spec(cfg, "cpu", ROOT)


@pytest.mark.parametrize("option", ["my-data=x", "../up=x", "=x", "9lives=x"])
def test_input_names_must_be_identifiers(option):
    with pytest.raises(ToolkitError, match="identifier"):
        config.job_spec(load_config(), ROOT, inputs=[option])


def test_shm_size_must_be_a_size():
    with pytest.raises(ToolkitError, match="not a size"):
        config.local_settings(load_config({"local": {"shm_size": "lots"}}), ROOT)


def test_local_memory_is_a_size_or_nothing():
    assert config.local_settings(load_config(), ROOT).memory == ""
    assert config.local_settings(load_config({"local": {"memory": "16g"}}), ROOT).memory == "16g"
    with pytest.raises(ToolkitError, match="local.memory '16 GB' is not a size"):
        config.local_settings(load_config({"local": {"memory": "16 GB"}}), ROOT)


def test_missing_data_dir_is_refused(tmp_path):
    with pytest.raises(ToolkitError, match="is not a directory"):
        config.job_spec(load_config(), ROOT, inputs=[f"data={tmp_path / 'nope'}"])


def test_input_without_equals_is_refused():
    with pytest.raises(ToolkitError, match="not NAME=VALUE"):
        config.job_spec(load_config(), ROOT, inputs=["just-a-path"])


def test_script_not_found_is_refused():
    with pytest.raises(ToolkitError, match="script train/nope.py not found"):
        config.job_spec(load_config(), ROOT, script="train/nope.py")


def test_job_environment_merges_configuration_and_options():
    cfg = load_config({"job": {"environment": {"A": "1", "B": "2"}}})
    job = config.job_spec(cfg, ROOT, env=["B=3", "C=x=y"])
    assert dict(job.environment) == {"A": "1", "B": "3", "C": "x=y"}


def test_inputs_resolve_relative_to_the_project(tmp_path):
    job = config.job_spec(load_config(), ROOT, inputs=["code=train"])
    assert job.inputs["code"] == Path(ROOT, "train").resolve()


def test_user_defaults_to_the_caller_and_is_validated():
    assert config.local_settings(load_config(), ROOT).user == f"{os.getuid()}:{os.getgid()}"
    assert config.local_settings(load_config(), ROOT, user="1234:99").user == "1234:99"
    with pytest.raises(ToolkitError, match="not UID"):
        config.local_settings(load_config(), ROOT, user="alice")


def test_ca_bundle_must_exist(tmp_path):
    cfg = load_config({"build": {"ca_bundle": str(tmp_path / "missing.pem")}})
    with pytest.raises(ToolkitError, match="missing.pem does not exist"):
        config.build_settings(cfg)


@pytest.mark.parametrize("setting, target, host_gpus, expected", [
    ("auto", "gpu", 2, "all"),
    ("auto", "gpu", 0, ""),
    ("auto", "cpu", 2, ""),
    ("none", "gpu", 2, ""),
    ("all", "cpu", 0, "all"),
    ("0,1", "gpu", 4, "0,1"),
])
def test_gpus_follow_the_target_and_the_host(setting, target, host_gpus, expected):
    assert config.gpus_for(load_config({"local": {"gpus": setting}}), target, lambda: host_gpus) == expected


def test_device_zero_means_device_zero_and_the_host_is_asked_only_when_it_matters():
    def no_probe():
        raise AssertionError("nvidia-smi should not run")

    assert config.gpus_for(load_config({"local": {"gpus": 0}}), "gpu", no_probe) == "0"
    assert config.gpus_for(load_config({"local": {"gpus": "auto"}}), "cpu", no_probe) == ""


@pytest.mark.parametrize("value, message", [("many", "not auto, none, all"), (False, "ambiguous")])
def test_bad_gpus_setting_is_refused(value, message):
    with pytest.raises(ToolkitError, match=message):
        config.gpus_for(load_config({"local": {"gpus": value}}), "gpu", lambda: 1)


def test_cache_dir_expands_the_home_folder():
    settings = config.local_settings(load_config({"local": {"cache_dir": "~/amltrain-cache"}}), ROOT)
    assert settings.cache_dir == Path.home().resolve() / "amltrain-cache"


def test_horovod_needs_its_sdist_hash_pinned():
    cfg = load_config({"images": {"cpu": {"horovod_version": "0.28.1", "horovod_sha256": ""}}})
    with pytest.raises(ToolkitError, match="horovod_sha256 must be the sha256 of horovod-0.28.1.tar.gz"):
        config.image_spec(cfg, "cpu", ROOT)
    none = load_config({"images": {"cpu": {"horovod_version": "", "horovod_sha256": ""}}})
    assert config.image_spec(none, "cpu", ROOT).horovod_sha256 == ""
