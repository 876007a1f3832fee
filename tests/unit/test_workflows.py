"""The GitHub workflows call only what exists, and are locked down.

Every `invoke …` / `./dev invoke …` a workflow runs must name tasks of the real tasks.py with options those
tasks accept: the tasks are loaded at test time with invoke's own loader and the command line is parsed with
invoke's own parser, exactly as `invoke` would parse it. Every command of a `run:` step must be a README command
(`./dev …`, `invoke …`) or a script of `.ci/`, so no logic lives in YAML. Each workflow has minimal
permissions; one triggered by pushes or pull requests cancels superseded runs; every action is pinned.
"""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import pytest
import yaml
from invoke import Collection
from invoke.loader import FilesystemLoader
from invoke.parser import ParseError, Parser

from amltrain import cli
from amltrain.azure.settings import SDKS
from amltrain.spec import LAUNCH_MODES
from tests.conftest import ROOT

WORKFLOW_DIR = ROOT / ".github" / "workflows"
WORKFLOWS = sorted([*WORKFLOW_DIR.glob("*.yml"), *WORKFLOW_DIR.glob("*.yaml")])

# The only scopes a workflow may write, each with why it is harmless.
ALLOWED_WRITES = {"id-token": "OIDC sign-in (azure/login): mints a token for the cloud, no access to the repository"}
CONTROL_OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;"}
REDIRECTIONS = {">", ">>", "<", ">&", "<&", "&>", ">|", "&>>"}
GITHUB_EXPRESSION = re.compile(r"\$\{\{.*?\}\}", re.S)
PINNED_REF = re.compile(r"^[0-9a-f]{40}$|^v?\d+\.\d+\.\d+$")
VERSION_COMMENT = re.compile(r"#\s*v?\d+\.\d+\.\d+")
# Programs a `run:` step may call: the README's entry point and the CI scripts.
ALLOWED_PROGRAMS = ("./dev", "invoke")
ALLOWED_SCRIPTS = re.compile(r"^\.ci/[\w.-]+$")


@functools.cache
def task_parser() -> Parser:
    """invoke's parser for the real tasks.py, with the core flags (`-f`, `--echo`, …) of the entry point
    (amltrain/cli.py, what `./dev invoke` runs)."""
    module, _ = FilesystemLoader(start=str(ROOT)).load("tasks")
    return parser_for(Collection.from_module(module))


