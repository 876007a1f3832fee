"""Find, follow and cancel local runs from any shell, with no state of our own.

A running run is its containers and network, found by the ``amltrain.run-id`` label (TorchX's stateless
control plane); a finished run is its folder, ``runs/<id>/``, whose ``result.json`` ``executor`` writes
at the end and whose ``logs/user_logs/`` hold every rank's log.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from pathlib import Path

from ..errors import ToolkitError
from .executor import remove_container, remove_network
from .request import CANCEL_MARK, LABEL_NODE_RANK, LABEL_RUN_DIR, LABEL_RUN_ID

RANK_LOG = re.compile(r"std_log(?:_process_(\d+))?\.txt$")


def active_runs(client) -> dict[str, list]:
    """Run id -> its containers (node order), for every run with a container left."""
    runs = defaultdict(list)
    for container in client.containers.list(all=True, filters={"label": LABEL_RUN_ID}):
        runs[container.labels[LABEL_RUN_ID]].append(container)
    for containers in runs.values():
        containers.sort(key=lambda c: int(c.labels.get(LABEL_NODE_RANK, 0)))
    return dict(runs)


def run_dir(running: dict[str, list], runs_dir: Path, run_id: str) -> Path:
    """Where a run's results are: the label of a live container (``running``: ``active_runs``), else the
    configured runs folder."""
    for container in running.get(run_id, []):
        return Path(container.labels[LABEL_RUN_DIR])
    folder = runs_dir / run_id
    if not run_id or "/" in run_id or not folder.is_dir():
        raise ToolkitError(f"no local run {run_id!r} is running or in {runs_dir}",
                           "`invoke local-status` lists the runs")
    return folder


def status(running: dict[str, list], runs_dir: Path, limit: int = 10) -> list[dict]:
    """Running runs (``active_runs``: from Docker), then the newest finished ones (from their result.json)."""
    rows = []
    for run_id, containers in sorted(running.items()):
        states = ", ".join(f"node-{c.labels.get(LABEL_NODE_RANK, '?')} {c.status}" for c in containers)
        rows.append({"run_id": run_id, "status": "Running", "detail": states,
                     "run_dir": containers[0].labels.get(LABEL_RUN_DIR, "")})
    results = sorted(runs_dir.glob("*/result.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in results[:limit]:
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if result.get("run_id") in running:
            continue
        detail = f"{result.get('nodes')}x{result.get('procs_per_node')} {result.get('launch')}, " \
                 f"{result.get('duration_s')} s"
        if result.get("status") != "Completed":
            detail += f", exit code {result.get('exit_code')}" + (f" ({result['failed']})" if result.get("failed")
                                                                   else "")
            if result.get("oom_killed_nodes"):
                detail += ", out of memory on " + ", ".join(f"node-{n}" for n in result["oom_killed_nodes"])
        if attempts := result.get("attempts"):
            preempted = sum(a.get("status") == "Preempted" for a in attempts)
            detail += f", {len(attempts)} attempt(s), {preempted} preempted"
        rows.append({"run_id": result.get("run_id", path.parent.name), "status": result.get("status", "?"),
                     "detail": detail, "run_dir": str(path.parent)})
    return rows


def rank_logs(folder: Path, rank: int | None = None) -> list[tuple[str, Path]]:
    """(prefix, file) of each process's log in rank order; ``rank`` picks one. A multi-process run's
    logs are prefixed as its live stream was (``[rank N]``, or ``[node N]`` for a per-node launch, whose
    logs are one per node); one process's log or a chosen rank's is not."""
    unit = "node" if _launch(folder) == "per-node" else "rank"
    found = []
    # a preemption drill's attempts each have their own logs/attempt-<k>/: theirs, in attempt order
    attempts = sorted(folder.glob("logs/attempt-*/user_logs"), key=lambda p: int(p.parent.name.split("-")[1]))
    for order, logs in enumerate([folder / "logs/user_logs", *attempts]):
        for path in logs.glob("std_log*.txt"):
            match = RANK_LOG.match(path.name)
            if match and (rank is None or rank == int(match.group(1) or 0)):
                number = int(match.group(1) or 0)
                prefix = f"[{unit} {number}] " if match.group(1) is not None and rank is None else ""
                found.append((order, number, prefix, path))
    return [(prefix, path) for _, _, prefix, path in sorted(found)]


def _launch(folder: Path) -> str:
    try:
        return str(json.loads((folder / "request.json").read_text()).get("launch", ""))
    except (OSError, ValueError):
        return ""


def print_logs(client, folder: Path, rank: int | None, follow: bool, out) -> None:
    """Every rank's log; with ``follow``, keep printing what is appended until the run's containers are
    gone."""
    offsets = {}
    while True:
        running = follow and folder.name in active_runs(client)
        logs = rank_logs(folder, rank)
        for prefix, path in logs:
            with path.open("rb") as f:
                f.seek(offsets.get(path, 0))
                data = f.read()
                offsets[path] = f.tell()
            text = data.decode("utf-8", errors="replace")
            out.write("".join(prefix + line for line in text.splitlines(keepends=True)))
            out.flush()
        if not running:
            if not logs:
                which = f"for rank {rank}" if rank is not None else "yet"
                raise ToolkitError(f"run {folder.name} has no log {which}", "omit --rank to see every rank's log")
            return
        time.sleep(0.5)


def cancel_targets(client, run_id: str | None) -> dict[str, tuple[list, list]]:
    """The containers and networks a cancel removes, per run: one run's, or (None) all runs'. A network left
    behind by a run whose containers are gone counts as that run's."""
    running = active_runs(client)
    networks = defaultdict(list)
    for network in client.networks.list(filters={"label": LABEL_RUN_ID}):
        networks[network.attrs.get("Labels", {}).get(LABEL_RUN_ID, "")].append(network)
    if run_id is not None and run_id not in running and run_id not in networks:
        raise ToolkitError(f"no local run {run_id!r} is running", "`invoke local-status` lists the runs")
    chosen = sorted(set(running) | set(networks)) if run_id is None else [run_id]
    return {rid: (running.get(rid, []), networks.get(rid, [])) for rid in chosen}


def cancel(targets: dict[str, tuple[list, list]]) -> None:
    """Stop and remove what ``cancel_targets`` found; results stay. The run's own `run-local` sees its
    containers go, reads the mark and reports the cancellation."""
    for containers, networks in targets.values():
        folder = Path(containers[0].labels.get(LABEL_RUN_DIR, "")) if containers else None
        if folder and folder.is_dir():
            (folder / CANCEL_MARK).write_text(json.dumps({"by": "invoke local-cancel", "time": time.time()}) + "\n")
        for container in containers:
            remove_container(container)
        for network in networks:
            remove_network(network)
