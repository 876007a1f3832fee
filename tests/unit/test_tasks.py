"""The CLI as a user meets it: help on every task, --dry-run everywhere, one-line errors without Docker."""

from __future__ import annotations

import os
import re
import subprocess
import uuid

import pytest

from tests.conftest import CLI, ROOT


def invoke(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A task run through the real entry point, from the project folder (as `./dev invoke` runs it)."""
    return subprocess.run([CLI, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def task_names() -> list[str]:
    listing = invoke("--list", "--list-format", "flat").stdout
    return [m.group(1) for m in re.finditer(r"^  (\S+)", listing, re.MULTILINE)]  # wrapped lines start deeper


def test_the_tasks_a_user_needs_exist():
    expected = {"build", "run-local", "smoke", "standin-base", "fowl-data", "image-ref", "prune-images",
                "local-status", "local-logs", "local-cancel"}
    assert expected <= set(task_names())


@pytest.mark.parametrize("name", task_names())  # every task there is, including ones added later
def test_every_task_has_help_for_every_option_and_a_dry_run(name):
    result = invoke(name, "--help")
    assert result.returncode == 0
    assert "--dry-run" in result.stdout
    options = [line for line in result.stdout.splitlines() if line.strip().startswith("-")]
    assert options and all(len(line.split(None, 1)) == 2 for line in options), result.stdout
    # No option gets `--` (invoke's end-of-options marker) as its short form.
    assert not [line for line in options if line.strip().startswith("--,")], result.stdout


ENGINE_DOWN = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


@pytest.mark.parametrize("args", [["build"], ["run-local"], ["local-status"], ["local-cancel", "--all"],
                                  ["local-logs", "--run", "x"]])
def test_no_docker_engine_is_one_line_and_says_what_to_do(args):
    result = invoke(*args, env=ENGINE_DOWN)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: the Docker engine is not reachable") and "start it" in result.stderr


def test_build_dry_run_needs_no_engine_and_shows_the_tag():
    result = invoke("build", "--dry-run", env=ENGINE_DOWN)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("image: amltrain/train:cpu-")


def test_run_local_dry_run_needs_no_engine():
    result = invoke("run-local", "--dry-run", "--input", "code=train", env=ENGINE_DOWN)
    assert result.returncode == 0, result.stderr
    assert "/mnt/azureml/inputs/code:ro" in result.stdout


def test_malformed_conda_spec_is_one_line():
    bad = ROOT / "conda" / f".test-malformed-{uuid.uuid4().hex}.yml"  # specs must live in conda/
    bad.write_text("dependencies:\n  - pip:\n    - torch\n  - [unclosed\n")
    try:
        result = invoke("build", "--dry-run", env={"INVOKE_IMAGES_CPU_CONDA": str(bad)})
    finally:
        bad.unlink()
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith(f"error: conda spec {bad} is not valid YAML at line")


def test_image_ref_matches_what_build_would_tag():
    ref = invoke("image-ref", "--target", "gpu").stdout.strip()
    assert invoke("build", "--target", "gpu", "--dry-run", env=ENGINE_DOWN).stdout.startswith(f"image: {ref}\n")


def test_standin_base_dry_run_prints_the_plan_and_makes_nothing():
    result = invoke("standin-base", "--dry-run", env=ENGINE_DOWN)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("debootstrap --variant=minbase --include=python3,python3-pip,python3-venv")
    assert "openmpi-bin" in result.stdout and "python3 -m venv /opt/miniconda" in result.stdout
    (move,) = [line for line in lines if "dpkg-divert" in line]
    assert lines.index(move) == 3 and "/usr/local/openmpi" in move  # after apt has installed OpenMPI
    assert "docker import" in lines[-1] and lines[-1].endswith("amltrain/standin-base:bookworm'")
    assert "ENV PATH=/opt/miniconda/bin:/usr/local/openmpi/bin:/usr/local/sbin" in lines[-1]
    assert "cuda" not in result.stdout and re.search(r"LABEL amltrain.standin-recipe=[0-9a-f]{12}", lines[-1])


@pytest.mark.parametrize("how", [["--openmpi-off-path"], ["-o"], "INVOKE_STANDIN_OPENMPI_OFF_PATH"])
def test_standin_base_openmpi_off_path_leaves_it_off_path_under_its_own_tag(how):
    """Like some openmpi5.0 bases: OpenMPI in /usr/local/openmpi, off PATH; never under the normal stand-in's name."""
    env = {**ENGINE_DOWN, **({how: "1"} if isinstance(how, str) else {})}
    result = invoke("standin-base", "--dry-run", *(how if isinstance(how, list) else []), env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    (move,) = [line for line in lines if "/usr/local/openmpi" in line]
    assert "dpkg-divert" in move and "update-alternatives" in move and "is still on PATH" in move
    assert lines[-1].endswith("amltrain/standin-base:bookworm-openmpi-off-path'")
    assert "ENV PATH=/opt/miniconda/bin:/usr/local/sbin" in lines[-1]


def test_standin_base_gpu_flavour_adds_the_cuda_toolkit_of_the_setting_under_its_own_tag():
    result = invoke("standin-base", "--dry-run", "--flavour", "gpu", env={**ENGINE_DOWN,
                                                                         "INVOKE_STANDIN_CUDA_TOOLKIT": "13.1.1"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    (pip,) = [line for line in lines if " -m pip install " in line]
    assert pip.endswith("'cuda-toolkit[nvcc,crt,nvvm,cudart,cccl,culibos]==13.1.1'")
    (place,) = [line for line in lines if "nvidia/cu13" in line]
    assert "ROOTFS/usr/local/cuda-13.1" in place and "ln -s cuda-13.1 ROOTFS/usr/local/cuda" in place
    assert any("nvcc -gencode" in line for line in lines[lines.index(place):])  # a kernel is compiled to check it
    assert lines[-1].endswith("amltrain/standin-base:bookworm-cuda13.1'")
    assert "/usr/local/cuda/bin:" in lines[-1] and "ENV CUDA_VERSION=13.1.1" in lines[-1]
    cpu = invoke("standin-base", "--dry-run", env=ENGINE_DOWN).stdout
    label = re.compile(r"standin-recipe=([0-9a-f]{12})")
    assert label.search(cpu).group(1) != label.search(result.stdout).group(1)


@pytest.mark.parametrize("args, env, said", [
    (["--flavour", "tpu"], {}, "unknown stand-in flavour 'tpu'"),
    (["--flavour", "gpu"], {"INVOKE_STANDIN_CUDA_TOOLKIT": "12.4.1"}, "CUDA 13 or later"),
    (["--flavour", "gpu"], {"INVOKE_STANDIN_CUDA_TOOLKIT": "latest"}, "CUDA 13 or later"),
])
def test_standin_base_bad_flavour_or_toolkit_is_one_line(args, env, said):
    result = invoke("standin-base", "--dry-run", *args, env={**ENGINE_DOWN, **env})
    assert result.returncode != 0 and said in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2 and "Traceback" not in result.stderr