def parser_for(collection: Collection) -> Parser:
    return Parser(contexts=collection.to_contexts(ignore_unknown_help=True), initial=cli.program().initial_context)


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a `run:` script, as word lists (GitHub expressions stand in as one word)."""
    script = GITHUB_EXPRESSION.sub("GITHUB_EXPRESSION", script).replace("\\\n", " ")
    commands: list[list[str]] = []
    pending = ""
    for line in script.splitlines():
        pending += line + "\n"
        try:
            words = list(shlex.shlex(pending, posix=True, punctuation_chars=True))
        except ValueError:  # a quote continues on the next line
            continue
        pending = ""
        current: list[str] = []
        skip_target = False
        for word in words:
            if skip_target:
                skip_target = False
            elif word in CONTROL_OPERATORS:
                commands.append(current)
                current = []
            elif word in REDIRECTIONS:
                if current and current[-1].isdigit() and re.search(rf"\b{current[-1]}{re.escape(word)}", line):
                    current.pop()  # the file descriptor of 2>&1
                skip_target = True
            else:
                current.append(word)
        commands.append(current)
    if pending.strip():
        commands.append(["UNPARSABLE-SHELL", pending.strip()])
    return [command for command in commands if command]


def program(command: list[str]) -> list[str]:
    """The command without what only sets up how it runs: NAME=value assignments and `exec`."""
    while command and (re.match(r"^[A-Za-z_]\w*=", command[0]) or command[0] == "exec"):
        command = command[1:]
    return command


def invoke_argv(command: list[str]) -> list[str] | None:
    """The argument list given to invoke by a simple command, or None when it does not run invoke."""
    command = program(command)
    if command[:1] == ["./dev"]:
        command = command[1:]
    if command and Path(command[0]).name in ("invoke", "inv"):
        return command[1:]
    if len(command) >= 3 and Path(command[0]).name.startswith("python") and command[1:3] == ["-m", "invoke"]:
        return command[3:]
    return None


def program_problem(command: list[str]) -> str | None:
    """Whether a simple command is one a workflow may run: a README command or a script of .ci/."""
    command = program(command)
    if not command:
        return None
    if command[0] in ALLOWED_PROGRAMS or invoke_argv(command) is not None:
        return None
    if command[0] in ("bash", "sh") and len(command) > 1 and ALLOWED_SCRIPTS.match(command[1]):
        return None
    if ALLOWED_SCRIPTS.match(command[0]):
        return None
    return f"`{' '.join(command)}` is not a README command (./dev …, invoke …) or a .ci/ script"


def invoke_problem(argv: list[str], parser: Parser) -> str | None:
    try:
        result = parser.parse_argv(argv)
    except ParseError as exc:
        return f"`invoke {' '.join(argv)}`: {exc}"
    if len(result) < 2 and not any(a in argv for a in ("-l", "--list", "-h", "--help", "-V", "--version")):
        return f"`invoke {' '.join(argv)}` names no task"
    return None


def permission_problems(permissions, where: str) -> list[str]:
    if isinstance(permissions, str):
        return [f"{where}: permissions `{permissions}` grants every scope; list the scopes it needs"]
    if not isinstance(permissions, dict):
        return [f"{where}: permissions must be a mapping of scope: read|none"]
    return [f"{where}: `{scope}: write` is more than it needs" for scope, level in permissions.items()
            if level == "write" and scope not in ALLOWED_WRITES]


def triggers(workflow: dict) -> set[str]:
    on = workflow.get("on", workflow.get(True))  # PyYAML (YAML 1.1) reads the key `on` as True
    if isinstance(on, str):
        return {on}
    return set(on or ())


def uses_problem(value: str, text: str) -> str | None:
    if value.startswith("./"):
        return None
    if value.startswith("docker://"):
        return None if re.search(r"@sha256:[0-9a-f]{64}$", value) else f"`{value}`: pin the image by digest"
    name, _, ref = value.partition("@")
    if not ref or not PINNED_REF.match(ref):
        return f"`{value}`: pin to a full commit SHA (with a version comment) or an exact version vX.Y.Z"
    if len(ref) == 40:
        lines = re.finditer(rf"uses:\s*['\"]?{re.escape(value)}['\"]?(.*)$", text, re.M)
        if not all(VERSION_COMMENT.search(line.group(1)) for line in lines):
            return f"`{value}`: say which release the SHA is, in a comment: # vX.Y.Z"
    return None


def workflow_problems(text: str, parser: Parser) -> list[str]:
    """Everything wrong with one workflow file's text, one line each."""
    workflow = yaml.safe_load(text)
    if not isinstance(workflow, dict) or not isinstance(workflow.get("jobs"), dict):
        return ["not a workflow: no jobs"]
    problems = []
    if "permissions" not in workflow:
        problems.append("no top-level permissions: the token would get the repository's default (often write)")
    else:
        problems += permission_problems(workflow["permissions"], "workflow")
    if triggers(workflow) & {"push", "pull_request", "pull_request_target", "merge_group"}:
        # Runs of manual workflows (workflow_dispatch) with other inputs are not superseded: not required there.
        concurrency = workflow.get("concurrency")
        group = str(concurrency.get("group", "")) if isinstance(concurrency, dict) else ""
        if not ("github.workflow" in group and re.search(r"github\.(head_)?ref", group)):
            problems.append("concurrency: group must name the workflow and the ref (github.workflow, github.ref)")
        if not isinstance(concurrency, dict) or concurrency.get("cancel-in-progress") is not True:
            problems.append("concurrency: cancel-in-progress must be true, so superseded runs stop")
    for job_id, job in workflow["jobs"].items():
        if "permissions" in job:
            problems += permission_problems(job["permissions"], f"job {job_id}")
        if "uses" in job:
            problems.append(uses_problem(job["uses"], text))
        for index, step in enumerate(job.get("steps") or ()):
            where = f"job {job_id}, step {step.get('name') or index + 1}"
            if "uses" in step:
                problem = uses_problem(str(step["uses"]), text)
                problems.append(problem and f"{where}: {problem}")
            for command in shell_commands(str(step.get("run", ""))):
                problem = program_problem(command)
                argv = invoke_argv(command)
                if argv is not None:
                    problem = problem or invoke_problem(argv, parser)
                problems.append(problem and f"{where}: {problem}")
    return [problem for problem in problems if problem]


