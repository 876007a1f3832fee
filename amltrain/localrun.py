"""Run a job in local Docker with the runtime contract of an Azure ML cluster run.

Concept map: a local run is one container per node (one node today), made from the job's image and
named after the run id. The container gets a writable copy of the source-directory snapshot as its
working directory, ``outputs/`` and ``logs/`` bind-mounted from ``runs/<run-id>/`` on the host, data
inputs mounted read-only, ``/dev/shm`` of Azure ML's size, and the environment variables Azure ML
sets. Every container carries the run id as a label, so later tasks can find it from any shell.

``local_request`` is pure (what ``--dry-run`` prints); ``run`` executes a request and returns nothing
on success, raising ``ToolkitError`` with the container's exit code otherwise.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from . import engine, snapshot
from .errors import ToolkitError
from .spec import ContainerRequest, JobSpec, LocalRequest, LocalSettings, Mount, frozen_map, mask_url_credentials

WORKDIR = "/mnt/azureml/wd"
INPUTS_ROOT = "/mnt/azureml/inputs"
MLRUNS = "/mnt/azureml/mlruns"
CACHE = "/mnt/azureml/cache"
LABEL_RUN_ID = "amltrain.run-id"
LABEL_NODE_RANK = "amltrain.node-rank"
LABEL_EXPERIMENT = "amltrain.experiment"
INPUT_REF = re.compile(r"\$\{\{\s*inputs\.([A-Za-z0-9_]+)\s*\}\}")
SECRET_NAME = re.compile(r"(?i)(secret|token|password|passwd|credential|api_?key|access_?key|account_?key|sas"
                         r"|auth|connection_?string|private)")
SECRET_VALUE = re.compile(r"(?i)(accountkey|sharedaccesskey|sharedaccesssignature|sig)=")


def new_run_id(experiment: str) -> str:
    """Azure ML's v1 shape: ``<experiment>_<unix time>_<8 hex>``."""
    name = re.sub(r"[^a-zA-Z0-9_.-]", "-", experiment)[:40]
    return f"{name}_{int(time.time())}_{secrets.token_hex(4)}"


def input_path(name: str) -> str:
    return f"{INPUTS_ROOT}/{name}"


def substitute_inputs(arguments: tuple[str, ...], inputs) -> tuple[str, ...]:
    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in inputs:
            raise ToolkitError(f"argument refers to input {name!r}, which is not defined",
                               f"defined inputs: {', '.join(inputs) or 'none'}; add --input {name}=DIR")
        return input_path(name)

    return tuple(INPUT_REF.sub(replace, a) for a in arguments)


def contract_env(job: JobSpec, run_id: str, hostname: str, settings: LocalSettings) -> dict[str, str]:
    """The variables an Azure ML single-node run sees, plus the job's own (which cannot override them)."""
    env = dict(job.environment)
    env.update({
        "MASTER_ADDR": hostname,
        "MASTER_PORT": str(settings.master_port),
        "WORLD_SIZE": "1",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "NODE_RANK": "0",
        "AZUREML_RUN_ID": run_id,
        "AZUREML_ARM_PROJECT_NAME": job.experiment,
        "AZUREML_NODE_COUNT": "1",
        "MLFLOW_TRACKING_URI": f"file://{MLRUNS}",
        "MLFLOW_EXPERIMENT_NAME": job.experiment,
        # MLflow 3 refuses file stores unless asked; Azure ML's own tracking store needs no such flag.
        "MLFLOW_ALLOW_FILE_STORE": "true",
    })
    for name in job.inputs:
        env[f"AZUREML_DATAREFERENCE_{name}"] = input_path(name)
    if settings.cache_dir:  # local only: downloads survive from one run to the next
        env.update({"AMLTRAIN_CACHE_DIR": CACHE, "TORCH_HOME": f"{CACHE}/torch"})
    if not settings.user.startswith("0:") and settings.user != "0":
        env.setdefault("HOME", "/tmp")  # a caller's uid has no home in the image
    return env


