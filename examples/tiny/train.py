"""A job of your own, not the sample: logistic regression on points.csv, one process or DDP over any ranks.

It reads the data input it is given (--data), trains for --epochs, logs val_acc to MLflow (the run the platform
made for the job: Azure ML, or run-local) and writes outputs/result.json. Rank 0 logs and writes; with several
ranks each trains on its share of the rows, and DDP averages the gradients.
"""

import argparse
import csv
import json
import os

import mlflow
import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="folder with points.csv (x1,x2,label)")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")  # MASTER_ADDR/PORT, RANK, WORLD_SIZE: set by Azure ML and run-local alike
    with open(os.path.join(args.data, "points.csv")) as f:
        rows = [[float(v) for v in row] for row in csv.reader(f)]
    points = torch.tensor(rows)[rank::world]
    x, y = points[:, :2], points[:, 2]
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(args.epochs):
        for _ in range(50):
            optimizer.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y).backward()
            optimizer.step()
    with torch.no_grad():
        val_acc = ((model(x).squeeze(1) > 0).float() == y).float().mean().item()
    print(f"rank {rank} of {world}: val_acc {val_acc:.3f}", flush=True)
    if rank == 0:
        with mlflow.start_run():
            mlflow.log_metric("val_acc", val_acc)
        os.makedirs("outputs", exist_ok=True)
        with open("outputs/result.json", "w") as f:
            json.dump({"val_acc": val_acc, "world_size": world}, f)
    if world > 1:
        dist.barrier()  # leave together: gloo may abort a rank that tears down while rank 0 is still writing
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
