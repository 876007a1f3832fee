"""Invoke tasks: a thin CLI over the amltrain library (options -> config -> spec -> request -> backend).

Every task has --help and --dry-run; an anticipated failure prints one line and exits non-zero
(set AMLTRAIN_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path

from invoke import Exit, task

from amltrain import config, engine, images, localcontrol, localrun, snapshot, standin
from amltrain.errors import ToolkitError

ROOT = Path(__file__).resolve().parent


def one_line_errors(body):
    """Turn ToolkitError into invoke's Exit: one line on stderr, the error's exit code, no traceback."""

    @functools.wraps(body)
    def wrapper(c, *args, **kwargs):
        try:
            return body(c, *args, **kwargs)
        except ToolkitError as exc:
            if os.environ.get("AMLTRAIN_DEBUG"):
                raise
            raise Exit(f"error: {exc}", code=exc.exit_code) from None

    return wrapper


def _print_yaml(data) -> None:
    import yaml

    class Plain(yaml.SafeDumper):  # repeated values printed in full, not as &anchors
        def ignore_aliases(self, data):
            return True

    print(yaml.dump(data, Dumper=Plain, sort_keys=False, width=1000), end="")


@task(help={"force": "Remake the image even if it exists",
            "dry-run": "Print the commands and run nothing"})
@one_line_errors
def standin_base(c, force=False, dry_run=False):
    """Make the local stand-in for the MCR AzureML base (Debian + Python venv + OpenMPI); needs root."""
    cfg = config.section(c.config, "standin")
    plan = standin.plan(str(cfg.get("image")), str(cfg.get("suite") or "bookworm"), str(cfg.get("mirror") or ""),
                        str(config.section(c.config, "docker").get("cli") or "docker"))
    if dry_run:
        print(plan.render())
        return
    if engine.image_exists(engine.connect(), plan.image) and not force:
        print(f"stand-in base {plan.image} exists (--force to remake it)")
        return
    started = time.monotonic()
    standin.create(plan)
    print(f"stand-in base {plan.image} made in {time.monotonic() - started:.0f} s; select it with "
          f"INVOKE_IMAGES_CPU_BASE_IMAGE={plan.image} (and _GPU_)")


def _code_request(c, target: str) -> images.CodeBuildRequest:
    source_dir = config.job_spec(c.config, ROOT, target=target).source_dir
    files = snapshot.files(source_dir)
    snapshot.check_limits(source_dir, files)
    return images.code_build_request(images.image_ref(config.image_spec(c.config, target, ROOT)), source_dir,
                                     files, config.build_settings(c.config).docker_cli)


def _report(image: str, built: bool, started: float) -> None:
    if built:
        print(f"built {image} in {time.monotonic() - started:.1f} s")
    else:
        print(f"{image} is up to date: nothing changed, nothing built ({time.monotonic() - started:.2f} s)")


@task(help={"target": "Image flavour: cpu or gpu (images.<target> in invoke.yaml)",
            "bake": "Also bake the job's source-directory snapshot into an immutable code image on top "
                    "(tagged by content, and <image>-code-latest)",
            "no-cache": "Rebuild even if the content-addressed tag exists, without the layer cache",
            "dry-run": "Print the image tag and the build command (secrets masked) and build nothing"})
@one_line_errors
def build(c, target="cpu", bake=False, no_cache=False, dry_run=False):
    """Build the training image; with nothing changed, does no build work at all."""
    spec = config.image_spec(c.config, target, ROOT)
    request = images.build_request(spec, config.build_settings(c.config))
    code = _code_request(c, target) if bake else None
    if dry_run:
        print(request.render())
        print(f"state: {images.build_state(request)}")
        if code:
            print(code.render())
        return
    started = time.monotonic()
    _report(request.image, images.build(request, no_cache=no_cache), started)
    if code:
        started = time.monotonic()
        _report(code.image, images.build_code(code), started)


@task(help={"dry-run": "List the images it would remove and remove nothing"})
@one_line_errors
def prune_images(c, dry_run=False):
    """Remove this project's images that no current target uses (old content-addressed tags)."""
    keep = set()
    for target in config.targets(c.config):
        ref = images.image_ref(config.image_spec(c.config, target, ROOT))
        keep |= {ref, images.latest_code_ref(ref)}
    repository = str(config.section(c.config, "images").get("repository") or "amltrain")
    stale = images.stale_images(repository, keep)
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


