"""Run a local request with docker-py: the gang of containers, their output, their end, and the cleanup.

``request`` says what to run (pure data); this module runs it. A run that started keeps its folder
whatever happens after (outputs, logs, ``result.json``); one that never started leaves nothing behind.
Whatever ends the run (its processes, a failure, Ctrl-C, SIGTERM, `invoke local-cancel`), every
container gets SIGTERM first, so scripts can save what they have, and then the run's containers and
network are removed, found by label as well as by what this process made. Once the gang is started, stop
signals no longer raise: the supervision loop reads them, so no second Ctrl-C can cut the stop, the cleanup
or ``result.json`` short (it only hurries the stop). An engine that goes away mid-run is waited for, to clean
up; a diagnosis (out of memory, a full disk) is said only when Docker or the file system says so.
A preemption drill runs the gang several times (attempts), each as above; a stop signal in any attempt ends
the run, while a preemption only ends its attempt.
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
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import engine, snapshot
from ..engine import ENGINE_HINT
from ..errors import ToolkitError, first_line
from ..signals import signals_as_interrupts, signals_ignored
from ..spec import ContainerRequest, LocalRequest, frozen_map
from . import launcher, tracking
from .request import CANCEL_MARK, LABEL_EXPERIMENT, LABEL_RUN_ID, WORKDIR, describe

GRACE_S = 6.0  # SIGTERM to SIGKILL by default; a stop uses the request's grace_s + 1 (the launcher's grace)
ENGINE_WAIT_S = 60.0  # a run whose engine went away waits this long for it to come back, to remove its containers
DISK_LOW_BYTES = 1 << 20  # less free than this where the run writes: "the disk is full"


@dataclass
class Outcome:
    status: str  # Azure ML's words: Completed, Failed, Canceled; Preempted (a drill's attempt)
    exit_code: int = 0
    failed: str = ""  # "rank 3 (node 1)"
    log: str = ""  # the failed process's log on the host
    cleanup_problems: list[str] = field(default_factory=list)
    engine_lost: str = ""  # why the Docker engine stopped answering mid-run, if it did
    oom_killed: list[int] = field(default_factory=list)  # nodes whose container Docker reports OOM-killed


def engine_errors() -> tuple[type[BaseException], ...]:
    """What docker-py raises when the engine refuses or goes away: its own errors, and requests' and urllib3's
    for a socket that closed or no longer answers (docker-py lets those through unwrapped)."""
    import docker
    import requests
    from urllib3.exceptions import HTTPError as Urllib3Error

    return docker.errors.DockerException, requests.exceptions.RequestException, Urllib3Error, OSError


def run(request: LocalRequest, out=None, announce: str = "") -> None:
    """Start one container per node, stream every rank's output, stop the whole gang when any part fails
    or is interrupted, and clean up always; raises ``ToolkitError`` with the failed rank's exit code.
    ``announce`` is printed once the run's folder exists (a run id printed earlier could name nothing).
    With a preemption drill the gang is stopped after a while and started again, each attempt with
    fresh containers on the same checkpoint folder and with logs of its own (``logs/attempt-<k>``)."""
    client = engine.connect()
    out = out or sys.stdout
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
        print(announce, file=out, flush=True)
    started_at = time.time()
    # One handler for the whole run, not one per attempt: a signal that lands between two attempts is kept,
    # and ends the run instead of starting the next attempt.
    with signals_as_interrupts(once=True, final=True) as received:
        try:  # the run's one MLflow run, made first: every attempt's processes continue it, as on Azure ML
            tracked = _track(client, request)
        except KeyboardInterrupt:
            shutil.rmtree(request.run_dir, ignore_errors=True)
            raise ToolkitError(f"run {request.run_id} interrupted before it started; nothing kept",
                               exit_code=128 + received[0]) from None
        if tracked:
            request = replace(request, containers=tuple(
                replace(c, environment=frozen_map({**c.environment, "MLFLOW_RUN_ID": tracked["run_id"]}))
                for c in request.containers))
        try:
            outcome, attempts = _attempts(client, request, archive, out, received, uid, gid)
        except ToolkitError:
            if not request.run_dir.exists():  # nothing ran: no MLflow run is left behind either
                _forget(request, tracked)
            raise
        _finish(request, outcome, started_at, attempts, tracked)


def _forget(request: LocalRequest, tracked: dict | None) -> None:
    if tracked:
        shutil.rmtree(tracking.store(request.run_dir.parent) / tracked["experiment_id"] / tracked["run_id"],
                      ignore_errors=True)


def _attempts(client, request: LocalRequest, archive: bytes, out, received, uid: int, gid: int):
    """Run the gang once, or, with a drill, until an attempt is not preempted: (the run's outcome, the attempts
    for result.json). A stop signal ends the run as Canceled whatever attempt it lands in: no next attempt."""
    drill = request.preemption
    attempts, problems = [], []
    for number in range(1, (drill.restarts if drill else 0) + 2):
        attempt = _attempt_request(request, number, uid, gid) if drill else request
        preempt = drill is not None and number <= drill.restarts
        if drill:
            print(f"amltrain: attempt {number} of run {request.run_id}"
                  + (f", preempted after {drill.after_s:g} s" if preempt else ", not preempted"), file=out, flush=True)
        begun = time.time()
        try:
            outcome, attempt_problems = _attempt(client, attempt, archive, out, received,
                                                 drill.after_s if preempt else None)
        except _NotStarted as refused:
            error = _refused(client, refused.cause, request)
            if number == 1:  # nothing ran: leave nothing behind
                shutil.rmtree(request.run_dir, ignore_errors=True)
                raise error from None
            outcome, attempt_problems = Outcome("Failed", 1, f"attempt {number} ({error})",
                                                str(request.run_dir / "logs")), []
        if outcome is None:  # a signal before any container started
            if number == 1:
                shutil.rmtree(request.run_dir, ignore_errors=True)
                raise ToolkitError(f"run {request.run_id} interrupted before it started; nothing kept",
                                   exit_code=128 + received[0])
            outcome = Outcome("Canceled", 128 + received[0])  # the earlier attempts are kept
        problems += attempt_problems
        if drill:
            attempts.append({"attempt": number, "status": outcome.status, "exit_code": outcome.exit_code,
                             "started": begun, "duration_s": round(time.time() - begun, 1),
                             "logs": f"logs/attempt-{number}"})
        if outcome.status != "Preempted":
            break
        if received:  # a stop signal during the preemption's stop: the run ends there
            outcome = Outcome("Canceled", 128 + received[0])
            break
        print(f"amltrain: attempt {number} preempted (SIGTERM, then SIGKILL after {drill.grace_s:g} s); "
              "restarting on the same checkpoints", file=out, flush=True)
    outcome.cleanup_problems = problems
    return outcome, attempts


def _attempt(client, request: LocalRequest, archive: bytes, out, received, preempt_after: float | None):
    """One start of the gang, with containers and network of its own, removed after it whatever happens:
    (outcome, cleanup problems); the outcome is None when a signal came before any container started.
    Raises ``_NotStarted`` when Docker refused a container (all that was made is removed)."""
    token = secrets.token_hex(32)  # authenticates mpirun's agent; exists only inside the run's containers
    uid, _, gid = request.containers[0].user.partition(":")
    uid, gid = int(uid), int(gid or uid)
    containers = []
    # Making the gang: a first signal interrupts it (later ones are only counted), and nothing is kept.
    try:
        if request.network:
            client.networks.create(request.network, driver="bridge", check_duplicate=True,
                                   labels={LABEL_RUN_ID: request.run_id})
        for c in request.containers:
            containers.append(_create(client, c))
            containers[-1].put_archive("/", archive)
            containers[-1].put_archive("/", _control_archive(c, token, uid, gid))
        # Running: from the first start on, signals are requests the supervision answers (stop the gang,
        # hurry at the next one), never exceptions, so the shutdown, the cleanup and result.json always happen.
        received.raising = False
    except KeyboardInterrupt:
        return None, _teardown(client, request, containers)
    except engine_errors() as exc:
        _teardown(client, request, containers)
        raise _NotStarted(exc) from None
    try:
        outcome = _start_and_supervise(client, containers, request, out, received, preempt_after)
    except _NotStarted:
        _teardown(client, request, containers)
        raise
    except BaseException:  # an error nobody anticipated: the gang still stops and goes, the folder stays
        _stop_gang(containers, hurry=lambda: True)
        _teardown(client, request, containers)
        raise
    if outcome is None:
        return None, _teardown(client, request, containers)
    outcome.cleanup_problems = _teardown(client, request, containers, outcome.engine_lost, received, out)
    lost = engine_down(client) if outcome.cleanup_problems and outcome.status != "Completed" else ""
    if lost and not outcome.engine_lost:  # it went away as the attempt was ending (it stops the containers first)
        outcome = Outcome("Failed", 1, "the Docker engine", engine_lost=lost)
        outcome.cleanup_problems = _teardown(client, request, containers, lost, received, out)
    return outcome, outcome.cleanup_problems


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


class _NotStarted(Exception):
    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


def _start_and_supervise(client, containers, request: LocalRequest, out, received,
                         preempt_after: float | None = None) -> Outcome | None:
    """Start the gang and supervise it; None when a signal came before any container started."""
    started = False
    try:
        for container in containers:
            if received:
                break
            container.start()
            started = True
    except engine_errors() as exc:
        if not started:
            raise _NotStarted(exc) from None
        lost = engine_down(client)
        if not lost:
            _stop_gang(containers, request.grace_s + 1, hurry=lambda: len(received) > 0)
        return Outcome("Failed", 1, f"Docker ({first_line(exc)})", str(request.run_dir / "logs"), engine_lost=lost)
    if not started:
        return None
    return _supervise(client, containers, request, out, received, preempt_after)


def _finish(request: LocalRequest, outcome: Outcome, started_at: float, attempts: list[dict],
            tracked: dict | None = None) -> None:
    """Write result.json, close the MLflow run with the run's status, and say how the run ended: nothing
    (Completed) or one error line."""
    unwritten = ""
    try:
        _write_result(request, outcome, started_at, attempts, tracked)
    except OSError as exc:
        unwritten = f"; result.json not written ({exc.strerror or exc})"
    if tracked:
        tracking.finish(tracking.store(request.run_dir.parent), tracked["experiment_id"], tracked["run_id"],
                        outcome.status)
    full = _disk_full(request.run_dir, unwritten)
    problems = outcome.cleanup_problems
    if outcome.engine_lost:
        where = (f"; its containers and network could not be removed ({problems[0]})" if problems else
                 "; its containers and network were removed once it was back")
        raise ToolkitError(f"run {request.run_id} failed: the Docker engine went away during the run "
                           f"({outcome.engine_lost}){where}{unwritten}; partial results in {request.run_dir}",
                           f"once the engine is back: invoke local-cancel --run {request.run_id}" if problems else None,
                           exit_code=1)
    for problem in problems:
        print(f"warning: cleaning up run {request.run_id}: {problem}", file=sys.stderr)
    if outcome.status == "Canceled":
        how = "cancelled (invoke local-cancel)" if (request.run_dir / CANCEL_MARK).exists() else "interrupted"
        raise ToolkitError(f"run {request.run_id} {how}; containers and network removed, partial results in "
                           f"{request.run_dir}{unwritten}", full or None, exit_code=outcome.exit_code)
    if outcome.status == "Failed":
        hint = full or _memory_note(request, outcome) or f"see {outcome.log}"
        raise ToolkitError(f"run {request.run_id} failed: {outcome.failed} exited with code {outcome.exit_code}; "
                           f"all nodes stopped{unwritten}", hint, exit_code=outcome.exit_code)
    if unwritten:
        raise ToolkitError(f"run {request.run_id} completed, but{unwritten[1:]}", full or None)


def _disk_full(run_dir: Path, unwritten: str) -> str:
    """A hint naming the disk when the run's folder has (almost) no space left: scripts and the launcher then
    fail in ways that do not say so (a log that stops, a missing failure record)."""
    try:
        stat = os.statvfs(run_dir)
    except OSError:
        return ""
    free = stat.f_bavail * stat.f_frsize
    if free >= DISK_LOW_BYTES and "No space" not in unwritten:
        return ""
    return (f"the disk mounted at {_mount_point(run_dir)}, which holds {run_dir}, is full ({free // 1024} KiB "
            "free): outputs written so far are kept; free space there or set local.runs_dir to another disk")


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    device = path.stat().st_dev
    while path.parent != path and path.parent.stat().st_dev == device:
        path = path.parent
    return path


def _memory_note(request: LocalRequest, outcome: Outcome) -> str:
    """Out of memory only when Docker says so (State.OOMKilled); a 137 without it is some other SIGKILL."""
    if outcome.oom_killed:
        nodes = ", ".join(f"node-{n}" for n in outcome.oom_killed)
        limit = request.containers[outcome.oom_killed[0]].memory
        where = (f"at its container's limit of {limit} (local.memory): raise it or use less" if limit else
                 "with no local.memory limit: the host ran short")
        return f"out of memory: Docker reports {nodes} OOM-killed {where}; see {outcome.log}"
    if outcome.exit_code == 137:
        return f"killed with SIGKILL, not for memory (Docker reports no out-of-memory kill); see {outcome.log}"
    return ""


def engine_down(client, timeout_s: float = 5) -> str:
    """Why the engine does not answer a ping, or "" when it does."""
    try:
        response = client.api.get(f"{client.api.base_url}/_ping", timeout=timeout_s)
        if response.ok:
            return ""
        return f"ping answered {response.status_code}"
    except engine_errors() as exc:
        return _reason(exc)


def _reason(exc: BaseException) -> str:
    """A connection error's cause in a few words (requests nests it two or three exceptions deep)."""
    text = first_line(exc)
    for words in ("Connection refused", "No such file or directory", "Connection reset", "Connection aborted",
                  "timed out", "Remote end closed connection"):
        if words in text:
            return f"{words.lower()} at {_socket_name()}"
    return text[:160]


