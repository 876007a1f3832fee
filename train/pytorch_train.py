"""Fine-tune ResNet-18 to tell chickens from turkeys: the Azure ML PyTorch sample, rewritten for current PyTorch.

One command for every launch mode: a single process on CPU or GPU, ``torchrun`` (WORLD_SIZE/RANK/LOCAL_RANK),
or Azure ML's MPI launch (OMPI_COMM_WORLD_* and AZ_BATCH_MASTER_NODE). With more than one process the model
is wrapped in DistributedDataParallel and the metrics are reduced across ranks, so every rank sees the same
numbers; only rank 0 logs them (MLflow, which Azure ML wires up through MLFLOW_* variables) and writes files.

Outputs (``--output-dir``): ``model.pt2``, the best-validation model as a ``torch.export`` program (TorchScript
is deprecated in current PyTorch), ``labels.json`` (class names in output order) and ``metrics.json``. The
program needs neither this script nor torchvision to run::

    import json, torch
    model = torch.export.load("outputs/model.pt2").module()  # input: N x 3 x S x S float, ImageNet-normalised
    labels = json.load(open("outputs/labels.json"))
    [labels[i] for i in model(batch).argmax(1).tolist()]       # S = metrics.json "image_size"

The program is CPU-resident and already in eval mode (its ``.eval()`` raises); for a GPU, load it through
``torch.export.passes.move_to_device_pass(program, "cuda")``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torchvision import datasets, models
from torchvision.transforms import v2

try:
    import mlflow
except ImportError:  # metrics are printed anyway
    mlflow = None

FOWL_URL = "https://azuremlexamples.blob.core.windows.net/datasets/fowl_data.zip"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class JobError(Exception):
    """A failure the user can fix: reported as one line and an exit code, not a traceback."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, help="ImageFolder root with train/ and val/ (default: download fowl)")
    p.add_argument("--num-epochs", "--num_epochs", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", "--learning_rate", type=float, default=0.001)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--output-dir", "--output_dir", type=Path, default=Path("outputs"))
    p.add_argument("--weights", default="imagenet", help="imagenet, none, or a path to a ResNet-18 state_dict")
    p.add_argument("--num-workers", type=int, default=4, help="data loader workers (capped to the CPU count)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    default_cache = os.environ.get("AMLTRAIN_CACHE_DIR") or Path.home() / ".cache" / "amltrain"
    p.add_argument("--cache-dir", type=Path, default=Path(default_cache), help="where downloaded data is kept")
    args = p.parse_args(argv)
    if min(args.num_epochs, args.batch_size, args.image_size) < 1:
        p.error("--num-epochs, --batch-size and --image-size must be positive")
    return args


def setup_distributed() -> tuple[int, int, torch.device]:
    """Return (rank, world_size, device); join a process group only when there is more than one process."""
    env = os.environ
    if "OMPI_COMM_WORLD_SIZE" in env and "WORLD_SIZE" not in env:  # MPI launch: translate to env:// names
        env["WORLD_SIZE"], env["RANK"] = env["OMPI_COMM_WORLD_SIZE"], env["OMPI_COMM_WORLD_RANK"]
        env["LOCAL_RANK"] = env.get("OMPI_COMM_WORLD_LOCAL_RANK", "0")
        if "MASTER_ADDR" not in env:
            # "host:port" on several nodes; on one node, Azure ML names only the host
            master = env.get("AZ_BATCH_MASTER_NODE") or env.get("AZ_BATCHAI_MPI_MASTER_NODE", "127.0.0.1")
            addr, _, port = master.partition(":")
            env["MASTER_ADDR"], env["MASTER_PORT"] = addr, env.get("MASTER_PORT") or port or "29500"
    world, rank, local_rank = (int(env.get(k, d)) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://", device_id=device if cuda else None)
    return rank, world, device


@contextlib.contextmanager
def local_leader_first():
    """Let local rank 0 fill the node's caches (data, weights) before the other ranks read them."""
    leader = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if dist.is_initialized() and not leader:
        dist.barrier()
    yield
    if dist.is_initialized() and leader:
        dist.barrier()


def find_image_root(folder: Path) -> Path | None:
    candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())] if folder.is_dir() else []
    return next((c for c in candidates if (c / "train").is_dir() and (c / "val").is_dir()), None)


