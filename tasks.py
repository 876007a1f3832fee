"""Invoke tasks: a thin CLI over the amltrain library (options -> config -> spec -> request -> backend).

Every task has --help and --dry-run; an anticipated failure prints one line and exits non-zero
(set AMLTRAIN_DEBUG=1 for the traceback). `./dev invoke` runs them through amltrain/cli.py, which gives
failures outside the tasks (configuration, options) the same one line.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import invoke
from invoke import Exit

from amltrain import config, engine, images, snapshot, standin
from amltrain.errors import ToolkitError, first_line
from amltrain.local import control as local_control
from amltrain.local import executor as local_executor
from amltrain.local import request as local_request
from amltrain.masking import error_line

ROOT = Path(__file__).resolve().parent
SDK_HELP = "Azure ML SDK: v2 (azure-ai-ml, the default) or v1 (azureml-core); default azure.sdk"


class Task(invoke.Task):
    """invoke's Task, except that an option whose name has no free letter before its first dash gets no short
    flag: invoke would give it `-`, shown as `--`, which is also the end-of-options marker."""

    def arg_opts(self, name, default, taken_names):
        opts = super().arg_opts(name, default, taken_names)
        opts["names"] = [n for n in opts["names"] if n != "-"]
        return opts


task = functools.partial(invoke.task, klass=Task)


def one_line_errors(body):
    """Turn ToolkitError (and unanticipated Docker errors) into invoke's Exit: one line on stderr, masked and
    cut as every error line is (``masking.error_line``), the error's exit code, no traceback. Also what plain
    ``invoke`` shows; amltrain/cli.py does the same for failures outside the tasks."""

    @functools.wraps(body)
    def wrapper(c, *args, **kwargs):
        try:
            return body(c, *args, **kwargs)
        except ToolkitError as exc:
            if os.environ.get("AMLTRAIN_DEBUG"):
                raise
            raise Exit(error_line(str(exc)), code=exc.exit_code) from None
        except Exception as exc:  # an engine answer nobody anticipated: still one line
            if os.environ.get("AMLTRAIN_DEBUG") or not type(exc).__module__.startswith("docker."):
                raise
            raise Exit(error_line(f"Docker: {first_line(exc)} (AMLTRAIN_DEBUG=1 shows the traceback)"),
                       code=1) from None

    return wrapper


def _yaml_text(data) -> str:
    import yaml

    class Plain(yaml.SafeDumper):  # repeated values printed in full, not as &anchors
        def ignore_aliases(self, data):
            return True

    return yaml.dump(data, Dumper=Plain, sort_keys=False, width=1000)


def _print_yaml(data) -> None:
    print(_yaml_text(data), end="")


@task(help={"force": "Remake the image even if it exists",
            "flavour": "cpu (like openmpi5.0-ubuntu24.04) or gpu (adds the CUDA toolkit of standin.cuda_toolkit at "
                       "/usr/local/cuda, like openmpi5.0-cuda13.1-ubuntu24.04); default standin.flavour; the gpu one "
                       "is tagged <standin.image>-cuda<major.minor>",
            "openmpi-off-path": "OpenMPI in /usr/local/openmpi and off PATH, as some openmpi5.0 MCR bases have it "
                                "(standin.openmpi_off_path); tagged <standin.image>-openmpi-off-path",
            "dry-run": "Print the commands and run nothing"})
@one_line_errors
def standin_base(c, force=False, flavour="", openmpi_off_path=False, dry_run=False):
    """Make a local stand-in with the layout of an MCR AzureML base (Debian, Python at /opt/miniconda, OpenMPI at
    /usr/local/openmpi, CUDA toolkit for the gpu flavour); needs root. Selected only by images.<target>.base_image."""
    cfg = config.section(c.config, "standin")
    flavour = flavour or str(cfg.get("flavour") or "cpu")
    plan = standin.plan(str(cfg.get("image")), str(cfg.get("suite") or "bookworm"), str(cfg.get("mirror") or ""),
                        str(config.section(c.config, "docker").get("cli") or "docker"),
                        openmpi_off_path=openmpi_off_path or config.flag(cfg.get("openmpi_off_path")),
                        flavour=flavour, cuda_toolkit=str(cfg.get("cuda_toolkit") or ""))
    if dry_run:
        print(plan.render())
        return
    made = standin.made_from(engine.connect(), plan.image)
    if made == plan.recipe and not force:
        print(f"stand-in base {plan.image} exists (--force to remake it)")
        return
    if made is not None and made != plan.recipe:
        print(f"stand-in base {plan.image} was made from another recipe: remaking it (images built on it will be "
              "rebuilt)", flush=True)
    started = time.monotonic()
    standin.create(plan)
    select = "INVOKE_IMAGES_GPU_BASE_IMAGE" if flavour == "gpu" else "INVOKE_IMAGES_CPU_BASE_IMAGE"
    print(f"stand-in base {plan.image} made in {time.monotonic() - started:.0f} s; select it with "
          f"{select}={plan.image}")


def _code_request(c, target: str) -> images.CodeBuildRequest:
    source_dir = config.job_spec(c.config, ROOT, target=target).source_dir
    files = snapshot.files(source_dir)
    snapshot.check_limits(source_dir, files)
    return images.code_build_request(images.image_ref(config.image_spec(c.config, target, ROOT)), source_dir,
                                     files, config.build_settings(c.config).docker_cli)


def _report(image: str, built: bool, started: float, base: str = "") -> None:
    if built:
        print(f"built {image} in {time.monotonic() - started:.1f} s")
    else:
        print(f"{image} is up to date: nothing changed, nothing built ({time.monotonic() - started:.2f} s)")
    if base:
        print(f"{image}: {images.image_weight(engine.connect(), image, base).render()}")


@task(help={"target": "Image flavour: cpu or gpu (images.<target> in invoke.yaml)",
            "bake": "Also bake the job's source-directory snapshot into an immutable code image on top "
                    "(tagged by content, and <image>-code-latest)",
            "no-cache": "Rebuild even if the content-addressed tag exists, without the layer cache",
            "unless-pushed": "Build nothing when the push destination (the workspace's ACR or "
                             "azure.registry.address) has this content-addressed tag already, pushed from any "
                             "machine: a fresh CI runner then builds only what changed",
            "sdk": SDK_HELP + " (with --unless-pushed: asks the workspace for its registry)",
            "dry-run": "Print the image tag and the build command (secrets masked) and build nothing"})
@one_line_errors
def build(c, target="cpu", bake=False, no_cache=False, unless_pushed=False, sdk=None, dry_run=False):
    """Build the training image; with nothing changed, does no build work at all."""
    spec = config.image_spec(c.config, target, ROOT)
    request = images.build_request(spec, config.build_settings(c.config))
    code = _code_request(c, target) if bake else None
    if bake and unless_pushed:
        raise ToolkitError("--bake and --unless-pushed do not go together: the code image is built on top of "
                           "the image, which must then be on this machine", "drop one of them")
    if no_cache and unless_pushed:
        raise ToolkitError("--no-cache and --unless-pushed do not go together: one rebuilds whatever exists, the "
                           "other builds nothing when the registry has the image", "drop one of them")
    if dry_run:
        print(request.render())
        print(f"state: {images.build_state(request)}")
        if unless_pushed:
            from amltrain.azure import acr

            remote = acr.push_request(_session(c, sdk).settings, request.image).remote
            print(f"unless pushed: when not built here, asks {remote} for the tag first; builds only if it is "
                  "missing there")
        if code:
            print(code.render())
        return
    started = time.monotonic()
    if unless_pushed and not engine.image_exists(engine.connect(), request.image):
        from amltrain.azure import flow

        pushed = flow.pushed_elsewhere(_session(c, sdk), request.image)
        if pushed:
            print(f"{pushed} is in the registry: the same inputs, so nothing built "
                  f"({time.monotonic() - started:.2f} s)")
            return
    _report(request.image, images.build(request, no_cache=no_cache), started, request.spec.base_image)
    if code:
        started = time.monotonic()
        _report(code.image, images.build_code(code), started)


@task(help={"dry-run": "List the images it would remove and remove nothing"})
@one_line_errors
def prune_images(c, dry_run=False):
    """Remove this project's images that no current target uses (old content-addressed tags)."""
    specs = [config.image_spec(c.config, target, ROOT) for target in config.targets(c.config)]
    if not specs:
        raise ToolkitError("no image targets configured", "declare them under images: in invoke.yaml")
    from amltrain.local import tracking

    keep = {ref for spec in specs for ref in (images.image_ref(spec), images.latest_code_ref(images.image_ref(spec)),
                                              tracking.ui_image(images.image_ref(spec)))}  # invoke ui's image too
    stale = images.stale_images(specs[0].repository, keep)
    for ref in stale:
        print(f"{'would remove' if dry_run else 'removing'} {ref}")
    if not dry_run:
        images.remove_images(stale)
    print(f"{len(stale)} stale image(s){' (dry run)' if dry_run else ' removed'}; kept the current ones")


