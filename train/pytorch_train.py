"""Fine-tune ResNet-18 to tell chickens from turkeys: the Azure ML PyTorch sample, rewritten for current PyTorch.

One command for every launch mode: a single process on CPU or GPU, ``torchrun`` (WORLD_SIZE/RANK/LOCAL_RANK),
or Azure ML's MPI launch (OMPI_COMM_WORLD_* and AZ_BATCH_MASTER_NODE). With more than one process the model
is wrapped in DistributedDataParallel and the metrics are reduced across ranks, so every rank sees the same
numbers; only rank 0 logs them (MLflow, which Azure ML wires up through MLFLOW_* variables) and writes files.

Outputs (``--output-dir``): ``model.pt2``, the best-validation model as a ``torch.export`` program (TorchScript
is deprecated in current PyTorch), the same model as ``model.onnx`` (input ``x``, N x 3 x S x S, for onnxruntime
and other runtimes without PyTorch), ``labels.json`` (class names in output order) and ``metrics.json``. The
program needs neither this script nor torchvision to run::

    import json, torch
    model = torch.export.load("outputs/model.pt2").module()  # input: N x 3 x S x S float, ImageNet-normalised
    labels = json.load(open("outputs/labels.json"))
    [labels[i] for i in model(batch).argmax(1).tolist()]       # S = metrics.json "image_size"

The program is CPU-resident and already in eval mode (its ``.eval()`` raises); for a GPU, load it through
``torch.export.passes.move_to_device_pass(program, "cuda")``.

Checkpoints (``--checkpoint-dir``, default ``$AMLTRAIN_CHECKPOINT_DIR``, which amltrain sets locally and on
Azure ML to a folder that survives restarts and retries of the job): rank 0 saves the complete training state
every ``--checkpoint-every`` steps, at the end of every epoch and on SIGTERM (preemption), written beside and
renamed into place, so a half-written file is never read. On start every rank resumes from the newest
complete checkpoint. Augmentation is seeded per sample from (seed, epoch, index) and the sampler's position is
part of the state, so a resumed run computes exactly what an uninterrupted one would.
"""

# ruff: noqa: E402  (the SIGTERM handler goes in before the slow imports)
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path


def request_stop(signum, frame) -> None:
    _STOP["signum"] = signum  # acted on between steps, where every rank can agree to save and stop


_STOP = {"signum": 0}
if __name__ == "__main__":  # before the slow imports: a SIGTERM while they run is a stop at the first step
    signal.signal(signal.SIGTERM, request_stop)

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import datasets, models
from torchvision.transforms import v2

try:
    import mlflow
except ImportError:  # metrics are printed anyway
    mlflow = None

FOWL_URL = "https://azuremlexamples.blob.core.windows.net/datasets/fowl_data.zip"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CHECKPOINT = re.compile(r"ckpt-e(\d{4})-s(\d{6})\.pt")  # only complete files have this name
KEEP_CHECKPOINTS = 2  # the newest, and one more in case the newest cannot be read


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
    default_ckpt = os.environ.get("AMLTRAIN_CHECKPOINT_DIR")
    p.add_argument("--checkpoint-dir", type=Path, default=Path(default_ckpt) if default_ckpt else None,
                   help="where checkpoints are kept and resumed from (default: $AMLTRAIN_CHECKPOINT_DIR; none: off)")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="also save every N training steps (0: only at epoch ends and on SIGTERM)")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: bfloat16 autocast (float16 with loss scaling on GPUs without bfloat16)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format (faster convolutions on GPUs)")
    p.add_argument("--process-group", action="store_true",
                   help="join a process group and use DistributedDataParallel even as the only process (NCCL on "
                        "GPUs): checks the collectives a multi-GPU job uses, on one GPU")
    args = p.parse_args(argv)
    if min(args.num_epochs, args.batch_size, args.image_size) < 1:
        p.error("--num-epochs, --batch-size and --image-size must be positive")
    if args.checkpoint_every < 0:
        p.error("--checkpoint-every must not be negative")
    return args


def setup_distributed(always: bool = False) -> tuple[int, int, torch.device]:
    """Return (rank, world_size, device); join a process group when there is more than one process (or always)."""
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
    if world > 1 or always:
        if world == 1:  # no launcher may have named a rendezvous: this process is all of it
            env.setdefault("MASTER_ADDR", "127.0.0.1")
            env.setdefault("MASTER_PORT", "29500")
            env.setdefault("WORLD_SIZE", "1")
            env.setdefault("RANK", "0")
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


