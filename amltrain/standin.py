"""A local stand-in for the MCR AzureML base images, for machines that cannot pull from MCR.

It has the layout of the openmpi5.0 bases, which is what the Dockerfiles rely on:

- Python with pip at ``/opt/miniconda/bin``, first on ``PATH``, where MCR keeps its Miniconda base
  environment (here a venv over Debian's Python: no conda, which ``conda/install-deps.sh`` handles);
- OpenMPI in ``/usr/local/openmpi`` (Debian's packages, moved there with dpkg-divert), its ``bin/`` on
  ``PATH``; with ``openmpi_off_path`` off ``PATH``, as some of those bases have it
  (Azure/AzureML-Containers#209);
- OpenSSH, a compiler toolchain, ``/bin/sh``, root;
- the ``gpu`` flavour adds what ``openmpi5.0-cuda13.1-ubuntu24.04`` has for builds: a CUDA toolkit at
  ``/usr/local/cuda`` (``bin/nvcc``, ``include/``, ``lib64/``) on ``PATH`` and the loader path, assembled
  from NVIDIA's ``cuda-toolkit`` wheels on PyPI at the version the image's torch is built for. No driver
  and no cuDNN: it compiles CUDA code; running it needs a real GPU machine.

It is made with debootstrap and ``docker import`` (no registry involved) and selected only by
configuration: ``images.<target>.base_image``. Never a silent fallback: a build on an unpullable base fails
and says how to point at this one. It is a stand-in of the real base's layout, not a copy: Debian instead
of Ubuntu 24.04, Python 3.11 instead of 3.10, OpenMPI 4.1 instead of 5.0.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from . import engine
from .errors import ToolkitError

# debootstrap resolves only these (it cannot follow alternatives such as OpenMPI's); apt adds the rest.
BOOTSTRAP_PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates")
# python3-dev: Miniconda's Python on the MCR bases has its headers, and building Horovod needs them.
APT_PACKAGES = ("python3-dev", "openmpi-bin", "libopenmpi-dev", "openssh-client", "openssh-server", "g++", "make",
                "cmake", "procps")
PYTHON_PREFIX = "/opt/miniconda"
OPENMPI_PREFIX = "/usr/local/openmpi"
CUDA_PREFIX = "/usr/local/cuda"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FLAVOURS = ("cpu", "gpu")
OFF_PATH_SUFFIX = "-openmpi-off-path"
# A remade stand-in keeps its name: this label tells an image made from another recipe (`invoke standin-base`
# remakes it), and `invoke build` rebuilds the images made on an earlier one (images.on_local_base).
RECIPE_LABEL = "amltrain.standin-recipe"
# What NVIDIA's CUDA images (and so the MCR CUDA bases built on them) set, for the gpu flavour.
CUDA_ENV = ("NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
            "LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64")
# The toolkit parts a build needs: the compiler driver and its back ends (nvcc, crt, nvvm), the runtime
# (cudart, shared and static), CCCL's headers (thrust, cub, libcu++) and culibos. Not the maths libraries:
# torch brings its own as wheels.
CUDA_WHEEL_EXTRAS = "nvcc,crt,nvvm,cudart,cccl,culibos"
# Debian's OpenMPI moved to OPENMPI_PREFIX as the openmpi5.0 bases have it: every program of its packages
# diverted (dpkg-divert, so an upgrade follows them) into bin/, the alternatives' mpirun/mpicc links removed,
# bin/mpirun, bin/mpicc, ... named without Debian's .openmpi suffix, lib/ and include/ linked to Debian's.
# The wrappers read their flags from /usr/share/openmpi whatever their path. Fails unless it took: nothing
# of OpenMPI left in the system's PATH (the image's own PATH adds the new bin/ unless off_path).
OPENMPI_MOVE_SCRIPT = "; ".join((
    "set -e",
    f"d={OPENMPI_PREFIX}",
    'mkdir -p "$d/bin"',
    "for f in $(dpkg -L openmpi-bin libopenmpi-dev | grep '^/usr/bin/'); do "
    'dpkg-divert --quiet --rename --divert "$d/bin/${f##*/}" --add "$f"; done',
    "update-alternatives --quiet --remove-all mpirun",
    "update-alternatives --quiet --remove-all mpi",
    'for f in "$d"/bin/*.openmpi; do ln -s "${f##*/}" "${f%.openmpi}"; done',
    'ln -s "/usr/lib/$(gcc -print-multiarch)/openmpi/lib" "$d/lib"',
    'ln -s "/usr/lib/$(gcc -print-multiarch)/openmpi/include" "$d/include"',
    "for t in mpirun mpicc orted; do if command -v $t; then echo \"$t is still on PATH\" >&2; exit 1; fi; done",
    '"$d/bin/mpirun" --version >/dev/null',
    '"$d/bin/mpicc" --showme:version >/dev/null',
))


# A kernel compiled and linked against the runtime, so a toolkit that cannot build what Horovod builds fails here.
CUDA_CHECK_SCRIPT = "; ".join((
    "set -e",
    "ldconfig",
    "printf '__global__ void k(float *x) { x[threadIdx.x] += 1; }\\nint main() { k<<<1, 1>>>(0); return 0; }\\n'"
    " > /tmp/check.cu",
    f"{CUDA_PREFIX}/bin/nvcc -gencode arch=compute_80,code=sm_80 -o /tmp/check /tmp/check.cu",
    "rm -f /tmp/check /tmp/check.cu",
    f"{CUDA_PREFIX}/bin/nvcc --version | tail -n 2",
))


@dataclass(frozen=True)
class StandinPlan:
    """The commands that make the image, as argv lists (``ROOTFS`` and ``WHEELS`` stand for temporary folders)."""

    image: str
    commands: tuple[tuple[str, ...], ...]
    recipe: str = ""  # a hash of what determines the image's content (the RECIPE_LABEL it carries)

    def render(self) -> str:
        return "\n".join(shlex.join(c) for c in self.commands)


def cuda_release(toolkit: str) -> tuple[int, str]:
    """``13.0.3`` -> (13, "13.0"). The wheels keep the toolkit in ``nvidia/cu<major>/`` from CUDA 13 on."""
    parts = toolkit.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts) or int(parts[0]) < 13:
        raise ToolkitError(f"standin.cuda_toolkit must be a CUDA 13 or later cuda-toolkit version like 13.0.3, "
                           f"not {toolkit!r}", "pick the version the image's torch requires (pip show torch)")
    return int(parts[0]), f"{parts[0]}.{parts[1]}"


def image_name(image: str, openmpi_off_path: bool, flavour: str = "cpu", cuda_toolkit: str = "") -> str:
    """Each variant has a tag of its own (``bookworm-cuda13.0``, ``…-openmpi-off-path``): none replaces another."""
    suffix = (f"-cuda{cuda_release(cuda_toolkit)[1]}" if flavour == "gpu" else "") + \
        (OFF_PATH_SUFFIX if openmpi_off_path else "")
    if not suffix:
        return image
    name, colon, tag = image.rpartition(":")
    if not colon or "/" in tag:  # no tag (a colon before the last "/" is a registry's port)
        name, tag = image, "latest"
    return f"{name}:{tag}{suffix}"


def _cuda_steps(toolkit: str) -> tuple[tuple[str, ...], ...]:
    """The toolkit from PyPI (pip on this machine, so its proxy settings apply), laid out as NVIDIA installs it."""
    major, release = cuda_release(toolkit)
    home = f"ROOTFS/usr/local/cuda-{release}"
    place = "; ".join((
        "set -e",
        f"src=WHEELS/nvidia/cu{major}",
        f'[ -x "$src/bin/nvcc" ] || {{ echo "cuda-toolkit {toolkit} wheels have no nvidia/cu{major}/bin/nvcc" >&2; '
        "exit 1; }",
        f'mkdir -p {home} && cp -a "$src/." {home}/ && rm -rf {home}/.metadata',
        f"ln -s lib {home}/lib64",
        f"[ -e {home}/lib/libcudart.so ] || ln -s libcudart.so.{major} {home}/lib/libcudart.so",
        f"ln -s cuda-{release} ROOTFS{CUDA_PREFIX}",
        f"echo {CUDA_PREFIX}/lib64 > ROOTFS/etc/ld.so.conf.d/000-cuda.conf",
    ))
    return (
        (sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check",
         "--target", "WHEELS", f"cuda-toolkit[{CUDA_WHEEL_EXTRAS}]=={toolkit}"),
        ("sh", "-c", place),
        ("chroot", "ROOTFS", "sh", "-c", CUDA_CHECK_SCRIPT),
    )


def image_changes(openmpi_off_path: bool, flavour: str, cuda_toolkit: str) -> tuple[str, ...]:
    """The image's configuration: PATH as on the MCR bases, and NVIDIA's variables for the gpu flavour."""
    path = [f"{PYTHON_PREFIX}/bin"]
    if not openmpi_off_path:
        path.append(f"{OPENMPI_PREFIX}/bin")
    cuda = ()
    if flavour == "gpu":
        path.append(f"{CUDA_PREFIX}/bin")
        cuda = (f"CUDA_VERSION={cuda_toolkit}", *CUDA_ENV)
    return tuple(f"ENV {v}" for v in (f"PATH={':'.join(path)}:{SYSTEM_PATH}", "LANG=C.UTF-8", "LC_ALL=C.UTF-8",
                                      *cuda)) + ('CMD ["/bin/bash"]',)


def plan(image: str, suite: str, mirror: str, docker_cli: str, openmpi_off_path: bool = False,
         flavour: str = "cpu", cuda_toolkit: str = "") -> StandinPlan:
    if flavour not in FLAVOURS:
        raise ToolkitError(f"unknown stand-in flavour {flavour!r}", f"one of: {', '.join(FLAVOURS)}")
    debootstrap = ["debootstrap", "--variant=minbase", f"--include={','.join(BOOTSTRAP_PACKAGES)}", suite, "ROOTFS"]
    if mirror:
        debootstrap.append(mirror)
    image = image_name(image, openmpi_off_path, flavour, cuda_toolkit)
    config = image_changes(openmpi_off_path, flavour, cuda_toolkit)
    cuda = _cuda_steps(cuda_toolkit) if flavour == "gpu" else ()
    # The mirror, the docker client and this Python's path change nothing in the image.
    recipe = hashlib.sha256(repr((suite, BOOTSTRAP_PACKAGES, APT_PACKAGES, OPENMPI_MOVE_SCRIPT, PYTHON_PREFIX,
                                  [c[1:] for c in cuda], config)).encode()).hexdigest()[:12]
    changes = [arg for change in (*config, f"LABEL {RECIPE_LABEL}={recipe}") for arg in ("--change", change)]
    return StandinPlan(
        image=image,
        recipe=recipe,
        commands=(
            tuple(debootstrap),
            # policy-rc.d keeps package scripts from starting services (sshd) inside the chroot.
            ("sh", "-c", "printf '#!/bin/sh\\nexit 101\\n' > ROOTFS/usr/sbin/policy-rc.d "
             "&& chmod +x ROOTFS/usr/sbin/policy-rc.d"),
            ("chroot", "ROOTFS", "sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
             f"apt-get install -y -qq --no-install-recommends {' '.join(APT_PACKAGES)}"),
            ("chroot", "ROOTFS", "sh", "-c", OPENMPI_MOVE_SCRIPT),
            ("chroot", "ROOTFS", "python3", "-m", "venv", PYTHON_PREFIX),
            *cuda,
            # Host keys are made per run by whoever starts sshd; none is shared through the image.
            ("sh", "-c", "rm -rf ROOTFS/usr/sbin/policy-rc.d ROOTFS/etc/ssh/ssh_host_* "
             "ROOTFS/var/cache/apt/archives/*.deb ROOTFS/var/lib/apt/lists/*"),
            ("bash", "-o", "pipefail", "-c",
             f"tar -C ROOTFS -c . | {shlex.join([docker_cli, 'import', *changes, '-', image])}"),
        ),
    )


def made_from(client, image: str) -> str | None:
    """The recipe an existing stand-in was made from ("" for one made before the label); None if there is none."""
    made = engine.local_image(client, image)
    return None if made is None else str((made.labels or {}).get(RECIPE_LABEL, ""))


def create(standin: StandinPlan) -> None:
    """Run the plan as root; the temporary root file system (and the wheels) are removed whatever happens."""
    if os.geteuid() != 0:
        raise ToolkitError("making the stand-in base needs root (debootstrap and chroot)", "run it with sudo")
    if shutil.which("debootstrap") is None:
        raise ToolkitError("debootstrap is not installed", "apt-get install -y debootstrap")
    work = tempfile.mkdtemp(prefix="amltrain-standin-")
    rootfs, wheels = os.path.join(work, "rootfs"), os.path.join(work, "wheels")
    try:
        for argv in standin.commands:
            argv = [a.replace("ROOTFS", rootfs).replace("WHEELS", wheels) for a in argv]
            print("+ " + shlex.join(argv), flush=True)
            result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if result.returncode != 0:
                lines = result.stdout.strip().splitlines() or ["no output"]
                print("\n".join(lines[-20:]), file=sys.stderr)
                raise ToolkitError(f"making the stand-in base failed at {argv[0]} (output above): {lines[-1]}")
    finally:
        _unmount_below(rootfs)
        shutil.rmtree(work, ignore_errors=True)


def _unmount_below(rootfs: str) -> None:
    """debootstrap mounts /proc in the new root; an interrupted run can leave it there. Never delete through it."""
    with open("/proc/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(rootfs + "/")]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
