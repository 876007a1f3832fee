"""The in-container launcher, run here as the containers run it (a real process, real children)."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from amltrain.local import launcher

LAUNCHER = Path(launcher.__file__)


def start(control: Path, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(LAUNCHER), *args], env={**os.environ,
                            "AMLTRAIN_CONTROL_DIR": str(control)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def plan_for(tmp_path: Path, command: list[str], ranks: int, **extra) -> Path:
    control = tmp_path / "control"
    control.mkdir(parents=True)
    plan = {"mode": "run", "node_rank": 1, "prefix": ranks > 1, "status_dir": str(tmp_path / "status"),
            "command": command, "rank_log": str(tmp_path / "logs/std_log_process_{rank}.txt"),
            "processes": [{"rank": 2 + i, "label": f"rank {2 + i}", "env": {"RANK": str(2 + i)},
                           "log": str(tmp_path / f"logs/std_log_process_{2 + i}.txt")} for i in range(ranks)]}
    (control / "plan.json").write_text(json.dumps(plan | extra))
    return control


SCRIPT = ("import os, sys, time; rank = int(os.environ['RANK']); print('hello from', rank, flush=True); "
          "time.sleep(1 if rank == 3 else 60); sys.exit(5 if rank == 3 else 0)")


def test_every_rank_gets_its_log_and_a_prefixed_stream_and_the_first_failure_stops_the_rest(tmp_path):
    control = plan_for(tmp_path, [sys.executable, "-c", SCRIPT], ranks=2)
    started = time.monotonic()
    out, _ = start(control, "run").communicate(timeout=30)
    assert time.monotonic() - started < 15  # rank 2 was stopped, not waited for (it sleeps 60 s)
    assert "[rank 2] hello from 2\n" in out and "[rank 3] hello from 3\n" in out
    assert (tmp_path / "logs/std_log_process_3.txt").read_text() == "hello from 3\n"  # the log is unprefixed
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "status").glob("*.json")]
    assert (record["label"], record["rank"], record["node_rank"], record["exit_code"]) == ("rank 3", 3, 1, 5)


def test_exit_status_of_the_container_is_the_failed_ranks_and_a_signal_counts_as_128_plus_n(tmp_path):
    control = plan_for(tmp_path, [sys.executable, "-c", SCRIPT], ranks=2)
    process = start(control, "run")
    process.communicate(timeout=30)
    assert process.returncode == 5
    killed = plan_for(tmp_path / "killed", [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), 9)"], 1)
    process = start(killed, "run")
    process.communicate(timeout=30)
    assert process.returncode == 137


def test_a_background_job_left_behind_does_not_hold_the_node(tmp_path):
    control = plan_for(tmp_path, ["/bin/sh", "-c", "(sleep 60 &); echo done"], ranks=1)
    started = time.monotonic()
    process = start(control, "run")
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and out == "done\n" and time.monotonic() - started < 15


def test_an_mpi_rank_gets_its_log_its_prefix_and_its_failure_record(tmp_path):
    control = plan_for(tmp_path, [], ranks=2)
    process = subprocess.run([sys.executable, str(LAUNCHER), "rank", "--", sys.executable, "-c",
                              "print('from rank 7'); raise SystemExit(4)"], capture_output=True, text=True,
                             env={**os.environ, "AMLTRAIN_CONTROL_DIR": str(control), "OMPI_COMM_WORLD_RANK": "7"},
                             timeout=30)
    assert process.returncode == 4 and process.stdout == "[rank 7] from rank 7\n"
    assert (tmp_path / "logs/std_log_process_7.txt").read_text() == "from rank 7\n"
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "status").glob("*.json")]
    assert (record["label"], record["exit_code"]) == ("rank 7", 4)


def test_a_single_process_is_not_prefixed_and_success_is_zero(tmp_path):
    control = plan_for(tmp_path, [sys.executable, "-c", "print('only one')"], ranks=1)
    process = start(control, "run")
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and out == "only one\n"
    assert not (tmp_path / "status").exists()


def test_sigterm_stops_every_rank(tmp_path):
    control = plan_for(tmp_path, [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                       ranks=2)
    process = start(control, "run")
    assert process.stdout.readline().endswith("up\n")
    process.terminate()
    process.communicate(timeout=15)
    assert process.returncode == 143
    assert not (tmp_path / "status").exists()  # stopped, not failed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def exec_server(tmp_path):
    control = plan_for(tmp_path, [], ranks=1, exec_port=free_port())
    (control / "token").write_text("s3cret")
    server = start(control, "serve")
    port = exec_port(control)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        server.kill()
        pytest.fail(f"the exec server never listened on port {port}: {server.communicate()[0]}")
    yield control
    server.kill()
    server.wait()


def test_the_rsh_agent_runs_a_shell_command_on_the_other_node_and_returns_its_status(exec_server):
    agent = start(exec_server, "rsh", "127.0.0.1", "echo", "$((40 + 2));", "exit", "3")
    out, _ = agent.communicate(timeout=30)
    assert out == "42\n" and agent.returncode == 3


def exec_port(control: Path) -> int:
    return json.loads((control / "plan.json").read_text())["exec_port"]


@pytest.mark.parametrize("request_line", [b"not json\n", b"[1]\n", b'{"token": "s3cret"}\n',
                                          '{"token": "é", "command": "true"}\n'.encode(), b"\n"])
def test_malformed_requests_are_refused_quietly(exec_server, request_line):
    with socket.create_connection(("127.0.0.1", exec_port(exec_server)), timeout=10) as conn:
        conn.sendall(request_line)
        assert conn.recv(16) == b"X\x00\x00\x00\x03255"


def test_an_idle_client_does_not_block_the_run(exec_server):
    idle = socket.create_connection(("127.0.0.1", exec_port(exec_server)))  # connects and says nothing
    try:
        agent = start(exec_server, "rsh", "127.0.0.1", "echo", "still served")
        out, _ = agent.communicate(timeout=30)
        assert agent.returncode == 0 and out == "still served\n"
    finally:
        idle.close()


def test_the_rsh_agent_is_refused_without_the_runs_token(exec_server, tmp_path):
    (exec_server / "token").write_text("guess")
    agent = start(exec_server, "rsh", "127.0.0.1", "touch", str(tmp_path / "pwned"))
    out, _ = agent.communicate(timeout=30)
    assert agent.returncode == 255 and not (tmp_path / "pwned").exists()
    assert "amltrain rsh:" not in out  # refused by the server, not a connection that failed


def test_a_killed_agent_takes_its_remote_command_with_it(exec_server, tmp_path):
    started, marker = tmp_path / "started", tmp_path / "still-running"
    agent = start(exec_server, "rsh", "127.0.0.1", f"touch {started}; sleep 2; touch {marker}")
    for _ in range(100):
        if started.exists():
            break
        time.sleep(0.05)
    assert started.exists(), "the remote command never started"
    agent.kill()
    agent.wait()
    time.sleep(3)
    assert not marker.exists()
