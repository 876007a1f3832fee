"""Horovod data-parallel training of the classic MNIST network, on generated data that needs no download.

In the spirit of Microsoft's ``pytorch_horovod_mnist.py`` sample for Azure ML's ``MpiConfiguration``: run it
under ``mpirun`` (``invoke run-local --launch mpi``, ``invoke submit --launch mpi``), one process per GPU or
per CPU slot. The data are 10 fixed random 28x28 "digit" templates plus noise, so every run sees the same
learnable task offline. Rank 0 writes ``outputs/model.pt`` (a plain state dict) and ``outputs/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import horovod.torch as hvd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler


class Net(nn.Module):
    """The network of PyTorch's (and Microsoft's) MNIST examples."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 320)
        x = F.dropout(F.relu(self.fc1(x)), training=self.training)
        return F.log_softmax(self.fc2(x), dim=1)


def synthetic_digits(count: int, seed: int) -> TensorDataset:
    """Same templates on every rank and run (seed 0); samples differ by ``seed``."""
    templates = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (count,), generator=g)
    images = templates[labels] + 0.5 * torch.randn(count, 1, 28, 28, generator=g)
    return TensorDataset((images - 0.5) / 0.5, labels)


def average(value: float, name: str) -> float:
    return hvd.allreduce(torch.tensor(value), name=name).item()  # Horovod averages by default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05, help="per process; scaled by the number of processes")
    parser.add_argument("--momentum", type=float, default=0.5)
    parser.add_argument("--train-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output-dir", default="outputs")
    args = parser.parse_args(argv)

    hvd.init()
    torch.manual_seed(args.seed)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(hvd.local_rank())
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, hvd.local_size())))
    # Proves every process joined: the sum of 2**rank is 2**size - 1 only if all took part.
    joined = int(hvd.allreduce(torch.tensor(2.0 ** hvd.rank()), op=hvd.Sum, name="joined").item())
    print(f"horovod rank {hvd.rank()}/{hvd.size()} (local {hvd.local_rank()}), all-reduce check {joined} "
          f"(expected {2 ** hvd.size() - 1})", flush=True)

    train = synthetic_digits(args.train_size, seed=1)
    test = synthetic_digits(args.train_size // 4, seed=2)
    sampler = DistributedSampler(train, num_replicas=hvd.size(), rank=hvd.rank(), seed=args.seed)
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler)
    test_sampler = DistributedSampler(test, num_replicas=hvd.size(), rank=hvd.rank(), shuffle=False)
    test_loader = DataLoader(test, batch_size=256, sampler=test_sampler)

    device = torch.device("cuda" if cuda else "cpu")
    model = Net().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr * hvd.size(), momentum=args.momentum)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

    metrics = {}
    for epoch in range(1, args.epochs + 1):
        model.train()
        sampler.set_epoch(epoch)
        for images, labels in loader:
            optimizer.zero_grad()
            loss = F.nll_loss(model(images.to(device)), labels.to(device))
            loss.backward()
            optimizer.step()
        model.eval()
        test_loss, correct, seen = 0.0, 0, 0
        with torch.no_grad():
            for images, labels in test_loader:
                output = model(images.to(device))
                test_loss += F.nll_loss(output, labels.to(device), reduction="sum").item()
                correct += (output.argmax(1).cpu() == labels).sum().item()
                seen += len(labels)
        metrics = {"epoch": epoch, "test_loss": average(test_loss / seen, "loss"),
                   "test_accuracy": average(correct / seen, "accuracy"), "processes": hvd.size(),
                   "joined_check": joined}
        if hvd.rank() == 0:
            print(f"epoch {epoch}: test loss {metrics['test_loss']:.4f}, accuracy {metrics['test_accuracy']:.3f}",
                  flush=True)

    if hvd.rank() == 0:
        os.makedirs(args.output_dir, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(args.output_dir, "model.pt"))
        with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
    return 0 if joined == 2 ** hvd.size() - 1 else 1


if __name__ == "__main__":
    sys.exit(main())