def _run_local(c, *, target, script, args, inputs, env, user, dry_run, inputs_made_later=False, baked=False,
               command=None, launch=None, nodes=None, procs_per_node=None):
    job = config.job_spec(c.config, ROOT, target=target, script=script, arguments=args, inputs=inputs, env=env,
                          command=command, launch=launch, nodes=nodes, procs_per_node=procs_per_node,
                          require_inputs=not inputs_made_later)
    image = images.image_ref(config.image_spec(c.config, job.target, ROOT))
    if baked:
        image = images.latest_code_image(image)
    gpus = config.node_gpus(config.gpus_for(c.config, job.target, engine.host_gpu_count), job.distribution,
                            engine.host_gpu_count)
    request = localrun.local_request(job, image, config.local_settings(c.config, ROOT, user, gpus),
                                     code_in_image=images.CODE_ROOT if baked else "")
    if dry_run:
        _print_yaml(localrun.describe(request))
        return
    d = job.distribution
    shape = "" if d.single_process else f", {d.nodes} node(s) x {d.procs_per_node} process(es), {d.launch}"
    print(f"run {request.run_id}: {image}{shape}, results in {request.run_dir}", flush=True)
    started = time.monotonic()
    localrun.run(request)
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
            "dry-run": "Print every container request, the network and each rank's environment (secrets "
                       "masked) and run nothing"})
@one_line_errors
def run_local(c, target=None, script=None, args=None, input=None, env=None, user=None, baked=False,
              nodes=None, procs_per_node=None, launch=None, command=None, dry_run=False):
    """Run the job in local Docker as Azure ML runs it: one process, or simulated nodes (DDP, torchrun, MPI).

    Same image, same runtime contract (working dir, outputs/, logs/, environment, shm) as a cluster run.
    """
    _run_local(c, target=target, script=script, args=args, inputs=input or [], env=env or [], user=user,
               dry_run=dry_run, baked=baked, nodes=nodes, procs_per_node=procs_per_node, launch=launch,
               command=command)


def _runs_dir(c) -> Path:
    return config.local_settings(c.config, ROOT).runs_dir


@task(help={"dry-run": "Accepted for symmetry: this task only reads"})
@one_line_errors
def local_status(c, dry_run=False):
    """List local runs: running ones (from Docker, any shell) and the newest finished ones (runs folder)."""
    rows = localcontrol.status(engine.connect(), _runs_dir(c))
    if not rows:
        print(f"no local runs running or in {_runs_dir(c)}")
    for row in rows:
        print(f"{row['run_id']:<44} {row['status']:<10} {row['detail']}")


@task(help={"run": "Run id (see local-status)",
            "rank": "Only this rank's log (std_log_process_<rank>.txt)",
            "follow": "Keep printing until the run ends",
            "dry-run": "Print which log files it would read and read nothing"})
@one_line_errors
def local_logs(c, run, rank=None, follow=False, dry_run=False):
    """Print a local run's logs, every rank's (prefixed) or one rank's; --follow a running one."""
    if rank is not None and not str(rank).isdigit():
        raise ToolkitError(f"--rank {rank!r} is not a rank number", "e.g. --rank 0")
    client = engine.connect()
    folder = localcontrol.run_dir(client, _runs_dir(c), run)
    rank = int(rank) if rank is not None else None
    if dry_run:
        for _, path in localcontrol.rank_logs(folder, rank):
            print(f"would read {path}")
        return
    localcontrol.print_logs(client, folder, rank, follow, sys.stdout)


@task(help={"run": "Run id (see local-status)",
            "all": "Cancel every running local run",
            "dry-run": "Print which runs it would cancel and stop nothing"})
@one_line_errors
def local_cancel(c, run=None, all=False, dry_run=False):
    """Stop a running local run from any shell: all its containers and its network; results are kept."""
    if bool(run) == bool(all):
        raise ToolkitError("name one run (--run ID) or give --all", "`invoke local-status` lists the runs")
    client = engine.connect()
    if dry_run:
        running = localcontrol.active_runs(client)
        if run and run not in running:
            raise ToolkitError(f"no local run {run!r} is running", "`invoke local-status` lists the runs")
        for rid in [run] if run else sorted(running):
            print(f"would cancel {rid}: {len(running[rid])} container(s) and its network")
        return
    cancelled = localcontrol.cancel(client, run)
    for rid in cancelled:
        print(f"cancelled {rid}: containers and network removed; results kept")
    if not cancelled:
        print("no local runs running")


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
    _run_local(c, target="cpu", script=None, args=str(smoke_cfg.get("arguments")), inputs=[f"data={data_dir}"],
               env=[], user=None, dry_run=dry_run, inputs_made_later=dry_run)
