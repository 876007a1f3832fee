"""``invoke submit`` for either SDK: the checks that need the workspace (the cluster, the registered
environment), the submission, and following the run to its end (``--wait``), with a Markdown summary for CI.

The job object itself is the SDK's (``v1.run_config``: a ScriptRunConfig; ``v2.build``: a command job), built offline
from the same ``Plan``; a dry run prints what that SDK would send.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ToolkitError
from ..signals import STOP_SIGNALS, signals_ignored
from . import faults, preflight
from .backend import RunError
from .environment import EnvironmentRef, registered
from .plan import Plan

INTERRUPTED = {128 + signum for signum in STOP_SIGNALS}  # exit codes of a task stopped by Ctrl-C, SIGTERM, SIGHUP


@dataclass(frozen=True)
class SubmitRequest:
    """What is handed to the SDK: the job object on ``environment``, with the run's tags."""

    plan: Plan
    experiment: str
    environment: EnvironmentRef
    job: object  # the SDK's job object
    tags: Mapping[str, str]
    # the same job object built again with other tags (a retry's): a submitted SDK object is not reused (v2's
    # create_or_update sets fields on the object it is given) and v2's cannot be deep-copied
    rebuild: Callable[[Mapping[str, str]], object] | None = None


def summary_markdown(run, request: SubmitRequest) -> str:
    """The run as a Markdown table (run id, studio link, image and digest, …): a CI job summary's body."""
    def cell(value: str) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    p = request.plan
    d = p.job.distribution
    rows = [("Run", f"[`{cell(run.run_id)}`]({run.portal_url})"),
            ("Studio", run.portal_url),
            ("Experiment", cell(request.experiment)),
            ("Compute", cell(f"{p.compute.name}: {d.launch}, {d.nodes} node(s) x {d.procs_per_node} process(es)")),
            ("Environment", f"`{cell(request.tags['amltrain.environment'])}`"),
            ("Image", f"`{cell(request.tags['amltrain.image'])}`"),
            ("Image digest", f"`{cell(request.tags['amltrain.image_digest'])}`"),
            ("Git commit", f"`{cell(request.tags['amltrain.git_commit'])}`")]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"### Azure ML run `{cell(run.run_id)}`\n\n| | |\n|---|---|\n{table}\n\n"


def _append(summary: Path | None, text: str) -> None:
    if summary is not None:
        with open(summary, "a", encoding="utf-8") as file:
            file.write(text)


def execute(backend, request: SubmitRequest, wait: bool, out=None, summary: Path | None = None,
            cancel_on_interrupt: bool = False, retries: int = 0):
    """Check the job against the real cluster and the registered environment, submit, and (``wait``) follow
    the run to its end. A run that does not complete is a ToolkitError naming the run and its studio link.
    ``summary``: a file (GitHub's $GITHUB_STEP_SUMMARY) the run's table and final status are appended to.
    ``cancel_on_interrupt``: following interrupted (Ctrl-C, SIGTERM: a cancelled CI job) cancels the run too,
    so no cluster keeps training for a job nobody waits for. ``retries``: a run that failed for a reason a new
    attempt can get past (``faults.classify``: preempted, node failure, …) is submitted again, the same job on the
    same checkpoint folder, at most this many times; the attempts are linked by their tags."""
    out = out or sys.stdout
    p = request.plan
    if not p.serverless:
        _check_cluster(backend, p, out)
    env = request.environment
    if registered(backend, env) is None:
        raise ToolkitError(f"environment {env.name}:{env.version} is not registered in workspace "
                           f"{backend.workspace.workspace_name}",
                           f"invoke push --target {p.job.target} && invoke register --target {p.job.target}")
    run = _submit(backend, request, request.job, dict(request.tags), out, summary)
    if not wait:
        _append(summary, "Submitted; not followed (`invoke submit` without `--wait`).\n\n")
        return run
    first, attempt = run.run_id, 1
    while True:
        final = _follow(backend, run, summary, cancel_on_interrupt)
        if final.status == "Completed":
            print(f"run {final.run_id} completed: {final.portal_url}", file=out)
            return final
        error = final.error or RunError()
        verdict = faults.classify(final.status, error.code, error.message)
        ended = f"run {final.run_id} ended {final.status}"
        if not retries:
            raise ToolkitError(f"{ended}{f' ({verdict.said})' if final.error else ''}: {final.portal_url}",
                               LOGS_HINT)
        if not verdict.retry:
            raise ToolkitError(f"not retried: {verdict.line()}; {ended}: {final.portal_url}", LOGS_HINT)
        if attempt > retries:
            raise ToolkitError(f"retries exhausted ({retries}/{retries}): {verdict.line()}; {ended} "
                               f"(attempt {attempt}): {final.portal_url}", LOGS_HINT)
        print(f"retry {attempt}/{retries}: {verdict.line()}", file=out, flush=True)
        attempt += 1
        tags = {**request.tags, ATTEMPT_TAG: str(attempt), FIRST_TAG: first, PREVIOUS_TAG: final.run_id}
        job = request.rebuild(tags) if request.rebuild else copy.deepcopy(request.job)
        run = _submit(backend, request, job, tags, out, summary)


