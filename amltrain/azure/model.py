"""``invoke model``: after a run, register its model (``run.register_model``) and/or download its outputs.

The model is a path in the run's artifacts (``outputs/…``, what rank 0 wrote to ``./outputs``); registering
records the run as its source, so the lineage model -> run -> image -> commit is in the workspace.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import config
from ..errors import ToolkitError


@dataclass(frozen=True)
class ModelRequest:
    run_id: str
    register_as: str = ""  # model name; "" to skip registering
    model_path: str = "outputs"  # artifact path registered (a file or a folder)
    download_to: Path | None = None  # folder; None to skip downloading
    prefix: str = "outputs"  # what is downloaded

    def describe(self) -> list[str]:
        lines = []
        if self.register_as:
            lines.append(f"would register {self.model_path} of run {self.run_id} as model {self.register_as}")
        if self.download_to:
            lines.append(f"would download {self.prefix}/ of run {self.run_id} into {self.download_to}")
        return lines


def model_request(run_id: str, register: str | None, download: str | None, path: str | None,
                  root: Path) -> ModelRequest:
    if not run_id:
        raise ToolkitError("no run given", "use --run RUN_ID (`invoke submit` prints it)")
    if not register and not download:
        raise ToolkitError("nothing to do: give --register NAME and/or --download DIR",
                           "e.g. invoke model --run RUN_ID --register pytorch-birds --download ./model")
    model_path = posixpath.normpath((path or "outputs").strip("/"))  # outputs/../x is not under outputs/
    if model_path != "outputs" and not model_path.startswith("outputs/"):
        raise ToolkitError(f"model path {path!r} is not under outputs/", "a run's model is in its outputs/")
    request = ModelRequest(run_id=run_id, register_as=register or "", model_path=model_path,
                           download_to=(root / os.path.expanduser(download)).resolve() if download else None)
    if request.download_to:  # checked here, offline: before the run's files are listed
        config.folder(request.download_to, "--download")
        if (request.download_to / request.prefix).exists():
            raise ToolkitError(f"{request.download_to / request.prefix} exists already",
                               "remove it, or choose another --download folder")
    return request


def execute(backend, request: ModelRequest, out=None) -> None:
    out = out or sys.stdout
    run = backend.get_run(request.run_id)
    if run.status != "Completed":
        print(f"warning: run {run.run_id} is {run.status or 'in an unknown state'}", file=out)
    names = backend.run_file_names(request.run_id)
    if not any(n == request.model_path or n.startswith(request.model_path + "/") for n in names):
        outputs = sorted(n for n in names if n.startswith("outputs/"))[:10]
        raise ToolkitError(f"run {request.run_id} has no artifact {request.model_path}",
                           f"its outputs: {', '.join(outputs) or 'none'}; choose one with --path")
    if request.register_as:
        name, version = backend.register_model(request.run_id, request.register_as, request.model_path,
                                               {"amltrain.run_id": request.run_id})
        print(f"registered model {name}:{version} from {request.model_path} of run {request.run_id}", file=out)
    if request.download_to:
        download(backend, request)
        count = sum(1 for n in names if n.startswith(request.prefix.rstrip("/") + "/"))
        print(f"downloaded {count} file(s) of {request.prefix}/ into {request.download_to}", file=out)


def download(backend, request: ModelRequest) -> None:
    """Into a hidden folder inside the destination first, moved into place only when every file is there:
    a failed or interrupted download leaves nothing behind (not even the folder, when it made it)."""
    landing = request.download_to / request.prefix
    made = not request.download_to.exists()
    request.download_to.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".amltrain-download-", dir=request.download_to))
    try:
        backend.download_files(request.run_id, request.prefix, staging)
        (staging / request.prefix).mkdir(exist_ok=True)
        (staging / request.prefix).rename(landing)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if made and not landing.exists():
            with contextlib.suppress(OSError):
                request.download_to.rmdir()
