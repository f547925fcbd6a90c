import pytest

from container import ConfigError, ResourceConfig
from train.config import TrainConfig
from train.launcher import plan_topology


def test_single_host_defaults():
    topology = plan_topology(TrainConfig(), None, {}, gpu_count=0)
    assert (topology.nnodes, topology.nproc_per_node, topology.world_size) == (1, 1, 1)


def test_one_process_per_gpu():
    assert plan_topology(TrainConfig(), None, {}, gpu_count=4).nproc_per_node == 4


def test_sagemaker_hosts_from_resourceconfig():
    resource = ResourceConfig("algo-2", ("algo-2", "algo-1", "algo-3"), "eth0")
    topology = plan_topology(TrainConfig(), resource, {}, gpu_count=1)
    assert (topology.nnodes, topology.node_rank, topology.master_addr, topology.socket_ifname) == (3, 1, "algo-1", "eth0")


def test_ec2_hosts_from_env_and_flags():
    topology = plan_topology(TrainConfig(), None, {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "23456"}, 0)
    assert (topology.nnodes, topology.node_rank, topology.master_addr, topology.master_port) == (2, 1, "10.0.0.5", 23456)
    topology = plan_topology(TrainConfig(nnodes=2, node_rank=0, master_addr="h0", nproc_per_node=2), None, {}, 0)
    assert (topology.world_size, topology.master_addr) == (4, "h0")


def test_many_nodes_need_a_master():
    with pytest.raises(ConfigError, match="master_addr"):
        plan_topology(TrainConfig(nnodes=2), None, {}, 0)


def test_more_processes_than_gpus_is_refused():
    with pytest.raises(ConfigError, match="nproc_per_node=2, but only 1 GPU"):
        plan_topology(TrainConfig(nproc_per_node=2), None, {}, gpu_count=1)
