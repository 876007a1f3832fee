"""Invoke configuration + task options -> validated specs. The only place defaults are merged.

Precedence is invoke's: ``invoke.yaml`` < ``INVOKE_*`` environment variables < ``-f FILE`` < task
options. Values that are lists may be given as one string (split like a shell would), because invoke
cannot set a list from an environment variable.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from . import condaspec
from .errors import ToolkitError
from .masking import mask_url_credentials
from .spec import (
    LAUNCH_MODES,
    BuildSettings,
    Distribution,
    ImageSpec,
    JobSpec,
    LocalSettings,
    frozen_map,
)


def load(root: Path, overrides: Mapping[str, Any] | None = None):
    """The configuration exactly as the ``invoke`` CLI builds it, for code that runs outside a task
    (tests, benchmarks): invoke.yaml < INVOKE_RUNTIME_CONFIG file < INVOKE_* variables < overrides."""
    from invoke import Config

    runtime = os.environ.get("INVOKE_RUNTIME_CONFIG")
    cfg = Config(project_location=str(root), runtime_path=str(root / runtime) if runtime else None)
    cfg.load_project()
    cfg.load_runtime()
    cfg.load_shell_env()
    if overrides:
        cfg.load_overrides(dict(overrides))
    return cfg


def section(cfg: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = cfg.get(name) or {}
    if not isinstance(value, Mapping):
        raise ToolkitError(f"configuration '{name}' must be a mapping, got {value!r}", "fix invoke.yaml")
    return value


def words(value: Any) -> tuple[str, ...]:
    """A list setting: a YAML list, or one string split like a shell command line."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    raise ToolkitError(f"expected a list or a string, got {value!r}")


NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def key_values(items: Iterable[str], what: str) -> dict[str, str]:
    """``NAME=VALUE`` options (``--env``, ``--input``) into a dict, refusing anything else.

    Names are identifiers: they become environment variable names and ``${{inputs.NAME}}`` references.
    """
    result = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not NAME.fullmatch(name.strip()):
            raise ToolkitError(f"{what} {item!r} is not NAME=VALUE with NAME a letter/digit/_ identifier",
                               f"e.g. --{what} data=./fowl")
        result[name.strip()] = value
    return result


