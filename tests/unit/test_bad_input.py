"""Bad input as a new user types it, through the real entry point (the console script `./dev invoke` runs).

One row per case: the command (its environment and files), the exit code, what the one `error:` line says, and
for every row: no traceback, one line on stderr, nothing new on disk (the project's top level, runs/ and .cache,
and the case's own folder), no secret in any output. Nothing reaches Docker: DOCKER_HOST is a closed port, so
a case that got that far would end in the engine's line instead of its own (only the row that is about the
engine expects it), and HTTP(S) goes to a closed port too. Cases that need an engine are in
tests/docker/test_bad_input_docker.py.

The classes are issue 11's: 1 configuration loaded before any task, and options; 2 settings split into words;
3 the file system; 4 secrets; 5 the two backends check the same things; 7 honest diagnoses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import CLI, ROOT

SECRET = "canary-5ec2e7-b4d"
CLOSED = "http://127.0.0.1:9"
BASE_ENV = {"DOCKER_HOST": "tcp://127.0.0.1:9", "HTTPS_PROXY": CLOSED, "HTTP_PROXY": CLOSED, "NO_PROXY": "",
            "https_proxy": CLOSED, "http_proxy": CLOSED, "no_proxy": "", "AZURE_CLIENT_ID": "client",
            "AZURE_TENANT_ID": "tenant", "AZURE_CLIENT_SECRET": SECRET, "INVOKE_AZURE_SDK": "v1"}
TASKS_LINK = object()  # in Case.files: a link to the project's tasks.py (a project folder of the case's own)
LONG_NAME = " ".join(f"word{i}" for i in range(300))  # a ~2,700-character script name


@dataclass(frozen=True)
class Case:
    """``{tmp}`` in argv, env and file contents is the case's own folder, ``{secret}`` the canary secret."""

    id: str
    issue_class: int
    argv: tuple[str, ...]
    says: tuple[str, ...] = ()  # fragments of the one error line, in order; () with code 0
    env: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)  # path under {tmp} -> text, bytes or TASKS_LINK
    code: int = 1
    prints: bool = False  # stdout may carry what came before the failure (smoke's dry-run build)


def f(config: str) -> dict:
    """A `-f` file's content, as a case's files."""
    return {"cfg.yaml": config}


AMLIGNORED = {"src/train.py": "print('hi')\n", "src/.amlignore": "train.py\n"}
SRC_ENV = {"INVOKE_JOB_SOURCE_DIR": "{tmp}/src", "INVOKE_JOB_SCRIPT": "train.py"}
WORKSPACE = {"ws.json": json.dumps({"subscription_id": "00000000-1111-2222-3333-444444444444",
                                    "resource_group": "rg", "workspace_name": "ws"})}
WS_ENV = {"INVOKE_AZURE_CONFIG_FILE": "{tmp}/ws.json"}

