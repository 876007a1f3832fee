"""Run a job in local Docker with the runtime contract of an Azure ML cluster run.

Concept map: a local run is one container per node, made from the job's image, on a private network
made for the run when there are several (hostnames ``node-0``, ``node-1``, … resolve on it). Each
container gets a writable copy of the source-directory snapshot as its working directory, ``outputs/``
and ``logs/`` bind-mounted from ``runs/<run-id>/`` on the host (shared by all nodes), data inputs mounted
read-only, ``/dev/shm`` of Azure ML's size, and the environment variables Azure ML sets for the launch
mode. In each container ``launcher.py`` starts the processes as Azure ML would (per process, per node,
or through mpirun) from a plan made here. Containers and network carry the run id as a label, so later
tasks can find, follow and cancel a run from any shell.

Everything here is pure: ``local_request`` is what ``--dry-run`` prints (``describe``); ``executor``
runs it.
"""

from __future__ import annotations

import json
import re
import secrets
import time

from .. import inputs as input_syntax
from .. import snapshot
from ..errors import ToolkitError
from ..masking import mask, mask_words
from ..spec import (
    ContainerRequest,
    Distribution,
    JobSpec,
    LocalRequest,
    LocalSettings,
    Mount,
    Preemption,
    frozen_map,
)
from . import launcher, tracking

WORKDIR = "/mnt/azureml/wd"
INPUTS_ROOT = "/mnt/azureml/inputs"
MLRUNS = "/mnt/azureml/mlruns"
CACHE = "/mnt/azureml/cache"
CHECKPOINTS = "/mnt/azureml/checkpoints"  # AMLTRAIN_CHECKPOINT_DIR: the same path on every node
LABEL_RUN_ID = "amltrain.run-id"
LABEL_NODE_RANK = "amltrain.node-rank"
LABEL_EXPERIMENT = "amltrain.experiment"
LABEL_RUN_DIR = "amltrain.run-dir"
STATUS_DIR = f"{WORKDIR}/logs/system_logs/launcher"  # failure records of the launcher: which rank failed
CANCEL_MARK = "cancelled.json"  # written by local-cancel into the run folder, so the run says who stopped it
EXEC_PORT = 6107  # MPI runs: where the other nodes take mpirun's daemon launches (launcher.py serve)
DEBUG_PORT = 5678  # debugpy's usual port: in the debugged rank's container, and on the host's 127.0.0.1
DEBUGPY = "/mnt/azureml/debugpy"  # the host's debugpy package, mounted read-only (the image need not have it)


def host_debugpy() -> str:
    """The folder of this interpreter's debugpy package: mounted into the debugged rank's container."""
    import importlib.util

    found = importlib.util.find_spec("debugpy")
    if found is None or not found.submodule_search_locations:
        raise ToolkitError("--debug-rank needs debugpy on this machine", "pip install debugpy (the dev extra has it)")
    return list(found.submodule_search_locations)[0]


def check_debug_rank(job: JobSpec, rank: int) -> None:
    d = job.distribution
    if job.command or d.launch != "per-process":
        raise ToolkitError(f"--debug-rank works with --launch per-process and a script, not {d.launch}"
                           f"{' with --command' if job.command else ''}",
                           "debug the rank's script with --launch per-process (the default)")
    if not 0 <= rank < d.world_size:
        raise ToolkitError(f"--debug-rank {rank} is not a rank of this run (ranks 0 to {d.world_size - 1})")


def debug_command(job: JobSpec) -> list[str]:
    """The rank's own command under debugpy, which waits for a client before the script's first line."""
    return ["python", DEBUGPY, "--listen", f"0.0.0.0:{DEBUG_PORT}", "--wait-for-client",
            *user_command(job)[1:]]


def new_run_id(experiment: str) -> str:
    """Azure ML's v1 shape: ``<experiment>_<unix time>_<8 hex>``."""
    name = re.sub(r"[^a-zA-Z0-9_.-]", "-", experiment)[:40]
    return f"{name}_{int(time.time())}_{secrets.token_hex(4)}"


def input_path(name: str) -> str:
    return f"{INPUTS_ROOT}/{name}"


