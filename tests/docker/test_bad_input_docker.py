"""Bad input that gets as far as a Docker engine (tests/unit/test_bad_input.py has the cases that need none).

Each case: the command, its exit code, what the one `error:` line says, no run announced, and nothing new on disk
(the runs and cache folders) or in Docker (containers and networks of the case's own experiment, so runs of other
tests on the same engine do not count). Then the one case that runs: a secret in `--command` stays out of the
printed request and of runs/<id>/request.json.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.docker.conftest import invoke

SECRET = "canary-d0c4e7-9af"


def docker_state(client, experiment: str) -> tuple[set[str], set[str]]:
    mine = {"label": f"amltrain.experiment={experiment}"}
    containers = {c.name for c in client.containers.list(all=True, filters=mine)}
    networks = {n.name for n in client.networks.list() if n.name.startswith(f"amltrain-{experiment}_")}
    return containers, networks


def disk_state(*folders: Path) -> set[str]:
    return {str(p) for folder in folders if folder.exists() for p in folder.rglob("*")} | \
        {str(folder) for folder in folders if folder.exists()}


@pytest.fixture
def case_env(probe_env) -> dict:
    """The probe job with an experiment of its own (its containers and networks are this case's only)."""
    return {**probe_env, "INVOKE_JOB_EXPERIMENT": f"badinput-{uuid.uuid4().hex[:8]}"}


def cache_of_another_user(tmp_path: Path) -> dict:
    if os.geteuid() != 0:
        pytest.skip("handing a folder to another user needs root")
    cache = tmp_path / "their-cache"
    cache.mkdir()
    os.chown(cache, 4242, 4242)
    return {"INVOKE_LOCAL_CACHE_DIR": str(cache)}


CASES = [
    ("image-not-built", ["run-local"], {"INVOKE_IMAGES_CPU_BASE_IMAGE": "amltrain/no-such-base:1"}, 1,
     ["image amltrain/train:cpu-", "is not built", "run `invoke build`"]),
    ("no-baked-code-image", ["run-local", "--baked"], {"INVOKE_IMAGES_CPU_BASE_IMAGE": "amltrain/no-such-base:1"}, 1,
     ["no code image baked on amltrain/train:cpu-", "invoke build --bake"]),
    ("runs-dir-a-file", ["run-local"], {"INVOKE_LOCAL_RUNS_DIR": "{tmp}/file"}, 1,
     ["local.runs_dir", "is not a folder"]),
    ("cache-of-another-user", ["run-local"], cache_of_another_user, 1,
     ["the run cache", "belongs to uid 4242"]),
    ("script-excluded", ["run-local", "--script", "ignored.txt"], {}, 1,
     ["script ignored.txt is excluded from the snapshot by", "tests/docker/probe/.amlignore"]),
    ("logs-of-no-run", ["local-logs", "--run", "nosuch_1_abc"], {}, 1, ["no local run 'nosuch_1_abc' is running"]),
    ("logs-outside-runs", ["local-logs", "--run", "../etc"], {}, 1, ["no local run '../etc'"]),
    ("cancel-nothing-named", ["local-cancel"], {}, 1, ["name one run (--run ID) or give --all"]),
]


@pytest.mark.parametrize("name, args, extra, code, says", CASES, ids=[c[0] for c in CASES])
def test_bad_input_with_an_engine(cpu_image, docker_client, case_env, tmp_path, name, args, extra, code, says):
    (tmp_path / "file").write_text("x")
    extra = extra(tmp_path) if callable(extra) else {k: v.replace("{tmp}", str(tmp_path)) for k, v in extra.items()}
    env = {**case_env, **extra}
    folders = (Path(case_env["INVOKE_LOCAL_RUNS_DIR"]), Path(case_env["INVOKE_LOCAL_CACHE_DIR"]), tmp_path)
    before_disk, before_docker = disk_state(*folders), docker_state(docker_client, case_env["INVOKE_JOB_EXPERIMENT"])
    result = invoke(*args, env=env, timeout=300)
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and "run " not in result.stdout  # no run id announced
    rest = result.stderr
    for fragment in says:
        assert fragment in rest, f"{fragment!r} not in order in {result.stderr!r}"
        rest = rest[rest.index(fragment) + len(fragment):]
    assert disk_state(*folders) == before_disk
    assert docker_state(docker_client, case_env["INVOKE_JOB_EXPERIMENT"]) == before_docker


def test_a_secret_in_the_command_stays_out_of_the_request_as_printed_and_as_recorded(cpu_image, docker_client,
                                                                                     case_env):
    command = f"true --hf-token {SECRET} HF_TOKEN={SECRET}"
    dry = invoke("run-local", "--dry-run", "--command", command, env=case_env)
    assert dry.returncode == 0 and SECRET not in dry.stdout + dry.stderr, dry.stderr
    result = invoke("run-local", "--command", command, env=case_env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    announced = [line for line in result.stdout.splitlines() if line.startswith("run ")][0]
    run_dir = Path(announced.rsplit("results in ", 1)[1])
    recorded = (run_dir / "request.json").read_text()
    assert SECRET not in recorded and SECRET not in result.stderr
    command_word = json.loads(recorded)["containers"][0]["processes"][0]["command"][-1]
    assert command_word == "true --hf-token **** HF_TOKEN=****"
    assert docker_state(docker_client, case_env["INVOKE_JOB_EXPERIMENT"]) == (set(), set())
