"""Faults during local runs, in real containers: repeated stop signals, a node killed for memory, a disk that
fills up. Each must end in one `error:` line, the right exit code, nothing left running, and the results kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CLI, ROOT

from .conftest import containers_labelled, invoke, run_dir_of, start_two_nodes

# Both nodes write a file, then ignore SIGTERM (as a script saving a checkpoint would take its time), so the
# gang stop lasts the launcher's whole grace period: the window for a second signal.
STUBBORN = "echo $NODE_RANK > outputs/node_$NODE_RANK.txt; trap '' TERM; echo up; sleep 300"


def error_line(stderr: str) -> str:
    """The task's only stderr line, which must be its error."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr
    return lines[0]


def assert_gone(client, run_id: str) -> None:
    assert containers_labelled(client, f"amltrain.run-id={run_id}") == []
    assert client.networks.list(filters={"label": f"amltrain.run-id={run_id}"}) == []


@pytest.mark.parametrize("signals, until_exit, code", [
    ((signal.SIGINT, signal.SIGINT), False, 130),
    ((signal.SIGINT, signal.SIGINT, signal.SIGINT), False, 130),
    ((signal.SIGTERM, signal.SIGINT), False, 143),
    ((signal.SIGINT,), True, 130),  # Ctrl-C held down: before, during and after the shutdown, to the last moment
], ids=["ctrl-c-twice", "ctrl-c-three-times", "sigterm-then-ctrl-c", "ctrl-c-until-it-exits"])
def test_more_signals_during_the_shutdown_still_end_canceled_with_the_first_signals_code(
        cpu_image, probe_env, docker_client, signals, until_exit, code):
    proc, run_dir = start_two_nodes(STUBBORN, probe_env)
    try:
        time.sleep(1)  # both nodes past their trap
        for signum in signals:
            proc.send_signal(signum)
            time.sleep(0.7)  # within the gang stop's grace period (the nodes ignore SIGTERM for 5 s)
        deadline = time.monotonic() + 60
        while until_exit and proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(signals[-1])
            time.sleep(0.05)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    assert f"run {run_dir.name} interrupted; containers and network removed" in error_line(stderr)
    assert_gone(docker_client, run_dir.name)
    result = json.loads((run_dir / "result.json").read_text())
    assert (result["status"], result["exit_code"]) == ("Canceled", code)
    assert sorted(p.name for p in (run_dir / "outputs").iterdir()) == ["node_0.txt", "node_1.txt"]
    status = invoke("local-status", env=probe_env).stdout
    assert any(line.startswith(run_dir.name) and "Canceled" in line for line in status.splitlines()), status


def test_a_node_killed_for_memory_stops_the_gang_and_is_named(cpu_image, probe_env, docker_client):
    """Node 1 of 2 holds 512 MiB under a 128m limit (local.memory): the kernel kills it, the other node (asleep
    for 300 s) is stopped, the exit code is 137 and the line says out of memory because Docker says so."""
    env = {**probe_env, "INVOKE_LOCAL_MEMORY": "128m"}
    dry = invoke("run-local", "--nodes", "2", "--dry-run", env=env)
    assert dry.stdout.count("memory: 128m") == 2, dry.stdout
    started = time.monotonic()
    result = invoke("run-local", "--nodes", "2", "--args", "--hog-mb 512 --hog-node 1 --sleep 300", env=env)
    assert result.returncode == 137, result.stdout[-2000:] + result.stderr
    assert time.monotonic() - started < 120  # node 0 was stopped, not waited for
    line = error_line(result.stderr)
    assert "rank 1 (node 1) exited with code 137; all nodes stopped" in line
    assert "out of memory: Docker reports node-1 OOM-killed at its container's limit of 128m (local.memory)" in line
    run_dir = Path(run_dir_of(result.stdout))
    outcome = json.loads((run_dir / "result.json").read_text())
    assert (outcome["status"], outcome["exit_code"], outcome["oom_killed_nodes"]) == ("Failed", 137, [1])
    assert_gone(docker_client, run_dir.name)
    status = invoke("local-status", env=env).stdout
    assert "exit code 137 (rank 1 (node 1)), out of memory on node-1" in status, status
    # A SIGKILL that is not the OOM killer's is not called out of memory.
    killed = invoke("run-local", "--nodes", "2", "--command", "[ $NODE_RANK = 1 ] && kill -9 $$; sleep 300",
                    env=env)
    assert killed.returncode == 137, killed.stderr
    line = error_line(killed.stderr)
    assert "not for memory (Docker reports no out-of-memory kill)" in line and "OOM-killed" not in line


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs for the runs folder: a disk that fills up. Mounting needs root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_disk_that_fills_up_while_outputs_are_written_is_one_line_naming_it(
        cpu_image, probe_env, docker_client, small_disk):
    env = {**probe_env, "INVOKE_LOCAL_RUNS_DIR": str(small_disk / "runs")}
    result = invoke("run-local", "--args", "--fill-mb 64", env=env, timeout=300)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr
    line = error_line(result.stderr)
    assert "node 0 exited with code 1" in line and "result.json not written (No space left on device)" in line
    assert f"the disk mounted at {small_disk}, which holds {small_disk}/runs/" in line and "is full" in line
    run_dir = Path(run_dir_of(result.stdout))
    assert json.loads((run_dir / "outputs/probe.json").read_text())["cwd"] == "/mnt/azureml/wd"  # kept
    assert (run_dir / "outputs/fill.bin").stat().st_size > 1 << 20  # what fitted is kept too
    assert not (run_dir / "result.json").exists()  # no half-written result for local-status to trip over
    assert "No space left on device" in result.stdout  # the script's own error still reached the terminal
    assert_gone(docker_client, run_dir.name)


def test_a_stop_signal_in_a_drills_later_attempt_ends_the_run_canceled_with_no_further_attempt(
        cpu_image, probe_env, docker_client):
    """A drill's preemption is no signal to the task, but a real one ends the whole run, earlier attempts kept."""
    proc = subprocess.Popen([CLI, "run-local", "--nodes", "2", "--preempt-after", "3", "--restarts", "1",
                             "--grace", "2", "--command", "echo up; sleep 300"],
                            cwd=ROOT, env={**os.environ, **probe_env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        run_dir = Path(run_dir_of(proc.stdout.readline()))
        while "attempt 2 of run" not in (line := proc.stdout.readline()):
            assert line, "the run ended before its second attempt"
        ups = 0
        while ups < 2:  # both nodes of attempt 2 running
            line = proc.stdout.readline()
            assert line, "the second attempt ended early"
            ups += line.strip().endswith("up")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert f"run {run_dir.name} interrupted; containers and network removed" in error_line(stderr)
    assert_gone(docker_client, run_dir.name)
    result = json.loads((run_dir / "result.json").read_text())
    assert (result["status"], result["exit_code"]) == ("Canceled", 143)
    assert [(a["attempt"], a["status"]) for a in result["attempts"]] == [(1, "Preempted"), (2, "Canceled")]
    assert (run_dir / "logs/attempt-1/user_logs").is_dir()
