"""The checkpoint folder of an Azure job, for either SDK: a datastore folder keyed by experiment and job, mounted
read-write on every node of every attempt, with ``AMLTRAIN_CHECKPOINT_DIR`` set to its mount point (the local
contract, ``runs/<run-id>/checkpoints``, kept on Azure).

The job key is made once per ``submit`` (UTC time and a random suffix: Azure names the job only at submit, after
the job naming its folder is built). Every retry of the job reuses the folder; ``submit --resume JOB`` reuses
JOB's, found from its ``amltrain.checkpoints`` tag (or, without it, from the job's ``checkpoints`` output).
How each SDK mounts it and exposes the path: ``v1.run_config`` and ``v2.build``.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ToolkitError
from .settings import CheckpointSettings

ENV = "AMLTRAIN_CHECKPOINT_DIR"  # what the script reads, locally and on Azure
OUTPUT = "checkpoints"  # the job's output (v2), ${{outputs.checkpoints}} in its command
TAG = "amltrain.checkpoints"  # the folder's azureml:// URI on every job that uses it
RESUMED_TAG = "amltrain.resumed_from"
URI = re.compile(r"azureml://datastores/([A-Za-z0-9_]+)/paths/(.+?)/?")


@dataclass(frozen=True)
class CheckpointLocation:
    datastore: str
    path: str  # on the datastore, no leading or trailing /
    resumed_from: str = ""  # the job whose folder this is, when not this submission's own
    known: bool = True  # False: a dry run of --resume, which cannot ask Azure for the earlier job's folder

    @property
    def uri(self) -> str:
        return f"azureml://datastores/{self.datastore}/paths/{self.path}"

    def tags(self) -> dict[str, str]:
        return {TAG: self.uri, **({RESUMED_TAG: self.resumed_from} if self.resumed_from else {})}

    def describe(self) -> str:
        if not self.known:
            return f"job {self.resumed_from}'s checkpoint folder (its {TAG} tag, read when submitting), as ${ENV}"
        resumed = f", resumed from job {self.resumed_from}" if self.resumed_from else ""
        return f"{self.uri} (read-write mount, as ${ENV}; kept across retries{resumed})"


def new_key(now: float | None = None) -> str:
    """A job key: sortable by submission time, unique by its random suffix."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + "-" + secrets.token_hex(3)


def location(settings: CheckpointSettings, experiment: str, key: str | None = None) -> CheckpointLocation:
    """A new job's folder: ``job.checkpoints.path`` with its placeholders filled in."""
    path = settings.path.replace("{experiment}", experiment).replace("{key}", key or new_key())
    return CheckpointLocation(settings.datastore, path)


def unknown(settings: CheckpointSettings, job: str) -> CheckpointLocation:
    """What a dry run of ``--resume JOB`` shows: the folder is JOB's, which only Azure knows."""
    return CheckpointLocation(settings.datastore, f"<checkpoint folder of job {job}>", resumed_from=job, known=False)


def of_job(job: str, tags: Mapping[str, str], output_uri: str = "") -> CheckpointLocation:
    """JOB's folder, for ``--resume JOB``: its tag, else its ``checkpoints`` output; one line when it has none."""
    uri = str(tags.get(TAG) or output_uri or "")
    found = URI.fullmatch(uri)
    if not found:
        said = f"its {TAG} tag is {uri!r}" if uri else f"it has no {TAG} tag and no {OUTPUT} output"
        raise ToolkitError(f"job {job} has no checkpoint folder to resume from: {said}",
                           "give a job submitted by amltrain with checkpoints (invoke submit prints its name)")
    return CheckpointLocation(found.group(1), found.group(2).strip("/"), resumed_from=job)