def _socket_name() -> str:
    return os.environ.get("DOCKER_HOST") or "the engine's socket"


def _supervise(client, containers, request: LocalRequest, out, received, preempt_after: float | None = None
               ) -> Outcome:
    """Stream all containers' output; the run ends when every node is done (with MPI: when node 0's mpirun
    is), at the first failure, which stops the rest, at a stop signal (``received``), when the engine goes
    away, or ``preempt_after`` seconds in (a drill's preemption: the gang is stopped as Azure ML stops
    preempted nodes; it is no signal to this task, so the run goes on with the next attempt)."""
    lock, exits = threading.Lock(), queue.Queue()

    def stream(container):
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span two chunks
        try:
            for chunk in container.logs(stream=True, follow=True):
                with lock:
                    out.write(decoder.decode(chunk))
                    out.flush()
        except Exception:  # noqa: BLE001 - it went away (gang stop, local-cancel, the engine): the loop says why
            pass

    def wait(node, container):
        try:
            exits.put((node, int(container.wait().get("StatusCode", 1))))
        except Exception:  # noqa: BLE001 - removed from another shell, or the engine went away
            exits.put((node, None))

    streams = [threading.Thread(target=stream, args=(c,), daemon=True) for c in containers]
    for node, container in enumerate(containers):
        streams[node].start()
        threading.Thread(target=wait, args=(node, container), daemon=True).start()
    done, mpi = set(), request.distribution.launch == "mpi"
    preempt_at = time.monotonic() + preempt_after if preempt_after is not None else None
    while True:
        if received:
            outcome = Outcome("Canceled", 128 + received[0])
            break
        try:
            node, code = exits.get(timeout=0.5)
        except queue.Empty:
            if preempt_at is not None and time.monotonic() >= preempt_at:
                outcome = Outcome("Preempted", 128 + signal.SIGTERM)
                break
            continue
        if (request.run_dir / CANCEL_MARK).exists():
            outcome = Outcome("Canceled", 130)
            break
        lost = engine_down(client) if code != 0 else ""
        if lost:
            outcome = Outcome("Failed", 1, "the Docker engine", engine_lost=lost)
            break
        if code is None:  # removed from another shell without local-cancel
            outcome = Outcome("Canceled", 130)
            break
        if code != 0:
            outcome = _failure(request, node, code)
            break
        done.add(node)
        if len(done) == len(containers) or (mpi and node == 0):
            outcome = Outcome("Completed")
            break
    if not outcome.engine_lost:  # without an engine the containers are gone (or kept running by live-restore)
        seen = len(received)
        _stop_gang(containers, request.grace_s + 1, hurry=lambda: len(received) > seen)  # the launcher's grace
        if outcome.status == "Failed":
            outcome.oom_killed = _oom_killed(containers)
    deadline = time.monotonic() + 3
    for thread in streams:
        thread.join(max(0.0, deadline - time.monotonic()))
    return outcome