def ignore_sigterm(worker_id: int) -> None:
    """Data loader workers get the launcher's SIGTERM too (same process group): they must outlive it until
    the main process has saved and shuts them down."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample in one epoch: independent of workers, ranks and restarts."""
    return ((seed * 1_000_003 + epoch) * 1_000_003 + index) % (2**63)


class SeededAugment(Dataset):
    """An ImageFolder whose keys are (epoch, index): each sample is augmented from its own seed, so resuming
    mid-epoch, or with another number of workers, sees the same crops and flips."""

    def __init__(self, folder: datasets.ImageFolder, seed: int):
        self.folder, self.seed, self.classes = folder, seed, folder.classes

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.folder[index]


class ResumableSampler(DistributedSampler):
    """DistributedSampler that yields (epoch, index) keys and can start part-way into an epoch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        indices = list(super().__iter__())[self.skip:]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def make_loaders(root: Path, args: argparse.Namespace, rank: int, world: int) -> tuple[DataLoader, DataLoader]:
    """Augmenting, shuffling train loader and a val loader; both sharded by rank, val without padding."""
    size = args.image_size
    to_input = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    train_tf = v2.Compose([v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), *to_input])
    val_tf = v2.Compose([v2.Resize(size * 256 // 224), v2.CenterCrop(size), *to_input])
    try:
        train_ds = SeededAugment(datasets.ImageFolder(root / "train", train_tf), args.seed)
        val_ds = datasets.ImageFolder(root / "val", val_tf)
    except OSError as exc:  # e.g. no class folders with images
        raise JobError(f"cannot read the dataset in {root}: {exc}", code=2) from None
    if train_ds.classes != val_ds.classes:
        raise JobError(f"train classes {train_ds.classes} differ from val classes {val_ds.classes}", code=2)
    workers = max(0, min(args.num_workers, os.cpu_count() or 1))
    common = {"batch_size": args.batch_size, "num_workers": workers, "persistent_workers": workers > 0,
              "pin_memory": torch.cuda.is_available(), "worker_init_fn": ignore_sigterm}
    sampler = ResumableSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)  # any world
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


class Preempted(Exception):
    """SIGTERM arrived and the state is saved: the run ends here, to be resumed by the next attempt."""


def stop_requested(device: torch.device) -> bool:
    """Whether any rank got SIGTERM: the save is collective, so all must stop at the same step."""
    flag = torch.tensor([float(_STOP["signum"] != 0)], device=device)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, newest first (files being written have another name)."""
    found = [(m.groups(), p) for p in folder.glob("ckpt-e*-s*.pt") if (m := CHECKPOINT.fullmatch(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_checkpoint(folder: Path, state: dict, rank: int) -> None:
    """Collective: gather every rank's own part (accumulators, RNG), then rank 0 writes beside and renames;
    the others wait for the file, so none exits while it is half written."""
    own = {"totals": state.pop("totals"), "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}
    parts = [own]
    if dist.is_initialized():
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, own)
    if rank == 0:
        started = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        name = f"ckpt-e{state['epoch']:04d}-s{state['step']:06d}.pt"
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        with tmp.open("wb") as f:
            torch.save({**state, "ranks": parts}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
        for old in checkpoints(folder)[KEEP_CHECKPOINTS:]:
            old.unlink(missing_ok=True)
        size = (folder / name).stat().st_size
        print(f"checkpoint {name} saved ({size / 2**20:.1f} MiB in {time.perf_counter() - started:.2f}s)",
              flush=True)
    if dist.is_initialized():
        dist.barrier()


def load_checkpoint(folder: Path, world: int) -> tuple[Path, dict] | tuple[None, None]:
    """The newest checkpoint that loads (every rank reads it for itself); an unreadable one is skipped."""
    for path in checkpoints(folder) if folder.is_dir() else []:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged file: the previous one will do
            print(f"warning: skipping checkpoint {path.name}: {type(exc).__name__}: {exc}", flush=True)
            continue
        if state["world_size"] != world:
            raise JobError(f"checkpoint {path} was written by {state['world_size']} processes, this run has "
                           f"{world}: the sampler positions cannot carry over; use the same nodes and processes "
                           "or another --checkpoint-dir", code=2)
        return path, state
    return None, None


def reduce_totals(totals: list[float], device: torch.device) -> tuple[float, float]:
    """(loss, accuracy) over all ranks' samples from this rank's (loss sum, correct, count)."""
    t = torch.tensor(totals, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    loss_sum, correct, count = t.tolist()
    return loss_sum / max(count, 1), correct / max(count, 1)


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, memory_format=torch.preserve_format,
             amp_dtype: torch.dtype | None = None) -> tuple[float, float]:
    model.eval()
    totals, criterion = [0.0, 0.0, 0.0], nn.CrossEntropyLoss()
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        for images, labels in loader:
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            logits = model(images)
            totals[0] += criterion(logits, labels).item() * len(labels)
            totals[1] += (logits.argmax(1) == labels).sum().item()
            totals[2] += len(labels)
    return reduce_totals(totals, device)


def save_outputs(model: nn.Module, classes: list[str], metrics: dict, out_dir: Path, size: int) -> None:
    """Export the plain (unwrapped, eval-mode, CPU) model so loading needs only torch."""
    out_dir.mkdir(parents=True, exist_ok=True)
    example = (torch.zeros(2, 3, size, size),)
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)  # as trained with --channels-last or not
    program = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, out_dir / "model.pt2")
    save_onnx(program, out_dir / "model.onnx")
    (out_dir / "labels.json").write_text(json.dumps(classes, indent=2) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def save_onnx(program: torch.export.ExportedProgram, path: Path) -> None:
    """The same program as ONNX, for runtimes without PyTorch (onnxruntime, Triton, Azure ML's ONNX endpoints).
    Optional: an image without onnx/onnxscript still trains, and says what it did not write."""
    try:
        onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
    except ImportError as exc:  # torch.onnx's exporter needs the onnx and onnxscript packages
        print(f"{path.name} not written: {exc}", flush=True)
        return
    partial = path.with_name(path.name + ".partial")
    onnx_program.save(str(partial))
    partial.replace(path)


def train(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> dict:
    torch.manual_seed(args.seed + rank)
    with local_leader_first():
        train_dl, val_dl = make_loaders(args.data_dir or download_fowl(args.cache_dir), args, rank, world)
        net = build_model(args.weights, len(train_dl.dataset.classes)).to(device)
    model = DistributedDataParallel(net, device_ids=[device.index] if device.index is not None else None) \
        if dist.is_initialized() else net
    memory_format = torch.channels_last if args.channels_last else torch.preserve_format
    net.to(memory_format=memory_format)
    amp_dtype = (torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16) \
        if args.amp else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=args.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    criterion = nn.CrossEntropyLoss()
    best_acc, best_state, m = -1.0, None, {}
    first_epoch, skip, totals, global_step = 1, 0, [0.0, 0.0, 0.0], 0
    path, state = load_checkpoint(args.checkpoint_dir, world) if args.checkpoint_dir else (None, None)
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        best_acc, best_state, m = state["best_acc"], state["best_state"], dict(state["metrics"])
        first_epoch, skip, global_step = state["epoch"], state["step"], state["global_step"]
        mine = state["ranks"][rank]
        totals = list(mine["totals"])
        torch.set_rng_state(mine["torch_rng"])
        random.setstate(mine["python_rng"])
        if rank == 0:
            print(f"resuming from checkpoint {path}: epoch {first_epoch}, step {skip}", flush=True)
    elif rank == 0 and args.checkpoint_dir:
        print(f"no checkpoint in {args.checkpoint_dir}: starting from scratch", flush=True)

    def checkpoint(epoch: int, step: int) -> None:
        if args.checkpoint_dir:
            save_checkpoint(args.checkpoint_dir, {
                "format": 1, "epoch": epoch, "step": step, "global_step": global_step, "world_size": world,
                "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "best_acc": best_acc,
                "best_state": best_state,
                "metrics": m, "totals": list(totals)}, rank)

    for epoch in range(first_epoch, args.num_epochs + 1):
        train_dl.sampler.set_epoch(epoch, skip * args.batch_size)  # the position: samples this rank has seen
        start, step, seen = time.perf_counter(), skip, 0
        model.train()
        for images, labels in train_dl:
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(images)
                loss = criterion(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seen += len(labels)
            totals[0] += loss.item() * len(labels)
            totals[1] += (logits.argmax(1) == labels).sum().item()
            totals[2] += len(labels)
            step, global_step = step + 1, global_step + 1
            stop = stop_requested(device)
            if stop or (args.checkpoint_every and global_step % args.checkpoint_every == 0):
                checkpoint(epoch, step)
            if stop:
                raise Preempted(f"epoch {epoch}, step {step}")
        skip = 0
        rate = seen * world / (time.perf_counter() - start)  # every rank sees as many: the job's images per second
        m["train_loss"], m["train_acc"] = reduce_totals(totals, device)
        m["val_loss"], m["val_acc"] = evaluate(model, val_dl, device, memory_format, amp_dtype)
        totals = [0.0, 0.0, 0.0]
        scheduler.step()
        if m["val_acc"] > best_acc:
            best_acc, best_state = m["val_acc"], {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        m["best_val_acc"] = best_acc
        checkpoint(epoch + 1, 0)  # before logging: a restart never logs an epoch twice
        if rank == 0:
            print(f"epoch {epoch}/{args.num_epochs} " + " ".join(f"{k} {v:.4f}" for k, v in m.items())
                  + f" ({time.perf_counter() - start:.1f}s, train {rate:.1f} img/s)", flush=True)
            if use_mlflow():
                mlflow.log_metrics(m, step=epoch)
        if stop_requested(device):
            raise Preempted(f"end of epoch {epoch}")
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


def mlflow_run(rank: int, checkpoint_dir: Path | None):
    """The rank-0 MLflow run (Azure ML's own when MLFLOW_RUN_ID is set); a no-op elsewhere. A restart with the
    same checkpoints continues the run the checkpoints name, so the metric history does not restart."""
    if not use_mlflow() or rank != 0:
        return contextlib.nullcontext()
    known = checkpoint_dir / "mlflow_run_id" if checkpoint_dir else None
    if known and known.is_file() and not os.environ.get("MLFLOW_RUN_ID"):
        run_id = known.read_text().strip()
        try:
            run = mlflow.start_run(run_id=run_id)
            print(f"continuing MLflow run {run_id}", flush=True)
            return run
        except Exception as exc:  # noqa: BLE001 - e.g. another tracking store: a new run, said so
            print(f"warning: MLflow run {run_id} cannot be continued here ({type(exc).__name__}); "
                  "starting a new one", flush=True)
    try:
        run = mlflow.start_run()
    except Exception as exc:  # noqa: BLE001 - a misconfigured store: say so in one line
        raise JobError(f"MLflow cannot start a run at {os.environ['MLFLOW_TRACKING_URI']}: {exc}") from None
    if known:
        known.parent.mkdir(parents=True, exist_ok=True)
        tmp = known.with_name(f".mlflow_run_id.{os.getpid()}.tmp")
        tmp.write_text(run.info.run_id + "\n")
        os.replace(tmp, known)
    return run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, request_stop)  # preemption: save and stop at the next step
    try:
        check_paths(args)
        rank, world, device = setup_distributed(args.process_group)
        if rank == 0:
            group = f"{dist.get_backend()} process group" if dist.is_initialized() else "no process group"
            print(f"training on {device} with world size {world} ({group}); "
                  f"MLflow logging {'on' if use_mlflow() else 'off'}", flush=True)
        with mlflow_run(rank, args.checkpoint_dir):
            if use_mlflow() and rank == 0:
                with contextlib.suppress(Exception):  # a continued run has them already
                    mlflow.log_params({"learning_rate": args.learning_rate, "momentum": args.momentum,
                                       "batch_size": args.batch_size, "num_epochs": args.num_epochs,
                                       "weights": args.weights, "world_size": world})
            train(args, rank, world, device)
            if dist.is_initialized():
                dist.barrier()  # leave together: gloo may abort a rank that tears down while rank 0 still exports
    except JobError as exc:
        print("error:", " ".join(str(exc).split()), file=sys.stderr, flush=True)  # always one line
        return exc.code
    except Preempted as where:
        if rank == 0:
            saved = "checkpoint saved" if args.checkpoint_dir else "no --checkpoint-dir: nothing saved"
            print(f"stopped by SIGTERM at {where}; {saved}", flush=True)
        return 128 + signal.SIGTERM
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
