"""Inside each container of a local run: start the job's processes the way Azure ML starts them.

It runs with the image's own ``python`` and the standard library only: ``executor`` copies this file and
the container's plan (``plan.json``, made on the host, printed by ``--dry-run``) into
``/mnt/azureml/.amltrain/`` next to the snapshot, so images need nothing of ours. Modes:

- ``run``: start the plan's processes (per-process launch: one per rank; per-node launch or a single
  process: one), each with its own environment, its output teed to its ``std_log`` file and, prefixed
  with its rank, to stdout. The first process to fail stops the others; its exit code becomes the
  container's and its rank is recorded for the host to name.
- ``mpirun``: node 0 of an MPI run: wait until every other node answers, then ``mpirun`` across them.
- ``serve``: the other nodes of an MPI run: start what node 0's ``mpirun`` asks for through ``rsh``.
- ``rsh HOST WORDS…``: ``mpirun``'s remote-shell agent (``plm_rsh_agent``) in place of ssh: no sshd in the
  image, no keys; a per-run token that exists only inside the run's containers authenticates it.
- ``rank -- COMMAND…``: wraps each process ``mpirun`` starts, like ``run`` does for one process.
"""

from __future__ import annotations

import hmac
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

CONTROL_DIR = "/mnt/azureml/.amltrain"
# Where this run's plan and token are: CONTROL_DIR in a container; tests point it elsewhere.
HERE = os.environ.get("AMLTRAIN_CONTROL_DIR", CONTROL_DIR)
PLAN = f"{HERE}/plan.json"
TOKEN = f"{HERE}/token"
WAIT_FOR_NODES_S = 120
_write_lock = threading.Lock()


def load_plan() -> dict:
    with open(PLAN) as f:
        return json.load(f)


