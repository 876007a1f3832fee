"""local-status/local-logs on run folders as the executor leaves them (finished runs need no Docker)."""

import json
from pathlib import Path

import pytest

from amltrain.errors import ToolkitError
from amltrain.local import control as local_control


def finished_run(runs: Path, run_id: str, launch: str, logs: dict[str, str], result: dict) -> Path:
    folder = runs / run_id
    (folder / "logs/user_logs").mkdir(parents=True)
    for name, text in logs.items():
        (folder / "logs/user_logs" / name).write_text(text)
    (folder / "request.json").write_text(json.dumps({"launch": launch}))
    (folder / "result.json").write_text(json.dumps({"run_id": run_id, "launch": launch, **result}))
    return folder


def test_logs_come_in_rank_order_prefixed_like_the_live_stream(tmp_path):
    folder = finished_run(tmp_path, "r_1", "per-process", {f"std_log_process_{r}.txt": f"hi {r}\n" for r in (10, 2)},
                          {"status": "Completed"})
    assert [(prefix, path.name) for prefix, path in local_control.rank_logs(folder)] == [
        ("[rank 2] ", "std_log_process_2.txt"), ("[rank 10] ", "std_log_process_10.txt")]
    assert local_control.rank_logs(folder, 10) == [("", folder / "logs/user_logs/std_log_process_10.txt")]


def test_per_node_logs_are_named_by_node_and_a_single_process_is_not_prefixed(tmp_path):
    per_node = finished_run(tmp_path, "r_2", "per-node", {"std_log_process_1.txt": "x\n"}, {"status": "Completed"})
    assert local_control.rank_logs(per_node)[0][0] == "[node 1] "
    single = finished_run(tmp_path, "r_3", "per-process", {"std_log.txt": "x\n"}, {"status": "Completed"})
    assert local_control.rank_logs(single)[0][0] == ""


def test_printing_a_missing_rank_is_one_clear_error(tmp_path):
    folder = finished_run(tmp_path, "r_4", "per-process", {"std_log_process_0.txt": "x\n"}, {"status": "Completed"})
    with pytest.raises(ToolkitError, match="no log for rank 5"):
        local_control.print_logs(None, folder, 5, follow=False, out=None)  # a finished run: no engine asked


def test_status_reports_finished_runs_with_their_failed_rank(tmp_path):
    finished_run(tmp_path, "r_5", "mpi", {}, {"status": "Failed", "exit_code": 7, "failed": "rank 3 (node 1)",
                                            "nodes": 2, "procs_per_node": 2, "duration_s": 4.2})
    (row,) = local_control.status({}, tmp_path)  # nothing running
    assert (row["run_id"], row["status"]) == ("r_5", "Failed")
    assert row["detail"] == "2x2 mpi, 4.2 s, exit code 7 (rank 3 (node 1))"


def test_status_names_a_node_killed_for_memory(tmp_path):
    finished_run(tmp_path, "r_6", "per-process", {}, {"status": "Failed", "exit_code": 137, "nodes": 2,
                                                    "failed": "rank 1 (node 1)", "oom_killed_nodes": [1],
                                                    "procs_per_node": 1, "duration_s": 3.0})
    (row,) = local_control.status({}, tmp_path)
    assert row["detail"].endswith("exit code 137 (rank 1 (node 1)), out of memory on node-1")


def test_an_unknown_run_is_refused(tmp_path):
    with pytest.raises(ToolkitError, match="no local run 'nope'"):
        local_control.run_dir({}, tmp_path, "nope")


def test_a_drilled_runs_logs_come_attempt_by_attempt_and_status_counts_the_preemptions(tmp_path):
    attempts = [{"attempt": k, "status": s} for k, s in ((1, "Preempted"), (2, "Preempted"), (3, "Completed"))]
    folder = finished_run(tmp_path, "r_9", "per-process", {}, {"status": "Completed", "nodes": 2, "procs_per_node": 1,
                                                              "duration_s": 9.0, "attempts": attempts})
    for k in (10, 2, 1):  # attempt 10 sorts after 2 by number, not by name
        logs = folder / f"logs/attempt-{k}/user_logs"
        logs.mkdir(parents=True)
        for rank in (0, 1):
            (logs / f"std_log_process_{rank}.txt").write_text(f"attempt {k}\n")
    assert [str(path.relative_to(folder / "logs")) for _, path in local_control.rank_logs(folder, 0)] == [
        "attempt-1/user_logs/std_log_process_0.txt", "attempt-2/user_logs/std_log_process_0.txt",
        "attempt-10/user_logs/std_log_process_0.txt"]
    assert len(local_control.rank_logs(folder)) == 6
    (row,) = local_control.status({}, tmp_path)
    assert row["detail"].endswith("3 attempt(s), 2 preempted"), row
