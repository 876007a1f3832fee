#!/bin/sh
# Builds Horovod from its source distribution against the image's torch and OpenMPI, for MPI launches
# (invoke run-local/submit --launch mpi). Called by the Dockerfiles as
#   install-horovod.sh VERSION SHA256 [GPU_OPERATIONS]
# with this script bind-mounted and proxy settings as BuildKit secrets, like install-deps.sh.
#
# Why from source: 0.28.1 (2023) is the last release and its CMake pins C++14, while torch >= 2.1's
# headers need C++17 and torch 2.14's need C++20; upstream's unreleased fix stops at C++17. So the sdist is
# patched to the standard this image's torch needs, and built without build isolation against the
# installed torch (an isolated build would fetch another torch and fail to find it).
# An empty VERSION installs nothing (images.<target>.horovod_version: "").
set -eu
version=${1:-}
sha256=${2:-}
gpu_operations=${3:-}
if [ -z "$version" ]; then
    echo "Horovod: not installed (horovod_version is empty)"
    exit 0
fi
# Horovod's MPI build finds OpenMPI through mpicc, and MPI launches start mpirun by name: both must be on PATH.
# Checked first, so that a base without them fails in one line, not in CMake's output minutes later.
missing=""
for tool in mpirun mpicc; do command -v "$tool" >/dev/null || missing="$missing${missing:+/}$tool"; done
if [ -n "$missing" ]; then
    echo "error: $missing not found on PATH (/usr/local/openmpi/bin, where the openmpi5.0 bases have it, included): Horovod $version builds against the base's OpenMPI; use a base with OpenMPI or set images.<target>.horovod_version to \"\"" >&2
    exit 1
fi

if [ -f /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi
if [ -f /run/secrets/ca-bundle ]; then
    export PIP_CERT=/run/secrets/ca-bundle SSL_CERT_FILE=/run/secrets/ca-bundle REQUESTS_CA_BUNDLE=/run/secrets/ca-bundle
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_WARN_SCRIPT_LOCATION=1
work=$(mktemp -d /tmp/amltrain-horovod.XXXXXX)
trap 'rm -rf "$work"' EXIT

python -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null || {
    echo "error: Horovod compiles against Python's headers and this base has none (Python.h); on a Debian/Ubuntu base add python3-dev to images.<target>.system_packages (an old stand-in base: invoke standin-base --force)" >&2
    exit 1
}
std=$(python -c 'import torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); print(20 if v >= (2, 14) else 17 if v >= (2, 1) else 14)')
echo "Horovod $version: C++$std for torch $(python -c 'import torch; print(torch.__version__)')"

python -m pip download --quiet --no-deps --no-binary :all: --dest "$work" "horovod==$version"
echo "$sha256  $work/horovod-$version.tar.gz" | sha256sum -c --quiet - || {
    echo "error: horovod-$version.tar.gz does not have the pinned sha256 $sha256 (images.<target>.horovod_sha256)" >&2
    exit 1
}
tar -xzf "$work"/horovod-"$version".tar.gz -C "$work"
src="$work/horovod-$version"
for cmakelists in "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"; do
    sed -i "s/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD $std)/" "$cmakelists"
    grep -q "set(CMAKE_CXX_STANDARD $std)" "$cmakelists" || {
        echo "error: $cmakelists does not set CMAKE_CXX_STANDARD 14 as 0.28.1 does; check the patch for horovod $version" >&2
        exit 1
    }
done

# Build tools that stay out of the image: CMake from PyPI if the base has none; setuptools/wheel for the
# non-isolated build go to a throwaway folder too.
python -m pip install --quiet --target "$work/tools" "setuptools<81" wheel
if ! command -v cmake >/dev/null; then python -m pip install --quiet --target "$work/tools" cmake; fi
export PATH="$work/tools/bin:$PATH" PYTHONPATH="$work/tools"
command -v c++ >/dev/null || { echo "error: Horovod needs a C++ compiler in the base image (g++)" >&2; exit 1; }

export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_MPI=1 \
    HOROVOD_WITH_GLOO=1 MAKEFLAGS="-j$(nproc)"
if [ "$gpu_operations" = NCCL ]; then
    # NCCL comes with torch's CUDA wheels (nvidia-nccl-cu*); nvcc must come from the base's CUDA toolkit.
    nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
    if [ -z "$nvcc" ]; then
        echo "error: HOROVOD_GPU_OPERATIONS=NCCL needs nvcc (the CUDA toolkit) in the base image, and it has none; set images.<target>.horovod_gpu_operations to empty for CPU operations" >&2
        exit 1
    fi
    nccl=$(python -c 'import os, nvidia.nccl as n; print(os.path.dirname(n.__file__) if n.__file__ else list(n.__path__)[0])')
    [ -e "$nccl/lib/libnccl.so" ] || ln -s libnccl.so.2 "$nccl/lib/libnccl.so"  # the wheel ships only .so.2
    export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_INCLUDE="$nccl/include" HOROVOD_NCCL_LIB="$nccl/lib" \
        HOROVOD_CUDA_HOME="$(dirname "$(dirname "$nvcc")")" HOROVOD_BUILD_CUDA_CC_LIST="${HOROVOD_BUILD_CUDA_CC_LIST:-80,90}"
elif [ -n "$gpu_operations" ]; then
    echo "error: unknown HOROVOD_GPU_OPERATIONS '$gpu_operations' (NCCL or empty)" >&2
    exit 1
fi
python -m pip install --no-build-isolation --no-cache-dir "$src"
unset PYTHONPATH
horovodrun --check-build
python -c 'import horovod, horovod.torch as hvd; print("horovod", horovod.__version__, "mpi built:", hvd.mpi_built(), "gloo built:", hvd.gloo_built())'