CASES = [
    # --- 1. configuration invoke loads before any task runs, and options invoke cannot parse ---------------------
    Case("f-malformed-yaml", 1, ("-f", "{tmp}/cfg.yaml", "run-local", "--dry-run"),
         ("configuration file {tmp}/cfg.yaml is not valid YAML at line 2",), files=f("local: [\n")),
    Case("f-missing", 1, ("-f", "{tmp}/missing.yaml", "run-local", "--dry-run"),
         ("configuration file {tmp}/missing.yaml does not exist",)),
    Case("f-folder", 1, ("-f", "{tmp}", "build", "--dry-run"), ("configuration file {tmp} is a folder",)),
    Case("f-not-utf8", 1, ("-f", "{tmp}/cfg.yaml", "build", "--dry-run"),
         ("configuration file {tmp}/cfg.yaml is not UTF-8 text",), files={"cfg.yaml": b"job:\n  script: \xff\n"}),
    Case("f-top-level-list", 1, ("-f", "{tmp}/cfg.yaml", "build", "--dry-run"),
         ("{tmp}/cfg.yaml is a list, not a mapping of settings",), files=f("- local\n- job\n")),
    Case("f-section-given-a-number", 1, ("-f", "{tmp}/cfg.yaml", "run-local", "--dry-run"),
         ("{tmp}/cfg.yaml: local is a section (runs_dir, shm_size", "not 5"), files=f("local: 5\n")),
    Case("f-images-a-list", 1, ("-f", "{tmp}/cfg.yaml", "build", "--dry-run"),
         ("images is a section (repository, cpu, gpu), not ['cpu', 'gpu']",), files=f("images: [cpu, gpu]\n")),
    Case("f-value-given-a-section", 1, ("-f", "{tmp}/cfg.yaml", "build", "--dry-run"),
         ("docker.cli is a single value ('docker'), not a section",), files=f("docker:\n  cli: {path: x}\n")),
    Case("f-not-yaml-suffix", 1, ("-f", "{tmp}/cfg.txt", "build", "--dry-run"),
         ("configuration file {tmp}/cfg.txt is not .yaml, .yml or .json",), files={"cfg.txt": "local: {}\n"}),
    Case("f-malformed-json", 1, ("-f", "{tmp}/cfg.json", "build", "--dry-run"),
         ("configuration file {tmp}/cfg.json is not valid JSON at line 1",), files={"cfg.json": '{"local": '}),
    Case("f-runtime-config-variable-missing", 1, ("build", "--dry-run"),
         ("configuration file", "nope.yaml does not exist"), env={"INVOKE_RUNTIME_CONFIG": "{tmp}/nope.yaml"}),
    Case("f-master-port-text", 1, ("-f", "{tmp}/cfg.yaml", "run-local", "--dry-run"),
         ("local.master_port must be a whole number from 1 to 65535, got 'abc'",),
         files=f("local:\n  master_port: abc\n")),
    Case("f-nodes-text", 1, ("-f", "{tmp}/cfg.yaml", "run-local", "--dry-run"),
         ("job.distribution.nodes must be a whole number of at least 1, got 'abc'",),
         files=f("job:\n  distribution:\n    nodes: abc\n")),
    Case("f-compute-a-number", 1, ("-f", "{tmp}/cfg.yaml", "submit", "--dry-run"),
         ("azure.computes.x must be a mapping",), files={**f("azure:\n  computes:\n    x: 5\n"), **WORKSPACE},
         env=WS_ENV),
    Case("f-compute-nodes-text", 1, ("-f", "{tmp}/cfg.yaml", "compute", "--name", "big", "--dry-run"),
         ("azure.computes.big.max_nodes must be a whole number of at least 1, got 'lots'",),
         files=f("azure:\n  computes:\n    big: {vm_size: Standard_D4s_v5, max_nodes: lots}\n")),
    Case("env-nodes-text", 1, ("run-local", "--dry-run"),
         ("INVOKE_JOB_DISTRIBUTION_NODES='abc' is not a whole number (it sets job.distribution.nodes)",),
         env={"INVOKE_JOB_DISTRIBUTION_NODES": "abc"}),
    Case("env-backoff-text", 1, ("push", "--dry-run"),
         ("INVOKE_AZURE_PUSH_BACKOFF_SECONDS='abc' is not a number (it sets azure.push.backoff_seconds)",),
         env={"INVOKE_AZURE_PUSH_BACKOFF_SECONDS": "abc"}),
    Case("env-run-duration-fraction", 1, ("submit", "--dry-run"),
         ("INVOKE_AZURE_SUBMIT_MAX_RUN_DURATION_SECONDS='1.5' is not a whole number",),
         env={"INVOKE_AZURE_SUBMIT_MAX_RUN_DURATION_SECONDS": "1.5"}),
    Case("env-retries-negative", 1, ("push", "--dry-run"),
         ("azure.push.retries must be a whole number of at least 0, got -1",), env={"INVOKE_AZURE_PUSH_RETRIES": "-1"}),
    Case("submit-retries-negative", 1, ("submit", "--dry-run", "--retries", "-1"),
         ("--retries must be a whole number of at least 0, got '-1'",), files=WORKSPACE, env=WS_ENV),
    Case("submit-retries-text", 1, ("submit", "--dry-run", "--retries", "many"),
         ("--retries must be a whole number of at least 0, got 'many'",), files=WORKSPACE, env=WS_ENV),
    Case("checkpoints-a-list", 1, ("-f", "{tmp}/cfg.yaml", "submit", "--dry-run"),
         ("job.checkpoints is a section (datastore, path)",), files=f("job:\n  checkpoints: [a]\n")),
    Case("checkpoints-datastore-with-dash", 1, ("submit", "--dry-run"),
         ("job.checkpoints.datastore 'my-store' is not a datastore name",),
         env={**WS_ENV, "INVOKE_JOB_CHECKPOINTS_DATASTORE": "my-store"}, files=WORKSPACE),
    Case("checkpoints-path-without-key", 1, ("submit", "--dry-run"),
         ("job.checkpoints.path 'ckpt/{experiment}' has no {key}: every job would resume from the same folder",),
         env={**WS_ENV, "INVOKE_JOB_CHECKPOINTS_PATH": "ckpt/{experiment}"}, files=WORKSPACE),
    Case("checkpoints-path-leaves-the-datastore", 1, ("submit", "--dry-run"),
         ("job.checkpoints.path '../{key}' is not a relative datastore path",),
         env={**WS_ENV, "INVOKE_JOB_CHECKPOINTS_PATH": "../{key}"}, files=WORKSPACE),
    Case("checkpoints-path-unknown-placeholder", 1, ("submit", "--dry-run"),
         ("job.checkpoints.path 'ckpt/{run}/{key}' has placeholders other than {experiment} and {key}",),
         env={**WS_ENV, "INVOKE_JOB_CHECKPOINTS_PATH": "ckpt/{run}/{key}"}, files=WORKSPACE),
    Case("project-invoke-yaml-malformed", 1, ("-r", "{tmp}/proj", "run-local", "--dry-run"),
         ("configuration file {tmp}/proj/invoke.yaml is not valid YAML at line 2",),
         files={"proj/tasks.py": TASKS_LINK, "proj/invoke.yaml": "job: [\n"}),
    Case("project-invoke-yaml-not-utf8", 1, ("-r", "{tmp}/proj", "--list"),
         ("configuration file {tmp}/proj/invoke.yaml is not UTF-8 text",),
         files={"proj/tasks.py": TASKS_LINK, "proj/invoke.yaml": b"\xfe\xff"}),
    Case("project-invoke-yaml-clashes-with-invoke", 1, ("-r", "{tmp}/proj", "build", "--dry-run"),
         ("{tmp}/proj/invoke.yaml: run is a section", "not 5"),
         files={"proj/tasks.py": TASKS_LINK, "proj/invoke.yaml": "run: 5\n"}),
    Case("no-tasks-py", 1, ("-r", "{tmp}", "build"), ("Can't find any collection named 'tasks'", "-r FOLDER")),
    Case("unknown-core-option", 1, ("--bogus",), ("No idea what '--bogus' is", "`invoke --list` lists the tasks")),
    Case("unknown-task-option", 1, ("run-local", "--bogus"),
         ("No idea what '--bogus' is", "`invoke run-local --help` lists its options")),
    Case("unknown-task", 1, ("nosuchtask",), ("No idea what 'nosuchtask' is",)),
    Case("option-without-value", 1, ("run-local", "--nodes"), ("option --nodes (-n) needs a value",)),
    Case("core-option-without-value", 1, ("-f",), ("option --config (-f) needs a value",)),
    Case("help-for-unknown-task", 1, ("--help", "nosuchtask"), ("No idea what 'nosuchtask' is",)),
    Case("list-unknown-namespace", 1, ("--list", "nosuch"), ("Sub-collection 'nosuch' not found",)),
    # --- 2. settings split into words as a shell would ------------------------------------------------------------
    Case("args-unbalanced", 2, ("run-local", "--dry-run", "--args", "--lr 'x"),
         ("--args \"--lr 'x\" cannot be split into words as a shell would: no closing quotation",)),
    Case("submit-args-unbalanced", 2, ("submit", "--dry-run", "--args", '--lr "x'),
         ("--args '--lr \"x' cannot be split into words",), files=WORKSPACE, env=WS_ENV),
    Case("job-arguments-unbalanced", 2, ("run-local", "--dry-run"), ("job.arguments", "no closing quotation"),
         env={"INVOKE_JOB_ARGUMENTS": "--lr 'x"}),
    Case("smoke-arguments-unbalanced", 2, ("smoke", "--dry-run"), ("smoke.arguments", "no closing quotation"),
         env={"INVOKE_SMOKE_ARGUMENTS": "--epochs 'x"}, prints=True),
    Case("system-packages-unbalanced", 2, ("build", "--dry-run"),
         ("images.cpu.system_packages", "no closing quotation"), env={"INVOKE_IMAGES_CPU_SYSTEM_PACKAGES": "curl 'x"}),
    Case("pip-find-links-trailing-backslash", 2, ("build", "--dry-run"),
         ("build.pip_find_links", "no escaped character"), env={"INVOKE_BUILD_PIP_FIND_LINKS": "/wheels\\"}),
    Case("pip-trusted-hosts-unbalanced", 2, ("build", "--dry-run"), ("build.pip_trusted_hosts",),
         env={"INVOKE_BUILD_PIP_TRUSTED_HOSTS": 'a "b'}),
    Case("cache-from-unbalanced", 2, ("build", "--dry-run"), ("build.cache_from", "no closing quotation"),
         env={"INVOKE_BUILD_CACHE_FROM": "type=gha 'x"}),
    Case("cache-to-unbalanced", 2, ("build", "--dry-run"), ("build.cache_to", "no closing quotation"),
         env={"INVOKE_BUILD_CACHE_TO": "type=gha 'x"}),
    Case("list-setting-a-number", 2, ("-f", "{tmp}/cfg.yaml", "build", "--dry-run"),
         ("build.pip_extra_index_urls must be a list or a string, got 5",),
         files=f("build:\n  pip_extra_index_urls: 5\n")),
    # --- 3. the file system ---------------------------------------------------------------------------------------
    Case("runs-dir-a-file", 3, ("run-local",), ("local.runs_dir {tmp}/file is not a folder",),
         env={"INVOKE_LOCAL_RUNS_DIR": "{tmp}/file"}, files={"file": "x"}),
    Case("runs-dir-under-a-file", 3, ("run-local", "--dry-run"),
         ("local.runs_dir {tmp}/file/runs is not a folder: {tmp}/file is a file",),
         env={"INVOKE_LOCAL_RUNS_DIR": "{tmp}/file/runs"}, files={"file": "x"}),
    Case("runs-dir-cannot-be-written", 3, ("run-local",), ("local.runs_dir /sys/amltrain-runs cannot be written",),
         env={"INVOKE_LOCAL_RUNS_DIR": "/sys/amltrain-runs"}),
    Case("cache-dir-a-file", 3, ("run-local",), ("local.cache_dir {tmp}/file is not a folder",),
         env={"INVOKE_LOCAL_CACHE_DIR": "{tmp}/file"}, files={"file": "x"}),
    Case("cache-dir-cannot-be-written", 3, ("run-local",), ("local.cache_dir /proc/amltrain/cache cannot be written",),
         env={"INVOKE_LOCAL_CACHE_DIR": "/proc/amltrain/cache"}),
    Case("source-dir-a-file", 3, ("run-local", "--dry-run"), ("source directory {tmp}/file does not exist or is not",),
         env={"INVOKE_JOB_SOURCE_DIR": "{tmp}/file"}, files={"file": "x"}),
    Case("download-into-a-file", 3, ("model", "--run", "r1", "--download", "{tmp}/file"),
         ("--download {tmp}/file is not a folder",), files={"file": "x"}),
    Case("download-under-a-file", 3, ("model", "--run", "r1", "--download", "{tmp}/file/model"),
         ("--download {tmp}/file/model is not a folder: {tmp}/file is a file",), files={"file": "x"}),
    Case("download-outputs-exist", 3, ("model", "--run", "r1", "--download", "{tmp}/model"),
         ("{tmp}/model/outputs exists already",), files={"model/outputs/m.pt": "x"}),
    Case("download-cannot-be-written", 3, ("model", "--run", "r1", "--download", "/proc/amltrain/model"),
         ("--download /proc/amltrain/model cannot be written",)),
    Case("model-path-climbs-out", 3, ("model", "--run", "r1", "--download", "{tmp}/m", "--path", "outputs/../../x"),
         ("model path 'outputs/../../x' is not under outputs/",)),
    Case("wheelhouse-a-file", 3, ("build", "--dry-run"), ("build.wheelhouse {tmp}/file is not a directory",),
         env={"INVOKE_BUILD_WHEELHOUSE": "{tmp}/file"}, files={"file": "x"}),
    Case("emit-yaml-with-retries", 3, ("submit", "--sdk", "v2", "--emit-yaml", "{tmp}/job.yml", "--retries", "2"),
         ("--emit-yaml writes the job and submits nothing: --retries would not apply",), files=WORKSPACE,
         env=WS_ENV),
    Case("emit-yaml-with-resume", 3, ("submit", "--sdk", "v2", "--emit-yaml", "{tmp}/job.yml", "--resume", "job-1"),
         ("--emit-yaml works offline and cannot read the checkpoint folder --resume names",), files=WORKSPACE,
         env=WS_ENV),
    Case("resume-malformed-job-name", 3, ("submit", "--dry-run", "--resume", "bad!name"),
         ("job name 'bad!name' is not valid for Azure ML", "change --resume"), files=WORKSPACE, env=WS_ENV),
    Case("emit-yaml-into-a-folder", 3, ("submit", "--sdk", "v2", "--emit-yaml", "{tmp}"),
         ("--emit-yaml {tmp} is not a regular file",), files=WORKSPACE, env=WS_ENV),
    Case("no-run-id-before-its-folder", 3, ("run-local",), ("the Docker engine is not reachable",)),
    Case("f-name-too-long", 3, ("-f", "{tmp}/" + "x" * 300 + ".yaml", "build", "--dry-run"), ("does not exist",)),
    Case("input-name-too-long", 3, ("run-local", "--dry-run", "--input", "data=" + "x" * 300),
         ("data input 'data':", "is not a directory")),
    Case("summary-name-too-long", 3, ("submit", "--wait", "--summary", "{tmp}/" + "x" * 300),
         ("cannot write the summary file",), files=WORKSPACE, env=WS_ENV),
    # --- 4. secrets -----------------------------------------------------------------------------------------------
    Case("command-secret-dry-run", 4, ("run-local", "--dry-run", "--command", "python x.py --hf-token {secret} --lr 1"),
         code=0),
    Case("command-secret-mpi-dry-run", 4, ("run-local", "--dry-run", "--launch", "mpi", "--nodes", "2", "--command",
                                           "python x.py --api-key='{secret} x' HF_TOKEN={secret}"), code=0),
    Case("submit-command-secret-dry-run", 4, ("submit", "--dry-run", "--launch", "per-node", "--command",
                                              "torchrun x.py --hf-token {secret}"),
         files=WORKSPACE, env=WS_ENV, code=0),
    Case("pip-index-credentials-dry-run", 4, ("build", "--dry-run"),
         env={"INVOKE_BUILD_PIP_INDEX_URL": "https://user:{secret}@pypi.example/simple"}, code=0),
    Case("input-url-with-credentials", 4, ("run-local", "--dry-run", "--input", "data=https://user:{secret}@host/d"),
         ("data input 'data' is a URL (https://****@host/d)",)),
    Case("submit-input-url-with-credentials", 4, ("submit", "--input", "data=https://user:{secret}@host/d"),
         ("input data=https://****@host/d is not a cloud data reference",), files=WORKSPACE, env=WS_ENV),
    Case("env-bad-name-secret-value", 4, ("run-local", "--dry-run", "--env", "MY-TOKEN={secret}"),
         ("env 'MY-TOKEN=****' is not NAME=VALUE",)),
    Case("unknown-word-with-credentials", 4, ("run-local", "https://user:{secret}@host/x"),
         ("No idea what 'https://****@host/x' is",)),
    Case("index-credentials-in-an-unbalanced-list", 4, ("build", "--dry-run"),
         ("build.pip_extra_index_urls", "https://****@pypi.example/simple", "no closing quotation"),
         env={"INVOKE_BUILD_PIP_EXTRA_INDEX_URLS": "https://user:{secret}@pypi.example/simple 'x"}),
    Case("registry-address-with-credentials", 4, ("push", "--dry-run"), ("azure.registry.address carries credentials",),
         env={"INVOKE_AZURE_REGISTRY_ADDRESS": "user:{secret}@myacr.azurecr.io"}),
    Case("long-line-cut-between-words", 4, ("run-local", "--dry-run", "--script", LONG_NAME),
         ("script word0 word1",)),
    # --- 5. the two backends check the same things ----------------------------------------------------------------
    Case("script-outside-source-dir", 5, ("run-local", "--dry-run", "--script", "../outside.py"),
         ("script ../outside.py is outside the source directory {tmp}/src",),
         env=SRC_ENV, files={**AMLIGNORED, "outside.py": "x"}),
    Case("submit-script-outside-source-dir", 5, ("submit", "--dry-run", "--script", "../outside.py"),
         ("script ../outside.py is outside the source directory {tmp}/src",),
         env={**SRC_ENV, **WS_ENV}, files={**AMLIGNORED, **WORKSPACE, "outside.py": "x"}),
    Case("absolute-script-outside-source-dir", 5, ("submit", "--dry-run", "--script", "{tmp}/outside.py"),
         ("is outside the source directory {tmp}/src",), env={**SRC_ENV, **WS_ENV},
         files={**AMLIGNORED, **WORKSPACE, "outside.py": "x"}),
    Case("script-excluded-by-amlignore", 5, ("run-local", "--dry-run"),
         ("script train.py is excluded from the snapshot by {tmp}/src/.amlignore",), env=SRC_ENV, files=AMLIGNORED),
    Case("submit-script-excluded-by-amlignore", 5, ("submit", "--dry-run"),
         ("script train.py is excluded from the snapshot by {tmp}/src/.amlignore",),
         env={**SRC_ENV, **WS_ENV}, files={**AMLIGNORED, **WORKSPACE}),
    Case("submit-script-missing", 5, ("submit", "--dry-run", "--script", "missing.py"),
         ("script missing.py not found in source directory {tmp}/src",), env={**SRC_ENV, **WS_ENV},
         files={**AMLIGNORED, **WORKSPACE}),
    # --- 7. honest diagnoses --------------------------------------------------------------------------------------
    Case("shm-size-zero-in-a-file", 7, ("-f", "{tmp}/cfg.yaml", "run-local", "--dry-run"),
         ("local.shm_size '0' is zero: Docker would give its 64 MB default",), files=f("local:\n  shm_size: 0\n")),
    Case("shm-size-zero-gigabytes", 7, ("run-local", "--dry-run"), ("local.shm_size '0g' is zero",),
         env={"INVOKE_LOCAL_SHM_SIZE": "0g"}),
    Case("shm-size-without-unit", 7, ("run-local", "--dry-run"), ("local.shm_size '2' is 2 bytes", "2g"),
         env={"INVOKE_LOCAL_SHM_SIZE": "2"}),
    Case("submit-shm-size-zero", 7, ("submit", "--dry-run"), ("azure.submit.shm_size '0' is zero",),
         env={**WS_ENV, "INVOKE_AZURE_SUBMIT_SHM_SIZE": "0"}, files=WORKSPACE),
    Case("backoff-not-finite", 7, ("push", "--dry-run"), ("azure.push.backoff_seconds must be a number", "nan"),
         env={"INVOKE_AZURE_PUSH_BACKOFF_SECONDS": "nan"}),
    Case("two-python-pins", 7, ("build", "--dry-run"), ("names python 2 times (python>=3.10, python=3.12)",),
         env={"INVOKE_IMAGES_CPU_CONDA": "{conda}"}),
    Case("nodes-zero", 7, ("run-local", "--dry-run", "--nodes", "0"),
         ("--nodes must be a whole number of at least 1, got '0'",)),
    Case("procs-per-node-text", 7, ("run-local", "--dry-run", "--procs-per-node", "two"),
         ("--procs-per-node must be a whole number",)),
    Case("user-not-a-uid", 7, ("run-local", "--dry-run", "--user", "alice"), ("user 'alice' is not UID[:GID]",)),
    Case("env-without-name", 7, ("run-local", "--dry-run", "--env", "=x"), ("env '=x' is not NAME=VALUE",)),
    Case("unknown-launch-mode", 7, ("run-local", "--dry-run", "--launch", "torchrun"),
         ("unknown launch mode 'torchrun'",)),
    Case("unknown-target", 7, ("build", "--dry-run", "--target", "tpu"), ("unknown target 'tpu'", "cpu, gpu")),
]


