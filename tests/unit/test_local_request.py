import json
from dataclasses import replace
from pathlib import Path

import pytest

from amltrain import config, masking
from amltrain.errors import ToolkitError
from amltrain.local import request as local_request
from amltrain.spec import ContainerRequest, Distribution, JobSpec, LocalSettings, Mount, Preemption, frozen_map


@pytest.fixture
def source(tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    (src / "train/job.py").write_text("print('hi')\n")
    (src / "data").mkdir()
    return src


@pytest.fixture
def job(source, tmp_path) -> JobSpec:
    return JobSpec(experiment="fowl", target="cpu", source_dir=source, script="train/job.py",
                   arguments=("--data-dir", "${{inputs.data}}", "--lr", "0.1"),
                   inputs=frozen_map({"data": tmp_path / "fowl"}),
                   environment=frozen_map({"MY_API_KEY": "abc", "WORLD_SIZE": "99", "FOO": "bar"}))


@pytest.fixture
def settings(tmp_path) -> LocalSettings:
    return LocalSettings(runs_dir=tmp_path / "runs", user="1000:1000")


def test_request_is_exactly_azure_mls_single_node_contract(job, settings, tmp_path):
    request = local_request.local_request(job, "amltrain/train:cpu-abc", settings, run_id="fowl_1_ab")
    run_dir = tmp_path / "runs/fowl_1_ab"
    assert request.run_dir == run_dir and request.network == ""  # one node: Docker's default bridge
    assert request.snapshot_files == ("train/job.py",)
    (container,) = request.containers
    assert replace(container, plan="") == ContainerRequest(
        name="fowl_1_ab-node-0",
        image="amltrain/train:cpu-abc",
        command=("python", "/mnt/azureml/.amltrain/launcher.py", "run"),
        working_dir="/mnt/azureml/wd",
        hostname="node-0",
        user="1000:1000",
        shm_size="2g",
        environment=frozen_map({
            "MY_API_KEY": "abc", "FOO": "bar",
            "MASTER_ADDR": "node-0", "MASTER_PORT": "6105", "WORLD_SIZE": "1", "NODE_RANK": "0",
            "AZUREML_RUN_ID": "fowl_1_ab", "AZUREML_ARM_PROJECT_NAME": "fowl",
            "AZUREML_NODE_COUNT": "1", "MLFLOW_TRACKING_URI": "file:///mnt/azureml/mlruns",
            "MLFLOW_EXPERIMENT_NAME": "fowl", "MLFLOW_ALLOW_FILE_STORE": "true",
            "AMLTRAIN_CHECKPOINT_DIR": "/mnt/azureml/checkpoints",
            "AZUREML_DATAREFERENCE_data": "/mnt/azureml/inputs/data", "HOME": "/tmp",
        }),
        mounts=(
            Mount(str(run_dir / "outputs"), "/mnt/azureml/wd/outputs"),
            Mount(str(run_dir / "logs"), "/mnt/azureml/wd/logs"),
            Mount(str(run_dir.parent / "mlruns"), "/mnt/azureml/mlruns"),
            Mount(str(run_dir / "checkpoints"), "/mnt/azureml/checkpoints"),
            Mount(str(tmp_path / "fowl"), "/mnt/azureml/inputs/data", read_only=True),
        ),
        labels=frozen_map({"amltrain.run-id": "fowl_1_ab", "amltrain.node-rank": "0",
                           "amltrain.experiment": "fowl", "amltrain.run-dir": str(run_dir)}),
    )
    assert json.loads(container.plan) == {
        "mode": "run", "node_rank": 0, "prefix": False, "status_dir": "/mnt/azureml/wd/logs/system_logs/launcher",
        "grace_s": 5.0,
        "command": ["python", "train/job.py", "--data-dir", "/mnt/azureml/inputs/data", "--lr", "0.1"],
        "processes": [{"rank": 0, "label": "rank 0", "env": {"RANK": "0", "LOCAL_RANK": "0"},
                       "log": "/mnt/azureml/wd/logs/user_logs/std_log.txt"}],
    }


def distributed(job, launch, nodes, procs, command=""):
    return replace(job, command=command, distribution=Distribution(launch, nodes, procs))


def test_per_process_launch_gives_every_rank_its_own_variables(job, settings):
    request = local_request.local_request(distributed(job, "per-process", 2, 2), "img", settings, run_id="r_1_a")
    assert [c.hostname for c in request.containers] == ["node-0", "node-1"]
    assert {c.network for c in request.containers} == {"amltrain-r_1_a"}
    for node, container in enumerate(request.containers):
        env = container.environment
        assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["WORLD_SIZE"], env["NODE_RANK"]) == \
            ("node-0", "6105", "4", str(node))
        assert env["AZUREML_NODE_COUNT"] == "2" and "RANK" not in env
        plan = json.loads(container.plan)
        assert plan["prefix"] is True
        assert [(p["env"]["RANK"], p["env"]["LOCAL_RANK"], p["log"].rsplit("/", 1)[1]) for p in plan["processes"]] == [
            (str(2 * node), "0", f"std_log_process_{2 * node}.txt"),
            (str(2 * node + 1), "1", f"std_log_process_{2 * node + 1}.txt")]


