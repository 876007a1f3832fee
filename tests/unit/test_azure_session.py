"""The Azure flows in-process, as tasks.py drives them (``amltrain.azure.flow``), for both SDKs: one session,
requests prepared once, executed against the recording fake at the network seam (``tests.azure_fake``).

The SDK objects handed over are the real ones of the chosen SDK; only Azure's answers are the fake's.
"""

from __future__ import annotations

import io
import json

import pytest

from amltrain import config
from amltrain.azure import flow, v1, v2
from amltrain.azure import settings as azure_settings
from amltrain.azure.backend import ComputeInfo
from amltrain.errors import ToolkitError
from amltrain.registry import KnownImage
from tests.azure_fake import RecordingBackend
from tests.conftest import ROOT

DIGEST = "sha256:" + "cd" * 32


@pytest.fixture(params=["v2", "v1"])
def session(request, tmp_path, monkeypatch):
    """A session on a workspace config, the image pushed to the workspace's ACR, and the fake as the workspace."""
    workspace = tmp_path / "config.json"
    workspace.write_text(json.dumps({"subscription_id": "s", "resource_group": "r", "workspace_name": "ws"}))
    cfg = config.load(ROOT, {"azure": {"config_file": str(workspace), "sdk": request.param}})
    fake = RecordingBackend()
    fake.computes["gpu-cluster"] = ComputeInfo(
        "gpu-cluster", "Standard_NC48ads_A100_v4", 0, 4, "Succeeded")
    connects = []
    for sdk in (v1, v2):
        monkeypatch.setattr(sdk, "connect", lambda settings, start: connects.append(1) or fake)
    image = flow.image_choice(cfg, "gpu", ROOT)

    def pushed(choice, offline):  # this engine built and pushed it: a dry run knows as much as a real one
        return KnownImage(choice.local_ref, "sha256:" + "ab" * 32, (f"wsacr.azurecr.io/amltrain/train@{DIGEST}",))

    s = flow.AzureSession(azure_settings.from_config(cfg), ROOT, out=io.StringIO(), find_image=pushed)
    s.fake, s.image, s.cfg, s.connects = fake, image, cfg, connects
    return s


def job(session, **options):
    return config.job_spec(session.cfg, ROOT, target="gpu", require_inputs=False, **options)


def test_register_then_submit_and_wait_sign_in_once_and_send_the_sdks_objects(session):
    flow.prepare_register(session, session.image, offline=False).execute()
    flow.prepare_register(session, session.image, offline=False).execute()
    fake = session.fake
    assert fake.names().count("register_environment") == 1
    (env,) = fake.environments.values()
    assert env.image == f"wsacr.azurecr.io/amltrain/train@{DIGEST}"  # the digest, not the tag
    request = flow.prepare_submit(session, job(session, nodes=2, procs_per_node=2), session.image, offline=False,
                                  compute_name="gpu-cluster", wait=True)
    final = request.execute()
    assert final.status == "Completed" and session.connects == [1]  # one sign-in for the whole session
    experiment, sdk_job, tags = fake.submitted[0]
    assert experiment == "fowl-transfer" and tags["amltrain.image_digest"] == DIGEST
    if session.settings.sdk == "v2":
        assert (sdk_job.distribution.process_count_per_instance, sdk_job.resources.instance_count) == (2, 2)
        assert sdk_job.environment == f"azureml:{env.name}:{env.version}" and sdk_job.compute == "gpu-cluster"
    else:
        body = v1.job_body(sdk_job)
        assert (body["pytorch"]["processCount"], body["nodeCount"]) == (4, 2)
        assert body["environment"]["docker"]["baseImage"] == env.image
        assert not body["environment"]["python"].get("condaDependencies")  # no SDK placeholder conda spec


