"""Local runs in the MLflow UI: one tracking store per project, each run made before the job starts.

Azure ML makes a job's MLflow run before the job starts and hands its id to every process (``MLFLOW_RUN_ID``), so
``mlflow.start_run()`` in any script continues that run. Local runs do the same: ``create`` makes the run in the
project's store (``<runs_dir>/mlruns``) with a short-lived container of the job's own image (the host needs no
MLflow), under the job's experiment, named by the run id and tagged with the launch shape, the image and the git
commit; ``finish`` records the final status from the host, in the file store's own files, once the containers
are gone (a script that died cannot). ``invoke ui`` serves the store (``ui_*``).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

STORE = "mlruns"  # under local.runs_dir: every local run of the project
STORE_IN_CONTAINER = "/mnt/azureml/mlruns"
UI_PORT_IN_CONTAINER = 5000
UI_SUFFIX = "-mlflow-ui"
TAG_STATUS = "amltrain.status"
# MLflow's RunStatus numbers, as its file store writes them into meta.yaml.
RUN_STATUS = {"Completed": 3, "Failed": 4, "Canceled": 5}

# Run inside the job's image: find or make the experiment (another run may make it meanwhile), make the run.
CREATE = """
import json, sys
from mlflow.tracking import MlflowClient
spec = json.loads(sys.argv[1])
client = MlflowClient()
def experiment_id():
    found = client.get_experiment_by_name(spec["experiment"])
    return found.experiment_id if found else client.create_experiment(spec["experiment"])
try:
    eid = experiment_id()
except Exception:
    eid = experiment_id()
