"""Both Dockerfiles build on the configured base, nothing-changed builds do no work, secrets stay out."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import replace

import pytest

from amltrain import config, engine, images
from amltrain.errors import ToolkitError
from amltrain.spec import ImageSpec
from tests.conftest import ROOT, load_config

from .conftest import invoke


def docker_run(image: str, *command: str) -> str:
    return engine.connect().containers.run(image, list(command), remove=True).decode()


def history(image: str) -> str:
    return "\n".join(layer["CreatedBy"] for layer in engine.connect().api.history(image))


def test_gpu_image_builds_and_imports_torch_on_a_cpu_only_machine(gpu_image):
    out = docker_run(gpu_image, "python", "-c",
                     "import torch, torchvision, mlflow; print(torch.__version__, torch.cuda.is_available(), "
                     "torch.ones(2).sum().item())")
    version, cuda, total = out.split()
    assert version.startswith("2.14.1") and cuda == "False" and total == "2.0"


def test_cpu_image_has_the_training_stack_and_openmpi(cpu_image):
    out = docker_run(cpu_image, "sh", "-c", "python -c 'import torch, torchvision, mlflow, azureml.mlflow' "
                     "&& mpirun --version | head -1 && echo $PYTHONUNBUFFERED")
    assert "Open MPI" in out or "OpenRTE" in out
    assert out.strip().endswith("1")


def test_nothing_changed_build_does_no_build_work(cpu_image, docker_client):
    before = docker_client.images.get(cpu_image).id
    result = invoke("build", "--target", "cpu")
    assert result.returncode == 0, result.stderr
    assert f"{cpu_image} is up to date: nothing changed, nothing built" in result.stdout
    assert "#1 " not in result.stdout  # no BuildKit step ran
    assert docker_client.images.get(cpu_image).id == before


def test_images_keep_no_secret_in_layers_or_history(cpu_image, gpu_image):
    for image in (cpu_image, gpu_image):
        layers = history(image)
        assert "BEGIN CERTIFICATE" not in layers and "ca-certificates.crt" not in layers
        leftovers = docker_run(image, "sh", "-c", "find /run/secrets /tmp/amltrain -type f 2>/dev/null | wc -l")
        assert leftovers.strip() == "0"


@pytest.fixture
def tiny_context(tmp_path):
    """The real Dockerfile.cpu and helpers with a one-package conda spec: a build that takes seconds."""
    for name in ("Dockerfile.cpu", "conda", "amltrain/condaspec.py", ".dockerignore"):
        src, dst = ROOT / name, tmp_path / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    (tmp_path / "conda/tiny.yml").write_text("dependencies:\n  - python\n  - pip:\n      - six==1.17.0\n")
    return tmp_path


def tiny_spec(context, base_image: str) -> ImageSpec:
    return ImageSpec(target="cpu", repository="amltrain/test-tiny", context=context,
                     dockerfile=context / "Dockerfile.cpu", conda_spec=context / "conda/tiny.yml",
                     base_image=base_image)


def test_pip_settings_reach_the_build_as_secrets_and_nowhere_else(tiny_context, docker_client, capfd):
    cfg = load_config()
    base = config.image_spec(cfg, "cpu", ROOT).base_image
    settings = config.build_settings(cfg)
    canary = f"/canary-{uuid.uuid4().hex}"  # a find-links folder that does not exist: pip warns, naming it
    settings = replace(settings, pip_find_links=(canary,))
    spec = tiny_spec(tiny_context, base)
    # a fresh spec each run, so BuildKit cannot answer from its cache and pip really runs
    spec.conda_spec.write_text(spec.conda_spec.read_text() + f"# {canary}\n")
    request = images.build_request(spec, settings)
    try:
        assert images.build(request) is True
        assert canary in capfd.readouterr().out  # pip read the secret pip.conf
        assert canary not in history(request.image)
        found = docker_run(request.image, "sh", "-c",
                           f"grep -rIl {canary} / --exclude-dir=proc --exclude-dir=sys 2>/dev/null | wc -l")
        assert found.strip() == "0"
        assert docker_run(request.image, "python", "-c", "import six; print(six.__version__)").strip() == "1.17.0"
    finally:
        docker_client.images.remove(request.image, force=True)


def test_unpullable_base_fails_in_one_line_and_tags_nothing(tiny_context, docker_client):
    spec = tiny_spec(tiny_context, "registry.invalid/azureml/nope:20260101.v1")
    request = images.build_request(spec, config.build_settings(load_config()))
    with pytest.raises(ToolkitError) as err:
        images.build(request)
    assert err.value.message == "base image registry.invalid/azureml/nope:20260101.v1 cannot be pulled"
    assert docker_client.images.list(name=request.image) == []


def test_unpullable_base_through_the_cli(docker_client):
    result = invoke("build", "--target", "cpu", env={"INVOKE_IMAGES_CPU_BASE_IMAGE": "registry.invalid/x:1"})
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert error_lines[-1].startswith("error: base image registry.invalid/x:1 cannot be pulled")
    assert "Traceback" not in result.stderr