ATTEMPT_TAG = "amltrain.attempt"  # 1, 2, …: which attempt of the job this run is
FIRST_TAG = "amltrain.first_attempt"  # on a retry: the run id of attempt 1
PREVIOUS_TAG = "amltrain.previous_attempt"  # on a retry: the run id of the attempt it follows
LOGS_HINT = "its logs: the studio link, user_logs/std_log*.txt"


def _submit(backend, request: SubmitRequest, job, tags: dict[str, str], out, summary: Path | None):
    """One attempt: the SDK's job object with its tags."""
    run = backend.submit(request.experiment, job, tags)
    print(f"submitted run {run.run_id} to {request.plan.compute.name}: {run.portal_url}", file=out, flush=True)
    _append(summary, summary_markdown(run, request))
    return run


def _check_cluster(backend, p: Plan, out) -> None:
    """The job against the real cluster: it exists, fits, and has the GPUs the plan assumed."""
    cluster = backend.get_compute(p.compute.name)
    if cluster is None:
        raise ToolkitError(f"unknown compute {p.compute.name!r} in workspace {backend.workspace.workspace_name}",
                           f"create it: invoke compute --name {p.compute.name} --vm-size VM_SIZE --max-nodes N")
    for warning in preflight.check_shape(p.job.distribution, cluster.name, cluster.vm_size, cluster.max_nodes):
        print(f"warning: {warning}", file=out)
    needed = preflight.communication_backend(cluster.vm_size)
    pytorch = p.job.distribution.launch != "mpi" and not p.job.distribution.single_process
    if pytorch and needed != p.communication:
        raise ToolkitError(f"compute {cluster.name} is {cluster.vm_size}, where PyTorch needs {needed}, but the job "
                           f"was planned with {p.communication}",
                           f"declare azure.computes.{cluster.name}.vm_size as {cluster.vm_size}, or choose a cluster "
                           "that fits the target")


def _follow(backend, run, summary: Path | None, cancel_on_interrupt: bool):
    """Stream the run to its end; interrupted, cancel it only when asked."""
    try:
        final = backend.wait(run.run_id, show_output=True)
    except ToolkitError as exc:
        if not (cancel_on_interrupt and exc.exit_code in INTERRUPTED):
            _append(summary, f"Status: not followed to its end ({exc.message}).\n\n")
            raise
        with signals_ignored():  # CI follows its SIGINT with a SIGTERM: the cancel request must still go out
            try:
                cancelled = backend.cancel(run.run_id)
            except ToolkitError as failed:
                _append(summary, f"Status: interrupted; cancelling the run failed ({failed.message})\n\n")
                raise ToolkitError(f"interrupted, and cancelling run {run.run_id} failed: {failed.message}",
                                   f"cancel it in the studio: {run.portal_url}", exit_code=exc.exit_code) from None
            _append(summary, f"Status: **{cancelled.status or 'CancelRequested'}** (the job following it was "
                             "interrupted, so the run was cancelled)\n\n")
        raise ToolkitError(f"interrupted: cancelled run {run.run_id} ({cancelled.status or 'CancelRequested'}): "
                           f"{run.portal_url}", exit_code=exc.exit_code) from None
    _append(summary, f"Status: **{final.status}**\n\n")
    return final