def exit_status(returncode: int) -> int:
    """Popen's -N (killed by signal N) as a shell reports it: 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def tee(stream, log_path: str, prefix: bytes) -> threading.Thread:
    """Copy a child's output line by line into its log file (as is) and to stdout (prefixed). A log that
    cannot be written (a full disk) is given up, the stream goes on: a pump that stopped reading would leave
    the child blocked on a full pipe, and the run hanging."""
    def pump():
        log = None
        try:
            os.makedirs(os.path.dirname(log_path), exist_ok=True)
            log = open(log_path, "ab")
        except OSError as exc:
            _note(f"cannot write {log_path} ({exc.strerror}); its output goes to the container's stream only")
        for line in iter(stream.readline, b""):
            if log is not None:
                try:
                    log.write(line)
                    log.flush()
                except OSError as exc:
                    _note(f"cannot write {log_path} ({exc.strerror}); its output goes to the container's stream "
                          "only from here on")
                    log = _close_quietly(log)
            with _write_lock:
                sys.stdout.buffer.write(prefix + line if prefix else line)
                sys.stdout.buffer.flush()
        _close_quietly(log)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def _note(message: str) -> None:
    with _write_lock:
        sys.stdout.buffer.write(f"amltrain launcher: {message}\n".encode())
        sys.stdout.buffer.flush()


def _close_quietly(f) -> None:
    try:
        if f is not None:
            f.close()
    except OSError:
        pass


def record_failure(plan: dict, label: str, rank: int, code: int, log: str, when: float) -> None:
    """What the host reads to say which rank failed first: the earliest ``when`` (the moment the process
    ended, not when it was noticed) wins. Without room to write it, the host names the node instead."""
    record = {"label": label, "rank": rank, "node_rank": plan["node_rank"], "exit_code": code, "log": log,
              "time": when}
    path = os.path.join(plan["status_dir"], f"{label.replace(' ', '_')}.json")
    try:
        os.makedirs(plan["status_dir"], exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)
    except OSError as exc:
        _note(f"cannot record the failure of {label} ({exc.strerror})")
        try:
            os.unlink(path + ".tmp")
        except OSError:
            pass


def stop(children, grace_s: float = 5.0) -> None:
    """Stop whole process groups (DataLoader workers, torchrun's children), politely first: SIGTERM, then
    SIGKILL after ``grace_s`` (the plan's: a preemption drill gives Azure's notice)."""
    for child in children:
        if child.poll() is None:
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Stopped(Exception):
    def __init__(self, signum: int):
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def catch_stop_signals() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _raise_stopped)


def ignore_stop_signals() -> None:
    """Once shutting down, a second signal must not cut the shutdown short."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def run(plan: dict) -> int:
    """Start the processes of this node; the first failure stops the rest (a gang, like Azure ML's)."""
    children, pumps, exits = [], [], queue.Queue()

    def wait(proc, child):  # stamps the moment each process ends, for naming the first failure right
        code = exit_status(child.wait())
        exits.put((proc, code, time.time()))

    catch_stop_signals()
    try:
        for proc in plan["processes"]:
            command = proc.get("command", plan["command"])  # its own: the rank run-local --debug-rank debugs
            child = subprocess.Popen(command, env={**os.environ, **proc["env"]}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            children.append(child)
            prefix = f"[{proc['label']}] ".encode() if plan["prefix"] else b""
            pumps.append(tee(child.stdout, proc["log"], prefix))
            threading.Thread(target=wait, args=(proc, child), daemon=True).start()
        for _ in children:
            while True:
                try:
                    proc, code, when = exits.get(timeout=0.5)
                    break
                except queue.Empty:
                    continue
            if code != 0:
                ignore_stop_signals()
                record_failure(plan, proc["label"], proc["rank"], code, proc["log"], when)
                stop(children)
                _join(pumps, 2)
                return code
        stop(children)  # background jobs left behind (tensorboard &) would hold the output pipes open
        _join(pumps, 5)
        return 0
    except Stopped as stopped:
        ignore_stop_signals()
        stop(children, float(plan.get("grace_s", 5.0)))
        return 128 + stopped.signum


def _join(threads, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def wait_for_nodes(hosts: list[str], port: int) -> None:
    deadline = time.monotonic() + WAIT_FOR_NODES_S
    for host in hosts:
        while True:
            try:
                socket.create_connection((host, port), timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"amltrain launcher: node {host} did not answer on port {port} in "
                                     f"{WAIT_FOR_NODES_S} s") from None
                time.sleep(0.2)


def run_teed(argv: list[str], log: str, prefix: bytes, env: dict | None = None) -> tuple[int, float]:
    """One child in its own process group, its output teed: (exit status, when it ended). A stop signal
    stops the child's whole group before it is passed on."""
    child = None
    try:
        child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        pump = tee(child.stdout, log, prefix)
        code, when = exit_status(child.wait()), time.time()
    except Stopped:
        ignore_stop_signals()
        if child is not None:
            stop([child])
        raise
    pump.join(5)
    return code, when


def run_mpirun(plan: dict) -> int:
    """Node 0 of an MPI run: mpirun across all nodes; its output also goes to user_logs/mpi_log.txt."""
    catch_stop_signals()
    try:
        wait_for_nodes(plan["workers"], plan["exec_port"])
        code, _ = run_teed(plan["mpirun"], plan["mpi_log"], b"", env={**os.environ, **plan["mpirun_env"]})
    except Stopped as stopped:
        return 128 + stopped.signum
    return code


# The rsh channel: the agent sends one JSON line {"token", "command"}; the server answers with frames
# of one type byte and a 4-byte length: b"O" output bytes, b"X" the exit status as text.

def _frame(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload)) + payload


def _read_exact(conn, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


MAX_SESSIONS = 16  # mpirun needs one per node; more is someone knocking
REQUEST_TIMEOUT_S = 10


def _request(conn) -> tuple[str, str] | None:
    """(token, command) of a well-formed request, else None; an idle client is dropped after a while."""
    conn.settimeout(REQUEST_TIMEOUT_S)
    try:
        request = json.loads(conn.makefile("rb").readline(1 << 16) or b"null")
    except (OSError, ValueError):
        return None
    if not isinstance(request, dict):
        return None
    token, command = request.get("token"), request.get("command")
    if not isinstance(token, str) or not isinstance(command, str):
        return None
    return token, command


def _session(conn, token: str, slots: threading.BoundedSemaphore) -> None:
    """One remote command (an OpenMPI daemon): run it while the agent stays connected."""
    with conn:
        if not slots.acquire(blocking=False):
            return
        try:
            request = _request(conn)
            if request is None or not hmac.compare_digest(request[0].encode(), token.encode()):
                try:
                    conn.sendall(_frame(b"X", b"255"))
                except OSError:
                    pass
                return
            conn.settimeout(None)
            _relay(conn, request[1])
        finally:
            slots.release()


def _relay(conn, command: str) -> None:
    child = subprocess.Popen(["/bin/sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)

    def hang_up():  # the agent went away (mpirun ended or was killed): so does the daemon
        try:
            while conn.recv(1024):
                pass
        except OSError:
            pass
        if child.poll() is None:
            stop([child])

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        for chunk in iter(lambda: child.stdout.read1(65536), b""):
            conn.sendall(_frame(b"O", chunk))
        conn.sendall(_frame(b"X", str(exit_status(child.wait())).encode()))
    except OSError:
        stop([child])


def serve(plan: dict) -> int:
    """The other nodes of an MPI run: run what node 0's mpirun asks for, until the host stops the run."""
    with open(TOKEN) as f:
        token = f.read().strip()
    catch_stop_signals()  # PID 1 ignores SIGTERM unless it says otherwise
    slots = threading.BoundedSemaphore(MAX_SESSIONS)
    server = socket.create_server(("", plan["exec_port"]))
    try:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=_session, args=(conn, token, slots), daemon=True).start()
    except Stopped as stopped:
        return 128 + stopped.signum


def rsh(words: list[str]) -> int:
    """Called by mpirun as ``AGENT HOST WORD…``, like ssh: run the words as a shell command on HOST."""
    while words and words[0].startswith("-"):  # ssh-style options mpirun may add
        words = words[1:]
    host, command = words[0], " ".join(words[1:])
    plan = load_plan()
    with open(TOKEN) as f:
        token = f.read().strip()
    try:
        conn = socket.create_connection((host, plan["exec_port"]), timeout=30)
        conn.settimeout(None)
        conn.sendall(json.dumps({"token": token, "command": command}).encode() + b"\n")
        while True:
            kind, size = struct.unpack("!cI", _read_exact(conn, 5))
            payload = _read_exact(conn, size)
            if kind == b"O":
                sys.stdout.buffer.write(payload)
                sys.stdout.buffer.flush()
            else:
                return int(payload)
    except (OSError, EOFError) as exc:
        print(f"amltrain rsh: {host}: {exc or 'connection closed'}", file=sys.stderr)
        return 255


def rank(command: list[str]) -> int:
    """One process started by mpirun: its std_log_process_<rank>.txt, the rank prefix, its failure record."""
    plan = load_plan()
    world_rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    label = f"rank {world_rank}"
    log = plan["rank_log"].format(rank=world_rank)
    catch_stop_signals()
    try:
        code, when = run_teed(command, log, f"[{label}] ".encode() if plan["prefix"] else b"")
    except Stopped as stopped:  # mpirun stopping the job: not a failure of this rank
        return 128 + stopped.signum
    if code != 0:
        record_failure(plan, label, world_rank, code, log, when)
    return code


def main(argv: list[str]) -> int:
    mode, rest = (argv[0], argv[1:]) if argv else ("", [])
    if mode == "run":
        return run(load_plan())
    if mode == "mpirun":
        return run_mpirun(load_plan())
    if mode == "serve":
        return serve(load_plan())
    if mode == "rsh":
        return rsh(rest)
    if mode == "rank":
        return rank(rest[1:] if rest[:1] == ["--"] else rest)
    print(f"amltrain launcher: unknown mode {mode!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
