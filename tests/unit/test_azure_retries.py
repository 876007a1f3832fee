"""Azure's half of long runs, for both SDKs: the checkpoint folder every attempt mounts, ``submit --resume JOB``,
and ``submit --retries N`` with its failure classes (``amltrain.azure.faults``), against the recording fake, which
is told how each run ends (``RecordingBackend.outcomes``), with the service's real error payloads
(``tests.azure_payloads``). What the SDK would send is read with the SDK's own serializers."""

from __future__ import annotations

import pytest

from amltrain.azure import checkpoints, faults, flow, submit, v1, v2
from amltrain.azure.backend import RunError
from amltrain.azure.settings import CheckpointSettings
from amltrain.azure.v1 import backend as v1_backend
from amltrain.errors import ToolkitError
from tests.azure_payloads import NAMED, PAYLOADS
from tests.unit import test_azure_session
from tests.unit.test_azure_session import job

session = test_azure_session.session  # the fixture: a session on the fake, for each SDK
PREEMPTED, USER_EXIT = (next(RunError(code, message) for kind, _, code, message, _ in PAYLOADS if kind == wanted)
                        for wanted in ("preempted", "user error"))


@pytest.mark.parametrize("kind, retried, code, message, source", PAYLOADS + NAMED,
                         ids=[f"{i}-{p[0]}" for i, p in enumerate(PAYLOADS + NAMED)])
def test_each_real_payload_gets_its_class(kind, retried, code, message, source):
    verdict = faults.classify("Failed", code, message)
    assert (verdict.kind, verdict.retry) == (kind, retried)
    assert "\n" not in verdict.line() and message.split()[0] in verdict.line()


def test_a_users_words_never_make_a_user_error_an_infrastructure_fault():
    said = "Execution failed. User process 'python' exited with status code 1: TimeoutError: timed out pulling " \
           "image metadata (Client.Timeout exceeded while awaiting headers); node failure simulated"
    assert faults.classify("Failed", "UserError", said).kind == "user error"
    assert faults.classify("Canceled").retry is False and faults.classify("Completed").kind == "completed"


def submitted_job(session, attempt: int):
    return session.fake.submitted[attempt][1]


def checkpoint_uri(session, sdk_job) -> str:
    """Where the SDK's job mounts AMLTRAIN_CHECKPOINT_DIR from, read from what the SDK would send."""
    if session.settings.sdk == "v2":
        body = v2.job_body(sdk_job)["properties"]
        assert body["command"].startswith("export AMLTRAIN_CHECKPOINT_DIR=${{outputs.checkpoints}} && python ")
        output = body["outputs"]["checkpoints"]
        assert (output["mode"], output["jobOutputType"]) == ("ReadWriteMount", "uri_folder")
        return output["uri"]
    output = v1.job_body(sdk_job)["outputData"]["AMLTRAIN_CHECKPOINT_DIR"]  # its name is the variable on the node
    assert output["mechanism"] == "mount"
    location = output["outputLocation"]["dataPath"]
    return f"azureml://datastores/{location['datastoreName']}/paths/{location['relativePath']}"


def prepared(session, **options):
    return flow.prepare_submit(session, job(session), session.image, offline=False, compute_name="gpu-cluster",
                               **options)


def ready(session):
    flow.prepare_register(session, session.image, offline=False).execute()
    session.fake.calls.clear()