def disk_listing(tmp: Path) -> set[str]:
    """What a case could leave behind: the project's top level, runs/ and .cache (each file), and its folder."""
    seen = {p.name for p in ROOT.iterdir()}
    for top in (ROOT / "runs", ROOT / ".cache", tmp):
        if top.is_dir():
            seen |= {str(p) for p in top.rglob("*")}
    return seen


def materialise(case: Case, tmp: Path, conda: Path) -> tuple[list[str], dict]:
    def fill(text: str) -> str:
        return text.replace("{tmp}", str(tmp)).replace("{secret}", SECRET).replace("{conda}", str(conda))

    for name, content in case.files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is TASKS_LINK:
            path.symlink_to(ROOT / "tasks.py")
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(fill(content))
    env = {k: v for k, v in os.environ.items() if k != "AMLTRAIN_DEBUG" and k != "INVOKE_RUNTIME_CONFIG"}
    env.update(BASE_ENV)
    env.update({k: fill(v) for k, v in case.env.items()})
    return [fill(a) for a in case.argv], env


@pytest.fixture(scope="module")
def two_pins():
    """A conda spec with two python pins; specs must live in conda/, so it is there for this module only."""
    path = ROOT / "conda" / f".test-two-pins-{uuid.uuid4().hex}.yml"
    path.write_text("dependencies:\n  - python>=3.10\n  - python=3.12\n  - pip:\n    - torch\n")
    yield path
    path.unlink()


