"""Invoke configuration + task options -> validated specs. The only place defaults are merged.

Precedence is invoke's: ``invoke.yaml`` < ``INVOKE_*`` environment variables < ``-f FILE`` < task
options. Values that are lists may be given as one string (split like a shell would), because invoke
cannot set a list from an environment variable.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shlex
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import invoke
from invoke.exceptions import AmbiguousEnvVar, UncastableEnvVar, UnknownFileType, UnpicklableConfigMember
from invoke.util import yaml as invoke_yaml

from . import condaspec, snapshot
from .errors import ToolkitError
from .masking import mask_url_credentials
from .spec import (
    LAUNCH_MODES,
    BuildSettings,
    Distribution,
    ImageSpec,
    JobSpec,
    LocalSettings,
    Preemption,
    frozen_map,
)

CONFIG_HINT = "fix invoke.yaml or the file given with -f"
FILE_HINT = "fix that file"


def load(root: Path, overrides: Mapping[str, Any] | None = None):
    """The configuration exactly as the ``invoke`` CLI builds it, for code that runs outside a task
    (tests, benchmarks): invoke.yaml < INVOKE_RUNTIME_CONFIG file < INVOKE_* variables < overrides."""
    runtime = os.environ.get("INVOKE_RUNTIME_CONFIG")
    cfg = ProjectConfig(project_location=str(root), runtime_path=str(root / runtime) if runtime else None)
    cfg.load_project()
    cfg.load_runtime()
    cfg.load_shell_env()
    if overrides:
        cfg.load_overrides(dict(overrides))
    return cfg


class ProjectConfig(invoke.Config):
    """invoke's Config, checking each file and variable as invoke loads it, so that a bad one is one line that
    names it (a ToolkitError) instead of a parser traceback, an ``-f`` file silently ignored, or a merge error.

    invoke reads every file (system, user, the project's invoke.yaml, ``-f``) through ``_load_file`` and
    ``_load_yaml``/``_load_json``, and casts ``INVOKE_*`` variables in ``load_shell_env``: those are the hooks.
    They are internal to invoke, hence its pin below 4 (pyproject.toml); tests/unit/test_bad_input.py covers them.
    """

    def _load_file(self, prefix: str, absolute: bool = False, merge: bool = True) -> None:
        runtime = getattr(self, "_runtime_path", None) if prefix == "runtime" else None
        if runtime is not None and getattr(self, "_runtime_found", None) is None:
            _check_config_file(str(runtime))
        try:
            super()._load_file(prefix, absolute=absolute, merge=False)
        except UnknownFileType:
            raise ToolkitError(f"configuration file {runtime} is not .yaml, .yml or .json",
                               "give invoke -f a YAML file") from None
        except UnpicklableConfigMember as exc:
            raise ToolkitError(f"configuration file {runtime}: {exc}", FILE_HINT) from None
        path = getattr(self, f"_{prefix}_path", None)
        if path is not None:
            data = getattr(self, f"_{prefix}")
            if data is not None and not isinstance(data, Mapping):
                raise ToolkitError(f"configuration file {path} is a {type(data).__name__}, not a mapping of "
                                   "settings", "its top level must be sections like images:, job:, local:")
            problem = next(_shape_clashes(data or {}, self._config), None)
            if problem:
                raise ToolkitError(f"configuration file {path}: {problem}", FILE_HINT)
        if merge:
            self.merge()

    def _load_yaml(self, path):
        return _read_config(path, invoke_yaml.safe_load)

    _load_yml = _load_yaml

    def _load_json(self, path):
        return _read_config(path, json.loads)

    def load_shell_env(self) -> None:
        """INVOKE_* variables, each checked against the type of the setting it replaces first: invoke would
        raise a bare ValueError for ``INVOKE_JOB_DISTRIBUTION_NODES=abc``."""
        self.merge()
        prefix = getattr(self, "_env_prefix", None) or "INVOKE_"
        for keys, old in _leaves(self._config):
            var = prefix + "_".join(keys).upper()
            if var not in os.environ:
                continue
            new, setting = os.environ[var], ".".join(keys)
            if isinstance(old, (list, tuple)):
                raise ToolkitError(f"{var} cannot set {setting}, which a configuration file gives as a list",
                                   "write the list as one space-separated string in that file, or unset " + var)
            if isinstance(old, (int, float)) and not isinstance(old, bool):
                try:
                    type(old)(new)
                except ValueError:
                    kind = "a whole number" if isinstance(old, int) else "a number"
                    raise ToolkitError(f"{var}={new!r} is not {kind} (it sets {setting})",
                                       f"e.g. {var}={old}") from None
        try:
            super().load_shell_env()
        except (AmbiguousEnvVar, UncastableEnvVar) as exc:
            raise ToolkitError(f"INVOKE_* variables: {exc}", "unset the variable, or set it in a file") from None


def _check_config_file(path: str) -> None:
    """The file of ``invoke -f`` (or INVOKE_RUNTIME_CONFIG) must exist: invoke would skip a missing one."""
    given = Path(os.path.expanduser(path))
    if snapshot.present(given, Path.is_dir):
        raise ToolkitError(f"configuration file {path} is a folder", "give invoke -f a YAML file")
    if not snapshot.present(given, Path.is_file):
        raise ToolkitError(f"configuration file {path} does not exist",
                           "check the path given with -f (or INVOKE_RUNTIME_CONFIG)")


def _read_config(path, parse: Callable[[str], Any]):
    """One configuration file's data; one line naming the file when it cannot be read or parsed. A missing file
    stays invoke's FileNotFoundError, which it takes as "no such file here, try the next suffix"."""
    try:
        with open(path, encoding="utf-8") as fd:
            text = fd.read()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise
        raise ToolkitError(f"cannot read configuration file {path}: {exc.strerror}", FILE_HINT) from None
    except UnicodeDecodeError:
        raise ToolkitError(f"configuration file {path} is not UTF-8 text", "save it as UTF-8") from None
    try:
        return parse(text)
    except invoke_yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ToolkitError(f"configuration file {path} is not valid YAML{where}: {problem}", FILE_HINT) from None
    except json.JSONDecodeError as exc:
        raise ToolkitError(f"configuration file {path} is not valid JSON at line {exc.lineno}: {exc.msg}",
                           FILE_HINT) from None


def _shape_clashes(data: Mapping, base: Mapping, path: tuple[str, ...] = ()) -> Iterator[str]:
    """Where a file gives a value for a section (``local: 5``) or a section for a value: invoke cannot merge
    those, and would stop with a traceback."""
    for key, value in data.items():
        if key not in base:
            continue
        old, name = base[key], ".".join((*path, str(key)))
        if isinstance(old, Mapping) and not isinstance(value, Mapping):
            yield f"{name} is a section ({', '.join(map(str, list(old)[:4]))}{', …' if len(old) > 4 else ''}), " \
                  f"not {value!r}"
        elif isinstance(value, Mapping) and not isinstance(old, Mapping):
            yield f"{name} is a single value ({old!r}), not a section"
        elif isinstance(value, Mapping):
            yield from _shape_clashes(value, old, (*path, str(key)))


def _leaves(data: Mapping, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in data.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, (*path, str(key)))
        else:
            yield (*path, str(key)), value


def section(cfg: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """A section of the configuration, by its dotted name (``job``, ``job.distribution``); missing is empty,
    anything but a mapping is one line naming it."""
    value: Any = cfg
    parts = name.split(".")
    for depth, key in enumerate(parts):
        value = value.get(key) or {}
        if not isinstance(value, Mapping):
            raise ToolkitError(f"configuration {'.'.join(parts[:depth + 1])} must be a section (a mapping of "
                               f"settings), got {value!r}", CONFIG_HINT)
    return value


def words(value: Any, setting: str = "a list setting") -> tuple[str, ...]:
    """A list setting: a YAML list, or one string split like a shell command line."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:  # an unbalanced quote, a trailing backslash
            raise ToolkitError(f"{setting} {value!r} cannot be split into words as a shell would: "
                               f"{str(exc).lower()}", "balance the quotes, or escape a literal one as \\'") from None
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    raise ToolkitError(f"{setting} must be a list or a string, got {value!r}", CONFIG_HINT)


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
        if target in section(cfg, "images") and target != "repository":
            section(cfg, f"images.{target}")  # there, but not a mapping: one line that says so
        raise ToolkitError(f"unknown target {target!r}", f"known targets: {', '.join(known) or 'none configured'}")
    images = section(cfg, "images")
    image = images[target]
    dockerfile = root / str(image.get("dockerfile") or f"Dockerfile.{target}")
    if not snapshot.present(dockerfile, Path.is_file):
        raise ToolkitError(f"Dockerfile {dockerfile} for target {target!r} does not exist",
                           f"set images.{target}.dockerfile")
    conda_spec = (root / str(image.get("conda") or f"conda/{target}.yml")).resolve()
    if not conda_spec.is_relative_to((root / "conda").resolve()):
        raise ToolkitError(f"conda spec {conda_spec} is outside {root / 'conda'}",
                           "the build mounts only conda/: put the spec there")
    if not snapshot.present(conda_spec, Path.is_file):  # condaspec would raise on a name the system refuses
        raise ToolkitError(f"conda spec {conda_spec} does not exist", f"fix it or set images.{target}.conda")
    try:
        condaspec.load(conda_spec)
    except condaspec.CondaSpecError as exc:
        raise ToolkitError(str(exc), f"fix it or set images.{target}.conda") from None
    _one_python_pin(conda_spec)
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
        system_packages=words(image.get("system_packages"), f"images.{target}.system_packages"),
        horovod_version=str(image.get("horovod_version") or ""),
        horovod_sha256=_horovod_sha256(image, target),
        horovod_gpu_operations=_horovod_gpu_operations(image.get("horovod_gpu_operations"), target),
    )


def _one_python_pin(path: Path) -> None:
    """A spec names python once: with two pins, conda would solve for both, while the build checks the base's
    interpreter against one of them. Checked here rather than in condaspec.py, whose bytes are part of every
    image tag (a check there would rebuild every image); the spec is valid YAML by now."""
    import yaml

    entries = yaml.safe_load(path.read_text(encoding="utf-8"))["dependencies"]
    pins = [e.strip() for e in entries if isinstance(e, str) and condaspec._package_name(e) == "python"]
    if len(pins) > 1:
        raise ToolkitError(f"conda spec {path} names python {len(pins)} times ({', '.join(pins)})",
                           "keep one python entry")


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
    if ca_bundle and not snapshot.present(Path(os.path.expanduser(ca_bundle)), Path.is_file):
        raise ToolkitError(f"build.ca_bundle {ca_bundle} does not exist", "point it at a PEM bundle or unset it")
    wheelhouse = str(build.get("wheelhouse") or "")
    if wheelhouse and not snapshot.present(Path(os.path.expanduser(wheelhouse)), Path.is_dir):
        raise ToolkitError(f"build.wheelhouse {wheelhouse} is not a directory", "point it at a folder of wheels")
    return BuildSettings(
        wheelhouse=str(Path(os.path.expanduser(wheelhouse)).resolve()) if wheelhouse else "",
        docker_cli=str(section(cfg, "docker").get("cli") or "docker"),
        ca_bundle=ca_bundle,
        pip_index_url=str(build.get("pip_index_url") or ""),
        pip_extra_index_urls=words(build.get("pip_extra_index_urls"), "build.pip_extra_index_urls"),
        pip_find_links=words(build.get("pip_find_links"), "build.pip_find_links"),
        pip_trusted_hosts=words(build.get("pip_trusted_hosts"), "build.pip_trusted_hosts"),
        cache_from=words(build.get("cache_from"), "build.cache_from"),
        cache_to=words(build.get("cache_to"), "build.cache_to"),
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
    arguments_setting: str = "--args",
) -> JobSpec:
    """The job from ``job:`` in the configuration; task options win over it.

    ``require_inputs=False`` accepts data inputs that do not exist yet (a dry run before they are made).
    ``arguments_setting`` names where ``arguments`` came from, for the one line that refuses them.
    """
    job = section(cfg, "job")
    source_dir = (root / os.path.expanduser(str(job.get("source_dir") or "."))).resolve()
    if not snapshot.present(source_dir, Path.is_dir):
        raise ToolkitError(f"source directory {source_dir} does not exist or is not a folder", "set job.source_dir")
    command = str(command if command is not None else job.get("command") or "").strip()
    distribution = distribution_spec(section(cfg, "job.distribution"), launch=launch, nodes=nodes,
                                     procs_per_node=procs_per_node, command=command)
    script = "" if command else script or str(job.get("script") or "")  # a command replaces the script
    if not script and not command:
        raise ToolkitError("no training script given", "use --script or set job.script (or give --command)")
    if script:
        script = snapshot.script_path(source_dir, script)
    configured = key_values((f"{k}={v}" for k, v in section(cfg, "job.inputs").items()), "input")
    merged_inputs = {**configured, **key_values(inputs, "input")}
    resolved = {}
    for name, path in merged_inputs.items():
        if require_inputs and "://" in str(path):
            raise ToolkitError(f"data input {name!r} is a URL ({path}): run-local mounts local folders",
                               "download it first and give --input NAME=DIR")
        local = (root / os.path.expanduser(str(path))).resolve()
        if require_inputs and not snapshot.present(local, Path.is_dir):
            raise ToolkitError(f"data input {name!r}: {local} is not a directory", "check --input NAME=DIR")
        resolved[name] = local
    return JobSpec(
        experiment=str(job.get("experiment") or "amltrain"),
        target=target or str(job.get("target") or "cpu"),
        source_dir=source_dir,
        script=script,
        arguments=words(arguments, arguments_setting) if arguments is not None else words(job.get("arguments"),
                                                                                          "job.arguments"),
        inputs=frozen_map(resolved),
        environment=frozen_map({**key_values((f"{k}={v}" for k, v in section(cfg, "job.environment").items()),
                                             "env"),
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
        nodes=whole(nodes if nodes is not None else configured.get("nodes", 1),
                    "--nodes" if nodes is not None else "job.distribution.nodes", 1, "e.g. --nodes 2"),
        procs_per_node=whole(procs_per_node if procs_per_node is not None else configured.get("procs_per_node", 1),
                              "--procs-per-node" if procs_per_node is not None else "job.distribution.procs_per_node",
                              1, "e.g. --procs-per-node 2"),
    )
    if launch == "per-node" and not command:
        raise ToolkitError("--launch per-node starts your --command once per node, and no command was given",
                           'e.g. --command "torchrun --nproc_per_node 2 --nnodes 2 --node_rank $NODE_RANK … x.py"')
    launched = NPROC_PER_NODE.search(command) if launch == "per-node" else None
    if launched:  # the launcher in the command starts the processes: its count is the one that needs GPUs
        if procs_per_node is not None and result.procs_per_node != int(launched.group(1)):
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
        is_gpu_target = bool(section(cfg, f"images.{target}").get("gpu")) if target in targets(cfg) else False
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
                   gpus: tuple[str, ...] = (), for_run: bool = False) -> LocalSettings:
    """``local:``. ``for_run``: the runs and cache folders are also checked to be writable, as a run (or its
    dry run) needs them; reading tasks (local-status, local-logs) need not write."""
    local = section(cfg, "local")
    user = user or str(local.get("user") or "") or f"{os.getuid()}:{os.getgid()}"
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise ToolkitError(f"user {user!r} is not UID[:GID]", "e.g. --user 1000:1000")
    runs_dir = (root / os.path.expanduser(str(local.get("runs_dir") or "runs"))).resolve()
    cache_dir = (root / os.path.expanduser(str(local["cache_dir"]))).resolve() if local.get("cache_dir") else None
    folder(runs_dir, "local.runs_dir", writable=for_run)
    if cache_dir:
        folder(cache_dir, "local.cache_dir", writable=for_run)
    return LocalSettings(
        runs_dir=runs_dir,
        shm_size=size(local.get("shm_size"), "local.shm_size"),
        memory=size(local["memory"], "local.memory") if local.get("memory") else "",
        user=user,
        master_port=whole(local.get("master_port") or 6105, "local.master_port", 1, "a TCP port, e.g. 6105",
                          maximum=65535),
        gpus=gpus,
        cache_dir=cache_dir,
    )


def folder(path: Path, setting: str, writable: bool = True) -> Path:
    """A folder the toolkit makes when missing and writes into: one line, before anything starts, when it or a
    parent is a file, or (``writable``) when nothing can be made in it. That is tried by making and removing a
    folder in it, since permission bits do not tell (root, read-only mounts, /proc)."""
    try:
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            where = "" if existing == path else f": {existing} is a file"
            raise ToolkitError(f"{setting} {path} is not a folder{where}", f"set {setting} to a folder")
        if writable:
            os.rmdir(tempfile.mkdtemp(prefix=".amltrain-write-check-", dir=existing))
    except OSError as exc:
        raise ToolkitError(f"{setting} {path} cannot be written ({exc.strerror} in {existing})",
                           f"set {setting} to a folder you can write") from None
    return path


# --- values shared by every section ----------------------------------------------------------------------

SIZE = re.compile(r"(\d+)([bkmgBKMG]?)")
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def size(value: Any, what: str, default: str = "2g") -> str:
    """A Docker size (``2g``, ``512m``). Zero is refused, not passed on: Docker reads it as "unset" and gives
    its 64 MB default; a size under 1 MB is almost always a missing unit."""
    text = default if value is None or value == "" else str(value).strip()
    match = SIZE.fullmatch(text)
    if not match:
        raise ToolkitError(f"{what} {text!r} is not a size", f"e.g. {default}, 512m")
    count = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if count == 0:
        raise ToolkitError(f"{what} {text!r} is zero: Docker would give its 64 MB default instead, too small for "
                           "DataLoader workers", f"e.g. {default}, Azure ML's default")
    if count < 2**20:
        raise ToolkitError(f"{what} {text!r} is {count} bytes", f"give a unit: e.g. {text}g or {text}m")
    return text


def whole(value: Any, what: str, minimum: int = 0, hint: str | None = None, maximum: int | None = None) -> int:
    text = str(value).strip()
    in_range = re.fullmatch(r"[0-9]+", text) and minimum <= int(text) <= (maximum or math.inf)
    if isinstance(value, bool) or not in_range:
        bounds = f"of at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ToolkitError(f"{what} must be a whole number {bounds}, got {value!r}", hint)
    return int(text)


def number(value: Any, what: str, minimum: float = 0.0, hint: str | None = None) -> float:
    """A finite number (seconds, a factor); NaN and infinity are refused like text."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        result = math.nan
    if isinstance(value, bool) or not math.isfinite(result) or result < minimum:
        raise ToolkitError(f"{what} must be a number of at least {minimum:g}, got {value!r}", hint)
    return result


def preemption(after: Any, restarts: Any, grace: Any) -> Preemption | None:
    """run-local's drill options; none given: no drill. --restarts or --grace alone are a mistake."""
    if after is None:
        if restarts is not None or grace is not None:
            raise ToolkitError("--restarts and --grace belong to the preemption drill", "add --preempt-after SECONDS")
        return None
    return Preemption(
        after_s=number(after, "--preempt-after", 0.1, "seconds into each attempt, e.g. --preempt-after 60"),
        restarts=whole(1 if restarts is None else restarts, "--restarts", 0, "e.g. --restarts 2"),
        grace_s=number(30 if grace is None else grace, "--grace", 0.0, "seconds from SIGTERM to SIGKILL, e.g. 30"),
    )


def choice(value: Any, what: str, choices: tuple[str, ...], default: str) -> str:
    value = str(value or default).strip().lower()
    if value not in choices:
        raise ToolkitError(f"{what} {value!r} is not one of: {', '.join(choices)}", f"set {what} in invoke.yaml")
    return value


def flag(value: Any) -> bool:
    return value not in (None, "", "0", 0, False, "false", "False", "no")