def targets(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    images = section(cfg, "images")
    return tuple(k for k, v in images.items() if isinstance(v, Mapping))


def image_spec(cfg: Mapping[str, Any], target: str, root: Path) -> ImageSpec:
    known = targets(cfg)
    if target not in known:
        raise ToolkitError(f"unknown target {target!r}", f"known targets: {', '.join(known) or 'none configured'}")
    images = section(cfg, "images")
    image = images[target]
    dockerfile = root / image.get("dockerfile", f"Dockerfile.{target}")
    if not dockerfile.is_file():
        raise ToolkitError(f"Dockerfile {dockerfile} for target {target!r} does not exist",
                           f"set images.{target}.dockerfile")
    conda_spec = (root / image.get("conda", f"conda/{target}.yml")).resolve()
    if not conda_spec.is_relative_to((root / "conda").resolve()):
        raise ToolkitError(f"conda spec {conda_spec} is outside {root / 'conda'}",
                           "the build mounts only conda/: put the spec there")
    try:
        condaspec.load(conda_spec)
    except condaspec.CondaSpecError as exc:
        raise ToolkitError(str(exc), f"fix it or set images.{target}.conda") from None
    base = str(image.get("base_image") or "")
    if not base:
        raise ToolkitError(f"images.{target}.base_image is not set", "set it in invoke.yaml or INVOKE_IMAGES_*")
    torch_index_url = str(image.get("torch_index_url") or "")
    if mask_url_credentials(torch_index_url) != torch_index_url:
        raise ToolkitError(f"images.{target}.torch_index_url carries credentials; as a build argument it "
                           "would land in docker history", "put a private index in build.pip_extra_index_urls")
    return ImageSpec(
        target=target,
        repository=str(images.get("repository") or "amltrain"),
        context=root,
        dockerfile=dockerfile,
        conda_spec=conda_spec,
        base_image=base,
        torch_index_url=torch_index_url,
        system_packages=words(image.get("system_packages")),
        horovod_version=str(image.get("horovod_version") or ""),
        horovod_sha256=_horovod_sha256(image, target),
        horovod_gpu_operations=_horovod_gpu_operations(image.get("horovod_gpu_operations"), target),
    )


def _horovod_sha256(image: Mapping[str, Any], target: str) -> str:
    """The sdist is built into the image: its hash is pinned like any other input of the build."""
    version, sha256 = str(image.get("horovod_version") or ""), str(image.get("horovod_sha256") or "").lower()
    if version and not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ToolkitError(f"images.{target}.horovod_sha256 must be the sha256 of horovod-{version}.tar.gz",
                           "PyPI lists it on the release's download page (or: sha256sum of the downloaded sdist)")
    return sha256 if version else ""


def _horovod_gpu_operations(value: Any, target: str) -> str:
    value = str(value or "").strip().upper()
    if value not in ("", "NCCL"):
        raise ToolkitError(f"images.{target}.horovod_gpu_operations {value!r} is not NCCL or empty",
                           "NCCL for a CUDA base with nvcc; empty for CPU operations")
    return value


def build_settings(cfg: Mapping[str, Any]) -> BuildSettings:
    build = section(cfg, "build")
    ca_bundle = str(build.get("ca_bundle") or "")
    if ca_bundle and not Path(ca_bundle).is_file():
        raise ToolkitError(f"build.ca_bundle {ca_bundle} does not exist", "point it at a PEM bundle or unset it")
    wheelhouse = str(build.get("wheelhouse") or "")
    if wheelhouse and not Path(os.path.expanduser(wheelhouse)).is_dir():
        raise ToolkitError(f"build.wheelhouse {wheelhouse} is not a directory", "point it at a folder of wheels")
    return BuildSettings(
        wheelhouse=str(Path(os.path.expanduser(wheelhouse)).resolve()) if wheelhouse else "",
        docker_cli=str(section(cfg, "docker").get("cli") or "docker"),
        ca_bundle=ca_bundle,
        pip_index_url=str(build.get("pip_index_url") or ""),
        pip_extra_index_urls=words(build.get("pip_extra_index_urls")),
        pip_find_links=words(build.get("pip_find_links")),
        pip_trusted_hosts=words(build.get("pip_trusted_hosts")),
        cache_from=words(build.get("cache_from")),
        cache_to=words(build.get("cache_to")),
    )


def job_spec(
    cfg: Mapping[str, Any],
    root: Path,
    *,
    target: str | None = None,
    script: str | None = None,
    arguments: str | None = None,
    inputs: Iterable[str] = (),
    env: Iterable[str] = (),
    command: str | None = None,
    launch: str | None = None,
    nodes: int | str | None = None,
    procs_per_node: int | str | None = None,
    require_inputs: bool = True,
) -> JobSpec:
    """The job from ``job:`` in the configuration; task options win over it.

    ``require_inputs=False`` accepts data inputs that do not exist yet (a dry run before they are made).
    """
    job = section(cfg, "job")
    source_dir = (root / str(job.get("source_dir") or ".")).resolve()
    if not source_dir.is_dir():
        raise ToolkitError(f"source directory {source_dir} does not exist", "set job.source_dir")
    command = str(command if command is not None else job.get("command") or "").strip()
    distribution = distribution_spec(section(job, "distribution"), launch=launch, nodes=nodes,
                                     procs_per_node=procs_per_node, command=command)
    script = "" if command else script or str(job.get("script") or "")  # a command replaces the script
    if not script and not command:
        raise ToolkitError("no training script given", "use --script or set job.script (or give --command)")
    if script and not (source_dir / script).is_file():
        raise ToolkitError(f"script {script} not found in source directory {source_dir}",
                           "the script path is relative to job.source_dir")
    configured = key_values((f"{k}={v}" for k, v in section(job, "inputs").items()), "input")
    merged_inputs = {**configured, **key_values(inputs, "input")}
    resolved = {}
    for name, path in merged_inputs.items():
        local = (root / os.path.expanduser(str(path))).resolve()
        if require_inputs and not local.is_dir():
            raise ToolkitError(f"data input {name!r}: {local} is not a directory", "check --input NAME=DIR")
        resolved[name] = local
    return JobSpec(
        experiment=str(job.get("experiment") or "amltrain"),
        target=target or str(job.get("target") or "cpu"),
        source_dir=source_dir,
        script=script,
        arguments=words(arguments) if arguments is not None else words(job.get("arguments")),
        inputs=frozen_map(resolved),
        environment=frozen_map({**key_values((f"{k}={v}" for k, v in section(job, "environment").items()), "env"),
                                **key_values(env, "env")}),
        command=command,
        distribution=distribution,
    )


NPROC_PER_NODE = re.compile(r"--nproc[_-]per[_-]node[= ]+(\d+)\b")  # torchrun's, in a per-node command
NNODES = re.compile(r"--nnodes[= ]+(\d+)(?::(\d+))?(?=\s|$)")  # torchrun's node count (MIN[:MAX]); $VARS pass


def distribution_spec(configured: Mapping[str, Any], *, launch: str | None = None, nodes: Any = None,
                      procs_per_node: Any = None, command: str = "") -> Distribution:
    """``job.distribution`` (launch, nodes, procs_per_node) with task options winning; refuses what Azure ML
    would refuse, before anything starts."""
    launch = str(launch or configured.get("launch") or "per-process").strip().lower()
    if launch not in LAUNCH_MODES:
        raise ToolkitError(f"unknown launch mode {launch!r}", f"use one of: {', '.join(LAUNCH_MODES)}")
    result = Distribution(
        launch=launch,
        nodes=whole(nodes if nodes is not None else configured.get("nodes", 1), "nodes", 1, "e.g. --nodes 2"),
        procs_per_node=whole(procs_per_node if procs_per_node is not None else configured.get("procs_per_node", 1),
                              "procs-per-node", 1, "e.g. --procs-per-node 2"),
    )
    if launch == "per-node" and not command:
        raise ToolkitError("--launch per-node starts your --command once per node, and no command was given",
                           'e.g. --command "torchrun --nproc_per_node 2 --nnodes 2 --node_rank $NODE_RANK … x.py"')
    launched = NPROC_PER_NODE.search(command) if launch == "per-node" else None
    if launched:  # the launcher in the command starts the processes: its count is the one that needs GPUs
        if procs_per_node is not None and int(procs_per_node) != int(launched.group(1)):
            raise ToolkitError(f"--procs-per-node {procs_per_node} but the command starts {launched.group(1)} "
                               "processes per node (--nproc_per_node)", "give the same number, or drop one")
        result = Distribution(launch, result.nodes, int(launched.group(1)))
    nnodes = NNODES.search(command) if launch == "per-node" else None
    if nnodes and not int(nnodes.group(1)) <= result.nodes <= int(nnodes.group(2) or nnodes.group(1)):
        said = nnodes.group(0).replace("=", " ").split()[-1]
        raise ToolkitError(f"the command's torchrun waits for {said} node(s) "
                           f"(--nnodes) but the job has {result.nodes} (--nodes): it would hang at rendezvous",
                           "give the same number, or write --nnodes $AZUREML_NODE_COUNT (set on every node)")
    return result


def gpus_for(cfg: Mapping[str, Any], target: str, count_host_gpus: Callable[[], int]) -> str:
    """``local.gpus``: auto (all GPUs for a GPU target when the host has any), none, all, or ids like 0,1.

    ``count_host_gpus`` is asked only for auto on a GPU target (it runs nvidia-smi).
    """
    raw = section(cfg, "local").get("gpus")
    if isinstance(raw, bool):  # YAML 1.1 reads off/no/yes as booleans
        raise ToolkitError(f"local.gpus {raw!r} is ambiguous", "write auto, none, all or device ids like 0,1")
    value = "auto" if raw is None or raw == "" else str(raw).strip().lower()
    if value == "auto":
        is_gpu_target = bool(section(section(cfg, "images"), target).get("gpu")) if target in targets(cfg) else False
        return "all" if is_gpu_target and count_host_gpus() > 0 else ""
    if value == "none":
        return ""
    if value == "all" or re.fullmatch(r"\d+(,\d+)*", value):
        return value
    raise ToolkitError(f"local.gpus {value!r} is not auto, none, all or device ids", "e.g. 0,1")


def node_gpus(gpus: str, distribution: Distribution, count_host_gpus: Callable[[], int]) -> tuple[str, ...]:
    """Each node's GPUs: disjoint slices of the selected ones, never every GPU in every container.

    More processes per node than GPUs per node is refused here, before anything starts: on a cluster it is
    NCCL's "duplicate GPU detected" failure. ``gpus`` is what ``gpus_for`` chose; "" means a CPU run.
    """
    if not gpus:
        return ("",) * distribution.nodes
    if gpus == "all" and distribution.nodes == 1 and distribution.procs_per_node == 1:
        return ("all",)
    ids = [str(i) for i in range(count_host_gpus())] if gpus == "all" else gpus.split(",")
    if len(set(ids)) != len(ids):
        raise ToolkitError(f"local.gpus {gpus} names a GPU twice", "list each device id once, e.g. 0,1")
    share = len(ids) // distribution.nodes
    if share < distribution.procs_per_node:
        raise ToolkitError(
            f"{distribution.procs_per_node} processes per node need {distribution.procs_per_node} GPUs per node, "
            f"but {len(ids)} GPU(s) over {distribution.nodes} node(s) give {share} each",
            "NCCL would fail with a duplicate GPU; lower --procs-per-node or --nodes, or set local.gpus=none "
            "for a CPU (gloo) run")
    if gpus != "all":
        present = count_host_gpus()
        missing = [i for i in ids if int(i) >= present]
        if missing:
            raise ToolkitError(f"local.gpus {gpus}: this host has {present} GPU(s), no device {missing[0]}",
                               "nvidia-smi -L lists the device ids")
    return tuple(",".join(ids[i * share:(i + 1) * share]) for i in range(distribution.nodes))


def local_settings(cfg: Mapping[str, Any], root: Path, user: str | None = None,
                   gpus: tuple[str, ...] = ()) -> LocalSettings:
    local = section(cfg, "local")
    user = user or str(local.get("user") or "") or f"{os.getuid()}:{os.getgid()}"
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise ToolkitError(f"user {user!r} is not UID[:GID]", "e.g. --user 1000:1000")
    shm_size = str(local.get("shm_size") or "2g")
    if not SIZE.fullmatch(shm_size):
        raise ToolkitError(f"local.shm_size {shm_size!r} is not a size", "e.g. 2g, 512m")
    memory = str(local.get("memory") or "")
    if memory and not SIZE.fullmatch(memory):
        raise ToolkitError(f"local.memory {memory!r} is not a size", "e.g. 16g, 512m; empty for no limit")
    return LocalSettings(
        runs_dir=(root / str(local.get("runs_dir") or "runs")).resolve(),
        shm_size=shm_size,
        memory=memory,
        user=user,
        master_port=int(local.get("master_port") or 6105),
        gpus=gpus,
        cache_dir=(root / os.path.expanduser(str(local["cache_dir"]))).resolve() if local.get("cache_dir") else None,
    )


# --- values shared by every section ----------------------------------------------------------------------

SIZE = re.compile(r"\d+[bkmgBKMG]?")


def whole(value: Any, what: str, minimum: int = 0, hint: str | None = None) -> int:
    if isinstance(value, bool) or not str(value).strip().isdigit() or int(value) < minimum:
        raise ToolkitError(f"{what} must be a whole number of at least {minimum}, got {value!r}", hint)
    return int(value)


def choice(value: Any, what: str, choices: tuple[str, ...], default: str) -> str:
    value = str(value or default).strip().lower()
    if value not in choices:
        raise ToolkitError(f"{what} {value!r} is not one of: {', '.join(choices)}", f"set {what} in invoke.yaml")
    return value


def flag(value: Any) -> bool:
    return value not in (None, "", "0", 0, False, "false", "False", "no")
