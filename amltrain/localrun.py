"""Run a job in local Docker with the runtime contract of an Azure ML cluster run.

Concept map: a local run is one container per node, made from the job's image, on a private network
made for the run when there are several (hostnames ``node-0``, ``node-1``, … resolve on it). Each
container gets a writable copy of the source-directory snapshot as its working directory, ``outputs/``
and ``logs/`` bind-mounted from ``runs/<run-id>/`` on the host (shared by all nodes), data inputs mounted
read-only, ``/dev/shm`` of Azure ML's size, and the environment variables Azure ML sets for the launch
mode. In each container ``launcher.py`` starts the processes as Azure ML would (per process, per node,
or through mpirun) from a plan made here. Containers and network carry the run id as a label, so later
tasks can find, follow and cancel a run from any shell.

``local_request`` is pure (what ``--dry-run`` prints); ``run`` executes a request and returns nothing
on success, raising ``ToolkitError`` with the failed rank's exit code otherwise.
"""

from __future__ import annotations

import json
import os
import queue
import re
import secrets
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import engine, launcher, snapshot
from .errors import ToolkitError
from .spec import (
    ContainerRequest,
    Distribution,
    JobSpec,
    LocalRequest,
    LocalSettings,
    Mount,
    frozen_map,
    mask_url_credentials,
)

WORKDIR = "/mnt/azureml/wd"
INPUTS_ROOT = "/mnt/azureml/inputs"
MLRUNS = "/mnt/azureml/mlruns"
CACHE = "/mnt/azureml/cache"
LABEL_RUN_ID = "amltrain.run-id"
LABEL_NODE_RANK = "amltrain.node-rank"
LABEL_EXPERIMENT = "amltrain.experiment"
LABEL_RUN_DIR = "amltrain.run-dir"
STATUS_DIR = f"{WORKDIR}/logs/system_logs/launcher"  # failure records of the launcher: which rank failed
CANCEL_MARK = "cancelled.json"  # written by local-cancel into the run folder, so the run says who stopped it
EXEC_PORT = 6107  # MPI runs: where the other nodes take mpirun's daemon launches (launcher.py serve)
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


def node_hostnames(nodes: int) -> list[str]:
    return [f"node-{i}" for i in range(nodes)]