def test_a_preempted_run_is_submitted_again_on_the_same_checkpoint_folder(session):
    ready(session)
    session.fake.outcomes = [("Failed", PREEMPTED), "Completed"]
    final = prepared(session, retries=2).execute()
    first, second = (call[2] for call in session.fake.calls if call[0] == "submit")
    assert final.run_id == second and final.status == "Completed"
    uris = {checkpoint_uri(session, submitted_job(session, i)) for i in (0, 1)}
    (uri,) = uris
    assert uri.startswith("azureml://datastores/workspaceblobstore/paths/amltrain-checkpoints/fowl-transfer/")
    tags = [session.fake.submitted[i][2] for i in (0, 1)]
    assert tags[0]["amltrain.attempt"] == "1" and "amltrain.first_attempt" not in tags[0]
    assert {k: tags[1][k] for k in ("amltrain.attempt", "amltrain.first_attempt", "amltrain.previous_attempt")} \
        == {"amltrain.attempt": "2", "amltrain.first_attempt": first, "amltrain.previous_attempt": first}
    assert tags[0][checkpoints.TAG] == tags[1][checkpoints.TAG] == uri
    lines = session.out.getvalue().splitlines()
    retry = [line for line in lines if line.startswith("retry ")]
    assert retry == [f"retry 1/2: preempted (UserError: {PREEMPTED.message})"]  # the service's words, one line
    assert lines.index(retry[0]) < next(i for i, line in enumerate(lines) if second in line)


def test_a_user_error_is_never_retried(session):
    ready(session)
    session.fake.outcomes = [("Failed", USER_EXIT), "Completed"]
    with pytest.raises(ToolkitError) as e:
        prepared(session, retries=3).execute()
    assert session.fake.names().count("submit") == 1 and e.value.exit_code == 1
    assert e.value.message.startswith("not retried: user error (UserError: AzureMLCompute job failed. JobFailed: "
                                      "Submitted script failed with a non-zero exit code")
    assert "\n" not in str(e.value)


def test_retries_exhausted_is_one_line_and_a_non_zero_exit(session):
    ready(session)
    session.fake.outcomes = [("Failed", PREEMPTED)] * 3
    with pytest.raises(ToolkitError) as e:
        prepared(session, retries=2).execute()
    runs = [call[2] for call in session.fake.calls if call[0] == "submit"]
    assert len(runs) == 3 and e.value.exit_code == 1 and "\n" not in str(e.value)
    assert e.value.message.startswith("retries exhausted (2/2): preempted (UserError: AzureMLCompute job failed.")
    assert f"run {runs[-1]} ended Failed (attempt 3)" in e.value.message
    assert [line[:10] for line in session.out.getvalue().splitlines() if line.startswith("retry")] == \
        ["retry 1/2:", "retry 2/2:"]


@pytest.mark.parametrize("cancel", [False, True])
def test_ctrl_c_during_a_retry_behaves_as_wait_does(session, cancel):
    ready(session)
    session.fake.outcomes = [("Failed", PREEMPTED), "interrupted"]
    with pytest.raises(ToolkitError) as e:
        prepared(session, retries=3, wait=True, cancel_on_interrupt=cancel).execute()
    second = [call[2] for call in session.fake.calls if call[0] == "submit"][1]
    assert e.value.exit_code == 130 and session.fake.names().count("submit") == 2
    if cancel:
        assert session.fake.calls[-1] == ("cancel", second)
        assert e.value.message.startswith(f"interrupted: cancelled run {second}")
    else:
        assert "cancel" not in session.fake.names() and "it keeps running" in e.value.message


def test_retries_imply_wait_and_without_them_a_failure_names_the_services_words(session):
    ready(session)
    assert prepared(session, retries=1).wait is True
    session.fake.outcomes = [("Failed", PREEMPTED)]
    with pytest.raises(ToolkitError) as e:
        prepared(session, wait=True).execute()
    assert e.value.message.startswith("run ") and "ended Failed (UserError: AzureMLCompute job failed." \
        in e.value.message and session.fake.names().count("submit") == 1


def test_resume_mounts_the_earlier_jobs_folder_and_tags_it(session):
    ready(session)
    earlier = "fowl-transfer_1600000000_0000abcd"
    uri = "azureml://datastores/workspaceblobstore/paths/amltrain-checkpoints/fowl-transfer/20261129-101010-abcdef"
    session.fake.runs[earlier] = {checkpoints.TAG: uri}
    prepared(session, resume=earlier).execute()
    assert ("get_run", earlier) in session.fake.calls
    assert checkpoint_uri(session, submitted_job(session, 0)) == uri
    tags = session.fake.submitted[0][2]
    assert (tags[checkpoints.TAG], tags[checkpoints.RESUMED_TAG]) == (uri, earlier)


