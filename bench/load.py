"""Concurrent load, measured in one run: the wall time of 8 `invoke run-local` runs of 2 nodes each, started at
once as separate processes, against the wall time of one such run alone (best of 3), same job, same image.

    ./dev python bench/load.py [--runs 8] [--command "sleep 5"]

The default job is a no-op (`true`), so the figure is what the toolkit and the engine add per run (snapshot,
network, two containers, launcher, teardown) and how that overhead shares the host; a job that works (--command)
measures the host's cores as much as the toolkit. Uses the same configuration as the tasks (invoke.yaml,
INVOKE_*); needs the CPU image built.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start(env: dict, command: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "invoke", "run-local", "--nodes", "2", "--command", command],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})


def finish(proc: subprocess.Popen, started: float) -> float:
    out, err = proc.communicate()
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"run-local failed ({proc.returncode}):\n{out[-2000:]}{err[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--command", default="true", help="what each node runs (default: nothing)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {"INVOKE_JOB_SOURCE_DIR": str(ROOT / "bench/jobs"), "INVOKE_JOB_TARGET": "cpu",
               "INVOKE_LOCAL_RUNS_DIR": str(Path(tmp, "runs")), "INVOKE_LOCAL_CACHE_DIR": str(Path(tmp, "cache"))}
        alone = []
        for _ in range(3):
            started = time.monotonic()
            alone.append(finish(start(env, args.command), started))
        started = time.monotonic()
        procs = [start(env, args.command) for _ in range(args.runs)]
        with ThreadPoolExecutor(args.runs) as pool:  # each run's end is timed when it happens
            each = list(pool.map(lambda proc: finish(proc, started), procs))
        together = time.monotonic() - started
    single = min(alone)
    print(f"one 2-node run alone (best of 3)             {single:7.2f} s")
    print(f"{args.runs} 2-node runs at once, until the last ends   {together:7.2f} s   ratio {args.runs} at once / "
          f"1 alone: {together / single:.2f} (one after another: {args.runs})")
    print(f"each of the {args.runs}, from the common start to its end  median {statistics.median(each):.2f} s, "
          f"first {min(each):.2f} s")
    print(f"(host: {os.cpu_count()} CPU cores; job: {args.command!r} on each node)")


if __name__ == "__main__":
    main()
