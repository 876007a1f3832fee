"""GPU checks for a lent GPU machine, in one run: CUDA and NCCL, the sample and the Horovod sample natively on
the GPU (no Docker there, and nothing can be pulled), and the sample's images per second.

    python bench/gpu_checks.py [--batch-sizes 64 256] [--epochs 2] [--out DIR]

- **CUDA/NCCL:** torch's CUDA and NCCL versions, the device, and an NCCL all-reduce in a one-process group.
- **The sample** (train/pytorch_train.py) under torchrun, one process, with ``--process-group`` (DDP over
  NCCL), ``--amp`` and ``--channels-last``, on generated fowl images (train/fowl_synthetic.py, no download), at
  each batch size: the images per second of its last epoch (a warm one), against the same model's training
  step on batches already on the GPU (no data loading), so that the ratio says how much the input pipeline
  costs.
- **The Horovod sample** (train/pytorch_horovod_mnist.py) under horovodrun with one process, if Horovod
  imports here; otherwise the table says it was not checked and why.

Needs torch, torchvision and Pillow. Prints one table; writes gpu_checks.json to --out (default $OUT, if set).
``--allow-cpu`` runs the same steps on CPU with gloo, to check this script on a machine without a GPU: its
figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) .*train ([0-9.]+) img/s\)", re.MULTILINE)

ALL_REDUCE = """
import os, time, torch, torch.distributed as dist
cuda = torch.cuda.is_available()
device = torch.device("cuda", 0) if cuda else torch.device("cpu")
if cuda:
    torch.cuda.set_device(device)
dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
x = torch.full((64 * 2**20 // 4,), float(dist.get_rank() + 1), device=device)
dist.all_reduce(x)
if cuda:
    torch.cuda.synchronize()
started = time.perf_counter()
for _ in range(10):
    dist.all_reduce(x)
if cuda:
    torch.cuda.synchronize()
world = dist.get_world_size()
ok = bool((x == x[0]).all()) and x[0].item() == world * (world + 1) / 2 * world ** 10  # sums of ranks + 1
print(f"{dist.get_backend()}, {'correct' if ok else 'WRONG'}, {(time.perf_counter() - started) * 100:.2f} ms per "
      "64 MB all-reduce")
dist.destroy_process_group()
"""


def run(argv: list[str], env: dict | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    print("+ " + " ".join(argv), flush=True)
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def environment(torch) -> dict:
    cuda = torch.cuda.is_available()
    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "gpus": torch.cuda.device_count(), "bf16": cuda and torch.cuda.is_bf16_supported()}


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *args]


def model_only_rate(torch, batch: int, size: int, steps: int = 20) -> float:
    """ResNet-18's training step alone, AMP and channels_last, on a batch already on the device."""
    import torchvision

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    model = torchvision.models.resnet18(num_classes=2).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    images = torch.randn(batch, 3, size, size, device=device).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (batch,), device=device)
    dtype = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16

    def step():
        with torch.autocast(device.type, dtype=dtype):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--epochs", type=int, default=2, help="the last one is measured (the first warms up)")
    parser.add_argument("--train-per-class", type=int, default=1024, help="generated training images per class")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for gpu_checks.json")
    parser.add_argument("--allow-cpu", action="store_true", help="check the script itself where there is no GPU")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit("no CUDA device here (torch.cuda.is_available() is False); --allow-cpu checks the script on CPU")
    report: dict = {"environment": environment(torch), "checks": {}, "throughput": []}
    checks = report["checks"]
    work = Path(tempfile.mkdtemp(prefix="amltrain-gpu-checks-"))
    failed = False
    try:
        probe = work / "all_reduce.py"
        probe.write_text(ALL_REDUCE)
        done = run(torchrun(str(probe)), env={"NCCL_DEBUG": "WARN"})
        checks["all_reduce"] = done.stdout.strip().splitlines()[-1] if done.returncode == 0 else \
            f"FAILED: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"

        data = work / "fowl"
        made = run([sys.executable, "train/fowl_synthetic.py", str(data), "--train-per-class",
                    str(args.train_per_class), "--val-per-class", "64", "--size", str(args.image_size + 32)])
        if made.returncode != 0:
            sys.exit(f"generating the data failed: {made.stderr.strip()[-500:]}")
        for batch in args.batch_sizes:
            out = work / f"out-{batch}"
            done = run(torchrun("train/pytorch_train.py", "--data-dir", str(data), "--num-epochs", str(args.epochs),
                                "--batch-size", str(batch), "--weights", "none", "--image-size", str(args.image_size),
                                "--num-workers", str(args.workers), "--process-group", "--amp", "--channels-last",
                                "--output-dir", str(out), "--cache-dir", str(work / "cache")),
                       env={"MLFLOW_TRACKING_URI": "", "AMLTRAIN_CHECKPOINT_DIR": ""})
            rates = EPOCH_LINE.findall(done.stdout)
            group = re.search(r"\((\w+) process group\)", done.stdout)
            row = {"batch": batch, "exit": done.returncode, "group": group.group(1) if group else None,
                   "sample_img_s": float(rates[-1][2]) if rates else None,
                   "model_only_img_s": round(model_only_rate(torch, batch, args.image_size), 1),
                   "onnx": (out / "model.onnx").exists()}
            if done.returncode != 0 or not rates:
                row["error"] = (done.stderr or done.stdout).strip().splitlines()[-1:]
                failed = True
            report["throughput"].append(row)

        if shutil.which("horovodrun") and run([sys.executable, "-c", "import horovod.torch"]).returncode == 0:
            built = run([sys.executable, "-c", "import horovod.torch as h; print(h.nccl_built(), h.mpi_built())"])
            done = run(["horovodrun", "-np", "1", "-H", "localhost:1", sys.executable, "train/pytorch_horovod_mnist.py",
                        "--epochs", "1", "--output-dir", str(work / "hvd")])
            said = [line.split("<stdout>:")[-1] for line in done.stdout.splitlines() if "accuracy" in line]
            checks["horovod"] = f"nccl_built, mpi_built: {built.stdout.strip()}; sample exit {done.returncode}: " + \
                (said or ["no accuracy line"])[-1]
            failed |= done.returncode != 0
        else:
            checks["horovod"] = "not checked: Horovod does not import here (it is built in the images; this " \
                                "machine has no network to build it)"
    finally:
        shutil.rmtree(work, ignore_errors=True)

    env = report["environment"]
    print(f"\ntorch {env['torch']} · CUDA {env['cuda']} · NCCL {env['nccl']} · {env['device']} × {env['gpus']} · "
          f"bf16 {env['bf16']}")
    for name, said in checks.items():
        print(f"{name}: {said}")
    print(f"{'batch':>5} {'group':>6} {'sample img/s':>13} {'model-only img/s':>17} {'sample/model':>13} {'onnx':>5}")
    for row in report["throughput"]:
        ratio = row["sample_img_s"] / row["model_only_img_s"] if row["sample_img_s"] else float("nan")
        print(f"{row['batch']:>5} {row['group'] or '-':>6} {row['sample_img_s'] or float('nan'):>13.1f} "
              f"{row['model_only_img_s']:>17.1f} {ratio:>13.2f} {str(row['onnx']):>5}" +
              (f"  error: {row['error']}" if "error" in row else ""))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "gpu_checks.json").write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed or str(checks.get("all_reduce", "")).startswith("FAILED") else 0


if __name__ == "__main__":
    sys.exit(main())