def _oom_killed(containers) -> list[int]:
    """The nodes whose container Docker reports killed for memory (State.OOMKilled), asked once they stopped."""
    nodes = []
    for node, container in enumerate(containers):
        try:
            container.reload()
        except engine_errors():
            continue
        if container.attrs.get("State", {}).get("OOMKilled"):
            nodes.append(node)
    return nodes


def _stop_gang(containers, grace_s: float = GRACE_S, hurry=lambda: False) -> None:
    """SIGTERM to every container at once (the launcher passes it to the processes), SIGKILL to any
    still running after the grace period, or at once when ``hurry()`` says so (another Ctrl-C)."""
    for container in containers:
        try:
            container.kill(signal="SIGTERM")
        except engine_errors():  # not running any more, gone, or no engine
            pass
    deadline = time.monotonic() + grace_s
    for container in containers:
        while True:
            try:
                container.reload()
            except engine_errors():
                break
            if container.status != "running":
                break
            if time.monotonic() > deadline or hurry():
                try:
                    container.kill()
                except engine_errors():
                    pass
                break
            time.sleep(0.1)


def _teardown(client, request: LocalRequest, containers, engine_lost: str = "", received=(), out=None) -> list[str]:
    """Remove the run's containers and network: by label too, since an interrupt can land between Docker
    making one and this process hearing of it. Every item is tried; problems are returned. When the engine
    went away, wait a while for it to come back first (a Ctrl-C ends the wait)."""
    if engine_lost:
        print(f"run {request.run_id}: the Docker engine went away ({engine_lost}); waiting up to "
              f"{ENGINE_WAIT_S:.0f} s for it to come back to remove the run's containers and network",
              file=out or sys.stdout, flush=True)
        seen, deadline = len(received), time.monotonic() + ENGINE_WAIT_S
        while engine_down(client):
            if time.monotonic() > deadline or len(received) > seen:
                return [f"the engine did not answer within {ENGINE_WAIT_S:.0f} s" if len(received) == seen
                        else "the wait for the engine was interrupted"]
            time.sleep(1)
    problems = []
    label = {"label": f"{LABEL_RUN_ID}={request.run_id}"}
    with signals_ignored():
        found = {c.id: c for c in containers}
        try:
            found.update({c.id: c for c in client.containers.list(all=True, filters=label)})
        except engine_errors() as exc:
            problems.append(f"listing its containers: {_reason(exc)}")
        for container in found.values():
            try:
                remove_container(container)
            except (*engine_errors(), ToolkitError) as exc:
                problems.append(f"container {container.name}: {_reason(exc)}")
        networks = []
        try:
            networks = client.networks.list(filters=label)
        except engine_errors() as exc:
            problems.append(f"listing its network: {_reason(exc)}")
        for network in networks:
            try:
                remove_network(network)
            except (*engine_errors(), ToolkitError) as exc:
                problems.append(f"network {network.name}: {_reason(exc)}")
    return problems