def test_the_dry_run_and_the_real_run_describe_the_same_job(session):
    """Prepared offline, the job differs from the real one only where the workspace is asked (its ACR)."""
    spec = job(session, nodes=2, procs_per_node=2)
    dry = flow.prepare_submit(session, spec, session.image, offline=True, compute_name="gpu-cluster")
    real = flow.prepare_submit(session, spec, session.image, offline=False, compute_name="gpu-cluster")
    assert session.connects == [1] and dry.describe()["launch"] == real.describe()["launch"]
    filled = json.dumps(dry.document()).replace(flow.acr.WORKSPACE_ACR, "wsacr.azurecr.io")
    # offline, the digest cannot be matched to a registry whose address only the workspace knows
    filled = filled.replace('"amltrain.image_digest": "unknown"', f'"amltrain.image_digest": "{DIGEST}"')
    filled = filled.replace(f":{session.image.local_ref.rsplit(':', 1)[1]}", f"@{DIGEST}")  # tag -> digest
    # each submission gets its own checkpoint folder (a new job key)
    filled = filled.replace(dry.request.plan.checkpoints.path, real.request.plan.checkpoints.path)
    assert json.loads(filled) == real.document()


def test_an_unregistered_environment_or_unpushed_image_submits_nothing(session):
    with pytest.raises(ToolkitError, match="is not registered in workspace ws"):
        flow.prepare_submit(session, job(session), session.image, offline=False, compute_name="gpu-cluster").execute()
    assert "submit" not in session.fake.names()
    session.find_image = lambda choice, offline: KnownImage(choice.local_ref, "sha256:" + "ab" * 32, ())
    with pytest.raises(ToolkitError, match="is not in the registry: an Environment must name the pushed digest"):
        flow.prepare_register(session, session.image, offline=False).execute()
    assert "register_environment" not in session.fake.names()


def test_compute_and_model_through_the_session(session, tmp_path):
    spec = azure_settings.compute_for(session.settings, "new-cluster", vm_size="Standard_NC24ads_A100_v4",
                                      identity="system")
    flow.prepare_compute(session, spec).execute()
    (_, name, definition) = next(call for call in session.fake.calls if call[0] == "create_compute")
    identity = definition.identity.type if session.settings.sdk == "v2" else definition.identity_type
    assert name == "new-cluster" and "system" in identity.lower()
    model = flow.prepare_model(session, "run-1", "pytorch-birds", str(tmp_path / "model"), "outputs/model.pt2")
    model.execute()
    assert ("register_model", "run-1", "pytorch-birds", "outputs/model.pt2", {"amltrain.run_id": "run-1"}) in \
        session.fake.calls
    assert (tmp_path / "model/outputs/model.pt2").read_bytes() == b"model"


def test_an_existing_cluster_with_another_identity_is_said_so(session):
    session.fake.computes["gpu-cluster"] = ComputeInfo("gpu-cluster", "Standard_NC48ads_A100_v4", 0, 4,
                                                       "Succeeded", identity="")
    spec = azure_settings.compute_for(session.settings, "gpu-cluster", identity="system")
    flow.prepare_compute(session, spec).execute()
    said = session.out.getvalue()
    assert "warning: compute gpu-cluster has identity none, not system" in said and "nothing created" in said
    assert "create_compute" not in session.fake.names()


def test_serverless_is_v2_only_and_checks_no_cluster(session):
    spec = job(session, nodes=2)
    if session.settings.sdk == "v1":
        with pytest.raises(ToolkitError, match="serverless compute is SDK v2's"):
            flow.prepare_submit(session, spec, session.image, offline=True, compute_name="serverless",
                                instance_type="Standard_NC24ads_A100_v4")
        return
    flow.prepare_register(session, session.image, offline=False).execute()
    request = flow.prepare_submit(session, spec, session.image, offline=False, compute_name="serverless",
                                  instance_type="Standard_NC24ads_A100_v4")
    request.execute()
    assert "get_compute" not in session.fake.names()
    _, sdk_job, _ = session.fake.submitted[0]
    assert sdk_job.compute is None and sdk_job.resources.instance_type == "Standard_NC24ads_A100_v4"