def local_request(job: JobSpec, image: str, settings: LocalSettings, run_id: str | None = None,
                  code_in_image: str = "") -> LocalRequest:
    """The whole run as data. ``code_in_image``: the image has the code baked in there (``build --bake``),
    and the working directory is a copy of that instead of the host's source directory."""
    run_id = run_id or new_run_id(job.experiment)
    run_dir = settings.runs_dir / run_id
    names = snapshot.files(job.source_dir)
    snapshot.check_limits(job.source_dir, names)
    if job.script not in names:
        raise ToolkitError(f"script {job.script} is excluded from the snapshot by .amlignore/.gitignore",
                           "Azure ML would not upload it either; change the ignore file")
    hostname = run_id.replace("_", "-")[:63]
    mounts = [
        Mount(str(run_dir / "outputs"), f"{WORKDIR}/outputs"),
        Mount(str(run_dir / "logs"), f"{WORKDIR}/logs"),
        Mount(str(run_dir / "mlruns"), MLRUNS),
        *([Mount(str(settings.cache_dir), CACHE)] if settings.cache_dir else []),
        *(Mount(str(path), input_path(name), read_only=True) for name, path in sorted(job.inputs.items())),
    ]
    container = ContainerRequest(
        name=run_id,
        image=image,
        command=("python", job.script, *substitute_inputs(job.arguments, job.inputs)),
        working_dir=WORKDIR,
        hostname=hostname,
        user=settings.user,
        shm_size=settings.shm_size,
        environment=frozen_map(contract_env(job, run_id, hostname, settings)),
        mounts=tuple(mounts),
        labels=frozen_map({LABEL_RUN_ID: run_id, LABEL_NODE_RANK: "0", LABEL_EXPERIMENT: job.experiment}),
        gpus=settings.gpus,
    )
    return LocalRequest(run_id=run_id, run_dir=run_dir, snapshot_dir=job.source_dir, snapshot_files=names,
                        containers=(container,), cache_dir=settings.cache_dir, code_in_image=code_in_image)


def mask(name: str, value: str) -> str:
    if SECRET_NAME.search(name) or SECRET_VALUE.search(value):
        return "****"
    return mask_url_credentials(value)


def describe(request: LocalRequest) -> dict:
    """The request as plain data with secrets masked: what --dry-run prints and runs/<id>/request.json keeps."""
    return {
        "run_id": request.run_id,
        "run_dir": str(request.run_dir),
        "snapshot": ({"source": f"image:{request.code_in_image}"} if request.code_in_image else
                     {"source": str(request.snapshot_dir), "files": len(request.snapshot_files)})
        | {"copied_to": WORKDIR},
        "containers": [{
            "name": c.name, "image": c.image, "command": list(c.command), "working_dir": c.working_dir,
            "hostname": c.hostname, "user": c.user, "shm_size": c.shm_size, "gpus": c.gpus or "none",
            "environment": {k: mask(k, v) for k, v in sorted(c.environment.items())},
            "mounts": [f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in c.mounts],
            "labels": dict(c.labels),
        } for c in request.containers],
    }


def run(request: LocalRequest, out=None) -> None:
    """Start the containers, stream logs live (and into logs/user_logs/std_log.txt), clean up always."""
    import docker

    client = engine.connect()
    for c in request.containers:
        if not engine.image_exists(client, c.image):
            raise ToolkitError(f"image {c.image} is not built", "run `invoke build` for this target first")
    uid, _, gid = request.containers[0].user.partition(":")
    uid, gid = int(uid), int(gid or uid)
    if request.code_in_image:
        archive = _archive_from_image(client, request.containers[0].image, request.code_in_image, uid, gid)
    else:
        archive = snapshot.tar_archive(request.snapshot_dir, request.snapshot_files, WORKDIR, uid, gid)
    _make_run_dir(request, uid, gid)
    containers, started = [], False
    with _interrupts_as_keyboard_interrupt():
        try:
            for c in request.containers:
                containers.append(_create(client, c))
                containers[-1].put_archive("/", archive)
            for container in containers:
                container.start()
            started = True
            code = _stream_and_wait(containers[0], request.run_dir / "logs/user_logs/std_log.txt", out or sys.stdout)
        except KeyboardInterrupt:
            kept = f", partial results in {request.run_dir}" if started else ""
            raise ToolkitError(f"run {request.run_id} interrupted; containers removed{kept}", exit_code=130) from None
        except docker.errors.APIError as exc:
            raise _refused(exc, request) from None
        finally:
            for container in containers:
                _remove(container)
            if not started:  # nothing ran: leave nothing behind
                shutil.rmtree(request.run_dir, ignore_errors=True)
    if code != 0:
        hint = "killed: out of memory?" if code == 137 else f"see {request.run_dir}/logs/user_logs/std_log.txt"
        raise ToolkitError(f"run {request.run_id} failed: the training script exited with code {code}", hint,
                           exit_code=code)


