"""The Azure flows, for either SDK: one session signs in once; ``prepare_push/register/compute/submit/model`` build
a request once, which is then either described (``--dry-run``: plain data, nothing contacted) or executed.

A dry run is prepared offline: the registry's address and the image's digest are what this machine knows
(``<the workspace's ACR>`` otherwise). A real run is prepared after asking the workspace for them, so what it
executes is exactly what it built. ``tasks.py`` only parses options, calls these and prints.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import config, engine, images
from ..errors import ToolkitError
from ..masking import mask_text, masked
from ..registry import KnownImage, local_image, push, pushed_image
from ..spec import JobSpec
from . import acr, checkpoints, compute, environment, faults, model, preflight, submit, workspace
from .plan import SERVERLESS, git_commit, plan, tags
from .settings import AzureSettings, ComputeSpec

SDK_PACKAGES = {"v1": ("azureml.core", "azureml-core"), "v2": ("azure.ai.ml", "azure-ai-ml")}
INSTALL_HINT = "install the azure extra: pip install -e '.[azure]' (./dev installs it)"


def load_sdk(name: str):
    """The adapter of SDK ``name`` (``amltrain.azure.v1`` or ``.v2``); one line when its package is missing."""
    module, package = SDK_PACKAGES[name]
    try:
        found = importlib.util.find_spec(module) is not None  # imports the parent packages, which may be missing
    except ModuleNotFoundError:
        found = False
    if not found:
        raise ToolkitError(f"Azure ML SDK {name} ({package}) is not installed", INSTALL_HINT)
    return importlib.import_module(f"amltrain.azure.{name}")


class AzureSession:
    """The settings, the chosen SDK and, once asked for, the workspace: signed in at most once per task."""

    def __init__(self, settings: AzureSettings, root: Path, out=None, find_image=None):
        """``find_image(ImageChoice, offline) -> KnownImage | None``: how a run finds its image (default: this
        Docker engine; a real run then asks the registry under the same tag; a dry run asks nobody)."""
        self.settings = settings
        self.root = root
        self.sdk = load_sdk(settings.sdk)
        self.out = out or sys.stdout
        self._backend = None
        self.find_image = find_image or self._built_or_pushed
        self.warning_prefix = "warning: "  # "# warning: " where the output must stay YAML (a v2 job)

    def workspace(self):
        """The workspace reference, from files and the environment only; one line when none is configured."""
        return workspace.workspace_ref(self.settings, self.root)

    def label(self) -> str:
        """Which workspace and credential a real run would use (for dry runs)."""
        try:
            ref = self.workspace()
        except ToolkitError as exc:
            return f"not configured ({exc.message}); a real run stops here"
        return (f"{ref.workspace_name} (resource group {ref.resource_group}, from {ref.source}; "
                f"auth {workspace.auth_mode(self.settings.auth, os.environ)}; SDK {self.settings.sdk})")

    def backend(self):
        if self._backend is None:
            self.workspace()
            self._backend = self.sdk.connect(self.settings, self.root)
        return self._backend

    def _built_or_pushed(self, image: ImageChoice, offline: bool) -> KnownImage | None:
        if offline:  # what a dry run may know: built (and maybe pushed) by this engine; nothing without one
            try:
                return local_image(engine.connect(), image.local_ref, image.target)
            except ToolkitError:
                return None
        return acr.built_or_pushed(engine.connect(), self.settings, image.local_ref, image.target, self.backend)

    def warn(self, lines) -> None:
        for line in lines:
            print(f"{self.warning_prefix}{mask_text(line)}", file=self.out, flush=True)


@dataclass(frozen=True)
class ImageChoice:
    """A target's content-addressed image, with its base image checked."""

    target: str
    local_ref: str
    gpu: bool
    warnings: tuple[str, ...] = ()


def image_choice(cfg, target: str | None, root: Path) -> ImageChoice:
    target = target or str(config.section(cfg, "job").get("target") or "cpu")
    spec = config.image_spec(cfg, target, root)
    gpu = bool(config.section(cfg, f"images.{target}").get("gpu"))
    return ImageChoice(target, images.image_ref(spec), gpu, tuple(preflight.check_base_image(spec.base_image, gpu)))


def _environment_ref(session: AzureSession, image: ImageChoice, known: KnownImage | None, offline: bool):
    registry = acr.registry_address(session.settings, None if offline else session.backend())
    digest = known.digest_in(f"{registry}/{session.settings.registry.repository}") if known else ""
    return environment.environment_ref(session.settings, image.target, image.local_ref, registry, digest)