def contract_env(job: JobSpec, run_id: str, node_rank: int, settings: LocalSettings) -> dict[str, str]:
    """What Azure ML gives every process of a node (per-rank variables come from ``rank_envs``), plus the
    job's own variables, which cannot override the contract."""
    d = job.distribution
    master = node_hostnames(d.nodes)[0]
    env = dict(job.environment)
    if d.launch == "mpi":  # MpiConfiguration: mpirun's OMPI_COMM_WORLD_* per rank, and where node 0 is
        env.update({"AZ_BATCH_MASTER_NODE": f"{master}:{settings.master_port}"} if d.nodes > 1 else
                   {"AZ_BATCHAI_MPI_MASTER_NODE": master})
    else:  # PyTorchConfiguration: per-node launch starts one process per node, so WORLD_SIZE counts nodes
        env.update({
            "MASTER_ADDR": master,
            "MASTER_PORT": str(settings.master_port),
            "WORLD_SIZE": str(d.world_size if d.launch == "per-process" else d.nodes),
            "NODE_RANK": str(node_rank),
        })
    env.update({
        "AZUREML_RUN_ID": run_id,
        "AZUREML_ARM_PROJECT_NAME": job.experiment,
        "AZUREML_NODE_COUNT": str(d.nodes),
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


def rank_envs(d: Distribution, node_rank: int) -> list[dict[str, str]]:
    """The per-process variables of one node, in local-rank order: what the launcher (per-process) or
    mpirun (MPI) gives each process; per-node launch leaves them to the user's launcher."""
    if d.launch == "per-node":
        return [{}]
    first = node_rank * d.procs_per_node
    if d.launch == "mpi":
        return [{"OMPI_COMM_WORLD_RANK": str(first + i), "OMPI_COMM_WORLD_SIZE": str(d.world_size),
                 "OMPI_COMM_WORLD_LOCAL_RANK": str(i), "OMPI_COMM_WORLD_LOCAL_SIZE": str(d.procs_per_node)}
                for i in range(d.procs_per_node)]
    return [{"RANK": str(first + i), "LOCAL_RANK": str(i)} for i in range(d.procs_per_node)]


def user_command(job: JobSpec) -> list[str]:
    if job.command:  # a shell command, $VARS expanded inside the container (Azure ML's `command`)
        return ["/bin/sh", "-c", " ".join(substitute_inputs((job.command,), job.inputs))]
    return ["python", job.script, *substitute_inputs(job.arguments, job.inputs)]


def node_plan(job: JobSpec, node_rank: int, settings: LocalSettings) -> dict:
    """What the launcher in this node's container starts (``amltrain/launcher.py`` reads it as JSON)."""
    d = job.distribution
    logs = f"{WORKDIR}/logs/user_logs"
    plan = {"node_rank": node_rank, "prefix": not d.single_process, "status_dir": STATUS_DIR}
    if d.launch == "mpi":
        plan.update({"rank_log": logs + "/std_log_process_{rank}.txt", "exec_port": EXEC_PORT})
        if node_rank > 0:
            return plan | {"mode": "serve"}
        hosts = ",".join(f"{host}:{d.procs_per_node}" for host in node_hostnames(d.nodes))
        root = settings.user == "0" or settings.user.startswith("0:")
        agent = f"python {launcher.CONTROL_DIR}/launcher.py rsh"
        return plan | {
            "mode": "mpirun",
            "workers": node_hostnames(d.nodes)[1:],
            "mpi_log": f"{logs}/mpi_log.txt",
            "mpirun": ["mpirun", "-np", str(d.world_size), "--host", hosts, "--bind-to", "none",
                       *(["--allow-run-as-root"] if root else []),
                       "python", f"{launcher.CONTROL_DIR}/launcher.py", "rank", "--", *user_command(job)],
            # Daemons on the other nodes start through our agent, not ssh; shared-memory single copy needs
            # ptrace rights containers do not have; eth0 (the run's network) is the containers' only interface.
            "mpirun_env": {
                "OMPI_MCA_plm_rsh_agent": agent, "OMPI_MCA_plm_rsh_no_tree_spawn": "1",
                "PRTE_MCA_plm_ssh_agent": agent, "PRTE_MCA_plm_ssh_no_tree_spawn": "1",
                "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
                "OMPI_MCA_btl_tcp_if_include": "eth0", "OMPI_MCA_oob_tcp_if_include": "eth0",
                "SHELL": "/bin/sh",  # a caller's uid has no passwd entry, from which mpirun would read it
            },
        }
    per_node = d.launch == "per-node"
    processes = []
    for local_rank, env in enumerate(rank_envs(d, node_rank)):
        rank = node_rank if per_node else node_rank * d.procs_per_node + local_rank
        log = f"{logs}/std_log.txt" if d.single_process else f"{logs}/std_log_process_{rank}.txt"
        processes.append({"rank": rank, "label": f"{'node' if per_node else 'rank'} {rank}", "env": env,
                          "log": log})
    return plan | {"mode": "run", "command": user_command(job), "processes": processes}


def local_request(job: JobSpec, image: str, settings: LocalSettings, run_id: str | None = None,
                  code_in_image: str = "") -> LocalRequest:
    """The whole run as data: one container per node on a private network. ``code_in_image``: the image
    has the code baked in there (``build --bake``), and the working directory is a copy of that instead
    of the host's source directory."""
    run_id = run_id or new_run_id(job.experiment)
    run_dir = settings.runs_dir / run_id
    names = snapshot.files(job.source_dir)
    snapshot.check_limits(job.source_dir, names)
    if job.script and not job.command and job.script not in names:
        raise ToolkitError(f"script {job.script} is excluded from the snapshot by .amlignore/.gitignore",
                           "Azure ML would not upload it either; change the ignore file")
    mounts = (
        Mount(str(run_dir / "outputs"), f"{WORKDIR}/outputs"),
        Mount(str(run_dir / "logs"), f"{WORKDIR}/logs"),
        Mount(str(run_dir / "mlruns"), MLRUNS),
        *([Mount(str(settings.cache_dir), CACHE)] if settings.cache_dir else []),
        *(Mount(str(path), input_path(name), read_only=True) for name, path in sorted(job.inputs.items())),
    )
    # Nodes find each other on a network of their own; one node needs none (Docker's default bridge is
    # quicker to start, and the hostname resolves inside the container all the same).
    network = f"amltrain-{run_id}" if job.distribution.nodes > 1 else ""
    containers = tuple(ContainerRequest(
        name=f"{run_id}-node-{node}",
        image=image,
        command=("python", f"{launcher.CONTROL_DIR}/launcher.py", node_plan(job, node, settings)["mode"]),
        working_dir=WORKDIR,
        hostname=hostname,
        user=settings.user,
        shm_size=settings.shm_size,
        environment=frozen_map(contract_env(job, run_id, node, settings)),
        mounts=mounts,
        labels=frozen_map({LABEL_RUN_ID: run_id, LABEL_NODE_RANK: str(node), LABEL_EXPERIMENT: job.experiment,
                           LABEL_RUN_DIR: str(run_dir)}),
        gpus=settings.gpus[node] if node < len(settings.gpus) else "",
        network=network,
        plan=json.dumps(node_plan(job, node, settings), sort_keys=True),
    ) for node, hostname in enumerate(node_hostnames(job.distribution.nodes)))
    return LocalRequest(run_id=run_id, run_dir=run_dir, snapshot_dir=job.source_dir, snapshot_files=names,
                        containers=containers, cache_dir=settings.cache_dir, code_in_image=code_in_image,
                        network=network, distribution=job.distribution)


def mask(name: str, value: str) -> str:
    if SECRET_NAME.search(name) or SECRET_VALUE.search(value):
        return "****"
    return mask_url_credentials(value)


def describe(request: LocalRequest) -> dict:
    """The request as plain data with secrets masked: what --dry-run prints and runs/<id>/request.json keeps."""
    d = request.distribution
    containers = []
    for c in request.containers:
        plan = json.loads(c.plan) if c.plan else {}
        entry = {
            "name": c.name, "image": c.image, "hostname": c.hostname, "network": c.network or "default bridge",
            "command": list(c.command), "working_dir": c.working_dir, "user": c.user, "shm_size": c.shm_size,
            "gpus": c.gpus or "none",
            "environment": {k: mask(k, v) for k, v in sorted(c.environment.items())},
            "mounts": [f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in c.mounts],
            "labels": dict(c.labels),
        }
        if plan.get("mode") == "run":
            entry["processes"] = [{"label": proc["label"], "command": plan["command"], "log": proc["log"],
                                   "environment": proc["env"]} for proc in plan["processes"]]
        elif plan.get("mode") == "mpirun":
            entry["mpirun"] = plan["mpirun"]
            entry["mpirun_environment"] = plan["mpirun_env"]
        if d.launch == "mpi":
            entry["ranks_set_by_mpirun"] = rank_envs(d, int(c.labels[LABEL_NODE_RANK]))
        containers.append(entry)
    return {
        "run_id": request.run_id,
        "run_dir": str(request.run_dir),
        "launch": d.launch, "nodes": d.nodes, "procs_per_node": d.procs_per_node,
        "network": request.network or "default bridge (one node)",
        "snapshot": ({"source": f"image:{request.code_in_image}"} if request.code_in_image else
                     {"source": str(request.snapshot_dir), "files": len(request.snapshot_files)})
        | {"copied_to": WORKDIR},
        "containers": containers,
    }


@dataclass
class Outcome:
    status: str  # Azure ML's words: Completed, Failed, Canceled
    exit_code: int = 0
    failed: str = ""  # "rank 3 (node 1)"
    log: str = ""  # the failed process's log on the host


def run(request: LocalRequest, out=None) -> None:
    """Start one container per node on the run's network, stream every rank's output, stop the whole gang
    when any part fails or is interrupted, and clean up always; results stay in the run folder."""
    import docker

    client = engine.connect()
    for image in {c.image for c in request.containers}:
        if not engine.image_exists(client, image):
            raise ToolkitError(f"image {image} is not built", "run `invoke build` for this target first")
    uid, _, gid = request.containers[0].user.partition(":")
    uid, gid = int(uid), int(gid or uid)
    if request.code_in_image:
        archive = _archive_from_image(client, request.containers[0].image, request.code_in_image, uid, gid)
    else:
        archive = snapshot.tar_archive(request.snapshot_dir, request.snapshot_files, WORKDIR, uid, gid)
    token = secrets.token_hex(32)  # authenticates mpirun's agent; exists only inside the run's containers
    _make_run_dir(request, uid, gid)
    started_at, containers, network, outcome, started = time.time(), [], None, None, False
    with _interrupts_as_keyboard_interrupt():
        try:
            if request.network:
                network = client.networks.create(request.network, driver="bridge", check_duplicate=True,
                                                  labels={LABEL_RUN_ID: request.run_id})
            for c in request.containers:
                containers.append(_create(client, c))
                containers[-1].put_archive("/", archive)
                containers[-1].put_archive("/", _control_archive(c, token, uid, gid))
            for container in containers:
                container.start()
                started = True
            outcome = _supervise(containers, request, out or sys.stdout)
        except KeyboardInterrupt:
            outcome = Outcome("Canceled", 130) if started else None
        except docker.errors.APIError as exc:
            raise _refused(exc, request) from None
        finally:
            for container in containers:
                remove_container(container)
            if network is not None:
                remove_network(network)
            if outcome is None:  # nothing ran: leave nothing behind
                shutil.rmtree(request.run_dir, ignore_errors=True)
    if outcome is None:
        raise ToolkitError(f"run {request.run_id} interrupted before it started; nothing kept", exit_code=130)
    _write_result(request, outcome, started_at)
    if outcome.status == "Canceled":
        how = "cancelled (invoke local-cancel)" if (request.run_dir / CANCEL_MARK).exists() else "interrupted"
        raise ToolkitError(f"run {request.run_id} {how}; containers and network removed, partial results in "
                           f"{request.run_dir}", exit_code=outcome.exit_code)
    if outcome.status == "Failed":
        hint = "killed: out of memory?" if outcome.exit_code == 137 else f"see {outcome.log}"
        raise ToolkitError(f"run {request.run_id} failed: {outcome.failed} exited with code {outcome.exit_code}; "
                           "all nodes stopped", hint, exit_code=outcome.exit_code)


def _supervise(containers, request: LocalRequest, out) -> Outcome:
    """Stream all containers' output; the run ends when every node is done (with MPI: when node 0's mpirun
    is), or at the first failure, which stops the rest."""
    lock, exits = threading.Lock(), queue.Queue()

    def stream(container):
        try:
            for chunk in container.logs(stream=True, follow=True):
                with lock:
                    out.write(chunk.decode("utf-8", errors="replace"))
                    out.flush()
        except Exception:  # the container went away mid-stream (gang stop, local-cancel)
            pass

    def wait(node, container):
        try:
            exits.put((node, int(container.wait().get("StatusCode", 1))))
        except Exception:
            exits.put((node, None))  # removed from another shell

    streams = [threading.Thread(target=stream, args=(c,), daemon=True) for c in containers]
    for node, container in enumerate(containers):
        streams[node].start()
        threading.Thread(target=wait, args=(node, container), daemon=True).start()
    done, mpi = set(), request.distribution.launch == "mpi"
    while True:
        try:
            node, code = exits.get(timeout=0.5)
        except queue.Empty:
            continue
        if code is None or (request.run_dir / CANCEL_MARK).exists():
            outcome = Outcome("Canceled", 130)
            break
        if code != 0:
            outcome = _failure(request, node, code)
            break
        done.add(node)
        if len(done) == len(containers) or (mpi and node == 0):
            outcome = Outcome("Completed")
            break
    for container in containers:  # the gang stops together; a finished container is removed all the same
        remove_container(container)
    for thread in streams:
        thread.join(3)
    return outcome


def _failure(request: LocalRequest, node: int, code: int) -> Outcome:
    """Name the process that failed first, from the launchers' records (a container that died without one,
    e.g. killed for memory, is named by its node)."""
    records = []
    for path in (request.run_dir / "logs/system_logs/launcher").glob("*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    if not records:
        return Outcome("Failed", code, f"node {node}", str(request.run_dir / "logs/user_logs"))
    first = min(records, key=lambda r: r["time"])
    where = first["label"] if first["label"].startswith("node") else f"{first['label']} (node {first['node_rank']})"
    log = request.run_dir / Path(first["log"]).relative_to(WORKDIR)
    return Outcome("Failed", int(first["exit_code"]), where, str(log))


def _write_result(request: LocalRequest, outcome: Outcome, started_at: float) -> None:
    """runs/<id>/result.json: what `invoke local-status` reports once the containers are gone."""
    d = request.distribution
    result = {"run_id": request.run_id, "status": outcome.status, "exit_code": outcome.exit_code,
              "failed": outcome.failed, "launch": d.launch, "nodes": d.nodes, "procs_per_node": d.procs_per_node,
              "started": started_at, "duration_s": round(time.time() - started_at, 1)}
    (request.run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")


def _control_archive(c: ContainerRequest, token: str, uid: int, gid: int) -> bytes:
    """The launcher, this node's plan and the run's token, for /mnt/azureml/.amltrain (owner only)."""
    files = {"launcher.py": Path(launcher.__file__).read_bytes(), "plan.json": c.plan.encode()}
    if json.loads(c.plan)["mode"] in ("mpirun", "serve"):
        files["token"] = token.encode()
    return snapshot.files_archive(launcher.CONTROL_DIR, files, uid, gid)


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
    folders = [run_dir / sub for sub in ("outputs", "logs", "logs/user_logs", "logs/system_logs",
                                         "logs/system_logs/launcher", "mlruns")]
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
        remove_container(holder)
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
    networking = {c.network: client.api.create_endpoint_config(aliases=[c.hostname])} if c.network else None
    return client.containers.create(
        c.image, list(c.command), name=c.name, hostname=c.hostname, user=c.user, working_dir=c.working_dir,
        environment=dict(c.environment), labels=dict(c.labels), shm_size=c.shm_size, device_requests=devices,
        mounts=[DockerMount(m.target, m.source, type="bind", read_only=m.read_only) for m in c.mounts],
        network=c.network or None, networking_config=networking,
    )


def remove_container(container) -> None:
    import docker

    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:  # being removed already (local-cancel from another shell)
        if exc.status_code != 409:
            raise


def remove_network(network, patience_s: float = 10) -> None:
    """Remove a run's network once its containers have left it (another shell may be removing them)."""
    import docker

    deadline = time.monotonic() + patience_s
    while True:
        try:
            network.remove()
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if "active endpoints" not in str(exc) and exc.status_code != 409:
                raise
            if time.monotonic() > deadline:
                raise ToolkitError(f"network {network.name} still has containers after {patience_s:.0f} s",
                                   f"remove them, then: docker network rm {network.name}") from None
            time.sleep(0.2)


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
