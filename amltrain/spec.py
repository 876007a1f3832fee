"""Frozen, I/O-free descriptions of what to build and what to run.

``config`` makes them from invoke configuration and task options; ``images`` and ``local.request`` turn them
into requests (plain data, what ``--dry-run`` prints) and execute those. Nothing here touches Docker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType


def frozen_map(values: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(values or {}))


@dataclass(frozen=True)
class ImageSpec:
    """Everything that determines one image flavour; all of it feeds the content-addressed tag."""

    target: str  # "cpu" | "gpu"
    repository: str
    context: Path  # project root: the Dockerfiles bind-mount conda/ and amltrain/condaspec.py from it
    dockerfile: Path
    conda_spec: Path
    base_image: str
    torch_index_url: str = ""
    system_packages: tuple[str, ...] = ()
    horovod_version: str = ""  # built from source in the image; "" for none
    horovod_sha256: str = ""  # of the version's sdist: the download is checked against it
    horovod_gpu_operations: str = ""  # "NCCL" (needs nvcc in the base) or "" (CPU operations)


@dataclass(frozen=True)
class BuildSettings:
    """How to reach packages during a build. Not part of the tag: a mirror serves the same packages.

    All of it reaches the build as BuildKit secrets, never as build args or layers.
    """

    docker_cli: str = "docker"
    ca_bundle: str = ""
    pip_index_url: str = ""
    pip_extra_index_urls: tuple[str, ...] = ()
    pip_find_links: tuple[str, ...] = ()
    pip_trusted_hosts: tuple[str, ...] = ()
    wheelhouse: str = ""  # a host folder of wheels, mounted into the install step as a find-links folder
    # BuildKit layer caches to read and write (--cache-from/--cache-to, e.g. type=gha in GitHub Actions);
    # writing one needs a buildx client.
    cache_from: tuple[str, ...] = ()
    cache_to: tuple[str, ...] = ()


LAUNCH_MODES = ("per-process", "per-node", "mpi")


@dataclass(frozen=True)
class Distribution:
    """How many processes on how many nodes, and who starts them; the same words for ``run-local`` and
    ``submit``.

    - ``per-process``: the platform starts ``procs_per_node`` processes on each node, each with ``RANK`` and
      ``LOCAL_RANK`` (Azure ML's ``PyTorchConfiguration(process_count, node_count)``);
    - ``per-node``: the platform starts the job's ``command`` once per node and a launcher in it (torchrun)
      starts ``procs_per_node`` processes (``PyTorchConfiguration(node_count)`` with a command);
    - ``mpi``: ``mpirun`` starts ``procs_per_node`` processes per node (``MpiConfiguration``), for Horovod.
    """

    launch: str = "per-process"
    nodes: int = 1
    procs_per_node: int = 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def single_process(self) -> bool:
        return self.launch == "per-process" and self.world_size == 1


@dataclass(frozen=True)
class JobSpec:
    """One training job, defined once: ``run-local`` runs it in Docker, ``submit`` sends it to Azure ML.

    ``arguments`` may reference data inputs as ``${{inputs.NAME}}``; each backend substitutes the path
    where that input appears (a read-only mount locally, a dataset mount in Azure ML).
    """

    experiment: str
    target: str
    source_dir: Path
    script: str
    arguments: tuple[str, ...] = ()
    inputs: Mapping[str, Path] = field(default_factory=frozen_map)
    environment: Mapping[str, str] = field(default_factory=frozen_map)
    command: str = ""  # a shell command run instead of ``python script arguments`` (e.g. torchrun …)
    distribution: Distribution = field(default_factory=Distribution)


@dataclass(frozen=True)
class LocalSettings:
    runs_dir: Path
    shm_size: str = "2g"
    user: str = ""  # "uid:gid" the container runs as; outputs on the host belong to it
    master_port: int = 6105  # what Azure ML's PyTorchConfiguration gives
    gpus: tuple[str, ...] = ()  # per node: "" none, "all", or device ids "0,1" (disjoint between nodes)
    cache_dir: Path | None = None  # kept across runs: downloaded data and weights
    memory: str = ""  # each node container's memory limit (Docker size, e.g. 16g); "" unlimited


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class ContainerRequest:
    """One container, field for field what docker-py's ``containers.create`` receives."""

    name: str
    image: str
    command: tuple[str, ...]
    working_dir: str
    hostname: str
    user: str
    shm_size: str
    environment: Mapping[str, str]
    mounts: tuple[Mount, ...]
    labels: Mapping[str, str]
    gpus: str = ""  # "" none, "all", or device ids "0,1"
    network: str = ""  # the run's private network; ``hostname`` is this container's name on it
    plan: str = ""  # JSON: what the in-container launcher starts (amltrain/local/launcher.py)
    ports: tuple[tuple[str, str, int], ...] = ()  # (container port/proto, host address, host port) published
    memory: str = ""  # memory limit (Docker size); "" unlimited


@dataclass(frozen=True)
class Preemption:
    """A preemption drill: ``after_s`` into each attempt the gang gets SIGTERM, ``grace_s`` later SIGKILL, and it
    is started again on the same checkpoints, at most ``restarts`` times; the last attempt runs to its end."""

    after_s: float
    restarts: int = 1
    grace_s: float = 30.0


@dataclass(frozen=True)
class LocalRequest:
    """A local run: one container per node on a private network, the snapshot copied into each, and where
    results land."""

    run_id: str
    run_dir: Path
    snapshot_dir: Path
    snapshot_files: tuple[str, ...]
    containers: tuple[ContainerRequest, ...]
    cache_dir: Path | None = None
    code_in_image: str = ""  # baked code: the snapshot is copied from this folder of the image, not the host
    network: str = ""
    distribution: Distribution = field(default_factory=Distribution)
    checkpoint_dir: Path | None = None  # host folder kept across attempts: runs/<id>/checkpoints or --resume's
    resumed_from: str = ""  # the run whose checkpoints these are, when not this one's
    preemption: Preemption | None = None
    grace_s: float = 5.0  # SIGTERM to SIGKILL when the gang is stopped
