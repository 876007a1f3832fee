"""`invoke doctor`: what this machine lacks for the configured targets, one line per check with its fix.

Every check returns a ``Result`` instead of raising, so one run shows every problem at once. A check that the
configuration does not need (GPU checks on a host without GPUs, Azure checks with no workspace configured) is
reported as skipped and does not fail the run. The parsers (``persistence``, ``pull_problem``, ``buildkit``) take
the tools' own output, so they are tested on real text without the tools.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import engine
from .errors import ToolkitError, first_line

MIN_FREE_GB = 20  # one training image is about 7 GB; a rebuild keeps the old one until it is pruned
OK, FAIL, SKIP = "ok", "FAIL", "skip"


@dataclass(frozen=True)
class Result:
    name: str
    status: str  # OK, FAIL or SKIP (not needed by this configuration)
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -> {self.fix}" if self.fix and self.status != OK else ""
        return f"[{self.status:>4}] {self.name}: {self.detail}{fix}"


def exit_code(results: Iterable[Result]) -> int:
    return 1 if any(r.status == FAIL for r in results) else 0


def engine_check(connect: Callable = engine.connect) -> tuple[Result, object | None]:
    """The engine answers, and its version (returned with the client for the checks that need it)."""
    try:
        client = connect()
        version = client.version()
    except ToolkitError as exc:
        return Result("docker engine", FAIL, exc.message, exc.hint or engine.ENGINE_HINT), None
    return Result("docker engine", OK, f"reachable, version {version.get('Version', '?')} "
                  f"({version.get('Os', '?')}/{version.get('Arch', '?')})"), client


def buildkit(help_text: str) -> bool:
    """``docker build --help`` (with DOCKER_BUILDKIT=1) lists --secret only where BuildKit builds run."""
    return "--secret" in help_text


def buildkit_check(docker_cli: str) -> Result:
    fix = "set docker.cli (INVOKE_DOCKER_CLI) to a client with BuildKit: Docker >= 20.10, or one with buildx"
    if shutil.which(docker_cli) is None:
        return Result("buildkit client", FAIL, f"docker CLI {docker_cli!r} not found", fix)
    try:
        result = subprocess.run([docker_cli, "build", "--help"], capture_output=True, text=True, timeout=30,
                                env={**os.environ, "DOCKER_BUILDKIT": "1"})
    except subprocess.TimeoutExpired:
        return Result("buildkit client", FAIL, f"{docker_cli} build --help did not answer in 30 s", fix)
    if not buildkit(result.stdout + result.stderr):
        return Result("buildkit client", FAIL, f"{docker_cli} builds without BuildKit (no --secret)", fix)
    return Result("buildkit client", OK, f"{docker_cli} builds with BuildKit")


def disk_check(free_bytes: int | None, where: str, minimum_gb: int = MIN_FREE_GB) -> Result:
    if free_bytes is None:
        return Result("disk space", SKIP, f"{where} is not on this machine (a remote engine): not measured")
    free_gb = free_bytes / 2**30
    if free_gb < minimum_gb:
        return Result("disk space", FAIL, f"{free_gb:.0f} GiB free in {where}, images need about {minimum_gb}",
                      "free space: `invoke prune-images`, `docker system prune`")
    return Result("disk space", OK, f"{free_gb:.0f} GiB free in {where}")


def engine_disk(client) -> Result:
    root = client.info().get("DockerRootDir") or "/var/lib/docker"
    try:
        free = shutil.disk_usage(root).free
    except OSError:  # not visible from here: a remote engine, or no permission to look
        free = None
    return disk_check(free, root)


def pull_problem(error: str) -> str:
    """What a registry's refusal means: ``missing`` (no such tag or repository), ``denied`` (log in), or
    ``unreachable`` (network, DNS, proxy)."""
    text = error.lower()
    if "manifest unknown" in text or "not found" in text or "name unknown" in text:
        return "missing"
    if "denied" in text or "unauthorized" in text or "authentication required" in text:
        return "denied"
    return "unreachable"


def base_check(client, target: str, base: str) -> Result:
    """The base is present, or its registry has the tag (asked through the engine: no layers pulled)."""
    import docker

    name = f"base image ({target})"
    setting = f"images.{target}.base_image (INVOKE_IMAGES_{target.upper()}_BASE_IMAGE)"
    if engine.image_exists(client, base):
        return Result(name, OK, f"{base} is present")
    try:
        client.images.get_registry_data(base)
    except docker.errors.APIError as exc:
        reason = first_line(exc, 160)
        problem = pull_problem(reason)
        if problem == "missing":
            return Result(name, FAIL, f"tag {base} does not exist in its registry ({reason})",
                          f"choose a tag that exists in {setting}")
        if problem == "denied":
            return Result(name, FAIL, f"{base}: access denied ({reason})", "`docker login` to its registry")
        return Result(name, FAIL, f"{base} cannot be pulled: registry unreachable ({reason})",
                      f"offline: `invoke standin-base` and select it in {setting}")
    return Result(name, OK, f"{base} can be pulled")


def persistence(query: str) -> list[tuple[str, bool]]:
    """``nvidia-smi --query-gpu=index,persistence_mode --format=csv,noheader`` as (index, enabled) pairs."""
    pairs = []
    for line in query.splitlines():
        index, _, mode = (part.strip() for part in line.partition(","))
        if index:
            pairs.append((index, mode.lower() == "enabled"))
    return pairs


def gpu_checks(client, gpus_wanted: bool, host_gpus: int) -> list[Result]:
    """The NVIDIA runtime and persistence mode, needed when a gpu target will be given GPUs here."""
    if not gpus_wanted:
        why = "no NVIDIA GPU on this host" if host_gpus == 0 else "local.gpus is none"
        return [Result("nvidia runtime", SKIP, f"{why}: gpu targets run without GPUs here"),
                Result("gpu persistence mode", SKIP, why)]
    runtimes = set((client.info().get("Runtimes") or {}) if client else ())
    hook = shutil.which("nvidia-container-runtime-hook") or shutil.which("nvidia-container-cli")
    if "nvidia" in runtimes or hook:
        runtime = Result("nvidia runtime", OK, "the NVIDIA Container Toolkit is installed")
    else:
        runtime = Result("nvidia runtime", FAIL, "Docker cannot give containers GPUs (no NVIDIA Container Toolkit)",
                         "install nvidia-container-toolkit and run `sudo nvidia-ctk runtime configure "
                         "--runtime=docker`, then restart dockerd")
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=index,persistence_mode", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        query = ""
    pairs = persistence(query)
    off = [index for index, enabled in pairs if not enabled]
    if not pairs:
        mode = Result("gpu persistence mode", FAIL, "nvidia-smi did not answer", "check the NVIDIA driver")
    elif off:
        mode = Result("gpu persistence mode", FAIL, f"off on GPU {', '.join(off)}: the first GPU container can "
                      "time out while the driver loads", "`sudo nvidia-smi -pm 1` (or enable nvidia-persistenced)")
    else:
        mode = Result("gpu persistence mode", OK, f"on for {len(pairs)} GPU(s)")
    return [runtime, mode]


def azure_checks(settings, root: Path, environ: Mapping[str, str], az_signed_in: Callable[[], bool],
                 docker_config: Path) -> list[Result]:
    """The Azure extra, the workspace config, sign-in and registry login, offline. Needed once a workspace
    is configured; otherwise reported (what push and submit would need) without failing."""
    from .azure import workspace

    found = workspace.find_config(Path(settings.config_file) if settings.config_file else root)
    ids = settings.subscription_id and settings.resource_group and settings.workspace_name
    needed = FAIL if (found or ids) else SKIP
    where = "azure.* settings" if ids else str(found) if found else ""
    results = []
    module = "azureml.core" if settings.sdk == "v1" else "azure.ai.ml"
    try:
        present = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        present = False
    results.append(Result("azure extra", OK, f"{module} installed (sdk {settings.sdk})") if present else
                   Result("azure extra", needed, f"{module} is not installed (sdk {settings.sdk})",
                          "pip install -e '.[azure]'"))
    results.append(Result("workspace config", OK, f"from {where}") if where else
                   Result("workspace config", SKIP, "no workspace configured: push, register and submit need one",
                          workspace.NO_WORKSPACE_HINT))
    mode = workspace.auth_mode(settings.auth, environ)
    if mode == "cli":
        signed = shutil.which("az") is not None and az_signed_in()
        results.append(Result("azure sign-in", OK, "az login (Azure CLI)") if signed else
                       Result("azure sign-in", needed, "not signed in to the Azure CLI", workspace.LOGIN_HINT))
    else:
        results.append(Result("azure sign-in", OK, f"{mode} (from the environment)"))
    results.append(registry_login(settings.registry, environ, docker_config, needed))
    return results


def registry_login(registry, environ: Mapping[str, str], docker_config: Path, needed: str) -> Result:
    """Whether a push could log in, by the configured registry auth (aad and admin log in through sign-in)."""
    from .azure.settings import REGISTRY_PASSWORD_ENV

    if registry.auth in ("aad", "admin"):
        return Result("registry login", OK, f"{registry.auth}: logs in at push time through the Azure sign-in")
    if registry.auth == "basic":
        if registry.username and environ.get(REGISTRY_PASSWORD_ENV):
            return Result("registry login", OK, f"basic as {registry.username}")
        return Result("registry login", needed, "basic auth without azure.registry.username or "
                      f"${REGISTRY_PASSWORD_ENV}", "set both, or azure.registry.auth aad")
    try:
        stored = json.loads(docker_config.read_text())
    except (OSError, ValueError):
        stored = {}
    hosts = set(stored.get("auths", {})) | set(stored.get("credHelpers", {}))
    if registry.address and registry.address in hosts or not registry.address and stored.get("credsStore"):
        return Result("registry login", OK, f"docker: credentials stored for {registry.address or 'the store'}")
    return Result("registry login", needed, f"docker: no stored login for {registry.address or 'the registry'}",
                  f"`docker login {registry.address}`")


def az_signed_in() -> bool:
    try:
        return subprocess.run(["az", "account", "show"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
