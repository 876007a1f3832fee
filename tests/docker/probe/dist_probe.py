"""A distributed job for the multi-node tests: an all-reduce whose result proves every rank took part.

Each rank contributes 2**rank, so the sum names exactly which ranks joined (2**world - 1 when all did),
and writes what it was given to outputs/rank_<rank>.json. Works under every launch mode: the env://
variables of per-process DDP and torchrun, or mpirun's OMPI_COMM_WORLD_* with AZ_BATCH_MASTER_NODE.
"""

import argparse
import json
import os
import socket
import sys
import time


def from_mpi(env: dict) -> dict:
    """mpirun's variables as env:// ones (what a script run under MpiConfiguration must do itself)."""
    if "OMPI_COMM_WORLD_RANK" in env and "RANK" not in env:
        master = env.get("AZ_BATCH_MASTER_NODE") or env.get("AZ_BATCHAI_MPI_MASTER_NODE", "localhost")
        addr, _, port = master.partition(":")
        env.update(RANK=env["OMPI_COMM_WORLD_RANK"], WORLD_SIZE=env["OMPI_COMM_WORLD_SIZE"],
                   LOCAL_RANK=env["OMPI_COMM_WORLD_LOCAL_RANK"], MASTER_ADDR=addr, MASTER_PORT=port or "6105")
    return env


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fail-rank", type=int, default=-1, help="this rank exits with --exit-code mid-run")
    parser.add_argument("--exit-code", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds every rank sleeps after the all-reduce")
    args = parser.parse_args()
    given = dict(os.environ)
    os.environ.update(from_mpi(dict(os.environ)))
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    total = torch.tensor([2.0 ** rank])
    dist.all_reduce(total)
    report = {"rank": rank, "world": world, "sum": int(total.item()), "hostname": socket.gethostname(),
              "env": {k: v for k, v in given.items() if k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK",
                                                                       "MASTER_", "OMPI_COMM_WORLD", "AZ_BATCH",
                                                                       "AZUREML_", "GROUP_RANK", "LOCAL_WORLD"))}}
    os.makedirs("outputs", exist_ok=True)
    with open(f"outputs/rank_{rank}.json", "w") as f:
        json.dump(report, f)
    print(f"all-reduce sum {report['sum']} on {report['hostname']}", flush=True)
    if rank == args.fail_rank:
        print(f"rank {rank} failing on purpose", flush=True)
        os._exit(args.exit_code)  # a crash: no teardown (gloo's threads would abort a normal exit with 134)
    time.sleep(args.sleep)
    if args.fail_rank < 0:
        dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