def substitute_inputs(arguments: tuple[str, ...], inputs) -> tuple[str, ...]:
    def replace(name: str) -> str:
        if name not in inputs:
            raise ToolkitError(f"argument refers to input {name!r}, which is not defined",
                               f"defined inputs: {', '.join(inputs) or 'none'}; add --input {name}=DIR")
        return input_path(name)

    return tuple(input_syntax.substitute(a, replace) for a in arguments)


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
        "AMLTRAIN_CHECKPOINT_DIR": CHECKPOINTS,
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
        return ["/bin/sh", "-c", substitute_inputs((job.command,), job.inputs)[0]]
    return ["python", job.script, *substitute_inputs(job.arguments, job.inputs)]


def node_plan(job: JobSpec, node_rank: int, settings: LocalSettings, debug_rank: int | None = None,
              grace_s: float = 5.0) -> dict:
    """What the launcher in this node's container starts (``amltrain/local/launcher.py`` reads it as JSON)."""
    d = job.distribution
    logs = f"{WORKDIR}/logs/user_logs"
    plan = {"node_rank": node_rank, "prefix": not d.single_process, "status_dir": STATUS_DIR, "grace_s": grace_s}
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
                          "log": log} | ({"command": debug_command(job)} if rank == debug_rank else {}))
    return plan | {"mode": "run", "command": user_command(job), "processes": processes}


def local_request(job: JobSpec, image: str, settings: LocalSettings, run_id: str | None = None,
                  code_in_image: str = "", debug_rank: int | None = None, debugpy_dir: str = "",
                  resume: str = "", preemption: Preemption | None = None) -> LocalRequest:
    """The whole run as data: one container per node on a private network. ``code_in_image``: the image
    has the code baked in there (``build --bake``), and the working directory is a copy of that instead
    of the host's source directory. ``debug_rank``: that rank runs under debugpy (``debugpy_dir``, the host's
    package, mounted), its port published on the host's 127.0.0.1. ``resume``: a previous run whose checkpoint
    folder this one continues. ``preemption``: the drill (SIGTERM after a while, restart on the same
    checkpoints)."""
    if debug_rank is not None:
        check_debug_rank(job, debug_rank)
    debug_node = -1 if debug_rank is None else debug_rank // job.distribution.procs_per_node
    run_id = run_id or new_run_id(job.experiment)
    run_dir = settings.runs_dir / run_id
    checkpoint_dir = run_dir / "checkpoints"
    if resume:
        checkpoint_dir = settings.runs_dir / resume / "checkpoints"
        if not checkpoint_dir.is_dir():
            raise ToolkitError(f"--resume {resume}: no checkpoint folder {checkpoint_dir}",
                               "name a local run that ran with checkpoints (`invoke local-status` lists them)")
    if preemption is not None and (preemption.after_s <= 0 or preemption.restarts < 0 or preemption.grace_s < 0):
        raise ToolkitError("--preempt-after must be positive, --restarts and --grace not negative",
                           "e.g. --preempt-after 60 --restarts 2")
    grace_s = preemption.grace_s if preemption else 5.0
    names = snapshot.files(job.source_dir)
    snapshot.check_limits(job.source_dir, names)
    if not job.command:
        snapshot.check_script(job.source_dir, job.script, names)
    mounts = (
        Mount(str(run_dir / "outputs"), f"{WORKDIR}/outputs"),
        Mount(str(run_dir / "logs"), f"{WORKDIR}/logs"),
        Mount(str(tracking.store(settings.runs_dir)), MLRUNS),  # the project's one store: `invoke ui` shows it
        Mount(str(checkpoint_dir), CHECKPOINTS),
        *([Mount(str(settings.cache_dir), CACHE)] if settings.cache_dir else []),
        *(Mount(str(path), input_path(name), read_only=True) for name, path in sorted(job.inputs.items())),
    )
    # Nodes find each other on a network of their own; one node needs none (Docker's default bridge is
    # quicker to start, and the hostname resolves inside the container all the same).
    network = f"amltrain-{run_id}" if job.distribution.nodes > 1 else ""
    plans = [node_plan(job, node, settings, debug_rank, grace_s) for node in range(job.distribution.nodes)]
    containers = tuple(ContainerRequest(
        name=f"{run_id}-node-{node}",
        image=image,
        command=("python", f"{launcher.CONTROL_DIR}/launcher.py", plans[node]["mode"]),
        working_dir=WORKDIR,
        hostname=hostname,
        user=settings.user,
        shm_size=settings.shm_size,
        environment=frozen_map(contract_env(job, run_id, node, settings)),
        mounts=mounts + ((Mount(debugpy_dir, DEBUGPY, read_only=True),) if node == debug_node else ()),
        ports=((f"{DEBUG_PORT}/tcp", "127.0.0.1", DEBUG_PORT),) if node == debug_node else (),
        labels=frozen_map({LABEL_RUN_ID: run_id, LABEL_NODE_RANK: str(node), LABEL_EXPERIMENT: job.experiment,
                           LABEL_RUN_DIR: str(run_dir)}),
        gpus=settings.gpus[node] if node < len(settings.gpus) else "",
        network=network,
        plan=json.dumps(plans[node], sort_keys=True),
        memory=settings.memory,
    ) for node, hostname in enumerate(node_hostnames(job.distribution.nodes)))
    return LocalRequest(run_id=run_id, run_dir=run_dir, snapshot_dir=job.source_dir, snapshot_files=names,
                        containers=containers, cache_dir=settings.cache_dir, code_in_image=code_in_image,
                        network=network, distribution=job.distribution, checkpoint_dir=checkpoint_dir,
                        resumed_from=resume, preemption=preemption, grace_s=grace_s)