def _failure(request: LocalRequest, node: int, code: int) -> Outcome:
    """Name the process that failed first, from the launchers' records (a container that died without one,
    e.g. killed for memory, or mpirun failing by itself, is named by its node). The records are read where
    this attempt's logs are mounted from (``logs/attempt-<k>`` in a drill)."""
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


def _track(client, request: LocalRequest) -> dict | None:
    """The run's MLflow run in the project's store, named by the run id (None: the image has no MLflow)."""
    first, d = request.containers[0], request.distribution
    commit = tracking.git_commit(request.snapshot_dir)
    tags = tracking.run_tags(request.run_id, first.image, d.launch, d.nodes, d.procs_per_node, commit)
    return tracking.create(client, first.image, tracking.store(request.run_dir.parent), first.user,
                           first.labels[LABEL_EXPERIMENT], request.run_id, tags)


def _write_result(request: LocalRequest, outcome: Outcome, started_at: float, attempts: list[dict],
                  tracked: dict | None = None) -> None:
    """runs/<id>/result.json: what `invoke local-status` reports once the containers are gone."""
    d = request.distribution
    result = {"run_id": request.run_id, "status": outcome.status, "exit_code": outcome.exit_code,
              "failed": outcome.failed, "launch": d.launch, "nodes": d.nodes, "procs_per_node": d.procs_per_node,
              "started": started_at, "duration_s": round(time.time() - started_at, 1),
              "oom_killed_nodes": outcome.oom_killed, "engine_lost": outcome.engine_lost,
              "checkpoints": str(request.checkpoint_dir) if request.checkpoint_dir else "",
              "resumed_from": request.resumed_from, "attempts": attempts,
              "cleanup_problems": outcome.cleanup_problems,
              "mlflow": tracked and {"store": str(tracking.store(request.run_dir.parent)), **tracked}}
    path = request.run_dir / "result.json"
    try:  # whole or not at all: a full disk must not leave half a result for local-status
        path.with_suffix(".tmp").write_text(json.dumps(result, indent=2) + "\n")
        path.with_suffix(".tmp").replace(path)
    finally:
        path.with_suffix(".tmp").unlink(missing_ok=True)


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
                                         "logs/system_logs/launcher")]
    folders += [tracking.store(run_dir.parent)]
    folders += [request.checkpoint_dir] if request.checkpoint_dir else []
    folders += [cache_dir] if cache_dir and not cache_dir.exists() else []
    try:
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            if other_user:
                os.chown(folder, uid, gid)
        (run_dir / "request.json").write_text(json.dumps(describe(request), indent=2) + "\n")
    except OSError as exc:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise ToolkitError(f"cannot make the run folder {run_dir}: {exc.strerror or exc}",
                           _disk_full(run_dir.parent, str(exc.strerror)) or "set local.runs_dir to a writable folder"
                           ) from None


def _archive_from_image(client, image: str, folder: str, uid: int, gid: int) -> bytes:
    """The code baked into an image, as a snapshot archive for the working directory."""
    holder = client.containers.create(image, ["true"], labels={"amltrain.purpose": "read baked code"})
    try:
        chunks, _ = holder.get_archive(folder)
        data = b"".join(chunks)
    finally:
        remove_container(holder)
    return snapshot.reroot(data, Path(folder).name, WORKDIR, uid, gid)


def _refused(client, exc, request: LocalRequest) -> ToolkitError:
    """Docker refused to create or start a container, or went away meanwhile: one line, the usual cause named."""
    lost = engine_down(client)
    if lost:
        return ToolkitError(f"the Docker engine went away while run {request.run_id} was being set up ({lost}); "
                            "nothing kept", ENGINE_HINT)
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
        # A node's memory, as on a VM of finite size: no swap beyond it, and the kernel's OOM killer at it.
        ports={port: (address, host) for port, address, host in c.ports} or None,
        mem_limit=c.memory or None, memswap_limit=c.memory or None,
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
