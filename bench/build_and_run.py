"""Build and run figures, measured in one run: build time, nothing-changed build, image size, smoke run,
and run-local's start-up overhead against a bare `docker run` of the same image.

    ./dev python bench/build_and_run.py [--target cpu] [--cold]

--cold removes the image and prunes BuildKit's cache first (pip's download cache included), so the build
is what a new machine sees; without it the image is removed but the layer cache kept. Uses the same
configuration as the tasks (invoke.yaml, INVOKE_*).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from amltrain import config, engine, images  # noqa: E402


def timed(argv: list[str], env: dict | None = None) -> float:
    started = time.monotonic()
    result = subprocess.run(argv, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return elapsed


def invoke(*args: str, env: dict | None = None) -> float:
    return timed([sys.executable, "-m", "invoke", *args], env)


def best_of(n: int, fn) -> float:
    return min(fn() for _ in range(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--cold", action="store_true", help="prune BuildKit's cache before building")
    args = parser.parse_args()
    cfg = config.load(ROOT)
    client = engine.connect()
    spec = config.image_spec(cfg, args.target, ROOT)
    ref = images.image_ref(spec)
    if engine.image_exists(client, ref):
        client.images.remove(ref, force=True)
    if args.cold:
        subprocess.run([config.build_settings(cfg).docker_cli, "builder", "prune", "-af"], check=True,
                       capture_output=True)
    build = invoke("build", "--target", args.target)
    unchanged = best_of(3, lambda: invoke("build", "--target", args.target))
    weight = images.image_weight(client, ref, spec.base_image)
    smoke = invoke("smoke") if args.target == "cpu" else float("nan")
    with tempfile.TemporaryDirectory() as src:
        Path(src, "noop.py").write_text("pass\n")
        job_env = {"INVOKE_JOB_SOURCE_DIR": src, "INVOKE_JOB_SCRIPT": "noop.py", "INVOKE_JOB_TARGET": args.target,
                   "INVOKE_LOCAL_RUNS_DIR": str(Path(src, "runs")), "INVOKE_LOCAL_CACHE_DIR": str(Path(src, "cache"))}
        run_local = best_of(3, lambda: invoke("run-local", env=job_env))
    bare = best_of(3, lambda: timed([config.build_settings(cfg).docker_cli, "run", "--rm", ref, "python", "-c",
                                     "pass"]))
    print(f"target                        {args.target} ({'cold' if args.cold else 'layer cache kept'})")
    print(f"image                         {ref}, {weight.render()}")
    print(f"build                         {build:8.1f} s")
    print(f"build, nothing changed        {unchanged:8.2f} s   ratio to build: {unchanged / build:.4f}")
    print(f"smoke (1 epoch, incl. build)  {smoke:8.1f} s")
    print(f"run-local of a no-op script   {run_local:8.2f} s   ratio to bare docker run: {run_local / bare:.2f}")
    print(f"bare docker run of the same   {bare:8.2f} s")


if __name__ == "__main__":
    main()
