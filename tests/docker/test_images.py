"""Both Dockerfiles build on the configured base, nothing-changed builds do no work, secrets stay out."""

from __future__ import annotations

import json
import uuid
import zipfile
from dataclasses import replace
from pathlib import Path

import certifi
import pytest

from amltrain import config, engine, images
from amltrain.errors import ToolkitError
from amltrain.spec import ImageSpec
from tests.conftest import ROOT, copy_project, load_config

from .conftest import invoke


def docker_run(image: str, *command: str) -> str:
    return engine.connect().containers.run(image, list(command), remove=True).decode()


def history(image: str) -> str:
    return "\n".join(layer["CreatedBy"] for layer in engine.connect().api.history(image))


def test_gpu_image_builds_and_imports_torch_on_a_cpu_only_machine(gpu_image):
    out = docker_run(gpu_image, "python", "-c",
                     "import torch, torchvision, mlflow; print(torch.__version__, torch.version.cuda, "
                     "torch.cuda.is_available(), torch.ones(2).sum().item())")
    version, cuda_build, cuda_available, total = out.split()
    assert version.startswith("2.14.1") and total == "2.0"
    assert cuda_build != "None" and cuda_available == "False"  # a CUDA build of torch, running on CPU


# In the GPU image: Horovod's NCCL operations, which NCCL its extension needs and which file the loader maps for
# it once torch is imported (the process has no GPU: loading, not running, is what can be checked here).
HOROVOD_NCCL = """
import json, os, subprocess, torch, nvidia.nccl
import horovod.torch as hvd
from horovod.torch import mpi_lib_v2
needed = subprocess.run(['objdump', '-p', mpi_lib_v2.__file__], capture_output=True, text=True, check=True).stdout
maps = {line.split()[-1] for line in open('/proc/self/maps') if 'libnccl' in line}
print(json.dumps({'nccl_built': hvd.nccl_built(), 'mpi_built': hvd.mpi_built(), 'cuda': torch.version.cuda,
                  'needed': [l.split()[-1] for l in needed.splitlines() if l.strip().startswith('NEEDED')],
                  'mapped': sorted(os.path.realpath(m) for m in maps),
                  'torch_nccl': os.path.realpath(os.path.join(list(nvidia.nccl.__path__)[0], 'lib', 'libnccl.so.2'))}))
"""


def test_gpu_image_has_horovod_with_nccl_linked_to_torchs_nccl(gpu_image):
    """The default GPU configuration (HOROVOD_GPU_OPERATIONS=NCCL), built on the CUDA stand-in's nvcc."""
    report = json.loads(docker_run(gpu_image, "python", "-c", HOROVOD_NCCL).strip().splitlines()[-1])
    assert report["nccl_built"] and report["mpi_built"]
    assert report["cuda"] and report["cuda"].startswith("13.")  # a CUDA build of torch
    assert "libnccl.so.2" in report["needed"]
    assert report["mapped"] == [report["torch_nccl"]]  # one NCCL in the process: the one torch ships
    assert "/nvidia/nccl/lib/" in report["torch_nccl"]


def test_cpu_image_has_the_training_stack_and_openmpi(cpu_image):
    out = docker_run(cpu_image, "sh", "-c", "python -c 'import torch, torchvision, mlflow, azureml.mlflow' "
                     "&& mpirun --version | head -1 && echo $PYTHONUNBUFFERED")
    assert "Open MPI" in out or "OpenRTE" in out
    assert out.strip().endswith("1")


def test_images_are_built_for_azure_mls_platform(cpu_image, docker_client):
    attrs = docker_client.images.get(cpu_image).attrs
    assert (attrs["Os"], attrs["Architecture"]) == ("linux", "amd64")
    assert images.is_platform_image(docker_client, cpu_image)


def test_nothing_changed_build_does_no_build_work(cpu_image, docker_client):
    before = docker_client.images.get(cpu_image).id
    result = invoke("build", "--target", "cpu")
    assert result.returncode == 0, result.stderr
    assert f"{cpu_image} is up to date: nothing changed, nothing built" in result.stdout
    assert "#1 " not in result.stdout  # no BuildKit step ran
    assert docker_client.images.get(cpu_image).id == before