def invoke_calls(text: str) -> list[list[str]]:
    workflow = yaml.safe_load(text)
    return [argv for job in workflow["jobs"].values() for step in job.get("steps") or ()
            for command in shell_commands(str(step.get("run", ""))) if (argv := invoke_argv(command)) is not None]


# --- the real workflows ---------------------------------------------------------------------------------------

def test_there_are_workflows_to_check():
    assert WORKFLOW_DIR / "ci.yml" in WORKFLOWS


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_calls_existing_tasks_and_is_locked_down(path):
    assert workflow_problems(path.read_text(), task_parser()) == []


def test_ci_runs_the_lint_gate_the_unit_tests_and_the_smoke_run_on_the_mcr_base():
    text = (WORKFLOW_DIR / "ci.yml").read_text()
    workflow = yaml.safe_load(text)
    assert {"pull_request", "push"} <= triggers(workflow)
    assert workflow.get("on", workflow.get(True))["push"]["branches"] == ["main"]
    assert workflow["permissions"] == {"contents": "read"}
    runs = [step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]]
    assert {"bash .ci/lint", "./dev pytest tests/unit", "./dev invoke build --target cpu",
            "./dev invoke smoke"} <= set(runs)
    assert ["build", "--target", "cpu"] in invoke_calls(text) and ["smoke"] in invoke_calls(text)
    # The real MCR base: nothing points the build at the stand-in.
    assert "standin" not in text.replace("stand-in base here", "") and "INVOKE_IMAGES_" not in text
    setups = [step for job in workflow["jobs"].values() for step in job["steps"]
              if step.get("uses", "").startswith("actions/setup-python@")]
    assert setups and all(s["with"]["cache"] == "pip" and s["with"]["cache-dependency-path"] == "pyproject.toml"
                          for s in setups)


