"""A local stand-in for the MCR AzureML base images, for machines that cannot pull from MCR.

It has the shape the Dockerfiles rely on: Debian with Python, pip and venv (a venv on ``PATH`` plays the
part of MCR's ``/opt/miniconda`` base environment, so ``python -m pip install`` targets it), OpenMPI,
OpenSSH, a compiler toolchain, and ``/bin/sh``. It is made with debootstrap and ``docker import`` (no
registry involved) and selected only by configuration: ``images.<target>.base_image``. Never a
silent fallback: a build on an unpullable base fails and says how to point at this one.

With ``openmpi_off_path`` it has OpenMPI where the openmpi5.0 MCR bases keep it, in ``/usr/local/openmpi``
and off ``PATH`` (Azure/AzureML-Containers#209), so the images' handling of such a base can be tested here.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from .errors import ToolkitError

# debootstrap resolves only these (it cannot follow alternatives such as OpenMPI's); apt adds the rest.
BOOTSTRAP_PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates")
# python3-dev: Miniconda's Python on the MCR bases has its headers, and building Horovod needs them.
APT_PACKAGES = ("python3-dev", "openmpi-bin", "libopenmpi-dev", "openssh-client", "openssh-server", "g++", "make",
                "cmake", "procps")
VENV = "/opt/venv"
IMAGE_CHANGES = (
    f"ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "ENV LC_ALL=C.UTF-8",
    'CMD ["/bin/bash"]',
)
OPENMPI_PREFIX = "/usr/local/openmpi"
OFF_PATH_SUFFIX = "-openmpi-off-path"
# Debian's OpenMPI moved to OPENMPI_PREFIX as the openmpi5.0 bases have it: every program of its packages
# diverted (dpkg-divert, so an upgrade follows them) into bin/, the alternatives' mpirun/mpicc links removed,
# bin/mpirun, bin/mpicc, ... named without Debian's .openmpi suffix, lib/ and include/ linked to Debian's.
# The wrappers read their flags from /usr/share/openmpi whatever their path. Fails unless it took.
OPENMPI_OFF_PATH_SCRIPT = "; ".join((
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


@dataclass(frozen=True)
class StandinPlan:
    """The commands that make the image, as argv lists (``ROOTFS`` stands for a temporary folder)."""

    image: str
    commands: tuple[tuple[str, ...], ...]

    def render(self) -> str:
        return "\n".join(shlex.join(c) for c in self.commands)


def image_name(image: str, openmpi_off_path: bool) -> str:
    """The off-PATH variant gets a tag of its own (``bookworm-openmpi-off-path``): it never replaces the normal one."""
    if not openmpi_off_path:
        return image
    name, colon, tag = image.rpartition(":")
    if not colon or "/" in tag:  # no tag (a colon before the last "/" is a registry's port)
        name, tag = image, "latest"
    return f"{name}:{tag}{OFF_PATH_SUFFIX}"


def plan(image: str, suite: str, mirror: str, docker_cli: str, openmpi_off_path: bool = False) -> StandinPlan:
    debootstrap = ["debootstrap", "--variant=minbase", f"--include={','.join(BOOTSTRAP_PACKAGES)}", suite, "ROOTFS"]
    if mirror:
        debootstrap.append(mirror)
    image = image_name(image, openmpi_off_path)
    changes = [arg for change in IMAGE_CHANGES for arg in ("--change", change)]
    off_path = (("chroot", "ROOTFS", "sh", "-c", OPENMPI_OFF_PATH_SCRIPT),) if openmpi_off_path else ()
    return StandinPlan(
        image=image,
        commands=(
            tuple(debootstrap),
            # policy-rc.d keeps package scripts from starting services (sshd) inside the chroot.
            ("sh", "-c", "printf '#!/bin/sh\\nexit 101\\n' > ROOTFS/usr/sbin/policy-rc.d "
             "&& chmod +x ROOTFS/usr/sbin/policy-rc.d"),
            ("chroot", "ROOTFS", "sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
             f"apt-get install -y -qq --no-install-recommends {' '.join(APT_PACKAGES)}"),
            *off_path,
            ("chroot", "ROOTFS", "python3", "-m", "venv", VENV),
            # Host keys are made per run by whoever starts sshd; none is shared through the image.
            ("sh", "-c", "rm -rf ROOTFS/usr/sbin/policy-rc.d ROOTFS/etc/ssh/ssh_host_* "
             "ROOTFS/var/cache/apt/archives/*.deb ROOTFS/var/lib/apt/lists/*"),
            ("bash", "-o", "pipefail", "-c",
             f"tar -C ROOTFS -c . | {shlex.join([docker_cli, 'import', *changes, '-', image])}"),
        ),
    )


def create(standin: StandinPlan) -> None:
    """Run the plan as root; the temporary root file system is removed whatever happens."""
    if os.geteuid() != 0:
        raise ToolkitError("making the stand-in base needs root (debootstrap and chroot)", "run it with sudo")
    if shutil.which("debootstrap") is None:
        raise ToolkitError("debootstrap is not installed", "apt-get install -y debootstrap")
    rootfs = tempfile.mkdtemp(prefix="amltrain-standin-")
    try:
        for argv in standin.commands:
            argv = [a.replace("ROOTFS", rootfs) for a in argv]
            print("+ " + shlex.join(argv), flush=True)
            result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if result.returncode != 0:
                lines = result.stdout.strip().splitlines() or ["no output"]
                print("\n".join(lines[-20:]), file=sys.stderr)
                raise ToolkitError(f"making the stand-in base failed at {argv[0]} (output above): {lines[-1]}")
    finally:
        _unmount_below(rootfs)
        shutil.rmtree(rootfs, ignore_errors=True)


def _unmount_below(rootfs: str) -> None:
    """debootstrap mounts /proc in the new root; an interrupted run can leave it there. Never delete through it."""
    with open("/proc/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(rootfs + "/")]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