def test_resume_falls_back_to_the_jobs_output_and_refuses_a_job_without_either(session):
    uri = "azureml://datastores/other_store/paths/ckpt/run-7/"
    found = checkpoints.of_job("run-7", {}, uri)
    assert (found.datastore, found.path, found.resumed_from) == ("other_store", "ckpt/run-7", "run-7")
    session.fake.runs["plain-run"] = {"amltrain.target": "gpu"}
    with pytest.raises(ToolkitError, match="job plain-run has no checkpoint folder to resume from: it has no "
                                           "amltrain.checkpoints tag and no checkpoints output"):
        prepared(session, resume="plain-run")
    session.fake.absent.add("gone")
    with pytest.raises(ToolkitError, match="reading job gone failed"):
        prepared(session, resume="gone")
    assert "submit" not in session.fake.names()


def test_a_dry_run_shows_the_folder_and_the_retry_policy_and_contacts_nothing(session):
    dry = flow.prepare_submit(session, job(session), session.image, offline=True, compute_name="gpu-cluster",
                              retries=2)
    described = dry.describe()
    assert described["checkpoints"].startswith("azureml://datastores/workspaceblobstore/paths/amltrain-checkpoints/"
                                                "fowl-transfer/")
    assert described["retries"].startswith("up to 2: a run that fails for an infrastructure fault (preempted,")
    assert described["tags"]["amltrain.attempt"] == "1"
    resumed = flow.prepare_submit(session, job(session), session.image, offline=True, compute_name="gpu-cluster",
                                  resume="job-1")
    assert resumed.describe()["checkpoints"].startswith("job job-1's checkpoint folder (its amltrain.checkpoints tag")
    assert "<checkpoint folder of job job-1>" in str(resumed.document())
    assert session.fake.calls == [] and session.connects == []


def test_the_folder_follows_job_checkpoints():
    location = checkpoints.location(CheckpointSettings("store_2", "ckpt/{experiment}/x/{key}"), "fowl", "k1")
    assert location.uri == "azureml://datastores/store_2/paths/ckpt/fowl/x/k1"
    key = checkpoints.new_key(0)
    assert key.startswith("19700101-000000-") and len(key) == len("19700101-000000-") + 6


def test_the_v1_backend_reads_the_runs_error_tags_and_checkpoint_output():
    """WorkspaceBackend.get_run over azureml-core's Run, its service calls answered here as run history would."""
    from azureml.core import Run

    class FailedRun(Run):
        id = "fowl_1700000000_00000000"

        def __init__(self):
            pass

        def get_details(self):
            return {"status": "Failed", "error": {"error": {"code": PREEMPTED.code, "message": PREEMPTED.message}},
                    "runDefinition": {"outputData": {"AMLTRAIN_CHECKPOINT_DIR": {"outputLocation": {"dataPath": {
                        "datastoreName": "workspaceblobstore", "relativePath": "amltrain-checkpoints/fowl/k1"}}}}}}

        def get_tags(self):
            return {"amltrain.attempt": "1"}

        def get_portal_url(self):
            return f"https://ml.azure.com/runs/{self.id}"

    backend = v1_backend.WorkspaceBackend(None, None, None)
    backend._runs[FailedRun.id] = FailedRun()
    info = backend.get_run(FailedRun.id)
    assert (info.status, info.error, info.tags) == ("Failed", PREEMPTED, {"amltrain.attempt": "1"})
    assert info.checkpoints == "azureml://datastores/workspaceblobstore/paths/amltrain-checkpoints/fowl/k1"
    assert submit.ATTEMPT_TAG == "amltrain.attempt"