# --- push ------------------------------------------------------------------------------------------------------
@dataclass
class PushFlow:
    session: AzureSession
    image: ImageChoice

    def describe(self) -> dict:
        described = acr.push_request(self.session.settings, self.image.local_ref).describe()
        if acr.needs_workspace(self.session.settings):
            described["workspace"] = self.session.label()
        return described

    def execute(self) -> None:
        s, out = self.session, self.session.out
        if acr.needs_workspace(s.settings):
            s.workspace()  # no workspace configured: one line before anything else
        client = engine.connect()
        known = acr.built_or_pushed(client, s.settings, self.image.local_ref, self.image.target, s.backend)
        if not known.image_id:  # built and pushed by another machine: the same content-addressed tag
            print("nothing pushed: pushed from another machine under the same content-addressed tag", file=out)
            return
        request = acr.push_request(s.settings, self.image.local_ref, connect=s.backend)
        print(f"pushing {self.image.local_ref} -> {request.remote}", file=out, flush=True)
        result = push(client, request, known)
        if result.pushed:
            print(f"pushed {result.remote}@{result.digest} in {result.seconds:.1f} s", file=out)
        else:
            print(f"{result.remote} is already in the registry ({result.digest}): nothing pushed "
                  f"({result.seconds:.2f} s)", file=out)


def prepare_push(session: AzureSession, image: ImageChoice) -> PushFlow:
    return PushFlow(session, image)


def pushed_elsewhere(session: AzureSession, local_ref: str) -> str:
    """``remote@digest`` when the push destination holds the content-addressed tag, else "" (build
    --unless-pushed)."""
    if acr.needs_workspace(session.settings):
        session.workspace()  # not configured: one line before contacting anything
    request = acr.push_request(session.settings, local_ref, connect=session.backend)
    pushed = pushed_image(engine.connect(), request)
    return pushed.pushed_as if pushed else ""


# --- register --------------------------------------------------------------------------------------------------
@dataclass
class RegisterFlow:
    session: AzureSession
    image: ImageChoice
    ref: environment.EnvironmentRef
    definition: object  # the SDK's Environment
    warnings: tuple[str, ...] = ()

    def describe(self) -> dict:
        return {"workspace": self.session.label(), "sdk": self.session.settings.sdk,
                "environment": f"{self.ref.name}:{self.ref.version}",
                "image": self.ref.image if self.ref.digest else f"{self.ref.image} (pinned to its digest once pushed)",
                "registered_when_missing": masked(self.session.sdk.environment_body(self.definition))}

    def execute(self) -> None:
        if not self.ref.digest:
            raise ToolkitError(f"{self.ref.tag_ref} is not in the registry: an Environment must name the pushed "
                               "digest", f"invoke push --target {self.image.target}")
        _, new = environment.ensure_registered(self.session.backend(), self.ref, self.definition,
                                               out=self.session.out)
        if not new:
            print(f"environment {self.ref.name}:{self.ref.version} is registered already ({self.ref.image}): "
                  "nothing registered", file=self.session.out)


def prepare_register(session: AzureSession, image: ImageChoice, offline: bool) -> RegisterFlow:
    if not offline:
        session.workspace()
    known = session.find_image(image, offline)
    ref = _environment_ref(session, image, known, offline)
    default = session.settings.compute
    warnings = preflight.pull_warnings(session.settings, session.settings.computes.get(default),
                                       serverless=default == SERVERLESS)
    return RegisterFlow(session, image, ref, session.sdk.environment(ref, session.settings), tuple(warnings))


# --- compute ---------------------------------------------------------------------------------------------------
@dataclass
class ComputeFlow:
    session: AzureSession
    spec: ComputeSpec
    definition: object  # the SDK's cluster definition

    def describe(self) -> dict:
        return {"workspace": self.session.label(), "sdk": self.session.settings.sdk,
                "compute": compute.describe(self.spec),
                "created_when_missing": self.session.sdk.compute_body(self.definition)}

    def execute(self) -> None:
        compute.ensure(self.session.backend(), self.spec, self.definition, out=self.session.out)


def prepare_compute(session: AzureSession, spec: ComputeSpec) -> ComputeFlow:
    compute.validate(spec)
    return ComputeFlow(session, spec, session.sdk.compute(spec))


