"""Cloud data inputs: ``--input NAME=azureml:DATASET[:VERSION]`` (a registered data asset or v1 FileDataset) or
``NAME=datastore:STORE/PATH`` (also ``azureml://datastores/STORE/paths/PATH``: a folder of a datastore). Parsed
once for both SDKs; each SDK says how its job mounts them. A local folder cannot be mounted by a cluster and is
refused here, with how to upload it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..config import key_values
from ..errors import ToolkitError
from ..inputs import references

DATASET_INPUT = re.compile(r"azureml:(?!//)([A-Za-z0-9_.-]+)(?::([A-Za-z0-9_.-]+))?")
DATASTORE_INPUT = re.compile(r"datastore:([A-Za-z0-9_]+)/(.*)|azureml://datastores/([A-Za-z0-9_]+)/paths/(.*)")
INPUT_HINT = ("upload the data once (e.g. Dataset.File.upload_directory, or to a datastore) and give --input "
              "NAME=azureml:DATASET[:VERSION] or --input NAME=datastore:STORE/PATH (or azure.submit.inputs)")


@dataclass(frozen=True)
class RemoteInput:
    name: str
    kind: str  # "dataset" | "datastore"
    source: str  # dataset name | datastore name
    detail: str  # dataset version | path on the datastore


def remote_inputs(configured: Mapping[str, str], given: Iterable[str]) -> dict[str, RemoteInput]:
    """``azure.submit.inputs`` with ``--input NAME=REF`` winning; anything but a cloud reference is refused."""
    result = {}
    for name, value in {**configured, **key_values(given, "input")}.items():
        value = value.strip()
        dataset, datastore = DATASET_INPUT.fullmatch(value), DATASTORE_INPUT.fullmatch(value)
        if dataset:
            result[name] = RemoteInput(name, "dataset", dataset.group(1), dataset.group(2) or "latest")
        elif datastore:
            store = datastore.group(1) or datastore.group(3)
            path = (datastore.group(2) if datastore.group(1) else datastore.group(4)).strip("/")
            result[name] = RemoteInput(name, "datastore", store, path)
        else:
            raise ToolkitError(f"input {name}={value} is not a cloud data reference; a cluster cannot mount a "
                               "local folder", INPUT_HINT)
    return result


def check_references(text: str, inputs: Mapping[str, RemoteInput]) -> None:
    """Every ``${{inputs.NAME}}`` in ``text`` names an input with a cloud reference."""
    for name in references(text):
        if name not in inputs:
            raise ToolkitError(f"argument refers to input {name!r}, which has no cloud reference",
                               f"add --input {name}=azureml:DATASET or {name}=datastore:STORE/PATH")
