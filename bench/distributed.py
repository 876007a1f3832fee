"""Local distributed figures, measured in one run:

- time per DDP step of 2 nodes x 2 processes (two containers on the run's network) against 1 node x 4
  processes (one container), same job, same image: what simulating nodes costs in communication;
- start-up of a 2-node run against a single-container run (whole `invoke run-local` of a no-op command,
  best of 3): what the network, the second container and the launcher cost.

    ./dev python bench/distributed.py [--steps 30]

Uses the same configuration as the tasks (invoke.yaml, INVOKE_*); needs the CPU image built.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_local(env: dict, *args: str) -> tuple[float, Path]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "invoke", "run-local", *args], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, **env})
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"run-local {' '.join(args)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return elapsed, Path(re.search(r"results in (\S+)", result.stdout).group(1))


def step_time(env: dict, nodes: int, procs: int, steps: int) -> float:
    _, run_dir = run_local(env, "--script", "ddp_steps.py", "--args", str(steps), "--nodes", str(nodes),
                           "--procs-per-node", str(procs))
    return json.loads((run_dir / "outputs/timing.json").read_text())["step_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {"INVOKE_JOB_SOURCE_DIR": str(ROOT / "bench/jobs"), "INVOKE_JOB_TARGET": "cpu",
               "INVOKE_LOCAL_RUNS_DIR": str(Path(tmp, "runs")), "INVOKE_LOCAL_CACHE_DIR": str(Path(tmp, "cache"))}
        two_by_two = step_time(env, 2, 2, args.steps)
        one_by_four = step_time(env, 1, 4, args.steps)
        noop = ("--command", "true")
        single = min(run_local(env, *noop)[0] for _ in range(3))
        two_nodes = min(run_local(env, *noop, "--nodes", "2")[0] for _ in range(3))
    print(f"DDP step, 2 nodes x 2 processes   {two_by_two * 1000:8.1f} ms")
    print(f"DDP step, 1 node x 4 processes    {one_by_four * 1000:8.1f} ms   ratio 2x2 / 1x4: "
          f"{two_by_two / one_by_four:.2f}")
    print(f"start-up, single container        {single:8.2f} s")
    print(f"start-up, 2 nodes                 {two_nodes:8.2f} s   ratio 2 nodes / single: {two_nodes / single:.2f}")
    print(f"(host: {os.cpu_count()} CPU cores; {args.steps} timed steps after 5 warm-up steps)")


if __name__ == "__main__":
    main()
