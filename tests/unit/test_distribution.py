"""Launch modes and GPU placement: refused before anything starts, in Azure ML's words."""

import pytest

from amltrain import config
from amltrain.errors import ToolkitError
from amltrain.spec import Distribution
from tests.conftest import ROOT, load_config


def job(**options):
    return config.job_spec(load_config(), ROOT, **options)


def test_defaults_are_one_process():
    d = job().distribution
    assert d == Distribution("per-process", 1, 1) and d.single_process and d.world_size == 1


def test_options_win_over_the_configuration():
    cfg = load_config({"job": {"distribution": {"launch": "mpi", "nodes": 4, "procs_per_node": 8}}})
    assert config.job_spec(cfg, ROOT).distribution == Distribution("mpi", 4, 8)
    assert config.job_spec(cfg, ROOT, nodes="2", procs_per_node="1", launch="per-process").distribution == \
        Distribution("per-process", 2, 1)


@pytest.mark.parametrize("options, message", [
    ({"nodes": "0"}, "nodes must be a whole number of at least 1, got '0'"),
    ({"procs_per_node": "-1"}, "procs-per-node must be a whole number of at least 1, got '-1'"),
    ({"nodes": "two"}, "nodes must be a whole number"),
    ({"launch": "ring"}, "unknown launch mode 'ring'"),
    ({"launch": "per-node"}, "--launch per-node starts your --command once per node, and no command was given"),
])
def test_bad_shapes_are_refused(options, message):
    with pytest.raises(ToolkitError, match=message):
        job(**options)


def test_a_command_replaces_the_script():
    spec = job(command="torchrun --nnodes 2 x.py", launch="per-node", nodes="2")
    assert spec.command == "torchrun --nnodes 2 x.py" and spec.script == ""
    assert spec.distribution == Distribution("per-node", 2, 1)


def test_per_node_counts_the_processes_torchrun_starts():
    for command in ("torchrun --nproc_per_node 4 --nnodes 2 x.py", "torchrun --nproc-per-node=4 x.py"):
        assert job(command=command, launch="per-node", nodes="2").distribution == Distribution("per-node", 2, 4)
    with pytest.raises(ToolkitError, match="--procs-per-node 2 but the command starts 4 processes per node"):
        job(command="torchrun --nproc_per_node 4 x.py", launch="per-node", procs_per_node="2")


def test_cpu_runs_get_no_gpus_and_never_ask_the_host():
    def no_probe():
        raise AssertionError("nvidia-smi should not run")

    assert config.node_gpus("", Distribution("per-process", 2, 4), no_probe) == ("", "")


def test_each_node_gets_its_own_gpus():
    assert config.node_gpus("all", Distribution("per-process", 2, 2), lambda: 4) == ("0,1", "2,3")
    assert config.node_gpus("all", Distribution("per-process", 2, 1), lambda: 8) == ("0,1,2,3", "4,5,6,7")
    assert config.node_gpus("4,5,6,7", Distribution("mpi", 2, 2), lambda: 8) == ("4,5", "6,7")
    assert config.node_gpus("all", Distribution(), lambda: 0) == ("all",)


@pytest.mark.parametrize("gpus, d, host, message", [
    ("0,0", Distribution("per-process", 1, 2), 4, "names a GPU twice"),
    ("2,3", Distribution("per-process", 1, 2), 2, "this host has 2 GPU"),
    ("all", Distribution("per-process", 1, 2), 1, "2 processes per node need 2 GPUs per node, but 1 GPU"),
    ("all", Distribution("per-process", 2, 1), 1, r"1 GPU\(s\) over 2 node\(s\) give 0 each"),
    ("0,1", Distribution("per-node", 1, 4), 8, "4 processes per node need 4 GPUs"),
])
def test_more_processes_than_gpus_is_refused_before_anything_starts(gpus, d, host, message):
    with pytest.raises(ToolkitError, match=message):
        config.node_gpus(gpus, d, lambda: host)
