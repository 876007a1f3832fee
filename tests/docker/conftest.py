"""Tests against a real Docker engine. In CI (CI set) a missing engine fails them; elsewhere it skips them.

The images come from the configuration the user or CI set (invoke.yaml, INVOKE_RUNTIME_CONFIG, INVOKE_*):
on machines that cannot pull MCR, that is the stand-in base (see README).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from amltrain import config, engine, standin
from amltrain.errors import ToolkitError
from tests.conftest import CLI, ROOT, load_config

PROBE_DIR = "tests/docker/probe"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/docker/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.docker)
    # A test that restarts the engine goes last, whatever its file's name, so no other test sees the engine go.
    items.sort(key=lambda item: item.get_closest_marker("engine_restart") is not None)


@pytest.fixture(scope="session")
def docker_client():
    try:
        return engine.connect()
    except ToolkitError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"a Docker engine is required in CI: {exc}")
        pytest.skip(f"no Docker engine: {exc}")


def invoke(*args: str, env: dict | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run an invoke task the way a user does, from the project root."""
    return subprocess.run([CLI, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def built(target: str, env: dict | None = None) -> str:
    result = invoke("build", "--target", target, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    match = re.search(r"(amltrain/\S+:" + target + r"-[0-9a-f]{12})", result.stdout)
    assert match, result.stdout[-2000:]
    return match.group(1)


def standin_base(client, flavour: str = "cpu", openmpi_off_path: bool = False) -> str:
    """The stand-in `invoke standin-base` makes with these options, as the configuration names it. As root it is
    (re)made here when missing or made from another recipe (a no-op otherwise); making it needs root, so elsewhere
    a missing one fails in CI and skips outside it, saying the command."""
    cfg = config.section(load_config(), "standin")
    image = standin.image_name(str(cfg.get("image")), openmpi_off_path, flavour, str(cfg.get("cuda_toolkit")))
    args = ["--flavour", flavour] + (["--openmpi-off-path"] if openmpi_off_path else [])
    if os.geteuid() == 0:
        result = invoke("standin-base", *args)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    elif not engine.image_exists(client, image):
        why = f"{image} is missing and making it needs root: sudo ./dev invoke standin-base {' '.join(args)}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return image


@pytest.fixture(scope="session")
def cpu_image(docker_client) -> str:
    return built("cpu")


@pytest.fixture(scope="session")
def gpu_image(docker_client) -> str:
    return built("gpu")


@pytest.fixture
def probe_env(tmp_path) -> dict:
    """Run the probe job instead of the training job, with its runs kept under tmp_path."""
    return {"INVOKE_JOB_SOURCE_DIR": PROBE_DIR, "INVOKE_JOB_SCRIPT": "probe.py", "INVOKE_JOB_EXPERIMENT": "probe",
            "INVOKE_LOCAL_RUNS_DIR": str(tmp_path / "runs"), "INVOKE_LOCAL_CACHE_DIR": str(tmp_path / "cache")}


def own_experiment(probe_env: dict) -> tuple[dict, str]:
    """The probe job under an experiment name of its own, so what a test started can be told apart from other
    runs on the same engine (a developer's, or another session's)."""
    experiment = f"probe-{uuid.uuid4().hex[:8]}"
    return {**probe_env, "INVOKE_JOB_EXPERIMENT": experiment}, experiment


def left_by(client, env: dict, experiment: str) -> tuple[list, list, list]:
    """The containers, networks and run folders of runs of ``experiment`` (run ids, and so network and folder
    names, start with it): all empty when nothing was started."""
    containers = client.containers.list(all=True, filters={"label": f"amltrain.experiment={experiment}"})
    networks = [n.name for n in client.networks.list() if n.name.startswith(f"amltrain-{experiment}_")]
    folders = sorted(Path(env["INVOKE_LOCAL_RUNS_DIR"]).glob(f"{experiment}_*"))
    return containers, networks, folders


def start_two_nodes(command: str, env: dict) -> tuple[subprocess.Popen, Path]:
    """`run-local --nodes 2 --command COMMAND` in the background, returned once both nodes have written
    outputs/node_<NODE_RANK>.txt (COMMAND must): the task's process and its run folder."""
    proc = subprocess.Popen([CLI, "run-local", "--nodes", "2", "--command", command], cwd=ROOT,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_dir = Path(run_dir_of(proc.stdout.readline()))
        deadline = time.monotonic() + 120
        while not all((run_dir / f"outputs/node_{n}.txt").exists() for n in (0, 1)):
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc, run_dir


def run_dir_of(output: str) -> str:
    match = re.search(r"results in (\S+)", output)
    assert match, output
    return match.group(1)


def containers_labelled(client, label: str) -> list:
    """docker-py lists, then inspects each container: one removed in between (a run ending) is asked again."""
    import docker

    for _ in range(10):
        try:
            return client.containers.list(all=True, filters={"label": label})
        except docker.errors.NotFound:
            time.sleep(0.1)
    return client.containers.list(all=True, filters={"label": label})
