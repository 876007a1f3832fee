"""Local runs in the MLflow UI, seen by a real browser: a finished smoke run and its val_acc, in headless Chromium.

The screenshot is kept as an artifact: under $AMLTRAIN_TEST_ARTIFACTS, else .cache/test-artifacts/ (the test
prints the path). Chromium comes from Debian (`apt-get install chromium`; .ci/run installs it): missing, the test
skips on a laptop and fails in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CLI, ROOT

from .conftest import invoke, run_dir_of
from .local_registry import free_port

ARTIFACTS = Path(os.environ.get("AMLTRAIN_TEST_ARTIFACTS") or ROOT / ".cache/test-artifacts")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("headless Chromium is required in CI: apt-get install chromium")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    return found


def browse(browser: str, url: str, *args: str) -> str:
    """The page as Chromium renders it once its scripts have fetched the run (virtual time runs them out)."""
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--virtual-time-budget=20000", "--window-size=1400,1800", *args, url],
                          capture_output=True, text=True, timeout=90).stdout


def test_a_finished_smoke_run_and_its_val_acc_show_in_the_mlflow_ui(cpu_image, docker_client, tmp_path):
    browser = chromium()
    env = {"INVOKE_LOCAL_RUNS_DIR": str(tmp_path / "runs"), "INVOKE_LOCAL_CACHE_DIR": str(tmp_path / "cache")}
    smoke = invoke("smoke", env=env)
    assert smoke.returncode == 0, smoke.stdout[-3000:] + smoke.stderr
    run_dir = Path(run_dir_of(smoke.stdout))
    tracked = json.loads((run_dir / "result.json").read_text())["mlflow"]
    val_acc = (Path(tracked["store"], tracked["experiment_id"], tracked["run_id"], "metrics/val_acc")
               .read_text().split()[1])

    port = free_port()
    ui = subprocess.Popen([CLI, "ui", "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})
    try:
        seen = []  # the URL is printed once the UI answers (after building the UI image, the first time)
        while not (seen and seen[-1].startswith("MLflow UI: ")) and (line := ui.stdout.readline()):
            seen.append(line)
        assert seen and seen[-1].startswith(f"MLflow UI: http://127.0.0.1:{port} "), "".join(seen)
        page = f"http://127.0.0.1:{port}/#/experiments/{tracked['experiment_id']}/runs/{tracked['run_id']}"
        dom = browse(browser, page, "--dump-dom")
        # The run's name is its run id, fetched by the page's scripts (the URL holds only MLflow's own id).
        assert run_dir.name in dom, dom[-2000:]
        assert "val_acc" in dom and val_acc in dom
        assert "amltrain.status" in dom and "Completed" in dom
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / f"mlflow-ui-{time.strftime('%Y%m%dT%H%M%S')}.png"
        browse(browser, page, f"--screenshot={shot}")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        print(f"screenshot of the MLflow UI: {shot}")
    finally:
        ui.send_signal(signal.SIGINT)
        ui.wait(timeout=30)
    assert ui.returncode == 0
    assert not docker_client.containers.list(all=True, filters={"name": f"amltrain-mlflow-ui-{port}"})