def describe(request: LocalRequest) -> dict:
    """The request as plain data with secrets masked: what --dry-run prints and runs/<id>/request.json keeps."""
    d = request.distribution
    containers = []
    for c in request.containers:
        plan = json.loads(c.plan) if c.plan else {}
        entry = {
            "name": c.name, "image": c.image, "hostname": c.hostname, "network": c.network or "default bridge",
            "command": list(c.command), "working_dir": c.working_dir, "user": c.user, "shm_size": c.shm_size,
            "memory": c.memory or "unlimited", "gpus": c.gpus or "none",
            "environment": {k: mask(k, v) for k, v in sorted(c.environment.items())},
            "mounts": [f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in c.mounts],
            "labels": dict(c.labels),
            **({"ports": [f"{ip}:{host}->{port}" for port, ip, host in c.ports]} if c.ports else {}),
        }
        if plan.get("mode") == "run":
            entry["processes"] = [{"label": proc["label"], "command": mask_words(proc.get("command", plan["command"])),
                                   "log": proc["log"], "environment": proc["env"]} for proc in plan["processes"]]
        elif plan.get("mode") == "mpirun":
            entry["mpirun"] = mask_words(plan["mpirun"])
            entry["mpirun_environment"] = plan["mpirun_env"]
        if d.launch == "mpi":
            entry["ranks_set_by_mpirun"] = rank_envs(d, int(c.labels[LABEL_NODE_RANK]))
        containers.append(entry)
    return {
        "run_id": request.run_id,
        "run_dir": str(request.run_dir),
        "launch": d.launch, "nodes": d.nodes, "procs_per_node": d.procs_per_node,
        "network": {"name": request.network, "driver": "bridge", "labels": {LABEL_RUN_ID: request.run_id}}
        if request.network else "default bridge (one node)",
        "snapshot": ({"source": f"image:{request.code_in_image}"} if request.code_in_image else
                     {"source": str(request.snapshot_dir), "files": len(request.snapshot_files)})
        | {"copied_to": WORKDIR},
        "checkpoints": {"folder": str(request.checkpoint_dir), "mounted_at": CHECKPOINTS,
                        **({"resumed_from": request.resumed_from} if request.resumed_from else {})},
        **({"preemption": {"after_s": request.preemption.after_s, "restarts": request.preemption.restarts,
                           "grace_s": request.preemption.grace_s}} if request.preemption else {}),
        "containers": containers,
    }
