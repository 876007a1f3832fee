"""The README's "Your own job in five steps", run as written: the page cannot drift from the tool.

Every command of the section's code block runs through the entry point, from the project folder, with a run
folder and an experiment of this test's own: the local ones for real (the build is up to date, the tiny job takes
seconds), `invoke ui` until it serves (asked over HTTP for the runs just made, then stopped), the Azure ones with
`--dry-run` against a workspace config.json with no Azure behind it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import urllib.request
import uuid
from pathlib import Path

from tests.conftest import CLI, ROOT

from .local_registry import free_port

AZURE = {"push", "register", "submit", "compute", "model"}


def five_steps() -> tuple[str, list[list[str]]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own job in five steps", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return section, [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_the_readme_commands_of_the_five_steps_work_as_written(cpu_image, docker_client, tmp_path):
    section, commands = five_steps()
    assert all(words[:2] == ["./dev", "invoke"] for words in commands), commands
    tasks = [words[2] for words in commands]
    assert tasks[:2] == ["build", "run-local"] and {"submit", "ui"} <= set(tasks)
    # Steps 1 and 2: the script is the user's own (not the sample), and what it imports is in conda/cpu.yml.
    script = next(words[words.index("--script") + 1] for words in commands if "--script" in words)
    assert script in section and script != "train/pytorch_train.py"
    imports = set(re.findall(r"^import (\w+)", (ROOT / script).read_text(), re.M)) & {"torch", "mlflow"}
    spec = (ROOT / "conda/cpu.yml").read_text()
    assert imports == {"torch", "mlflow"} and "torch==" in spec and "mlflow-skinny==" in spec

    experiment = f"tiny-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"subscription_id": "00000000-1111-2222-3333-444444444444",
                                  "resource_group": "rg", "workspace_name": "ws"}))
    env = {**os.environ, "INVOKE_LOCAL_RUNS_DIR": str(tmp_path / "runs"), "INVOKE_JOB_EXPERIMENT": experiment,
           "INVOKE_LOCAL_CACHE_DIR": str(tmp_path / "cache"), "INVOKE_AZURE_CONFIG_FILE": str(config),
           "AZURE_CLIENT_ID": "client", "AZURE_TENANT_ID": "tenant", "AZURE_CLIENT_SECRET": "s3cret"}
    local_runs = []
    for words in commands:
        argv, task = [CLI, *words[2:]], words[2]
        if task == "ui":
            local_runs_seen = serve_and_list(argv, env, experiment)
            assert sorted(local_runs_seen) == sorted(local_runs), (local_runs_seen, local_runs)
            continue
        if task in AZURE:
            argv.append("--dry-run")
        result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{shlex.join(words)}:\n{result.stdout[-3000:]}{result.stderr}"
        if task == "run-local":
            run_dir = Path(re.search(r"results in (\S+)", result.stdout).group(1))
            outcome = json.loads((run_dir / "outputs/result.json").read_text())
            nodes = int(words[words.index("--nodes") + 1]) if "--nodes" in words else 1
            procs = int(words[words.index("--procs-per-node") + 1]) if "--procs-per-node" in words else 1
            assert outcome["world_size"] == nodes * procs and outcome["val_acc"] > 0.8, outcome
            local_runs.append(run_dir.name)
        if task == "submit":
            assert "${{inputs.data}}" in result.stdout or "inputs.data" in result.stdout, result.stdout[-2000:]
    assert len(local_runs) == 2


def serve_and_list(argv: list[str], env: dict, experiment: str) -> list[str]:
    """Start `invoke ui` (on a free port: 5000 may be taken), ask it for the experiment's runs, stop it."""
    port = free_port()
    ui = subprocess.Popen([*argv, "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        while not (seen and seen[-1].startswith("MLflow UI: ")) and (line := ui.stdout.readline()):
            seen.append(line)
        assert seen and seen[-1].startswith(f"MLflow UI: http://127.0.0.1:{port}"), "".join(seen)
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        with urllib.request.urlopen(f"{api}/experiments/get-by-name?experiment_name={experiment}", timeout=30) as r:
            experiment_id = json.load(r)["experiment"]["experiment_id"]
        request = urllib.request.Request(f"{api}/runs/search", method="POST", headers={
            "Content-Type": "application/json"}, data=json.dumps({"experiment_ids": [experiment_id]}).encode())
        with urllib.request.urlopen(request, timeout=30) as r:
            runs = json.load(r)["runs"]
        assert all(run["info"]["status"] == "FINISHED" for run in runs), runs
        return [run["info"]["run_name"] for run in runs]
    finally:
        ui.send_signal(signal.SIGINT)
        ui.wait(timeout=30)
