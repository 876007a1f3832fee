"""Load: 8 `run-local` runs of 2 nodes each, started at once from separate processes (separate shells, as far as
the toolkit can tell). All must finish, with no name or network shared, all listed by `local-status`, and a
`local-cancel` of one must leave the others running. The job is a shell loop that waits for a file the test
writes into the run's outputs, so every run is surely alive while the others are checked, with no timing guess."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from tests.conftest import CLI, ROOT

from .conftest import containers_labelled, invoke, run_dir_of

RUNS = 8
# Released by outputs/release (the folder all nodes of a run share); gives up with code 3 after ~3 minutes.
WAIT_FOR_RELEASE = ("i=0; while [ ! -e outputs/release ]; do i=$((i+1)); [ $i -gt 900 ] && exit 3; sleep 0.2; done; "
                    "echo node $NODE_RANK released")


def test_eight_concurrent_two_node_runs_finish_apart_and_one_cancel_leaves_the_rest(cpu_image, probe_env,
                                                                                   docker_client):
    procs = [subprocess.Popen([CLI, "run-local", "--nodes", "2", "--command",
                               WAIT_FOR_RELEASE], cwd=ROOT, env={**os.environ, **probe_env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(RUNS)]
    try:
        run_dirs = [Path(run_dir_of(proc.stdout.readline())) for proc in procs]
        ids = [d.name for d in run_dirs]
        assert len(set(ids)) == RUNS
        deadline = time.monotonic() + 300
        while True:
            running = {rid: [c for c in containers_labelled(docker_client, f"amltrain.run-id={rid}")
                             if c.status == "running"] for rid in ids}
            if all(len(containers) == 2 for containers in running.values()):
                break
            failed = [proc.stderr.read() for proc in procs if proc.poll() is not None]
            assert not failed and time.monotonic() < deadline, f"not all runs started: {failed}"
            time.sleep(1)

        # No name or network shared: 16 containers, 8 networks, each node on its own run's network only.
        containers = [c for rid in ids for c in running[rid]]
        assert len({c.name for c in containers}) == 2 * RUNS
        networks = {rid: docker_client.networks.list(filters={"label": f"amltrain.run-id={rid}"}) for rid in ids}
        assert all(len(found) == 1 for found in networks.values()) and len({n[0].id for n in networks.values()}) == RUNS
        for rid in ids:
            for container in running[rid]:
                assert list(container.attrs["NetworkSettings"]["Networks"]) == [networks[rid][0].name]

        status = invoke("local-status", env=probe_env)
        listed = {line.split()[0]: line for line in status.stdout.splitlines()}
        assert all(rid in listed and "Running" in listed[rid] for rid in ids), status.stdout + status.stderr

        victim = ids[3]
        cancel = invoke("local-cancel", "--run", victim, env=probe_env)
        assert cancel.returncode == 0, cancel.stderr
        _, stderr = procs[3].communicate(timeout=60)
        assert procs[3].returncode == 130 and "cancelled (invoke local-cancel)" in stderr, stderr
        others = [rid for rid in ids if rid != victim]
        for rid in others:  # the other runs are untouched: both nodes still running, their tasks still waiting
            states = [c.status for c in containers_labelled(docker_client, f"amltrain.run-id={rid}")]
            assert states == ["running", "running"], (rid, states)
        assert all(proc.poll() is None for i, proc in enumerate(procs) if i != 3)

        for run_dir in run_dirs:
            (run_dir / "outputs/release").touch()
        for i, proc in enumerate(procs):
            if i == 3:
                continue
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, out[-2000:] + err
            assert "[rank 1] node 1 released" in out
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()

    results = {d.name: json.loads((d / "result.json").read_text()) for d in run_dirs}
    assert {rid: r["status"] for rid, r in results.items()} == {
        rid: "Canceled" if rid == victim else "Completed" for rid in ids}
    status = invoke("local-status", env=probe_env).stdout
    listed = {line.split()[0]: line.split()[1] for line in status.splitlines()}
    assert {rid: listed.get(rid) for rid in ids} == {rid: results[rid]["status"] for rid in ids}, status
    for rid in ids:
        assert containers_labelled(docker_client, f"amltrain.run-id={rid}") == []
        assert docker_client.networks.list(filters={"label": f"amltrain.run-id={rid}"}) == []
