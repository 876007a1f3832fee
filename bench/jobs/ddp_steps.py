"""Benchmark job: DDP training steps of a small CNN on random data; rank 0 writes the time per step.

Run by bench/distributed.py in every shape it compares; the first steps (process-group warm-up, allocator)
are not timed.
"""

import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn


def main() -> int:
    steps, warmup = int(sys.argv[1]) if len(sys.argv) > 1 else 30, 5
    torch.set_num_threads(1)  # every process one thread: shapes compare communication, not BLAS threading
    dist.init_process_group("gloo", init_method="env://")
    torch.manual_seed(dist.get_rank())
    model = nn.parallel.DistributedDataParallel(nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, 256), nn.ReLU(), nn.Linear(256, 10)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    for step in range(warmup + steps):
        if step == warmup:
            dist.barrier()
            started = time.perf_counter()
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    dist.barrier()
    per_step = (time.perf_counter() - started) / steps
    if dist.get_rank() == 0:
        os.makedirs("outputs", exist_ok=True)
        with open("outputs/timing.json", "w") as f:
            json.dump({"step_s": per_step, "world_size": dist.get_world_size()}, f)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