def test_the_table_covers_every_class_with_more_cases_than_the_examples():
    per_class = {c: sum(1 for case in CASES if case.issue_class == c) for c in (1, 2, 3, 4, 5, 7)}
    assert all(count >= 5 for count in per_class.values()), per_class
    assert len({case.id for case in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.issue_class}-{case.id}")
def test_bad_input(case: Case, tmp_path, two_pins):
    argv, env = materialise(case, tmp_path, two_pins)
    before = disk_listing(tmp_path)
    result = subprocess.run([CLI, *argv], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == case.code, output
    assert "Traceback" not in output and SECRET not in output, output
    assert disk_listing(tmp_path) == before, "the case left something behind"
    if case.code == 0:
        assert result.stderr == "", result.stderr
        return
    line = result.stderr
    assert line.startswith("error: ") and line.endswith("\n") and line.count("\n") == 1, line
    assert case.prints or result.stdout == "", result.stdout
    rest = line
    for fragment in (fragment.replace("{tmp}", str(tmp_path)) for fragment in case.says):
        assert fragment in rest, f"{fragment!r} not in order in {line!r}"
        rest = rest[rest.index(fragment) + len(fragment):]
    if "Docker engine" not in " ".join(case.says):
        assert "Docker engine is not reachable" not in line  # stopped before reaching Docker, as it should


def test_a_long_line_is_cut_between_words(tmp_path):
    """The one line stays readable: cut where a word ends, marked, never inside a token."""
    result = subprocess.run([CLI, "run-local", "--dry-run", "--script", LONG_NAME], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, **BASE_ENV}, timeout=60)
    line = result.stderr.rstrip("\n")
    assert line.endswith(" …") and len(line) < 900, line
    words = re.findall(r"\S+", line[:-2])
    assert words[-1] in LONG_NAME.split() or not words[-1].startswith("word"), words[-1]
    assert all(w in LONG_NAME.split() for w in words if w.startswith("word")), line
