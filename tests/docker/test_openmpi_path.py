"""OpenMPI off PATH, as some openmpi5.0 MCR bases have it (Azure/AzureML-Containers#209): the images put
/usr/local/openmpi/bin on PATH, and a Horovod build on a base without mpirun/mpicc fails in one line.

The base is the stand-in made by `invoke standin-base --openmpi-off-path` (debootstrap, so root): made here
when missing, and kept, like the normal stand-in.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import replace

import pytest

from amltrain import config, engine, images
from amltrain.errors import ToolkitError
from tests.conftest import ROOT, copy_project, load_config

from .conftest import built, standin_base

HELLO_MPI = r"""#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    printf("hello from rank %d of %d\n", rank, size);
    return MPI_Finalize();
}
"""


def docker_run(image: str, *command: str) -> str:
    return engine.connect().containers.run(image, list(command), remove=True).decode()


@pytest.fixture(scope="session")
def off_path_base(docker_client) -> str:
    return standin_base(docker_client, openmpi_off_path=True)


@pytest.fixture(scope="session")
def off_path_cpu_image(off_path_base) -> str:
    """The CPU target, Horovod included, on that base; in a repository of its own, apart from the user's images."""
    return built("cpu", env={"INVOKE_IMAGES_CPU_BASE_IMAGE": off_path_base,
                             "INVOKE_IMAGES_REPOSITORY": "amltrain/test-openmpi-path"})


def test_the_off_path_stand_in_has_a_working_openmpi_only_in_usr_local_openmpi(off_path_base):
    script = ("for t in mpirun mpiexec mpicc mpicxx orted; do if command -v $t; then exit 3; fi; done; "
              'cd /tmp && printf "%s" "$1" > hello.c && /usr/local/openmpi/bin/mpicc hello.c -o hello '
              "&& /usr/local/openmpi/bin/mpirun --allow-run-as-root --oversubscribe -n 2 ./hello")
    out = docker_run(off_path_base, "sh", "-c", script, "probe", HELLO_MPI)
    assert sorted(out.splitlines()) == ["hello from rank 0 of 2", "hello from rank 1 of 2"]


def test_the_cpu_image_on_that_base_has_mpirun_on_path_and_horovod_with_mpi(off_path_cpu_image):
    ranks = "import horovod.torch as hvd; hvd.init(); print('rank', hvd.rank(), hvd.size(), hvd.mpi_enabled())"
    out = docker_run(off_path_cpu_image, "sh", "-c",
                     "command -v mpirun && mpirun --version | head -1 "
                     "&& python -c 'import horovod.torch as hvd; print(\"mpi built:\", hvd.mpi_built())' "
                     f'&& mpirun --allow-run-as-root --oversubscribe -n 2 python -c "{ranks}"')
    lines = out.splitlines()
    assert lines[0] == "/usr/local/openmpi/bin/mpirun" and "Open MPI" in lines[1], out
    assert "mpi built: True" in lines
    assert sorted(line for line in lines if line.startswith("rank ")) == ["rank 0 2 True", "rank 1 2 True"], out


def test_horovod_on_a_base_without_mpirun_or_mpicc_fails_in_one_line_and_tags_nothing(off_path_base, docker_client,
                                                                                    tmp_path, capfd):
    """The off-PATH stand-in less /usr/local/openmpi: no OpenMPI anywhere. A one-package spec keeps it to seconds."""
    no_mpi = f"amltrain/test-no-openmpi:{uuid.uuid4().hex[:12]}"
    dockerfile = f"FROM {off_path_base}\nRUN rm -rf /usr/local/openmpi\n"
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=no_mpi, rm=True)
    copy_project(tmp_path, ("Dockerfile.cpu", "conda", "image-helpers", "amltrain/condaspec.py", ".dockerignore"))
    (tmp_path / "conda/tiny.yml").write_text("dependencies:\n  - python\n  - pip:\n      - six==1.17.0\n")
    cfg = load_config()
    spec = replace(config.image_spec(cfg, "cpu", ROOT), repository="amltrain/test-tiny", context=tmp_path,
                   dockerfile=tmp_path / "Dockerfile.cpu", conda_spec=tmp_path / "conda/tiny.yml", base_image=no_mpi)
    assert spec.horovod_version  # Horovod on, as by default
    request = images.build_request(spec, config.build_settings(cfg))
    try:
        with pytest.raises(ToolkitError) as err:
            images.build(request)
        message = err.value.message
        assert "\n" not in message and message.startswith(f"docker build of {request.image} failed (exit 1): "), message
        assert message.endswith(f"error: mpirun/mpicc not found on PATH (/usr/local/openmpi/bin, where the openmpi5.0 "
                                f"bases have it, included): Horovod {spec.horovod_version} builds against the "
                                "base's OpenMPI; use a base with OpenMPI or set images.<target>.horovod_version "
                                'to ""'), message
        assert f"Horovod {spec.horovod_version}: C++" not in capfd.readouterr().out  # failed before any download
        assert not engine.image_exists(docker_client, request.image)
    finally:
        docker_client.images.remove(no_mpi, force=True)