@task(help={"target": "Image flavour (default: job.target)",
            "dry-run": "Accepted for symmetry: this task only computes and prints"})
@one_line_errors
def image_ref(c, target=None, dry_run=False):
    """Print the content-addressed image reference of a target (what build makes and runs use)."""
    target = target or str(config.section(c.config, "job").get("target") or "cpu")
    print(images.image_ref(config.image_spec(c.config, target, ROOT)))


@task(help={"dry-run": "List the checks it would run and run none"})
@one_line_errors
def doctor(c, dry_run=False):
    """Check this machine for the configured targets: one line per check, each with its fix; exit 1 if any fails."""
    from amltrain import doctor as checks
    from amltrain.azure import settings as azure_settings

    targets = config.targets(c.config)
    if dry_run:
        for name in ("docker engine", "buildkit client", "disk space", *(f"base image ({t})" for t in targets),
                     "nvidia runtime", "gpu persistence mode", "azure extra", "workspace config", "azure sign-in",
                     "registry login"):
            print(f"would check: {name}")
        return
    first, client = checks.engine_check()
    results = [first, checks.buildkit_check(config.build_settings(c.config).docker_cli)]
    if client is not None:
        results.append(checks.engine_disk(client))
        results += [checks.base_check(client, t, config.image_spec(c.config, t, ROOT).base_image) for t in targets]
    gpu_targets = [t for t in targets if config.section(c.config, f"images.{t}").get("gpu")]
    wanted = any(config.gpus_for(c.config, t, engine.host_gpu_count) for t in gpu_targets)
    results += checks.gpu_checks(client, wanted, engine.host_gpu_count())
    results += checks.azure_checks(azure_settings.from_config(c.config), ROOT, os.environ, checks.az_signed_in,
                                   Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json")
    for result in results:
        print(result.line())
    failed = [r.name for r in results if r.status == checks.FAIL]
    if failed:
        raise Exit(f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}", code=1)
    print("doctor: everything the configured targets need is in place")


# --- Azure ML: push, register, compute, submit, model -----------------------------------------------------------
# Library: amltrain/azure/flow.py (one session, prepared requests described or executed) over SDK v2 or v1.
# Dry runs contact nothing; Azure is reached only through each SDK's backend (the tests' seam).



def _session(c, sdk=None):
    from amltrain.azure import flow, settings

    return flow.AzureSession(settings.from_config(c.config, sdk), ROOT)


def _describe_or_execute(request, dry_run: bool) -> None:
    """A prepared Azure request: printed (--dry-run: plain data, nothing contacted) or carried out."""
    if not dry_run:
        request.execute()
    elif isinstance(request.describe(), list):
        print("\n".join(request.describe()))
    else:
        _print_yaml(request.describe())


def _image(c, session, target):
    from amltrain.azure import flow

    image = flow.image_choice(c.config, target, ROOT)
    session.warn(image.warnings)
    return image


@task(help={"target": "Image flavour to push (default: job.target)", "sdk": SDK_HELP,
            "dry-run": "Print the image, where it would go and how it would log in (secrets masked); "
                       "contact nothing"})
@one_line_errors
def push(c, target=None, sdk=None, dry_run=False):
    """Push the built image to the workspace's ACR (or azure.registry.address); nothing sent if it is there."""
    from amltrain.azure import flow

    session = _session(c, sdk)
    request = flow.prepare_push(session, _image(c, session, target))
    _describe_or_execute(request, dry_run)


@task(help={"target": "Image flavour whose pushed image to register (default: job.target)", "sdk": SDK_HELP,
            "dry-run": "Print the Environment definition it would register (secrets masked); contact nothing"})
@one_line_errors
def register(c, target=None, sdk=None, dry_run=False):
    """Register the pushed image (by digest) as an Azure ML Environment; same image -> same version."""
    from amltrain.azure import flow

    session = _session(c, sdk)
    request = flow.prepare_register(session, _image(c, session, target), offline=dry_run)
    session.warn(request.warnings)
    _describe_or_execute(request, dry_run)


@task(help={"name": "Cluster name (default: azure.compute); its azure.computes entry gives the defaults",
            "vm-size": "VM size, e.g. Standard_NC24ads_A100_v4 (retired sizes are refused)",
            "min-nodes": "Nodes kept when idle (default 0: scale to zero)",
            "max-nodes": "Most nodes the cluster scales to",
            "idle-seconds": "Idle time before scaling down",
            "priority": "dedicated or low (low priority: cheaper, may be pre-empted)",
            "identity": "The cluster's managed identity: none, system, or a user-assigned identity's resource id "
                        "(with AcrPull it pulls images from an ACR whose admin user is off)",
            "sdk": SDK_HELP,
            "dry-run": "Print the cluster and the creation request the SDK would send; contact nothing"})
@one_line_errors
def compute(c, name=None, vm_size=None, min_nodes=None, max_nodes=None, idle_seconds=None, priority=None,
            identity=None, sdk=None, dry_run=False):
    """Find or create an AmlCompute cluster and wait until it is ready."""
    from amltrain.azure import flow
    from amltrain.azure import settings as azure_settings

    session = _session(c, sdk)
    spec = azure_settings.compute_for(session.settings, name or session.settings.compute, vm_size=vm_size,
                                      min_nodes=min_nodes, max_nodes=max_nodes, idle_seconds=idle_seconds,
                                      priority=priority, identity=identity)
    request = flow.prepare_compute(session, spec)
    _describe_or_execute(request, dry_run)


@task(iterable=["input", "env"],
      help={"target": "Image flavour (default: job.target); its registered Environment is used",
            "compute": "AmlCompute cluster (default: azure.compute), or serverless (SDK v2: no cluster)",
            "instance-type": "With --compute serverless: the VM size to run on (default: azure.instance_type)",
            "nodes": "Nodes (default: job.distribution.nodes, 1)",
            "procs-per-node": "Processes per node; at most the VM size's GPUs (default 1)",
            "launch": "per-process (Azure ML starts every rank), per-node (your --command once per node, e.g. "
                      "torchrun) or mpi (mpirun, for Horovod)",
            "command": "Shell command run instead of `python SCRIPT ARGS` (needed for --launch per-node)",
            "script": "Training script, relative to job.source_dir (default: job.script)",
            "args": "Script arguments as one string; ${{inputs.NAME}} becomes that input's path on the cluster",
            "input": "Cloud data input NAME=azureml:DATASET[:VERSION] or NAME=datastore:STORE/PATH (repeatable)",
            "env": "Environment variable NAME=VALUE for the run (repeatable)",
            "wait": "Stream the run's logs and exit with its status (non-zero unless Completed)",
            "cancel-on-interrupt": "With --wait: when this task is stopped (Ctrl-C, SIGTERM, a cancelled CI job), "
                                   "cancel the run too instead of leaving it running",
            "summary": "Append the run as Markdown (run id, studio link, image digest, final status) to this "
                       "file, e.g. \"$GITHUB_STEP_SUMMARY\" for a GitHub job summary",
            "emit-yaml": "SDK v2: write the job as `az ml job create -f FILE` reads it, and submit nothing",
            "resume": "Continue Azure job JOB's checkpoints: this run mounts JOB's checkpoint folder as "
                      "AMLTRAIN_CHECKPOINT_DIR (found from JOB's tags) instead of a new one",
            "retries": "Submit the job again, on the same checkpoint folder, when a run fails for an "
                       "infrastructure fault (preempted, node failure, image pull timeout, …), at most N times; "
                       "never for a user error. Implies --wait (default 0)",
            "sdk": SDK_HELP,
            "dry-run": "Print the job as the SDK sends it (v2: the job YAML; v1: the run configuration), secrets "
                       "masked; contact nothing"})
@one_line_errors
def submit(c, target=None, compute=None, instance_type=None, nodes=None, procs_per_node=None, launch=None,
           command=None, script=None, args=None, input=None, env=None, wait=False, cancel_on_interrupt=False,
           summary=None, emit_yaml=None, resume=None, retries=None, sdk=None, dry_run=False):
    """Submit the job (the one run-local runs) to Azure ML: one process, DDP per process or per node, or MPI."""
    from amltrain.azure import flow

    session = _session(c, sdk)
    if dry_run and session.settings.sdk == "v2":
        session.warning_prefix = "# warning: "  # the output is the job YAML
    job = config.job_spec(c.config, ROOT, target=target, script=script, arguments=args, env=env or [],
                          command=command, launch=launch, nodes=nodes, procs_per_node=procs_per_node,
                          require_inputs=False)
    offline = dry_run or emit_yaml is not None
    retries = config.whole(retries, "--retries", 0, "e.g. --retries 3") if retries is not None else 0
    if emit_yaml is not None:
        emit_yaml = flow.emit_target(session, emit_yaml, dry_run=dry_run, wait=wait, summary=summary,
                                     cancel_on_interrupt=cancel_on_interrupt, retries=retries, resume=resume)
    request = flow.prepare_submit(session, job, _image(c, session, job.target), offline=offline,
                                  compute_name=compute, instance_type=instance_type, inputs=input or [],
                                  wait=wait, cancel_on_interrupt=cancel_on_interrupt, summary=summary,
                                  resume=resume, retries=retries)
    session.warn(request.warnings)
    if emit_yaml is not None:
        flow.emit_yaml(request, emit_yaml)
    elif dry_run:
        _print_dry_submit(request)
    else:
        request.execute()


def _print_dry_submit(request) -> None:
    """v2: the job YAML as `az ml job create -f` reads it, after the plan as comments; v1: one YAML mapping."""
    if request.session.settings.sdk == "v2":
        for key, value in request.describe().items():
            lines = _yaml_text({key: value}).rstrip("\n").splitlines()
            print("\n".join(f"# {line}" for line in lines))
        print(_yaml_text(request.document()), end="")
    else:
        _print_yaml({**request.describe(), **request.document()})


@task(help={"run": "Run id (`invoke submit` prints it)",
            "register": "Register the run's model under this name",
            "path": "The model's path in the run's artifacts (default: outputs, the whole folder)",
            "download": "Download the run's outputs/ into this folder (as DIR/outputs/...)",
            "sdk": SDK_HELP,
            "dry-run": "Print what it would register and download; contact nothing"})
@one_line_errors
def model(c, run=None, register=None, download=None, path=None, sdk=None, dry_run=False):
    """Register a finished run's model (from its outputs/) and/or download its outputs."""
    from amltrain.azure import flow

    request = flow.prepare_model(_session(c, sdk), run or "", register, download, path)
    _describe_or_execute(request, dry_run)


def _run_local(c, *, target, script, args, inputs, env, user, dry_run, inputs_made_later=False, baked=False,
               command=None, launch=None, nodes=None, procs_per_node=None, args_setting="--args", debug_rank=None,
               resume="", preemption=None):
    job = config.job_spec(c.config, ROOT, target=target, script=script, arguments=args, inputs=inputs, env=env,
                          command=command, launch=launch, nodes=nodes, procs_per_node=procs_per_node,
                          require_inputs=not inputs_made_later, arguments_setting=args_setting)
    image = images.image_ref(config.image_spec(c.config, job.target, ROOT))
    if baked:
        image = images.latest_code_image(image)
    gpus = config.node_gpus(config.gpus_for(c.config, job.target, engine.host_gpu_count), job.distribution,
                            engine.host_gpu_count)
    if debug_rank is not None:
        debug_rank = config.whole(debug_rank, "--debug-rank", 0, "a rank number, e.g. 0")
    request = local_request.local_request(job, image, config.local_settings(c.config, ROOT, user, gpus, for_run=True),
                                          code_in_image=images.CODE_ROOT if baked else "", debug_rank=debug_rank,
                                          debugpy_dir=local_request.host_debugpy() if debug_rank is not None else "",
                                          resume=resume or "", preemption=preemption)
    if dry_run:
        _print_yaml(local_request.describe(request))
        return
    d = job.distribution
    shape = "" if d.single_process else f", {d.nodes} node(s) x {d.procs_per_node} process(es), {d.launch}"
    started = time.monotonic()
    attach = "" if debug_rank is None else (
        f"\nrank {debug_rank} waits for a debugger: attach to 127.0.0.1:{local_request.DEBUG_PORT} (VS Code: "
        f"Python Debugger: Remote Attach, remoteRoot {local_request.WORKDIR}; see docs/debugging.md)")
    local_executor.run(request, announce=f"run {request.run_id}: {image}{shape}, results in {request.run_dir}{attach}")
    print(f"run {request.run_id} completed in {time.monotonic() - started:.1f} s; outputs in "
          f"{request.run_dir / 'outputs'}")


@task(iterable=["input", "env"],
      help={"target": "Image flavour (default: job.target)",
            "script": "Training script, relative to job.source_dir (default: job.script)",
            "args": "Script arguments as one string; ${{inputs.NAME}} becomes that input's path",
            "input": "Data input NAME=DIR, mounted read-only (repeatable)",
            "env": "Environment variable NAME=VALUE for the script (repeatable)",
            "user": "UID:GID the container runs as (default: yours, so outputs are yours)",
            "baked": "Run the newest code image of `build --bake` (its snapshot) instead of the working tree",
            "nodes": "Simulated nodes, one container each (default: job.distribution.nodes, 1)",
            "procs-per-node": "Processes per node (default: job.distribution.procs_per_node, 1); on a GPU "
                              "host each needs its own GPU",
            "launch": "per-process (Azure ML starts every rank), per-node (your --command once per node, "
                      "e.g. torchrun) or mpi (mpirun, for Horovod); default job.distribution.launch",
            "command": "Shell command run instead of `python SCRIPT ARGS` ($VARS expand in the container)",
            "debug-rank": "Start this rank under debugpy, waiting for a debugger on 127.0.0.1:5678 before its first "
                          "line (per-process launch; docs/debugging.md)",
            "resume": "Continue from this local run's checkpoints (its runs/<id>/checkpoints, mounted as "
                      "AMLTRAIN_CHECKPOINT_DIR)",
            "preempt-after": "Preemption drill: SIGTERM to the whole gang this many seconds into each attempt, "
                             "SIGKILL after --grace, then a restart on the same checkpoints",
            "restarts": "Preemption drill: how many times the gang is preempted and restarted (default 1)",
            "grace": "Preemption drill: seconds from SIGTERM to SIGKILL (default 30)",
            "dry-run": "Print every container request, the network and each rank's environment (secrets "
                       "masked) and run nothing"})
@one_line_errors
def run_local(c, target=None, script=None, args=None, input=None, env=None, user=None, baked=False,
              nodes=None, procs_per_node=None, launch=None, command=None, debug_rank=None, resume=None,
              preempt_after=None, restarts=None, grace=None, dry_run=False):
    """Run the job in local Docker as Azure ML runs it: one process, or simulated nodes (DDP, torchrun, MPI).

    Same image, same runtime contract (working dir, outputs/, logs/, environment, shm) as a cluster run.
    """
    _run_local(c, target=target, script=script, args=args, inputs=input or [], env=env or [], user=user,
               dry_run=dry_run, baked=baked, nodes=nodes, procs_per_node=procs_per_node, launch=launch,
               command=command, debug_rank=debug_rank, resume=resume,
               preemption=config.preemption(preempt_after, restarts, grace))


def _runs_dir(c) -> Path:
    return config.local_settings(c.config, ROOT).runs_dir


@task(help={"dry-run": "Accepted for symmetry: this task only reads"})
@one_line_errors
def local_status(c, dry_run=False):
    """List local runs: running ones (from Docker, any shell) and the newest finished ones (runs folder)."""
    rows = local_control.status(local_control.active_runs(engine.connect()), _runs_dir(c))
    if not rows:
        print(f"no local runs running or in {_runs_dir(c)}")
    for row in rows:
        print(f"{row['run_id']:<44} {row['status']:<10} {row['detail']}")


@task(help={"run": "Run id (see local-status)",
            "rank": "Only this rank's log (std_log_process_<rank>.txt)",
            "follow": "Keep printing until the run ends",
            "dry-run": "Print which log files it would read and read nothing"})
@one_line_errors
def local_logs(c, run=None, rank=None, follow=False, dry_run=False):
    """Print a local run's logs, every rank's (prefixed) or one rank's; --follow a running one."""
    if not run:
        raise ToolkitError("name the run: --run ID", "`invoke local-status` lists the runs")
    if rank is not None and not str(rank).isdigit():
        raise ToolkitError(f"--rank {rank!r} is not a rank number", "e.g. --rank 0")
    client = engine.connect()
    folder = local_control.run_dir(local_control.active_runs(client), _runs_dir(c), run)
    rank = int(rank) if rank is not None else None
    if dry_run:
        for _, path in local_control.rank_logs(folder, rank):
            print(f"would read {path}")
        return
    local_control.print_logs(client, folder, rank, follow, sys.stdout)


@task(help={"run": "Run id (see local-status)",
            "all": "Cancel every running local run",
            "dry-run": "Print which runs it would cancel and stop nothing"})
@one_line_errors
def local_cancel(c, run=None, all=False, dry_run=False):
    """Stop a running local run from any shell: all its containers and its network; results are kept."""
    if bool(run) == bool(all):
        raise ToolkitError("name one run (--run ID) or give --all", "`invoke local-status` lists the runs")
    targets = local_control.cancel_targets(engine.connect(), run)
    if not dry_run:
        local_control.cancel(targets)
    for rid, (containers, networks) in targets.items():
        print(f"{'would cancel' if dry_run else 'cancelled'} {rid}: {len(containers)} container(s) and "
              f"{len(networks)} network(s){'' if dry_run else ' removed; results kept'}")
    if not targets:
        print("no local runs running")


@task(help={"port": "Port on 127.0.0.1 for the UI (default 5000)",
            "target": "Whose image runs the UI: its MLflow plus the server, built once (default: job.target)",
            "dry-run": "Print the store, the UI image and the URL, and start nothing"})
@one_line_errors
def ui(c, port=5000, target=None, dry_run=False):
    """Serve the MLflow UI over the project's local runs (<runs_dir>/mlruns) and print its URL; Ctrl-C stops it."""
    from amltrain.local import tracking

    port = config.whole(port, "--port", 1, "a port number, e.g. 5000", 65535)
    target = target or str(config.section(c.config, "job").get("target") or "cpu")
    job_image = images.image_ref(config.image_spec(c.config, target, ROOT))
    store = tracking.store(_runs_dir(c))
    if dry_run:
        print(f"store: {store}\nimage: {tracking.ui_image(job_image)} (the job's image plus mlflow's server)\n"
              f"url: http://127.0.0.1:{port}")
        return
    if tracking.build_ui_image(job_image, config.build_settings(c.config)):
        print(f"built the MLflow UI image {tracking.ui_image(job_image)}")
    experiment = config.section(c.config, "job").get("experiment")
    tracking.serve(tracking.ui_image(job_image), store, port, config.local_settings(c.config, ROOT).user,
                   lambda url: print(f"MLflow UI: {url} (experiment {experiment}; Ctrl-C stops it)", flush=True))


@task(help={"out": "Dataset folder (default: smoke.data_dir)",
            "dry-run": "Print where it would be written and write nothing"})
@one_line_errors
def fowl_data(c, out=None, dry_run=False):
    """Generate the small, deterministic chickens/turkeys dataset the smoke run trains on (no network)."""
    out = ROOT / (out or str(config.section(c.config, "smoke").get("data_dir")))
    if dry_run:
        print(f"would generate the synthetic dataset in {out}" + (" (exists: kept)" if out.is_dir() else ""))
        return
    if (out / "train").is_dir() and (out / "val").is_dir():
        print(f"dataset {out} exists")
        return
    result = subprocess.run([sys.executable, str(ROOT / "train/fowl_synthetic.py"), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        last = (result.stdout.strip().splitlines() or ["no output"])[-1]
        raise ToolkitError(f"generating the dataset failed: {last}", "the dev extra (Pillow) must be installed")
    print(f"generated dataset {out}")


@task(help={"dry-run": "Print the build and the run it would do, and do nothing"})
@one_line_errors
def smoke(c, dry_run=False):
    """Build the CPU image and train 1 epoch on the generated dataset in it: the end-to-end check."""
    smoke_cfg = config.section(c.config, "smoke")
    data_dir = str(ROOT / str(smoke_cfg.get("data_dir")))
    build(c, target="cpu", dry_run=dry_run)
    fowl_data(c, out=data_dir, dry_run=dry_run)
    _run_local(c, target="cpu", script=None, args=str(smoke_cfg.get("arguments") or ""), inputs=[f"data={data_dir}"],
               env=[], user=None, dry_run=dry_run, inputs_made_later=dry_run, args_setting="smoke.arguments")