def test_per_node_launch_runs_the_command_once_per_node_in_a_shell(job, settings):
    command = "torchrun --nproc_per_node 2 --node_rank $NODE_RANK ${{inputs.data}}"
    request = local_request.local_request(distributed(job, "per-node", 2, 2, command), "img", settings)
    for node, container in enumerate(request.containers):
        assert container.environment["WORLD_SIZE"] == "2" and container.environment["NODE_RANK"] == str(node)
        plan = json.loads(container.plan)
        assert plan["command"] == ["/bin/sh", "-c",
                                   "torchrun --nproc_per_node 2 --node_rank $NODE_RANK /mnt/azureml/inputs/data"]
        assert plan["processes"] == [{"rank": node, "label": f"node {node}", "env": {},
                                      "log": f"/mnt/azureml/wd/logs/user_logs/std_log_process_{node}.txt"}]


def test_mpi_launch_runs_mpirun_on_node_0_and_serves_it_elsewhere(job, settings):
    job = replace(job, environment=frozen_map({"MY_API_KEY": "abc"}))
    request = local_request.local_request(distributed(job, "mpi", 2, 2), "img", settings)
    head, worker = request.containers
    for container in request.containers:
        env = container.environment
        assert env["AZ_BATCH_MASTER_NODE"] == "node-0:6105"
        assert not {"MASTER_ADDR", "WORLD_SIZE", "RANK", "NODE_RANK"} & set(env)  # mpirun's variables instead
    assert head.command[-1] == "mpirun" and worker.command[-1] == "serve"
    plan = json.loads(head.plan)
    assert plan["workers"] == ["node-1"]
    assert plan["mpirun"][:7] == ["mpirun", "-np", "4", "--host", "node-0:2,node-1:2", "--bind-to", "none"]
    assert "--allow-run-as-root" not in plan["mpirun"]  # runs as 1000
    assert plan["mpirun"][-6:] == ["python", "train/job.py", "--data-dir", "/mnt/azureml/inputs/data", "--lr", "0.1"]
    assert plan["mpirun_env"]["OMPI_MCA_plm_rsh_agent"].endswith("launcher.py rsh")
    described = local_request.describe(request)["containers"][1]
    assert described["ranks_set_by_mpirun"][1] == {
        "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}


def test_single_node_mpi_names_the_master_as_azure_ml_does(job, settings):
    (container,) = local_request.local_request(distributed(job, "mpi", 1, 2), "img", settings).containers
    assert container.environment["AZ_BATCHAI_MPI_MASTER_NODE"] == "node-0"
    assert "AZ_BATCH_MASTER_NODE" not in container.environment


def test_dry_run_shows_every_container_and_each_ranks_environment(job, settings):
    request = local_request.local_request(distributed(job, "per-process", 2, 2), "img", settings)
    described = local_request.describe(request)
    assert described["network"]["name"].startswith("amltrain-") and described["network"]["driver"] == "bridge"
    assert (described["nodes"], described["procs_per_node"]) == (2, 2)
    ranks = [p["environment"]["RANK"] for c in described["containers"] for p in c["processes"]]
    assert ranks == ["0", "1", "2", "3"]
    assert all(c["environment"]["MY_API_KEY"] == "****" for c in described["containers"])


def test_building_a_request_touches_nothing(job, settings):
    local_request.local_request(job, "img", settings)
    assert not settings.runs_dir.exists()


def test_root_runs_keep_the_image_home(job, settings):
    request = local_request.local_request(job, "img", LocalSettings(runs_dir=settings.runs_dir, user="0:0"))
    assert "HOME" not in request.containers[0].environment


def test_unknown_input_reference_is_refused(job, settings):
    bad = JobSpec(**{**job.__dict__, "arguments": ("${{inputs.missing}}",)})
    with pytest.raises(ToolkitError, match="input 'missing'"):
        local_request.local_request(bad, "img", settings)


def test_script_excluded_by_amlignore_is_refused(job, settings, source):
    (source / ".amlignore").write_text("train/\n")
    with pytest.raises(ToolkitError, match="excluded from the snapshot"):
        local_request.local_request(job, "img", settings)


def test_describe_masks_secrets(job, settings):
    env = local_request.describe(local_request.local_request(job, "img", settings))["containers"][0]["environment"]
    assert env["MY_API_KEY"] == "****" and env["FOO"] == "bar"
    assert masking.mask("DB_URL", "https://u:p@host/x") == "https://****@host/x"


def test_run_ids_look_like_azure_mls_and_are_unique():
    a, b = local_request.new_run_id("fowl transfer"), local_request.new_run_id("fowl transfer")
    assert a != b
    name, stamp, suffix = a.split("_")
    assert name == "fowl-transfer" and stamp.isdigit() and len(suffix) == 8


def test_gpus_and_the_run_cache_reach_the_request(job, settings, tmp_path):
    cached = LocalSettings(runs_dir=settings.runs_dir, user="1000:1000", gpus=("0,1",), cache_dir=tmp_path / "cache")
    request = local_request.local_request(job, "img", cached)
    container = request.containers[0]
    assert container.gpus == "0,1" and request.cache_dir == tmp_path / "cache"
    assert Mount(str(tmp_path / "cache"), "/mnt/azureml/cache") in container.mounts
    assert container.environment["AMLTRAIN_CACHE_DIR"] == "/mnt/azureml/cache"
    assert container.environment["TORCH_HOME"] == "/mnt/azureml/cache/torch"
    assert local_request.describe(request)["containers"][0]["gpus"] == "0,1"


@pytest.mark.parametrize("name, value", [
    ("STORAGE_CONNECTION_STRING", "x"),
    ("BLOB", "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=abc=="),
    ("URL", "https://a.blob.core.windows.net/c?sv=2024&sig=abc"),
    ("HF_AUTH", "x"),
])
def test_secret_looking_values_are_masked(name, value):
    assert masking.mask(name, value) == "****"


def test_secret_looking_options_in_a_command_are_masked_when_printed():
    assert masking.mask_words(["python", "x.py", "--hf-token", "abc", "--api-key=def", "--lr", "0.1",
                                "https://u:p@host/x"]) == \
        ["python", "x.py", "--hf-token", "****", "--api-key=****", "--lr", "0.1", "https://****@host/x"]


def test_a_secret_inside_the_sh_c_word_is_masked_where_the_request_is_printed_and_recorded(job, settings):
    command = replace(job, script="", command="torchrun x.py --hf-token s3cr3t --data 'a b' HF_TOKEN=s3cr3t",
                      distribution=Distribution("per-node", 2, 1))
    # also request.json's body
    described = local_request.describe(local_request.local_request(command, "img", settings))
    assert "s3cr3t" not in json.dumps(described)
    sh_c = described["containers"][0]["processes"][0]["command"]
    assert sh_c == ["/bin/sh", "-c", "torchrun x.py --hf-token **** --data 'a b' HF_TOKEN=****"]
    mpi_command = replace(command, distribution=Distribution("mpi", 2, 1))
    mpi = local_request.describe(local_request.local_request(mpi_command, "img", settings))
    assert "s3cr3t" not in json.dumps(mpi)


@pytest.mark.parametrize("line, shown", [
    ("a --token 'x y' b", "a --token **** b"),  # a quoted value is one word
    ("a --token\t\"x\\\" y\"  b", "a --token\t****  b"),  # spacing kept
    ("API_KEY=x ./run --password=y", "API_KEY=**** ./run --password=****"),
    ("echo 'unbalanced --token z", "echo 'unbalanced --token ****"),
])
def test_shell_lines_are_masked_word_by_word_quotes_respected(line, shown):
    assert masking.mask_command(line) == shown


def test_error_lines_are_masked_and_cut_between_words():
    line = masking.error_line("input 'MY-TOKEN=abc' at /w/https:/u:p@host/d " + "word " * 400)
    assert line.startswith("error: input 'MY-TOKEN=****' at /w/https:/****@host/d word")
    assert line.endswith(" word …") and len(line) <= masking.ERROR_LINE_LIMIT + 10
    assert masking.error_line("image a/b:c@sha256:0123") == "error: image a/b:c@sha256:0123"  # a digest is no secret


def test_the_debugged_rank_runs_under_debugpy_with_its_port_on_localhost_only(job, settings, tmp_path):
    request = local_request.local_request(distributed(job, "per-process", 2, 2), "img", settings, run_id="fowl_1_ab",
                                          debug_rank=3, debugpy_dir="/host/site-packages/debugpy")
    node0, node1 = request.containers
    assert node0.ports == () and Mount("/host/site-packages/debugpy", "/mnt/azureml/debugpy", True) not in node0.mounts
    assert node1.ports == (("5678/tcp", "127.0.0.1", 5678),)
    assert Mount("/host/site-packages/debugpy", "/mnt/azureml/debugpy", read_only=True) in node1.mounts
    plan = json.loads(node1.plan)
    normal, debugged = plan["processes"]
    assert "command" not in normal and normal["rank"] == 2
    assert debugged["rank"] == 3 and debugged["command"] == [
        "python", "/mnt/azureml/debugpy", "--listen", "0.0.0.0:5678", "--wait-for-client",
        "train/job.py", "--data-dir", "/mnt/azureml/inputs/data", "--lr", "0.1"]
    described = local_request.describe(request)["containers"][1]
    assert described["ports"] == ["127.0.0.1:5678->5678/tcp"]
    assert described["processes"][1]["command"][:2] == ["python", "/mnt/azureml/debugpy"]


@pytest.mark.parametrize("launch, command, rank, words", [
    ("mpi", "", 0, "not mpi"), ("per-node", "torchrun x.py", 0, "not per-node with --command"),
    ("per-process", "", 4, "ranks 0 to 3"), ("per-process", "python x.py", 0, "with --command")])
def test_a_rank_that_cannot_be_debugged_is_refused_in_one_line(job, settings, launch, command, rank, words):
    with pytest.raises(ToolkitError, match=words):
        local_request.local_request(distributed(job, launch, 2, 2, command), "img", settings, debug_rank=rank,
                                    debugpy_dir="/d")


def test_every_node_mounts_the_same_checkpoint_folder_at_the_same_path(job, settings, tmp_path):
    request = local_request.local_request(replace(job, distribution=Distribution(nodes=2)), "img", settings,
                                          run_id="fowl_1_ab")
    for c in request.containers:
        assert Mount(str(tmp_path / "runs/fowl_1_ab/checkpoints"), "/mnt/azureml/checkpoints") in c.mounts
        assert c.environment["AMLTRAIN_CHECKPOINT_DIR"] == "/mnt/azureml/checkpoints"
    assert request.checkpoint_dir == tmp_path / "runs/fowl_1_ab/checkpoints" and request.preemption is None


def test_resume_mounts_the_named_runs_checkpoints_and_a_run_without_them_is_refused(job, settings, tmp_path):
    with pytest.raises(ToolkitError, match="--resume fowl_0_old: no checkpoint folder"):
        local_request.local_request(job, "img", settings, run_id="fowl_1_ab", resume="fowl_0_old")
    (tmp_path / "runs/fowl_0_old/checkpoints").mkdir(parents=True)
    request = local_request.local_request(job, "img", settings, run_id="fowl_1_ab", resume="fowl_0_old")
    (container,) = request.containers
    assert Mount(str(tmp_path / "runs/fowl_0_old/checkpoints"), "/mnt/azureml/checkpoints") in container.mounts
    assert local_request.describe(request)["checkpoints"] == {
        "folder": str(tmp_path / "runs/fowl_0_old/checkpoints"), "mounted_at": "/mnt/azureml/checkpoints",
        "resumed_from": "fowl_0_old"}


def test_the_drill_gives_the_launcher_its_grace_and_shows_in_the_dry_run(job, settings):
    drill = Preemption(after_s=60, restarts=2, grace_s=30)
    request = local_request.local_request(job, "img", settings, run_id="fowl_1_ab", preemption=drill)
    assert json.loads(request.containers[0].plan)["grace_s"] == 30 and request.grace_s == 30
    assert local_request.describe(request)["preemption"] == {"after_s": 60, "restarts": 2, "grace_s": 30}


@pytest.mark.parametrize(("after", "restarts", "grace", "message"), [
    (None, "2", None, "--restarts and --grace belong to the preemption drill"),
    ("0", None, None, "--preempt-after must be a number of at least 0.1"),
    ("abc", None, None, "--preempt-after must be a number"),
    ("10", "-1", None, "--restarts must be a whole number"),
    ("10", None, "-5", "--grace must be a number of at least 0"),
])
def test_bad_drill_options_are_one_line(after, restarts, grace, message):
    with pytest.raises(ToolkitError, match=message):
        config.preemption(after, restarts, grace)


def test_drill_defaults_one_restart_and_azures_30_s_grace():
    assert config.preemption("45", None, None) == Preemption(after_s=45.0, restarts=1, grace_s=30.0)
    assert config.preemption(None, None, None) is None
