from dataclasses import replace
from pathlib import Path

import pytest

from amltrain import images
from amltrain.spec import BuildSettings, ImageSpec
from tests.conftest import copy_project


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of what the image depends on, so tests can change any of it."""
    return copy_project(tmp_path, ("Dockerfile.cpu", "conda", "image-helpers", "amltrain/condaspec.py"))


@pytest.fixture
def spec(project) -> ImageSpec:
    return ImageSpec(target="cpu", repository="amltrain/train", context=project, dockerfile=project / "Dockerfile.cpu",
                     conda_spec=project / "conda/cpu.yml", base_image="example/base:1",
                     torch_index_url="https://download.pytorch.org/whl/cpu")


def test_tag_is_stable_for_the_same_inputs(spec):
    assert images.image_ref(spec) == images.image_ref(replace(spec))
    assert images.image_ref(spec).startswith("amltrain/train:cpu-")


@pytest.mark.parametrize("path", ["Dockerfile.cpu", "conda/cpu.yml", "conda/install-deps.sh",
                                  "image-helpers/install-horovod.sh", "amltrain/condaspec.py"])
def test_tag_changes_when_a_file_that_determines_the_image_changes(spec, path):
    before = images.content_hash(spec)
    with open(spec.context / path, "a") as f:
        f.write("\n# changed\n")
    assert images.content_hash(spec) != before


@pytest.mark.parametrize("change", [
    {"base_image": "example/base:2"},
    {"torch_index_url": ""},
    {"system_packages": ("libgl1",)},
])
def test_tag_changes_with_base_image_and_build_args(spec, change):
    assert images.content_hash(replace(spec, **change)) != images.content_hash(spec)


def test_unrelated_files_do_not_change_the_tag(spec):
    before = images.content_hash(spec)
    (spec.context / "README.md").write_text("docs")
    (spec.context / "conda" / "notes.txt").write_text("x")
    assert images.content_hash(spec) == before


def test_mirror_settings_do_not_change_the_tag_and_travel_as_secrets(spec, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = BuildSettings(docker_cli="/usr/bin/docker", ca_bundle=str(ca),
                             pip_index_url="https://bob:hunter2@mirror.example/simple",
                             pip_extra_index_urls=("https://extra.example/simple",))
    plain = images.build_request(spec, BuildSettings())
    request = images.build_request(spec, settings)
    assert request.image == plain.image
    argv = " ".join(request.argv)
    assert "hunter2" not in argv and "mirror.example" not in argv and "BEGIN CERTIFICATE" not in argv
    assert f"--secret id=ca-bundle,src={ca}" in argv
    assert "--secret id=pip.conf,src=SECRETS_DIR/pip.conf" in argv
    assert "hunter2" in request.secrets["pip.conf"]
    rendered = request.render()
    assert "hunter2" not in rendered and "https://****@mirror.example/simple" in rendered


def test_build_request_is_the_whole_command(spec):
    request = images.build_request(spec, BuildSettings(docker_cli="docker"))
    digest = images.content_hash(spec)
    assert request.argv == (
        "docker", "build", "--progress", "plain", "--platform", "linux/amd64", "--file", str(spec.dockerfile),
        "--target", "deps",
        "--tag", f"amltrain/train:cpu-{digest[:12]}",
        "--build-arg", "BASE_IMAGE=example/base:1", "--build-arg", "CONDA_SPEC=conda/cpu.yml",
        "--build-arg", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu", "--build-arg", "SYSTEM_PACKAGES=",
        "--build-arg", "HOROVOD_VERSION=", "--build-arg", "HOROVOD_SHA256=", "--build-arg", "HOROVOD_GPU_OPERATIONS=",
        "--label", f"amltrain.content-hash={digest}", "--label", "amltrain.target=cpu",
        str(spec.context),
    )


def test_the_platform_is_azure_mls_and_leaves_the_tag_as_it_was(spec):
    """Every image is built for linux/amd64, and tags made before the flag existed stay valid (no rebuild)."""
    argv = images.build_request(spec, BuildSettings()).argv
    assert argv[argv.index("--platform") + 1] == "linux/amd64"
    assert "linux/amd64" not in images.build_args(spec).values()  # the content hash does not see it


def test_an_arm64_engine_is_told_in_one_line_that_it_emulates():
    note = images.emulation_note("arm64")
    assert "arm64" in note and "linux/amd64" in note and "emulation" in note and "\n" not in note
    assert images.emulation_note("aarch64") and not images.emulation_note("amd64")
    assert not images.emulation_note("x86_64")


def test_pip_conf_lists_every_setting():
    conf = images.pip_conf(BuildSettings(pip_index_url="https://i", pip_extra_index_urls=("https://a", "https://b"),
                                         pip_find_links=("https://f",), pip_trusted_hosts=("h",)))
    assert conf == ("[global]\nindex-url = https://i\nextra-index-url = https://a\n    https://b\n"
                    "find-links = https://f\ntrusted-host = h\n")
    assert images.pip_conf(BuildSettings()) == ""


def test_unpullable_base_is_explained_with_the_setting_to_change(spec):
    request = images.build_request(spec, BuildSettings())
    tail = ["#3 ERROR: failed to do request: Head \"https://example/v2/base/manifests/1\": dial tcp: "
            "lookup example: no such host",
            "error: failed to solve: example/base:1: failed to resolve source metadata for example/base:1"]
    err = images.diagnose_build_failure(tail, request, 1)
    assert err.message == "base image example/base:1 cannot be pulled"
    assert "INVOKE_IMAGES_CPU_BASE_IMAGE" in err.hint and "standin-base" in err.hint


def test_other_build_failures_quote_the_error_line(spec):
    request = images.build_request(spec, BuildSettings())
    err = images.diagnose_build_failure(["#7 12.0 ERROR: No matching distribution found for torch==9",
                                         "error: failed to solve: process did not complete successfully: exit code: 1"],
                                        request, 1)
    assert "failed (exit 1)" in err.message and "exit code: 1" in err.message


def test_missing_buildkit_is_explained(spec):
    request = images.build_request(spec, BuildSettings())
    err = images.diagnose_build_failure(["ERROR: BuildKit is enabled but the buildx component is missing"],
                                        request, 1)
    assert "BuildKit" in err.message and "docker.cli" in err.hint


def test_the_install_scripts_own_error_line_is_quoted_first(spec):
    request = images.build_request(spec, BuildSettings())
    tail = ["#7 0.31 error: conda/cpu.yml asks for python>=3.12, the base image has 3.10.14; change it",
            "#7 ERROR: process \"/bin/sh -c sh /tmp/amltrain/conda/install-deps.sh\" did not complete successfully",
            "error: failed to solve: exit code: 1"]
    err = images.diagnose_build_failure(tail, request, 1)
    assert err.message.endswith("error: conda/cpu.yml asks for python>=3.12, the base image has 3.10.14; change it")


def test_a_wheelhouse_is_a_find_links_folder_inside_the_build():
    conf = images.pip_conf(BuildSettings(pip_find_links=("https://f",), wheelhouse="/srv/wheels"))
    assert conf == "[global]\nfind-links = https://f\n    /tmp/amltrain/wheelhouse\n"


def test_wheelhouse_is_linked_for_the_build_only(spec, tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "a-1.0-py3-none-any.whl").write_bytes(b"wheel")
    (wheels / "notes.txt").write_text("not a distribution")
    request = images.build_request(spec, BuildSettings(wheelhouse=str(wheels)))
    inside = spec.context / ".wheelhouse"
    with pytest.raises(RuntimeError):
        with images._linked_wheelhouse(request):
            assert sorted(p.name for p in inside.iterdir()) == ["a-1.0-py3-none-any.whl"]
            assert (inside / "a-1.0-py3-none-any.whl").read_bytes() == b"wheel"
            raise RuntimeError("the build failed")
    assert list(inside.iterdir()) == []
    assert (wheels / "a-1.0-py3-none-any.whl").exists()


def test_code_image_tag_follows_the_snapshot_content(tmp_path):
    (tmp_path / "train.py").write_text("print(1)\n")
    files = ("train.py",)
    first = images.code_build_request("amltrain/train:cpu-0123456789ab", tmp_path, files, "docker")
    assert first.image == f"amltrain/train:cpu-0123456789ab-code-{first.content_hash[:12]}"
    assert first == images.code_build_request("amltrain/train:cpu-0123456789ab", tmp_path, files, "docker")
    (tmp_path / "train.py").write_text("print(2)\n")
    assert images.code_build_request("amltrain/train:cpu-0123456789ab", tmp_path, files, "docker").image != first.image
    assert first.dockerfile() == "FROM amltrain/train:cpu-0123456789ab\nCOPY code/ /opt/amltrain/code/\n"


def test_layer_caches_reach_the_build_and_not_the_tag(spec):
    plain = images.build_request(spec, BuildSettings(docker_cli="docker"))
    cached = images.build_request(spec, BuildSettings(docker_cli="docker", cache_from=("type=gha,scope=cpu",),
                                                      cache_to=("type=gha,mode=max,scope=cpu",)))
    assert cached.image == plain.image
    argv = list(cached.argv)
    assert argv[argv.index("--cache-from") + 1] == "type=gha,scope=cpu"
    assert argv[argv.index("--cache-to") + 1] == "type=gha,mode=max,scope=cpu"
    assert "--load" in argv and "--load" not in plain.argv and "--cache-from" not in plain.argv


def test_cache_settings_come_from_the_configuration():
    from amltrain import config
    from tests.conftest import load_config

    settings = config.build_settings(load_config({"build": {"cache_from": "type=gha,scope=cpu type=local,src=/c"}}))
    assert settings.cache_from == ("type=gha,scope=cpu", "type=local,src=/c") and settings.cache_to == ()
