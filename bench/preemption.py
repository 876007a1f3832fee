"""Checkpoint and preemption figures of the sample, measured in one drilled run:

- checkpoint write time and size (rank 0's "checkpoint … saved (X MiB in Y s)" lines; median);
- time per training step (between consecutive per-step checkpoints, less the save);
- time lost per preemption: from the restart of the gang to the end of the first step after it (the save
  on SIGTERM means no step is redone); and what a preemption without that save (SIGKILL, no grace) would
  lose on top, on average half a checkpoint interval of steps, for a few intervals.

    ./dev python bench/preemption.py [--nodes 1] [--image-size 112] [--preempt-after 30]

Uses the same configuration as the tasks (invoke.yaml, INVOKE_*); needs the CPU image built. Lines are
timed as they arrive from `run-local`'s output.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from train import fowl_synthetic  # noqa: E402

SAVED = re.compile(r"checkpoint ckpt-e\d+-s\d+\.pt saved \(([\d.]+) MiB in ([\d.]+)s\)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--preempt-after", type=float, default=30)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="amltrain-bench-") as tmp:
        data = fowl_synthetic.generate(Path(tmp) / "fowl", train_per_class=32, val_per_class=8, size=128, seed=0)
        env = {**os.environ, "INVOKE_LOCAL_RUNS_DIR": f"{tmp}/runs", "INVOKE_LOCAL_CACHE_DIR": f"{tmp}/cache"}
        job = (f"--data-dir ${{{{inputs.data}}}} --weights none --image-size {args.image_size} --batch-size "
               f"{args.batch_size} --num-epochs {args.epochs} --num-workers 1 --checkpoint-every 1")
        argv = [sys.executable, "-m", "invoke", "run-local", "--input", f"data={data}", "--nodes", str(args.nodes),
                "--args", job, "--preempt-after", str(args.preempt_after), "--restarts", "1", "--grace", "60"]
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = [(time.monotonic(), line.rstrip("\n")) for line in proc.stdout]
        if proc.wait() != 0:
            sys.exit("run-local failed:\n" + "\n".join(line for _, line in lines[-40:]))
    saves = [(t, float(m.group(1)), float(m.group(2))) for t, line in lines if (m := SAVED.search(line))]
    restart = next((t for t, line in lines if line.startswith("amltrain: attempt 2 ")), None)
    if restart is None:
        sys.exit(f"the run ended before the preemption at {args.preempt_after:g} s: lower --preempt-after or raise "
                 "--epochs")
    first_after = next((t, s) for t, _, s in saves if t > restart)
    before = [x for x in saves if x[0] < restart]
    # a step and whatever else ran between two saves, less the save
    steps = [b[0] - a[0] - b[2] for a, b in zip(before, before[1:], strict=False)]
    step = statistics.median(steps) if steps else float("nan")
    size = statistics.median(s for _, s, _ in saves)
    write = statistics.median(w for _, _, w in saves)
    lost = first_after[0] - restart - first_after[1]
    print(f"sample: ResNet-18, {args.nodes} node(s), image {args.image_size}, batch {args.batch_size}, CPU")
    print(f"checkpoint: {size:.1f} MiB, written in {write:.2f} s (median of {len(saves)})")
    print(f"training step: {step:.2f} s (median of {len(steps)})")
    print(f"time lost per preemption with the SIGTERM save: {lost:.1f} s (restart to the end of the first step)")
    for every in (1, 10, 100):
        redo = every / 2 * step
        overhead = write / every / step if step == step and step > 0 else float("nan")
        print(f"  --checkpoint-every {every:>3}: without the save +{redo:.1f} s redone on average; "
              f"saving costs {overhead:.0%} of training time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
