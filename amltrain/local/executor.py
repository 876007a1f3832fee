"""Run a local request with docker-py: the gang of containers, their output, their end, and the cleanup.

``request`` says what to run (pure data); this module runs it. A run that started keeps its folder
whatever happens after (outputs, logs, ``result.json``); one that never started leaves nothing behind.
Whatever ends the run (its processes, a failure, Ctrl-C, SIGTERM, `invoke local-cancel`), every
container gets SIGTERM first, so scripts can save what they have, and then the run's containers and
network are removed, found by label as well as by what this process made.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import os
import queue
import secrets
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import engine, snapshot
from ..errors import ToolkitError, first_line
from ..signals import signals_as_interrupts, signals_ignored
from ..spec import ContainerRequest, LocalRequest
from . import launcher
from .request import CANCEL_MARK, LABEL_RUN_ID, WORKDIR, describe

GRACE_S = 6.0  # SIGTERM to SIGKILL; the launcher itself gives its processes 5 s


@dataclass
class Outcome:
    status: str  # Azure ML's words: Completed, Failed, Canceled
    exit_code: int = 0
    failed: str = ""  # "rank 3 (node 1)"
    log: str = ""  # the failed process's log on the host
    cleanup_problems: list[str] = field(default_factory=list)


def run(request: LocalRequest, out=None, announce: str = "") -> None:
    """Start one container per node, stream every rank's output, stop the whole gang when any part fails
    or is interrupted, and clean up always; raises ``ToolkitError`` with the failed rank's exit code.
    ``announce`` is printed once the run's folder exists (a run id printed earlier could name nothing).
    With a preemption drill the gang is stopped after a while and started again, each attempt with
    fresh containers on the same checkpoint folder and with logs of its own (``logs/attempt-<k>``)."""
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
    _make_run_dir(request, uid, gid)
    if announce:
        print(announce, file=out or sys.stdout, flush=True)
    drill = request.preemption
    started_at, attempts, problems = time.time(), [], []
    outcome = None
    for number in range(1, (drill.restarts if drill else 0) + 2):
        attempt = _attempt_request(request, number, uid, gid) if drill else request
        preempt = drill is not None and number <= drill.restarts
        if drill:
            print(f"amltrain: attempt {number} of run {request.run_id}"
                  + (f", preempted after {drill.after_s:g} s" if preempt else ", not preempted"),
                  file=out or sys.stdout, flush=True)
        begun = time.time()
        try:
            outcome, started, attempt_problems = _attempt(client, attempt, archive, out or sys.stdout,
                                                           drill.after_s if preempt else None)
        except ToolkitError as refused:  # Docker refused a container
            if not attempts:
                shutil.rmtree(request.run_dir, ignore_errors=True)
                raise
            outcome, started, attempt_problems = Outcome("Failed", 1, f"attempt {number} ({refused.message})",
                                                         str(request.run_dir / "logs")), True, []
        problems += attempt_problems
        if not started and not attempts:  # nothing ran: leave nothing behind
            shutil.rmtree(request.run_dir, ignore_errors=True)
            break
        if outcome is None:  # a later attempt interrupted before it started: the earlier ones are kept
            outcome = Outcome("Canceled", 130)
        if drill:
            attempts.append({"attempt": number, "status": outcome.status, "exit_code": outcome.exit_code,
                             "started": begun,
                             "duration_s": round(time.time() - begun, 1), "logs": f"logs/attempt-{number}"})
        if outcome.status != "Preempted":
            break
        print(f"amltrain: attempt {number} preempted (SIGTERM, then SIGKILL after {drill.grace_s:g} s); "
              "restarting on the same checkpoints", file=out or sys.stdout, flush=True)
    if outcome is None:
        raise ToolkitError(f"run {request.run_id} interrupted before it started; nothing kept", exit_code=130)
    outcome.cleanup_problems = problems
    _write_result(request, outcome, started_at, attempts)
    for problem in problems:
        print(f"warning: cleaning up run {request.run_id}: {problem}", file=sys.stderr)
    if outcome.status == "Canceled":
        how = "cancelled (invoke local-cancel)" if (request.run_dir / CANCEL_MARK).exists() else "interrupted"
        raise ToolkitError(f"run {request.run_id} {how}; containers and network removed, partial results in "
                           f"{request.run_dir}", exit_code=outcome.exit_code)
    if outcome.status == "Failed":
        hint = "killed: out of memory?" if outcome.exit_code == 137 else f"see {outcome.log}"
        raise ToolkitError(f"run {request.run_id} failed: {outcome.failed} exited with code {outcome.exit_code}; "
                           "all nodes stopped", hint, exit_code=outcome.exit_code)


def _attempt(client, request: LocalRequest, archive: bytes, out, preempt_after: float | None):
    """One start of the gang: (outcome or None when interrupted before it started, whether it started,
    cleanup problems). Containers and network are made for it and removed after it."""
    import docker

    token = secrets.token_hex(32)  # authenticates mpirun's agent; exists only inside the run's containers
    uid, _, gid = request.containers[0].user.partition(":")
    uid, gid = int(uid), int(gid or uid)
    containers, outcome, started = [], None, False
    with signals_as_interrupts():
        try:
            if request.network:
                client.networks.create(request.network, driver="bridge", check_duplicate=True,
                                       labels={LABEL_RUN_ID: request.run_id})
            for c in request.containers:
                containers.append(_create(client, c))
                containers[-1].put_archive("/", archive)
                containers[-1].put_archive("/", _control_archive(c, token, uid, gid))
            for container in containers:
                container.start()
                started = True
            outcome = _supervise(containers, request, out, preempt_after)
        except KeyboardInterrupt as exc:
            if started:
                _stop_gang(containers, request.grace_s + 1)
                outcome = Outcome("Canceled", 128 + getattr(exc, "signum", signal.SIGINT))
        except docker.errors.APIError as exc:
            if not started:
                raise _refused(exc, request) from None
            _stop_gang(containers, request.grace_s + 1)
            outcome = Outcome("Failed", 1, f"Docker ({first_line(exc)})", str(request.run_dir / "logs"))
        finally:
            problems = _teardown(client, request, containers)
    return outcome, started, problems


def _attempt_request(request: LocalRequest, number: int, uid: int, gid: int) -> LocalRequest:
    """Attempt ``number`` of a drill: the same request with ``logs/`` mounted from ``logs/attempt-<number>``."""
    logs = request.run_dir / "logs"
    folder = logs / f"attempt-{number}"
    for sub in ("", "user_logs", "system_logs", "system_logs/launcher"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        if (uid, gid) != (os.getuid(), os.getgid()):
            os.chown(folder / sub, uid, gid)
    containers = tuple(dataclasses.replace(c, mounts=tuple(
        dataclasses.replace(m, source=str(folder)) if m.source == str(logs) else m for m in c.mounts))
        for c in request.containers)
    return dataclasses.replace(request, containers=containers)


def _supervise(containers, request: LocalRequest, out, preempt_after: float | None = None) -> Outcome:
    """Stream all containers' output; the run ends when every node is done (with MPI: when node 0's mpirun
    is), or at the first failure, which stops the rest, or ``preempt_after`` seconds in (a drill's
    preemption: the gang is stopped as Azure ML stops preempted nodes)."""
    import docker
    from urllib3.exceptions import HTTPError as Urllib3Error

    lock, exits = threading.Lock(), queue.Queue()

    def stream(container):
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span two chunks
        try:
            chunks = container.logs(stream=True, follow=True)
        except docker.errors.APIError:  # the container went away before its stream opened
            return
        try:
            for chunk in chunks:
                with lock:
                    out.write(decoder.decode(chunk))
                    out.flush()
        except (docker.errors.APIError, OSError, ValueError, Urllib3Error):
            pass  # it went away mid-stream (gang stop, local-cancel)

    def wait(node, container):
        try:
            exits.put((node, int(container.wait().get("StatusCode", 1))))
        except (docker.errors.APIError, OSError, ValueError, Urllib3Error):
            exits.put((node, None))  # removed from another shell

    streams = [threading.Thread(target=stream, args=(c,), daemon=True) for c in containers]
    for node, container in enumerate(containers):
        streams[node].start()
        threading.Thread(target=wait, args=(node, container), daemon=True).start()
    done, mpi = set(), request.distribution.launch == "mpi"
    preempt_at = time.monotonic() + preempt_after if preempt_after is not None else None
    while True:
        try:
            node, code = exits.get(timeout=0.5)
        except queue.Empty:
            if preempt_at is not None and time.monotonic() >= preempt_at:
                outcome = Outcome("Preempted", 128 + signal.SIGTERM)
                break
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
    _stop_gang(containers, request.grace_s + 1)  # the launcher gives its processes grace_s
    deadline = time.monotonic() + 3
    for thread in streams:
        thread.join(max(0.0, deadline - time.monotonic()))
    return outcome


def _stop_gang(containers, grace_s: float = GRACE_S) -> None:
    """SIGTERM to every container at once (the launcher passes it to the processes), SIGKILL to any
    still running after the grace period."""
    import docker

    for container in containers:
        try:
            container.kill(signal="SIGTERM")
        except docker.errors.APIError:  # not running any more, or gone
            pass
    deadline = time.monotonic() + grace_s
    for container in containers:
        while True:
            try:
                container.reload()
            except docker.errors.APIError:
                break
            if container.status != "running":
                break
            if time.monotonic() > deadline:
                try:
                    container.kill()
                except docker.errors.APIError:
                    pass
                break
            time.sleep(0.1)


def _teardown(client, request: LocalRequest, containers) -> list[str]:
    """Remove the run's containers and network: by label too, since an interrupt can land between Docker
    making one and this process hearing of it. Every item is tried; problems are returned."""
    import docker

    problems = []
    label = {"label": f"{LABEL_RUN_ID}={request.run_id}"}
    with signals_ignored():
        found = {c.id: c for c in containers}
        try:
            found.update({c.id: c for c in client.containers.list(all=True, filters=label)})
        except docker.errors.APIError as exc:
            problems.append(f"listing its containers: {first_line(exc)}")
        for container in found.values():
            try:
                remove_container(container)
            except (docker.errors.APIError, ToolkitError) as exc:
                problems.append(f"container {container.name}: {first_line(exc)}")
        networks = []
        try:
            networks = client.networks.list(filters=label)
        except docker.errors.APIError as exc:
            problems.append(f"listing its network: {first_line(exc)}")
        for network in networks:
            try:
                remove_network(network)
            except (docker.errors.APIError, ToolkitError) as exc:
                problems.append(f"network {network.name}: {first_line(exc)}")
    return problems


def _failure(request: LocalRequest, node: int, code: int) -> Outcome:
    """Name the process that failed first, from the launchers' records (a container that died without one,
    e.g. killed for memory, or mpirun failing by itself, is named by its node)."""
    records = []
    logs_dir = next(Path(m.source) for m in request.containers[0].mounts if m.target == f"{WORKDIR}/logs")
    for path in (logs_dir / "system_logs/launcher").glob("*.json"):
        try:
            record = json.loads(path.read_text())
            records.append((float(record["time"]), str(record["label"]), int(record["node_rank"]),
                            int(record["exit_code"]), str(record["log"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not records:
        logs = logs_dir / "user_logs"
        log = logs / "mpi_log.txt" if request.distribution.launch == "mpi" and node == 0 else logs
        return Outcome("Failed", code, f"node {node}", str(log))
    _, label, node_rank, exit_code, log = min(records)
    where = label if label.startswith("node") else f"{label} (node {node_rank})"
    return Outcome("Failed", exit_code, where, str(logs_dir / Path(log).relative_to(f"{WORKDIR}/logs")))


def _write_result(request: LocalRequest, outcome: Outcome, started_at: float, attempts: list[dict]) -> None:
    """runs/<id>/result.json: what `invoke local-status` reports once the containers are gone."""
    d = request.distribution
    result = {"run_id": request.run_id, "status": outcome.status, "exit_code": outcome.exit_code,
              "failed": outcome.failed, "launch": d.launch, "nodes": d.nodes, "procs_per_node": d.procs_per_node,
              "started": started_at, "duration_s": round(time.time() - started_at, 1),
              "checkpoints": str(request.checkpoint_dir) if request.checkpoint_dir else "",
              "resumed_from": request.resumed_from, "attempts": attempts,
              "cleanup_problems": outcome.cleanup_problems}
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
    folders += [request.checkpoint_dir] if request.checkpoint_dir else []
    folders += [cache_dir] if cache_dir and not cache_dir.exists() else []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        if other_user:
            os.chown(folder, uid, gid)
    (run_dir / "request.json").write_text(json.dumps(describe(request), indent=2) + "\n")


def _archive_from_image(client, image: str, folder: str, uid: int, gid: int) -> bytes:
    """The code baked into an image, as a snapshot archive for the working directory."""
    holder = client.containers.create(image, ["true"], labels={"amltrain.purpose": "read baked code"})
    try:
        chunks, _ = holder.get_archive(folder)
        data = b"".join(chunks)
    finally:
        remove_container(holder)
    return snapshot.reroot(data, Path(folder).name, WORKDIR, uid, gid)


def _refused(exc, request: LocalRequest) -> ToolkitError:
    """Docker refused to create or start a container: one line, with the usual cause named."""
    reason = first_line(exc)
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