def _make_run_dir(request: LocalRequest, uid: int, gid: int) -> None:
    """The folders the containers write into, owned by the user they run as (root may hand them over),
    and request.json, the request as run (secrets masked)."""
    run_dir, cache_dir = request.run_dir, request.cache_dir
    other_user = (uid, gid) != (os.getuid(), os.getgid())
    if other_user and os.geteuid() != 0:
        raise ToolkitError(f"cannot run as {uid}:{gid}: its outputs could not be written to {run_dir}",
                           "only root can run containers as another user; drop --user")
    if cache_dir and cache_dir.exists() and cache_dir.stat().st_uid != uid:
        raise ToolkitError(f"the run cache {cache_dir} belongs to uid {cache_dir.stat().st_uid}, the run to {uid}",
                           "remove it, or set local.cache_dir to a folder of the run's user")
    folders = [run_dir / sub for sub in ("outputs", "logs", "logs/user_logs", "mlruns")]
    folders += [cache_dir] if cache_dir and not cache_dir.exists() else []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        if other_user:
            os.chown(folder, uid, gid)
    (run_dir / "request.json").write_text(json.dumps(describe(request), indent=2) + "\n")


def _archive_from_image(client, image: str, folder: str, uid: int, gid: int) -> bytes:
    """The code baked into an image, as a snapshot archive for the working directory."""
    holder = client.containers.create(image, ["true"])
    try:
        chunks, _ = holder.get_archive(folder)
        data = b"".join(chunks)
    finally:
        _remove(holder)
    return snapshot.reroot(data, Path(folder).name, WORKDIR, uid, gid)


def _refused(exc, request: LocalRequest) -> ToolkitError:
    """Docker refused to create or start a container: one line, with the usual cause named."""
    reason = str(getattr(exc, "explanation", None) or exc).splitlines()[0][:300]
    hint = None
    if "capabilities: [[gpu]]" in reason or "nvidia" in reason.lower():
        hint = "GPUs need the NVIDIA Container Toolkit on the host; or set local.gpus to none"
    elif "Conflict" in reason or "already in use" in reason:
        hint = "a container of that name exists: remove it with docker rm -f"
    return ToolkitError(f"Docker refused run {request.run_id}: {reason}", hint)


def _create(client, c: ContainerRequest):
    from docker.types import DeviceRequest
    from docker.types import Mount as DockerMount

    devices = []
    if c.gpus == "all":
        devices = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    elif c.gpus:
        devices = [DeviceRequest(device_ids=c.gpus.split(","), capabilities=[["gpu"]])]
    return client.containers.create(
        c.image, list(c.command), name=c.name, hostname=c.hostname, user=c.user, working_dir=c.working_dir,
        environment=dict(c.environment), labels=dict(c.labels), shm_size=c.shm_size, device_requests=devices,
        mounts=[DockerMount(m.target, m.source, type="bind", read_only=m.read_only) for m in c.mounts],
    )


def _stream_and_wait(container, log_file: Path, out) -> int:
    with log_file.open("ab") as log:
        for chunk in container.logs(stream=True, follow=True):
            log.write(chunk)
            log.flush()
            out.write(chunk.decode("utf-8", errors="replace"))
            out.flush()
    return int(container.wait().get("StatusCode", 1))


def _remove(container) -> None:
    import docker

    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass


@contextmanager
def _interrupts_as_keyboard_interrupt():
    """SIGTERM (CI cancelling, `kill`) cleans up like Ctrl-C does."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