# --- submit ----------------------------------------------------------------------------------------------------
@dataclass
class SubmitFlow:
    session: AzureSession
    request: submit.SubmitRequest
    warnings: tuple[str, ...]
    wait: bool = False
    cancel_on_interrupt: bool = False
    summary: Path | None = None
    notes: dict = field(default_factory=dict)

    def document(self, folder: Path | None = None) -> dict:
        """What the SDK is handed, as it reads it back (v2: the job YAML ``az ml job create -f`` takes, with
        ``code`` relative to ``folder``), masked."""
        return masked(self.session.sdk.job_document(self.request.job, folder))

    def describe(self) -> dict:
        p, r = self.request.plan, self.request
        c, d = p.compute, p.job.distribution
        where = (f"serverless: {p.instance_type} x {d.nodes}" if p.serverless else
                 f"{c.name}: {c.vm_size}, up to {c.max_nodes} nodes (declared)" if c.declared else
                 f"{c.name} (not declared: checked against the workspace when submitting)")
        return {"workspace": self.session.label(), "sdk": self.session.settings.sdk,
                "experiment": r.experiment, "compute": where,
                "launch": f"{d.launch}, {d.nodes} node(s) x {d.procs_per_node} process(es)",
                "environment": f"{r.environment.name}:{r.environment.version} ({r.environment.image}; must be "
                               "registered: invoke register)",
                "snapshot": f"{p.job.source_dir}: {p.snapshot_files} files, {p.snapshot_bytes / 2**20:.1f} MB "
                            "(.amlignore honoured; limits 2000 files, 300 MB)",
                "tags": dict(r.tags), **self.notes}

    retries: int = 0

    def execute(self):
        s = self.session
        return submit.execute(s.backend(), self.request, self.wait, out=s.out, summary=self.summary,
                              cancel_on_interrupt=self.cancel_on_interrupt, retries=self.retries)


def prepare_submit(session: AzureSession, job: JobSpec, image: ImageChoice, *, offline: bool,
                   compute_name: str | None = None, instance_type: str | None = None, inputs=(),
                   wait: bool = False, cancel_on_interrupt: bool = False, summary: str | None = None,
                   resume: str | None = None, retries: int = 0) -> SubmitFlow:
    """``retries`` > 0 implies ``wait``: a failed run can only be retried by following it to its end."""
    wait = wait or retries > 0
    if cancel_on_interrupt and not wait:
        raise ToolkitError("--cancel-on-interrupt needs --wait: without it the task ends once the run is submitted",
                           "add --wait")
    if resume is not None:  # it becomes part of a REST path
        preflight.check_name(resume, "job", "--resume")
    s = session
    folder = _checkpoint_folder(s, job.experiment, resume, offline)
    p = plan(job, s.settings, compute_name, inputs, image.gpu, instance_type, checkpoints=folder)
    s.sdk.check(p, s.settings)
    warnings = (*p.warnings, *preflight.pull_warnings(s.settings, p.compute if p.compute.declared else None,
                                                      p.serverless))
    if not offline:
        s.workspace()
        if summary:
            check_writable(Path(summary), "summary file")
    known = s.find_image(image, offline)
    ref = _environment_ref(s, image, known, offline)
    run_tags = {**tags(p, ref, known, git_commit(job.source_dir)), submit.ATTEMPT_TAG: "1",
                **(folder.tags() if folder.known else {checkpoints.RESUMED_TAG: folder.resumed_from})}
    request = submit.SubmitRequest(p, job.experiment, ref, s.sdk.job(p, ref, s.settings, run_tags), run_tags,
                                   rebuild=lambda attempt_tags: s.sdk.job(p, ref, s.settings, attempt_tags))
    notes = {"checkpoints": folder.describe()}
    if summary:
        notes["summary"] = f"the run's table appended to {summary} once submitted (nothing written now)"
    if wait:
        notes["wait"] = "stream the logs, exit with the run's status" + (
            "; cancel the run if interrupted" if cancel_on_interrupt else "")
    if retries:
        notes["retries"] = (f"up to {retries}: a run that fails for an infrastructure fault ("
                            f"{', '.join(kind for kind, _ in faults.RETRIED)}) is submitted again on the same "
                            "checkpoint folder; a user error (the script's non-zero exit) or an unrecognised "
                            "failure never is")
    return SubmitFlow(s, request, tuple(warnings), wait, cancel_on_interrupt, Path(summary) if summary else None,
                      notes, retries)