def test_azureml_runs_the_tasks_a_person_runs_signed_in_by_oidc_and_summarised():
    text = (WORKFLOW_DIR / "azureml.yml").read_text()
    workflow = yaml.safe_load(text)
    assert triggers(workflow) == {"workflow_dispatch"}
    inputs = workflow.get("on", workflow.get(True))["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"target", "nodes", "procs-per-node", "launch", "compute", "instance-type", "sdk"}
    project = yaml.safe_load((ROOT / "invoke.yaml").read_text())
    assert set(inputs["target"]["options"]) == {"cpu", "gpu"} <= set(project["images"])
    assert tuple(inputs["launch"]["options"]) == LAUNCH_MODES
    assert tuple(inputs["sdk"]["options"]) == SDKS and inputs["sdk"]["default"] == project["azure"]["sdk"] == "v2"
    assert inputs["compute"]["default"] in project["azure"]["computes"]
    assert workflow["permissions"] == {"contents": "read", "id-token": "write"}
    (job,) = workflow["jobs"].values()
    steps, env = job["steps"], job["env"]

    # OIDC only, in the environment the federated credential names: no password or client secret anywhere.
    assert job["environment"] == "azureml"
    (login,) = [s for s in steps if s.get("uses", "").startswith("azure/login@")]
    subscription = "${{ vars.AZURE_SUBSCRIPTION_ID || secrets.AZURE_SUBSCRIPTION_ID }}"
    tenant = "${{ vars.AZURE_TENANT_ID || secrets.AZURE_TENANT_ID }}"
    assert login["with"] == {"client-id": "${{ secrets.AZURE_CLIENT_ID }}", "tenant-id": tenant,
                             "subscription-id": subscription}
    assert not re.search(r"(?i)client[-_]secret|password|creds:", text.split("\nname:", 1)[1])
    # The tasks' own sign-in (github-oidc) gets the same identity and workspace.
    assert env["INVOKE_AZURE_AUTH"] == "github-oidc" and env["INVOKE_AZURE_SUBSCRIPTION_ID"] == subscription
    assert env["AZURE_CLIENT_ID"] == login["with"]["client-id"] and env["AZURE_TENANT_ID"] == tenant
    assert {env["INVOKE_AZURE_RESOURCE_GROUP"], env["INVOKE_AZURE_WORKSPACE_NAME"]} == {
        "${{ vars.AZUREML_RESOURCE_GROUP }}", "${{ vars.AZUREML_WORKSPACE }}"}
    # Layer cache per target, shared with ci.yml's scope for the CPU image.
    assert env["INVOKE_AZURE_SDK"] == "${{ inputs.sdk }}"  # every task of the job uses the chosen SDK
    assert env["INVOKE_AZURE_INSTANCE_TYPE"] == "${{ inputs.instance-type }}"
    assert env["INVOKE_BUILD_CACHE_FROM"] == "type=gha,scope=amltrain-${{ inputs.target }}"
    assert env["INVOKE_BUILD_CACHE_TO"] == "type=gha,mode=max,scope=amltrain-${{ inputs.target }}"
    assert "type=gha,scope=amltrain-cpu" in (WORKFLOW_DIR / "ci.yml").read_text()

    # An offline check before signing in, then build -> push -> register -> submit --wait.
    runs = [(index, step["run"]) for index, step in enumerate(steps) if "run" in step]
    calls = [invoke_argv(shell_commands(run)[0]) for _, run in runs]
    tasks = [next(word for word in argv if not word.startswith("-")) for argv in calls]
    assert tasks == ["submit", "build", "push", "register", "submit"]
    assert "--dry-run" in calls[0] and runs[0][0] < steps.index(login) < runs[1][0]
    assert all(argv[argv.index("--target") + 1] == "$TARGET" for argv in calls)
    assert "--unless-pushed" in calls[1] and "--dry-run" not in calls[-1]
    submit = calls[-1]
    assert {"--wait", "--cancel-on-interrupt"} <= set(submit)
    assert submit[submit.index("--summary") + 1] == "$GITHUB_STEP_SUMMARY"
    for option, variable in [("--compute", "$COMPUTE"), ("--nodes", "$NODES"), ("--procs-per-node",
                             "$PROCS_PER_NODE"), ("--launch", "$LAUNCH")]:
        assert submit[submit.index(option) + 1] == variable and calls[0][calls[0].index(option) + 1] == variable
    # Each task replaces the step's shell, so GitHub's SIGINT/SIGTERM on cancel reach it (bash would not pass
    # them on, and the run would not be cancelled).
    assert all(len(shell_commands(run)) == 1 and shell_commands(run)[0][0] == "exec" for _, run in runs)
    # The inputs reach commands as variables, never pasted into a script (no injection through an input).
    assert all("${{" not in run for _, run in runs)
    assert {env[name] for name in ("TARGET", "NODES", "PROCS_PER_NODE", "LAUNCH", "COMPUTE")} == {
        "${{ inputs.target }}", "${{ inputs.nodes }}", "${{ inputs.procs-per-node }}", "${{ inputs.launch }}",
        "${{ inputs.compute }}"}


# --- the checker catches what it should (so the tests above can fail) ----------------------------------------

GOOD = """\
name: good
on:
  pull_request:
  push:
    branches: [main]
permissions:
  contents: read
concurrency:
  group: ${{ github.workflow }}-${{ github.ref }}
  cancel-in-progress: true
jobs:
  one:
    runs-on: ubuntu-24.04
    steps:
      - uses: actions/checkout@8e8c483db84b4bee98b60c0593521ed34d9990e8 # v6.0.1
      - uses: ./.github/actions/local
      - run: |
          ./dev invoke build --target cpu && ./dev invoke smoke --dry-run
          INVOKE_LOCAL_SHM_SIZE=4g invoke -f ci.yaml run-local \\
            --input data=${{ github.workspace }}/data --env A=1 --env B=2 2>&1
          bash .ci/lint
"""


def bad(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


@pytest.fixture
def parser():
    return task_parser()


def test_a_good_workflow_has_no_problems(parser):
    assert workflow_problems(GOOD, parser) == []
    assert invoke_calls(GOOD) == [["build", "--target", "cpu"], ["smoke", "--dry-run"],
                                  ["-f", "ci.yaml", "run-local", "--input", "data=GITHUB_EXPRESSION/data",
                                   "--env", "A=1", "--env", "B=2"]]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("./dev invoke smoke --dry-run", "./dev invoke no-such-task", "No idea what 'no-such-task' is"),
    ("--target cpu", "--target cpu --no-such-option", "No idea what '--no-such-option' is"),
    ("--target cpu", "--target", "needed value"),
    ("invoke -f ci.yaml run-local", "python -m invoke run-local --inptu", "No idea what '--inptu' is"),
    ("bash .ci/lint", "./dev invoke", "names no task"),
    ("bash .ci/lint", "docker build -t x . && pip install foo", "`docker build -t x .` is not a README command"),
    ("checkout@8e8c483db84b4bee98b60c0593521ed34d9990e8 # v6.0.1", "checkout@main", "`actions/checkout@main`"),
    ("checkout@8e8c483db84b4bee98b60c0593521ed34d9990e8 # v6.0.1", "checkout@v6", "`actions/checkout@v6`"),
    ("checkout@8e8c483db84b4bee98b60c0593521ed34d9990e8 # v6.0.1", "checkout", "`actions/checkout`: pin"),
    ("checkout@8e8c483db84b4bee98b60c0593521ed34d9990e8 # v6.0.1",
     "checkout@8e8c483db84b4bee98b60c0593521ed34d9990e8", "say which release"),
    ("permissions:\n  contents: read\n", "", "no top-level permissions"),
    ("contents: read", "contents: write", "`contents: write` is more than it needs"),
    ("permissions:\n  contents: read", "permissions: write-all", "grants every scope"),
    ("  cancel-in-progress: true\n", "", "cancel-in-progress must be true"),
    ("${{ github.workflow }}-${{ github.ref }}", "ci", "group must name the workflow and the ref"),
])
def test_the_checker_reports_each_kind_of_problem(parser, old, new, expected):
    problems = workflow_problems(bad(old, new), parser)
    assert any(expected in problem for problem in problems), problems