def download_fowl(cache_dir: Path) -> Path:
    """Download and extract the fowl zip once; both steps land atomically, so a crash leaves no half cache."""
    target = cache_dir / "fowl_data"
    if (root := find_image_root(target)) is not None:
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    print(f"downloading {FOWL_URL} to {cache_dir}", flush=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".fowl-") as tmp:
        archive = Path(tmp) / "fowl_data.zip"
        try:
            with urllib.request.urlopen(FOWL_URL, timeout=60) as response, archive.open("wb") as out:
                shutil.copyfileobj(response, out)
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(Path(tmp) / "x")
        except (OSError, zipfile.BadZipFile) as exc:
            raise JobError(f"could not download the fowl dataset from {FOWL_URL}: {exc}; "
                           "pass --data-dir to use local data") from None
        with contextlib.suppress(OSError):  # another node sharing this cache may have finished first
            (Path(tmp) / "x").rename(target)
    if (root := find_image_root(target)) is None:
        raise JobError(f"{FOWL_URL} does not contain train/ and val/ folders")
    return root


def check_paths(args: argparse.Namespace) -> None:
    """Fail fast on paths the user got wrong: on every rank alike, before any process group exists."""
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise JobError(f"--data-dir {args.data_dir} does not exist", code=2)
    if args.data_dir is not None and find_image_root(args.data_dir) != args.data_dir:
        raise JobError(f"--data-dir {args.data_dir} must contain train/ and val/ folders", code=2)
    if args.weights.lower() not in ("imagenet", "none") and not Path(args.weights).is_file():
        raise JobError(f"--weights {args.weights}: expected imagenet, none, or an existing file", code=2)