def _checkpoint_folder(session: AzureSession, experiment: str, resume: str | None, offline: bool):
    """A new folder for this job, or (``--resume JOB``) JOB's, which a real run asks Azure for: JOB's tags."""
    settings = session.settings.checkpoints
    if resume is None:
        return checkpoints.location(settings, experiment)
    if offline:
        return checkpoints.unknown(settings, resume)
    earlier = session.backend().get_run(resume)
    return checkpoints.of_job(resume, earlier.tags, earlier.checkpoints)


def check_writable(path: Path, what: str) -> None:
    """Before anything is started: a file to append to later must be writable (else one line now)."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        writable = os.access(path, os.W_OK) if path.exists() else folder.is_dir() and os.access(folder, os.W_OK)
        writable = writable and not path.is_dir()
    except OSError:  # a name the system refuses (too long)
        writable = False
    if not writable:
        raise ToolkitError(f"cannot write the {what} {path}", "give a writable file path")


# --- model -----------------------------------------------------------------------------------------------------
@dataclass
class ModelFlow:
    session: AzureSession
    request: model.ModelRequest

    def describe(self) -> list[str]:
        return [f"workspace: {self.session.label()}", *self.request.describe()]

    def execute(self) -> None:
        model.execute(self.session.backend(), self.request, out=self.session.out)


def prepare_model(session: AzureSession, run_id: str, register: str | None, download: str | None,
                  path: str | None) -> ModelFlow:
    if run_id:  # it becomes part of a REST path and an azureml://jobs/… URI
        preflight.check_name(run_id, "job", "--run")
    if register:
        preflight.check_name(register, "model", "--register")
    return ModelFlow(session, model.model_request(run_id, register, download, path, session.root))


# --- emit-yaml -------------------------------------------------------------------------------------------------
def emit_target(session: AzureSession, given: str, **others) -> Path:
    """Before anything is planned: only a v2 job has a YAML form, nothing else is asked of the task (it submits
    nothing), and the file is a regular file in a writable folder."""
    if session.settings.sdk != "v2":
        raise ToolkitError("--emit-yaml writes an SDK v2 job (for az ml job create -f); this task uses SDK v1",
                           "add --sdk v2")
    if not given.strip():
        raise ToolkitError("--emit-yaml needs a file name", "e.g. --emit-yaml job.yml")
    if others.pop("resume", None) is not None:  # JOB's folder is known only to Azure, which this never asks
        raise ToolkitError("--emit-yaml works offline and cannot read the checkpoint folder --resume names",
                           "submit --resume JOB without --emit-yaml")
    clashing = [f"--{name.replace('_', '-')}" for name, value in others.items() if value]
    if clashing:
        raise ToolkitError(f"--emit-yaml writes the job and submits nothing: {', '.join(clashing)} would not apply",
                           "drop one of them")
    path = Path(given)
    if path.exists() and (path.is_symlink() or not path.is_file()):
        raise ToolkitError(f"--emit-yaml {given} is not a regular file", "give a new or a regular file's path")
    check_writable(path, "job YAML file")
    if not os.access(path.parent if str(path.parent) else ".", os.W_OK):  # the file is written beside it first
        raise ToolkitError(f"cannot write into {path.parent}", "give a path in a writable folder")
    return path


def emit_yaml(flow: SubmitFlow, path: Path) -> None:
    """The job YAML, written whole or not at all. Values named like secrets are masked (the warning names them:
    better a key vault reference there); tags this machine could not know (the registry, the digest) are left
    out rather than recorded wrong on a real job."""
    import yaml

    shown = flow.document(path.resolve().parent)
    plain = flow.session.sdk.job_document(flow.request.job, path.resolve().parent)
    hidden = sorted(_masked_keys(plain, shown))
    if hidden:
        flow.session.warn([f"masked in {path}: {', '.join(hidden)}; fill them in before az ml job create -f"])
    shown["tags"] = {k: v for k, v in (shown.get("tags") or {}).items()
                     if v != "unknown" and acr.WORKSPACE_ACR not in str(v)}
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(yaml.safe_dump(shown, sort_keys=False, width=1000), encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ToolkitError(f"cannot write {path}: {exc.strerror or exc}", "give a writable file path") from None
    print(f"wrote {path}: az ml job create -f {path} submits it (nothing submitted)", file=flow.session.out)


def _masked_keys(plain, shown, prefix: str = "") -> list[str]:
    """Where ``masked`` changed a value: the keys a user must fill in."""
    if isinstance(plain, dict):
        return [key for k in plain for key in _masked_keys(plain[k], shown.get(k), f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if plain != shown else []