def test_images_keep_no_secret_in_layers_or_history(cpu_image, gpu_image):
    settings = config.build_settings(load_config())
    for image in (cpu_image, gpu_image):
        layers = history(image)
        assert not settings.ca_bundle or settings.ca_bundle not in layers
        leftovers = docker_run(image, "sh", "-c", "find /run/secrets /tmp/amltrain -type f 2>/dev/null | wc -l")
        assert leftovers.strip() == "0"  # nothing of the bind-mounted spec, helpers or wheelhouse stays


@pytest.fixture
def tiny_context(tmp_path):
    """The real Dockerfile.cpu and helpers with a one-package conda spec: a build that takes seconds."""
    copy_project(tmp_path, ("Dockerfile.cpu", "conda", "image-helpers", "amltrain/condaspec.py", ".dockerignore"))
    (tmp_path / "conda/tiny.yml").write_text("dependencies:\n  - python\n  - pip:\n      - six==1.17.0\n")
    return tmp_path


def tiny_spec(context, base_image: str) -> ImageSpec:
    return ImageSpec(target="cpu", repository="amltrain/test-tiny", context=context,
                     dockerfile=context / "Dockerfile.cpu", conda_spec=context / "conda/tiny.yml",
                     base_image=base_image)


def canary_wheel(folder: Path) -> Path:
    """A pure-Python wheel that exists nowhere but here: pip can only get it from the wheelhouse."""
    path = folder / "amltrain_canary-1.0-py3-none-any.whl"
    files = {"amltrain_canary/__init__.py": "SOURCE = 'wheelhouse'\n",
             "amltrain_canary-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: amltrain-canary\nVersion: 1.0\n",
             "amltrain_canary-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                    "Tag: py3-none-any\n"}
    record = "amltrain_canary-1.0.dist-info/RECORD"
    files[record] = "".join(f"{name},,\n" for name in [*files, record])
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


def test_mirror_settings_reach_the_build_as_secrets_and_mounts_and_nowhere_else(tiny_context, docker_client,
                                                                               capfd, tmp_path):
    cfg = load_config()
    settings = config.build_settings(cfg)
    canary = uuid.uuid4().hex
    ca_bundle = tmp_path / "ca.pem"  # the CA bundle the build needs, plus a line only this test knows
    ca_bundle.write_text(Path(settings.ca_bundle or certifi.where()).read_text() + f"\n# canary-ca-{canary}\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    canary_wheel(wheels)
    settings = replace(settings, ca_bundle=str(ca_bundle), pip_find_links=(f"/canary-links-{canary}",),
                       wheelhouse=str(wheels))
    spec = replace(tiny_spec(tiny_context, config.image_spec(cfg, "cpu", ROOT).base_image),
                   torch_index_url=f"file:///canary-torch-index-{canary}")
    spec.conda_spec.write_text(spec.conda_spec.read_text() + "      - amltrain-canary==1.0\n")
    request = images.build_request(spec, settings)
    try:
        assert images.build(request) is True
        output = capfd.readouterr().out
        assert f"/canary-links-{canary}" in output  # pip read the secret pip.conf (and warned: no such folder)
        assert f"canary-torch-index-{canary}" in output  # the torch index reached pip
        layers = history(request.image)
        assert f"canary-links-{canary}" not in layers and f"canary-ca-{canary}" not in layers
        assert f"canary-torch-index-{canary}" in layers  # a build argument, as documented: never a secret
        leaked = docker_run(request.image, "sh", "-c", f"grep -rIl -e canary-ca-{canary} -e canary-links-{canary} "
                            "/ --exclude-dir=proc --exclude-dir=sys 2>/dev/null | wc -l")
        assert leaked.strip() == "0"
        probe = "import amltrain_canary, six; print(amltrain_canary.SOURCE, six.__version__)"
        assert docker_run(request.image, "python", "-c", probe).split() == ["wheelhouse", "1.17.0"]
        assert docker_run(request.image, "sh", "-c", "find / -name 'amltrain_canary-*.whl' 2>/dev/null | wc -l"
                          ).strip() == "0"
        assert [p.name for p in (tiny_context / ".wheelhouse").iterdir()] == []
    finally:
        docker_client.images.remove(request.image, force=True)


def test_unpullable_base_fails_in_one_line_and_tags_nothing(tiny_context, docker_client):
    spec = tiny_spec(tiny_context, "registry.invalid/azureml/nope:20260101.v1")
    request = images.build_request(spec, config.build_settings(load_config()))
    with pytest.raises(ToolkitError) as err:
        images.build(request)
    assert err.value.message == "base image registry.invalid/azureml/nope:20260101.v1 cannot be pulled"
    assert docker_client.images.list(name=request.image) == []


def test_an_image_on_a_base_remade_under_the_same_name_is_rebuilt(tiny_context, docker_client, capsys):
    """The stand-in is remade under its name, which is all the content hash sees: the base's layers tell."""
    cfg = load_config()
    base = f"amltrain/test-remade-base:{uuid.uuid4().hex[:8]}"
    docker_client.images.get(config.image_spec(cfg, "cpu", ROOT).base_image).tag(base)
    request = images.build_request(tiny_spec(tiny_context, base), config.build_settings(cfg))
    try:
        assert images.build(request) is True
        assert images.build(request) is False and images.build_state(request) == "built: nothing to do"
        remade = docker_client.containers.run(base, ["touch", "/remade"], detach=True)
        try:
            assert remade.wait()["StatusCode"] == 0
            remade.commit(*base.split(":"))  # same name, a layer more: as a remade stand-in, other layers
        finally:
            remade.remove()
        assert images.build_state(request) == f"built on an earlier {base}: a build would run"
        capsys.readouterr()
        assert images.build(request) is True
        assert f"note: {request.image} was built on an earlier {base} (remade since): rebuilding" in \
            capsys.readouterr().out
        assert images.build(request) is False
    finally:
        for ref in (request.image, base):
            docker_client.images.remove(ref, force=True)


def test_unpullable_base_through_the_cli(docker_client):
    result = invoke("build", "--target", "cpu", env={"INVOKE_IMAGES_CPU_BASE_IMAGE": "registry.invalid/x:1"})
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert error_lines[-1].startswith("error: base image registry.invalid/x:1 cannot be pulled")
    assert "Traceback" not in result.stderr


def test_a_horovod_sdist_other_than_the_pinned_one_fails_the_build_in_one_line(cpu_image, docker_client):
    wrong = {"INVOKE_IMAGES_CPU_HOROVOD_SHA256": "0" * 64}  # the dependency layer is cached: this fails fast
    result = invoke("build", "--target", "cpu", env=wrong)
    assert result.returncode != 0
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: docker build of") and "does not have the pinned sha256 0000" in line, line
    assert not engine.image_exists(docker_client, invoke("image-ref", "--target", "cpu", env=wrong).stdout.strip())


def test_prune_images_removes_only_tags_no_target_uses(cpu_image, gpu_image, docker_client):
    """In a repository of its own (tags are hashes of the inputs, whatever the repository), so that the test
    never prunes a developer's images built under other settings."""
    repository = "amltrain/test-prune"
    env = {"INVOKE_IMAGES_REPOSITORY": repository}
    current = [f"{repository}:{image.rsplit(':', 1)[1]}" for image in (cpu_image, gpu_image)]
    current.append(current[0] + "-mlflow-ui")  # `invoke ui`'s image for the current cpu image: kept
    stale = f"{repository}:cpu-000000000000"  # an "old build"
    for image, ref in zip((cpu_image, gpu_image, cpu_image, cpu_image), (*current, stale), strict=True):
        docker_client.images.get(image).tag(*ref.rsplit(":", 1))
    try:
        dry = invoke("prune-images", "--dry-run", env=env)
        assert dry.returncode == 0, dry.stderr
        assert f"would remove {stale}" in dry.stdout and not any(ref in dry.stdout for ref in current)
        assert engine.image_exists(docker_client, stale)
        result = invoke("prune-images", env=env)
        assert result.returncode == 0, result.stderr
        assert not engine.image_exists(docker_client, stale)
        assert all(engine.image_exists(docker_client, ref) for ref in (*current, cpu_image, gpu_image))
    finally:
        for ref in (*current, stale):
            if engine.image_exists(docker_client, ref):
                docker_client.images.remove(ref)