def make_loaders(root: Path, args: argparse.Namespace, rank: int, world: int) -> tuple[DataLoader, DataLoader]:
    """Augmenting, shuffling train loader and a val loader; both sharded by rank, val without padding."""
    size = args.image_size
    to_input = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    train_tf = v2.Compose([v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), *to_input])
    val_tf = v2.Compose([v2.Resize(size * 256 // 224), v2.CenterCrop(size), *to_input])
    try:
        train_ds = datasets.ImageFolder(root / "train", train_tf)
        val_ds = datasets.ImageFolder(root / "val", val_tf)
    except OSError as exc:  # e.g. no class folders with images
        raise JobError(f"cannot read the dataset in {root}: {exc}", code=2) from None
    if train_ds.classes != val_ds.classes:
        raise JobError(f"train classes {train_ds.classes} differ from val classes {val_ds.classes}", code=2)
    workers = max(0, min(args.num_workers, os.cpu_count() or 1))
    common = {"batch_size": args.batch_size, "num_workers": workers, "persistent_workers": workers > 0,
              "pin_memory": torch.cuda.is_available()}
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)  # any world
    train = DataLoader(train_ds, sampler=sampler, **common)
    return train, DataLoader(Subset(val_ds, range(rank, len(val_ds), world)), **common)


def build_model(weights: str, num_classes: int) -> nn.Module:
    """ResNet-18 with ImageNet, random or file weights; the head is replaced unless it already has num_classes."""
    choice = weights.lower()
    if choice == "none":
        return models.resnet18(num_classes=num_classes)
    if choice == "imagenet":
        try:
            model = models.resnet18(weights=models.ResNet18_Weights.IMAGENET1K_V1)
        except OSError as exc:
            raise JobError(f"could not download the ImageNet weights: {exc}; use --weights none or a file") from None
    else:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            state = {k.removeprefix("module."): v for k, v in state.items()}
            model = models.resnet18(num_classes=state["fc.weight"].shape[0])
            model.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with the file, the fix is the same
            why = f"{type(exc).__name__}: {exc}"
            raise JobError(f"--weights {weights}: not a ResNet-18 state_dict ({why})", code=2) from None
    if model.fc.out_features != num_classes:
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def run_epoch(model: nn.Module, loader: DataLoader, device: torch.device, optimizer=None) -> tuple[float, float]:
    """One pass (training when given an optimizer); returns (loss, accuracy) over all ranks' samples."""
    model.train(optimizer is not None)
    loss_sum = correct = count = 0.0
    criterion = nn.CrossEntropyLoss()
    with torch.set_grad_enabled(optimizer is not None):
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            logits = model(images)
            loss = criterion(logits, labels)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            count += len(labels)
    totals = torch.tensor([loss_sum, correct, count], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(totals)
    loss_sum, correct, count = totals.tolist()
    return loss_sum / max(count, 1), correct / max(count, 1)


def save_outputs(model: nn.Module, classes: list[str], metrics: dict, out_dir: Path, size: int) -> None:
    """Export the plain (unwrapped, eval-mode, CPU) model so loading needs only torch."""
    out_dir.mkdir(parents=True, exist_ok=True)
    example = (torch.zeros(2, 3, size, size),)
    program = torch.export.export(model.cpu().eval(), example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, out_dir / "model.pt2")
    (out_dir / "labels.json").write_text(json.dumps(classes, indent=2) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def train(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> dict:
    torch.manual_seed(args.seed + rank)
    with local_leader_first():
        train_dl, val_dl = make_loaders(args.data_dir or download_fowl(args.cache_dir), args, rank, world)
        net = build_model(args.weights, len(train_dl.dataset.classes)).to(device)
    model = DistributedDataParallel(net, device_ids=[device.index] if device.index is not None else None) \
        if world > 1 else net
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=args.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    best_acc, best_state, m = -1.0, None, {}
    for epoch in range(1, args.num_epochs + 1):
        train_dl.sampler.set_epoch(epoch)
        start = time.perf_counter()
        m["train_loss"], m["train_acc"] = run_epoch(model, train_dl, device, optimizer)
        m["val_loss"], m["val_acc"] = run_epoch(model, val_dl, device)
        scheduler.step()
        if m["val_acc"] > best_acc:
            best_acc, best_state = m["val_acc"], {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        m["best_val_acc"] = best_acc
        if rank == 0:
            print(f"epoch {epoch}/{args.num_epochs} " + " ".join(f"{k} {v:.4f}" for k, v in m.items())
                  + f" ({time.perf_counter() - start:.1f}s)", flush=True)
            if use_mlflow():
                mlflow.log_metrics(m, step=epoch)
    if best_state is not None:
        net.load_state_dict(best_state)
    if rank == 0:
        metrics = {**{f"final_{k}": v for k, v in m.items() if k != "best_val_acc"}, "best_val_acc": best_acc,
                   "epochs": args.num_epochs, "world_size": world, "image_size": args.image_size}
        save_outputs(net, train_dl.dataset.classes, metrics, args.output_dir, args.image_size)
        print(f"best val_acc {best_acc:.4f}; model, labels and metrics saved to {args.output_dir}", flush=True)
    return m


def use_mlflow() -> bool:
    """Log to MLflow only where a tracking store is configured (Azure ML, amltrain run-local)."""
    return mlflow is not None and bool(os.environ.get("MLFLOW_TRACKING_URI"))


def mlflow_run(rank: int):
    """The rank-0 MLflow run (Azure ML's own when MLFLOW_RUN_ID is set); a no-op elsewhere."""
    if not use_mlflow() or rank != 0:
        return contextlib.nullcontext()
    try:
        return mlflow.start_run()
    except Exception as exc:  # noqa: BLE001 - a misconfigured store: say so in one line
        raise JobError(f"MLflow cannot start a run at {os.environ['MLFLOW_TRACKING_URI']}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_paths(args)
        rank, world, device = setup_distributed()
        if rank == 0:
            print(f"training on {device} with world size {world}; MLflow logging {'on' if use_mlflow() else 'off'}",
                  flush=True)
        with mlflow_run(rank):
            if use_mlflow() and rank == 0:
                mlflow.log_params({"learning_rate": args.learning_rate, "momentum": args.momentum,
                                   "batch_size": args.batch_size, "num_epochs": args.num_epochs,
                                   "weights": args.weights, "world_size": world})
            train(args, rank, world, device)
    except JobError as exc:
        print("error:", " ".join(str(exc).split()), file=sys.stderr, flush=True)  # always one line
        return exc.code
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