run = client.create_run(eid, run_name=spec["run_name"], tags=spec["tags"])
print("AMLTRAIN_MLFLOW " + json.dumps({"run_id": run.info.run_id, "experiment_id": eid}))
"""


def store(runs_dir: Path) -> Path:
    return runs_dir / STORE


def git_commit(folder: Path) -> str:
    """The commit the source folder is at, ``-dirty`` when it has changes; empty outside git."""
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return head.stdout.strip() + ("-dirty" if dirty else "")


def run_tags(run_id: str, image: str, launch: str, nodes: int, procs_per_node: int, commit: str) -> dict:
    """What the UI shows of a local run: its id, the launch shape, the image, the commit (MLflow's own tag, shown
    as the run's source version) and the status, ``Running`` until ``finish``."""
    tags = {"amltrain.run_id": run_id, "amltrain.launch": launch, "amltrain.nodes": str(nodes),
            "amltrain.procs_per_node": str(procs_per_node), "amltrain.shape": f"{nodes}x{procs_per_node} {launch}",
            "amltrain.image": image, TAG_STATUS: "Running", "amltrain.where": "local"}
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def create(client, image: str, store_dir: Path, user: str, experiment: str, run_name: str, tags: dict) -> dict | None:
    """Make the MLflow run; None when the image has no MLflow (the job then runs untracked)."""
    import docker
    from docker.types import Mount

    spec = json.dumps({"experiment": experiment, "run_name": run_name, "tags": tags})
    try:
        output = client.containers.run(
            image, ["python", "-c", CREATE, spec], remove=True, user=user, stderr=True,
            environment={"MLFLOW_TRACKING_URI": f"file://{STORE_IN_CONTAINER}", "MLFLOW_ALLOW_FILE_STORE": "true",
                         "HOME": "/tmp"},
            mounts=[Mount(STORE_IN_CONTAINER, str(store_dir), type="bind")], labels={"amltrain.purpose": "mlflow run"})
    except (docker.errors.ContainerError, docker.errors.APIError):  # no MLflow in it, or the engine refused
        return None
    for line in output.decode(errors="replace").splitlines():
        if line.startswith("AMLTRAIN_MLFLOW "):
            return json.loads(line.split(" ", 1)[1])
    return None


def finish(store_dir: Path, experiment_id: str, mlflow_run_id: str, status: str) -> None:
    """Record the outcome in the run's own files: the status tag, MLflow's status and end time."""
    import yaml

    run_dir = store_dir / experiment_id / mlflow_run_id
    (run_dir / "tags").mkdir(parents=True, exist_ok=True)
    (run_dir / "tags" / TAG_STATUS).write_text(status)
    meta_path = run_dir / "meta.yaml"
    meta = yaml.safe_load(meta_path.read_text()) or {}
    meta["status"] = RUN_STATUS.get(status, 4)
    meta["end_time"] = meta.get("end_time") or int(time.time() * 1000)
    meta_path.write_text(yaml.safe_dump(meta, default_flow_style=False))


def ui_dockerfile(job_image: str) -> str:
    """The job's image plus MLflow's server, at the version of the image's own MLflow (which reads its store).
    Proxy, mirror and CA settings arrive as BuildKit secrets, as for the job's image."""
    return (f"FROM {job_image}\nUSER root\n"
            "RUN --mount=type=secret,id=ca-bundle --mount=type=secret,id=pip.conf \\\n"
            "    if [ -f /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi; \\\n"
            "    if [ -f /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi; \\\n"
            "    python -m pip install --no-cache-dir --disable-pip-version-check "
            "\"mlflow==$(python -c 'import mlflow; print(mlflow.__version__)')\"\n")


def ui_image(job_image: str) -> str:
    return job_image + UI_SUFFIX


def ui_command() -> list[str]:
    return ["mlflow", "server", "--backend-store-uri", f"file://{STORE_IN_CONTAINER}", "--host", "0.0.0.0",
            "--port", str(UI_PORT_IN_CONTAINER), "--workers", "1"]


def build_ui_image(job_image: str, settings) -> bool:
    """Build the UI image unless it exists (once per job image); True when it built."""
    import os
    import tempfile

    from .. import engine, images
    from ..errors import ToolkitError, cut

    client = engine.connect()
    image = ui_image(job_image)
    if engine.image_exists(client, image):
        return False
    if not engine.image_exists(client, job_image):
        raise ToolkitError(f"image {job_image} is not built", "run `invoke build` for this target first")
    with tempfile.TemporaryDirectory(prefix="amltrain-secrets-") as secrets_dir:
        argv = [settings.docker_cli, "build", "--progress", "plain", "--platform", images.PLATFORM, "--tag", image,
                "--label", f"amltrain.ui-for={job_image}"]
        conf = images.pip_conf(settings)
        if conf:
            Path(secrets_dir, "pip.conf").write_text(conf)
            argv += ["--secret", f"id=pip.conf,src={secrets_dir}/pip.conf"]
        if settings.ca_bundle:
            argv += ["--secret", f"id=ca-bundle,src={settings.ca_bundle}"]
        argv.append("-")
        result = subprocess.run(argv, input=ui_dockerfile(job_image).encode(), capture_output=True,
                                env={**os.environ, "DOCKER_BUILDKIT": "1"})
    if result.returncode != 0:
        lines = (result.stdout + result.stderr).decode(errors="replace").splitlines() or ["no output"]
        raise ToolkitError(f"building the MLflow UI image {image} failed: {cut(lines[-1])}",
                           "it installs mlflow from PyPI: check build.pip_index_url / build.ca_bundle")
    return True


def ui_container_name(port: int) -> str:
    return f"amltrain-mlflow-ui-{port}"


def serve(image: str, store_dir: Path, port: int, user: str, ready, patience_s: float = 120) -> None:
    """Run the UI on 127.0.0.1:``port`` until interrupted; ``ready(url)`` is called once it answers. The
    container is removed however this ends."""
    import urllib.error
    import urllib.request

    import docker
    from docker.types import Mount
    from requests.exceptions import RequestException

    from .. import engine
    from ..errors import ToolkitError, first_line
    from ..signals import signals_as_interrupts

    client = engine.connect()
    store_dir.mkdir(parents=True, exist_ok=True)
    name = ui_container_name(port)
    try:  # one left behind, stopped (the engine restarted under it): its name is free to take
        stale = client.containers.get(name)
        if stale.status != "running":
            stale.remove(force=True)
    except docker.errors.NotFound:
        pass
    try:
        container = client.containers.run(
            image, ui_command(), detach=True, name=name, user=user, labels={"amltrain.purpose": "mlflow-ui"},
            environment={"MLFLOW_ALLOW_FILE_STORE": "true", "HOME": "/tmp"},
            ports={f"{UI_PORT_IN_CONTAINER}/tcp": ("127.0.0.1", port)},
            mounts=[Mount(STORE_IN_CONTAINER, str(store_dir), type="bind")])
    except docker.errors.APIError as exc:
        hint = (f"a UI runs there already: docker rm -f {name}" if "Conflict" in str(exc) else
                "choose another --port" if "port is already allocated" in str(exc) or "address already in use"
                in str(exc) else None)
        raise ToolkitError(f"cannot start the MLflow UI on port {port}: {first_line(exc)}", hint) from None
    url = f"http://127.0.0.1:{port}"
    try:
        with signals_as_interrupts():
            deadline = time.monotonic() + patience_s
            while True:
                container.reload()
                if container.status == "exited":
                    last = (container.logs(tail=5).decode(errors="replace").strip().splitlines() or ["no output"])
                    raise ToolkitError(f"the MLflow UI stopped: {last[-1]}")
                try:
                    with urllib.request.urlopen(url + "/health", timeout=2):
                        break
                except (urllib.error.URLError, OSError):
                    if time.monotonic() > deadline:
                        raise ToolkitError(f"the MLflow UI did not answer on {url} in {patience_s:.0f} s",
                                           f"see `docker logs {name}`") from None
                    time.sleep(0.5)
            ready(url)
            container.wait()
    except KeyboardInterrupt:
        pass
    except (docker.errors.APIError, RequestException) as exc:  # the engine went away (restarted, stopped)
        raise ToolkitError(f"lost the Docker engine while serving the MLflow UI: {first_line(exc)}",
                           engine.ENGINE_HINT) from None
    finally:
        try:
            container.remove(force=True)
        except (docker.errors.APIError, RequestException):
            pass