def test_options_are_checked_against_the_task_they_follow(parser):
    # --bake is an option of build, not of smoke: invoke would refuse it, and so does the check.
    assert invoke_problem(["build", "--bake"], parser) is None
    assert "No idea what '--bake'" in invoke_problem(["smoke", "--bake"], parser)


def test_tasks_are_read_from_tasks_py_at_test_time(tmp_path):
    (tmp_path / "tasks.py").write_text("from invoke import task\n\n@task\ndef only_this(c, flag=False):\n    pass\n")
    module, _ = FilesystemLoader(start=str(tmp_path)).load("tasks")
    parser = parser_for(Collection.from_module(module))
    assert invoke_problem(["only-this", "--flag"], parser) is None
    assert invoke_problem(["build"], parser) == "`invoke build`: No idea what 'build' is!"


def test_id_token_write_is_the_one_write_a_workflow_may_ask_for(parser):
    manual = bad("on:\n  pull_request:\n  push:\n    branches: [main]\n", "on:\n  workflow_dispatch:\n")
    manual = manual.replace("contents: read", "contents: read\n  id-token: write")
    manual = manual.replace("concurrency:\n  group: ${{ github.workflow }}-${{ github.ref }}\n"
                            "  cancel-in-progress: true\n", "")
    assert workflow_problems(manual, parser) == []
