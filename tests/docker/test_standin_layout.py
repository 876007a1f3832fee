"""The stand-in bases have the layout of the MCR openmpi5.0 bases the Dockerfiles are written for: Python with pip at
/opt/miniconda/bin first on PATH, OpenMPI at /usr/local/openmpi on PATH, root; and for the gpu flavour a CUDA
toolkit at /usr/local/cuda that compiles and links a kernel, at the version of standin.cuda_toolkit.

Made by `invoke standin-base [--flavour gpu]` (root): made here when missing (tests/docker/conftest.standin_base).
"""

from __future__ import annotations

import pytest

from amltrain import config, engine, standin
from tests.conftest import load_config

from .conftest import standin_base
from .test_openmpi_path import HELLO_MPI

LAYOUT = ('echo "python=$(command -v python) mpirun=$(command -v mpirun) user=$(id -u)"; python -m pip --version; '
          'cd /tmp && printf "%s" "$1" > hello.c && mpicc hello.c -o hello '
          "&& mpirun --allow-run-as-root --oversubscribe -n 2 ./hello")
KERNEL = r"""#include <cstdio>
__global__ void twice(float *x) { x[threadIdx.x] *= 2; }
int main() { float *d = nullptr; printf("%s\n", cudaGetErrorName(cudaMalloc(&d, 16))); return 0; }
"""
CUDA = ('echo "nvcc=$(command -v nvcc) version=$CUDA_VERSION"; nvcc --version | tail -n 2; '
        "ls /usr/local/cuda/include/cuda_runtime.h /usr/local/cuda/lib64/libcudart.so /usr/local/cuda/lib64/"
        "libcudart_static.a; ldconfig -p | grep -o '/usr/local/cuda[^ ]*libcudart.so.[0-9]*$'; "
        'cd /tmp && printf "%s" "$1" > k.cu && nvcc -gencode arch=compute_90,code=sm_90 k.cu -o k && ./k')


def run(image: str, script: str, arg: str) -> list[str]:
    return engine.connect().containers.run(image, ["sh", "-c", script, "probe", arg], remove=True).decode().splitlines()


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_python_and_openmpi_are_where_the_mcr_bases_keep_them(flavour, docker_client):
    lines = run(standin_base(docker_client, flavour), LAYOUT, HELLO_MPI)
    assert lines[0] == "python=/opt/miniconda/bin/python mpirun=/usr/local/openmpi/bin/mpirun user=0"
    assert lines[1].startswith("pip ") and "/opt/miniconda/" in lines[1]
    assert sorted(lines[2:]) == ["hello from rank 0 of 2", "hello from rank 1 of 2"]


def test_the_gpu_stand_in_has_a_cuda_toolkit_that_builds_kernels(docker_client):
    toolkit = str(config.section(load_config(), "standin").get("cuda_toolkit"))
    release = standin.cuda_release(toolkit)[1]
    lines = run(standin_base(docker_client, "gpu"), CUDA, KERNEL)
    assert lines[0] == f"nvcc=/usr/local/cuda/bin/nvcc version={toolkit}"
    assert f"release {release}" in lines[1]
    assert "/usr/local/cuda/lib64/libcudart.so" in lines and "/usr/local/cuda/lib64/libcudart_static.a" in lines
    assert "/usr/local/cuda/lib64/libcudart.so.13" in lines  # on the loader path, as NVIDIA's images have it
    # it ran: no driver here, and the runtime says so instead of failing to load
    assert lines[-1] in ("cudaErrorInsufficientDriver", "cudaErrorNoDevice")
