"""The Docker engine restarting in the middle of a 2-node run: the task ends with one line, the outputs are kept,
and once the engine is back nothing of the run is left (no container, no network).

It stops and restarts the engine, as its own process (`nohup dockerd … &`, the way .ci/run starts it): only on
request (AMLTRAIN_TEST_ENGINE_RESTART=1, which .ci/run sets when it started the engine itself, as root), and
last of the session (tests/docker/conftest.py moves it there), so no other test sees the engine go. It leaves the
engine running, started exactly as before: same command line, environment, working directory and log file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import containers_labelled, start_two_nodes

pytestmark = pytest.mark.engine_restart

PIDFILE = Path("/var/run/docker.pid")


@dataclass
class Dockerd:
    pid: int
    argv: list[str]
    env: dict[str, str]
    cwd: str
    log: str  # where its output went, appended to again

    @classmethod
    def running(cls) -> Dockerd:
        pid = int(PIDFILE.read_text().strip())
        proc = Path(f"/proc/{pid}")
        if (proc / "comm").read_text().strip() != "dockerd":
            raise RuntimeError(f"{PIDFILE} names pid {pid}, which is not dockerd")
        environ = (proc / "environ").read_bytes().split(b"\0")
        env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        log = os.readlink(proc / "fd/1")
        return cls(pid, [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a], env,
                   os.readlink(proc / "cwd"), log if log.startswith("/") and Path(log).is_file() else "/dev/null")

    def stop(self, timeout_s: float = 90) -> None:
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while Path(f"/proc/{self.pid}").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd {self.pid} did not stop in {timeout_s:.0f} s")
            time.sleep(0.2)

    def start(self) -> None:
        """As `nohup ARGV >>LOG 2>&1 &` would: its own session, SIGHUP ignored, output to the same log."""
        with open(self.log, "ab") as log:
            subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))


def engine_answers(client, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            client.ping()
            return True
        except Exception:  # noqa: BLE001 - not up (yet): refused, reset, no socket
            time.sleep(0.5)
    return False


@pytest.fixture
def engine(docker_client):
    """The engine's own process, to restart; whatever happens, the engine answers again afterwards."""
    if os.environ.get("AMLTRAIN_TEST_ENGINE_RESTART") != "1":
        pytest.skip("restarts the Docker engine: opt in with AMLTRAIN_TEST_ENGINE_RESTART=1 (.ci/run does, when it "
                    "started the engine)")
    if os.geteuid() != 0 or os.environ.get("DOCKER_HOST"):
        pytest.fail("AMLTRAIN_TEST_ENGINE_RESTART=1 needs root and the local engine (no DOCKER_HOST)")
    dockerd = Dockerd.running()
    yield dockerd
    if not engine_answers(docker_client, 5):
        if not Path(f"/proc/{dockerd.pid}").exists() and not PIDFILE.exists():
            dockerd.start()
        assert engine_answers(docker_client, 90), "the Docker engine did not come back"


def test_an_engine_restart_mid_run_is_one_line_keeps_the_outputs_and_leaves_nothing(cpu_image, probe_env, engine,
                                                                                      docker_client):
    proc, run_dir = start_two_nodes("echo $NODE_RANK > outputs/node_$NODE_RANK.txt; echo up; sleep 300", probe_env)
    try:
        engine.stop()
        engine.start()
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert engine_answers(docker_client, 60)
    assert proc.returncode == 1, out[-2000:] + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: run {run_dir.name} failed: the Docker engine went away during the run (")
    assert lines[0].endswith(f"its containers and network were removed once it was back; partial results in "
                             f"{run_dir}"), lines[0]
    assert sorted(p.name for p in (run_dir / "outputs").iterdir()) == ["node_0.txt", "node_1.txt"]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "Failed" and result["engine_lost"] and result["cleanup_problems"] == []
    assert containers_labelled(docker_client, f"amltrain.run-id={run_dir.name}") == []
    assert docker_client.networks.list(filters={"label": f"amltrain.run-id={run_dir.name}"}) == []
