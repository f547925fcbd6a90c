"""Launching a job's workers on this host: where this host sits (topology), and
PyTorch's elastic agent (torchrun's engine) starting `nproc_per_node` workers.

Topology comes from resourceconfig.json on SageMaker (the first host in sorted order
is the master), from flags or MASTER_ADDR/MASTER_PORT/NNODES/NODE_RANK on EC2 or
plain docker, and defaults to one host. A process that a launcher already started
(RANK/WORLD_SIZE set: torchrun, a PyTorchJob) is one worker and launches nothing.
Each worker then joins the job through train.distributed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import torch.distributed.elastic.rendezvous.registry as rendezvous_registry
from torch.distributed.elastic.agent.server.api import WorkerSpec
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, ProcessFailure, SignalException
from torch.distributed.elastic.rendezvous import RendezvousParameters

from container import EXIT_STOPPED, ConfigError, ResourceConfig, cpu_count
from train.config import TrainConfig
from train.distributed import wait_for_host

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topology:
    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str
    master_port: int
    socket_ifname: str | None = None
    host_name: str = "localhost"

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def plan_topology(config: TrainConfig, resource: ResourceConfig | None, environ: Mapping[str, str], gpu_count: int) -> Topology:
    nproc = config.nproc_per_node or max(1, gpu_count)
    if gpu_count and nproc > gpu_count:
        raise ConfigError(f"nproc_per_node={nproc}, but only {gpu_count} GPU(s) are visible: one process per GPU at most (or device=cpu)")
    # An explicit --master-port wins; otherwise MASTER_PORT from the environment.
    default_port = TrainConfig.__dataclass_fields__["master_port"].default
    port = config.master_port if config.master_port != default_port else int(environ.get("MASTER_PORT", default_port))
    if resource is not None and len(resource.hosts) > 1 and not config.nnodes:
        return Topology(
            nnodes=len(resource.hosts),
            node_rank=resource.host_rank,
            nproc_per_node=nproc,
            master_addr=resource.master_host,
            master_port=port,
            socket_ifname=resource.network_interface_name,
            host_name=resource.current_host,
        )
    nnodes = config.nnodes or int(environ.get("NNODES", "1"))
    node_rank = config.node_rank if config.node_rank >= 0 else int(environ.get("NODE_RANK", "0"))
    master = config.master_addr or environ.get("MASTER_ADDR")
    if nnodes > 1 and not master:
        raise ConfigError(f"nnodes={nnodes} needs master_addr (or MASTER_ADDR): the address of the node_rank 0 host")
    if not 0 <= node_rank < nnodes:
        raise ConfigError(f"node_rank={node_rank}: must be in [0, nnodes={nnodes})")
    host = resource.current_host if resource is not None else socket.gethostname()
    return Topology(nnodes, node_rank, nproc, master or "127.0.0.1", port, environ.get("SOCKET_IFNAME"), host)


def started_by_launcher(environ: Mapping[str, str]) -> bool:
    """Whether a launcher already made this process one worker of a job: torchrun (ours
    below, a user's, SDK 3's Torchrun driver, HyperPod) or a Kubernetes PyTorchJob, which
    sets RANK/WORLD_SIZE per pod. Such a process trains and never launches more."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return False
    # A PyTorchJob with nprocPerNode > 1 sets RANK per pod and expects torchrun to start
    # the pod's processes (it reads the PET_* variables); one process would hang alone.
    per_pod = environ.get("PET_NPROC_PER_NODE", "1")
    if "LOCAL_RANK" not in environ and per_pod.isdigit() and int(per_pod) > 1:
        raise ConfigError(
            f"PET_NPROC_PER_NODE={per_pod} asks for {per_pod} processes per pod: start the "
            "container with `torchrun -m train.cli` (torchrun reads PET_*), not `train`"
        )
    return True


@dataclass(frozen=True)
class LaunchResult:
    exit_code: int
    stopped: bool = False  # every worker stopped on request (SIGTERM) after saving
    failure: str | None = None  # the root cause, for /opt/ml/output/failure


# A worker that stopped on request: it exited 143 after saving, or the launcher's
# SIGTERM ended it in interpreter shutdown after that (killed by the signal: -15).
_STOP_CODES = (EXIT_STOPPED, -signal.SIGTERM)
# SageMaker sends SIGKILL about 120 s after SIGTERM; torchelastic's own grace is 30 s,
# too short for one step plus a large checkpoint.
STOP_GRACE_S = 100


class _Agent(LocalElasticAgent):
    """torchrun's agent with two changes for a trainer that checkpoints on SIGTERM: a
    group whose workers all *stopped* on request is not restarted (a stop is not a
    crash), and workers get STOP_GRACE_S to save before they are killed."""

    def _monitor_workers(self, worker_group):
        result = super()._monitor_workers(worker_group)
        if result.is_failed() and all(f.exitcode in _STOP_CODES for f in result.failures.values()):
            self._remaining_restarts = 0
        return result

    def _shutdown(self, death_sig: signal.Signals = signal.SIGTERM) -> None:
        if self._pcontext:
            self._pcontext.close(death_sig, timeout=STOP_GRACE_S)
        super()._shutdown(death_sig)  # watchdogs; the processes are gone by now


def launch(topology: Topology, worker_argv: list[str], max_restarts: int, timeout_s: int) -> LaunchResult:
    """Run `python worker_argv...` as nproc_per_node workers on this host under
    PyTorch's elastic agent (the engine of torchrun), with torchrun's static rendezvous
    on master_addr:master_port: node ranks are fixed by the topology, so rank 0 is on the
    master host. A failed worker stops the others on this host (their peers elsewhere
    fail their next collective); with max_restarts the group restarts from the last
    checkpoint instead. SIGTERM/SIGINT reach every worker."""
    for name, value in worker_environment(topology).items():
        os.environ.setdefault(name, value)  # inherited by the workers; the user's settings win
    if topology.nnodes > 1:
        wait_for_host(topology.master_addr, timeout_s)
    rendezvous = RendezvousParameters(
        backend="static",
        endpoint=f"{topology.master_addr}:{topology.master_port}",
        run_id="sagemaker-vision",  # the same on every host: it prefixes the shared store's keys
        min_nodes=topology.nnodes,
        max_nodes=topology.nnodes,
        rank=topology.node_rank,
        timeout=timeout_s,
    )
    spec = WorkerSpec(
        role="trainer",
        local_world_size=topology.nproc_per_node,
        entrypoint=sys.executable,
        args=tuple(worker_argv),
        rdzv_handler=rendezvous_registry.get_rendezvous_handler(rendezvous),
        max_restarts=max_restarts,
        master_addr=topology.master_addr,
        master_port=topology.master_port,
    )
    agent = _Agent(spec, DefaultLogsSpecs(), exit_barrier_timeout=timeout_s)
    log.info(
        "launched %d processes on host %s (node %d of %d, world size %d, master %s:%d, max_restarts %d)",
        topology.nproc_per_node,
        topology.host_name,
        topology.node_rank,
        topology.nnodes,
        topology.world_size,
        topology.master_addr,
        topology.master_port,
        max_restarts,
    )
    # The agent installs its own signal handlers; a caller (a test, a notebook) gets its back.
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    try:
        result = agent.run()
    except SignalException as stop:
        # The agent has already passed the signal on and waited for the workers to save.
        log.warning("%s received: the workers were asked to save a checkpoint and stop", signal.Signals(stop.sigval).name)
        return LaunchResult(EXIT_STOPPED, stopped=True)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not result.is_failed():
        return LaunchResult(0)
    return summarize_failures(result.failures, topology.host_name)


def summarize_failures(failures: Mapping[int, ProcessFailure], host: str) -> LaunchResult:
    """The exit code and failure text of a failed group: the first real failure (the
    others are usually its echo: peers that lost it, workers the agent then stopped),
    with the worker's own error message from its torchelastic error file."""
    real = {rank: f for rank, f in failures.items() if f.exitcode not in _STOP_CODES}
    if not real:
        return LaunchResult(EXIT_STOPPED, stopped=True)
    first = min(f.timestamp for f in real.values())

    def order(rank: int) -> tuple:
        # A worker killed by a signal (the OOM killer's SIGKILL, a segfault) leaves no error
        # file, and its peers fail on the broken connection before the agent notices the
        # death: a death within a few seconds of the first error is taken as its cause.
        f = real[rank]
        return (not (f.exitcode < 0 and f.timestamp - first <= 3), f.timestamp, rank)

    rank = min(real, key=order)
    failure = real[rank]
    message = failure.message["message"] if isinstance(failure.message, dict) else failure.message
    code = _exit_code(failure.exitcode)
    return LaunchResult(code, failure=f"rank {rank} on host {host} failed with exit code {code}: {message}")


def _exit_code(code: int) -> int:
    # The agent reports "killed by signal N" as -N; a shell would say 128 + N.
    return 128 - code if code < 0 else code


def worker_environment(topology: Topology) -> dict[str, str]:
    """What the workers need beyond torchrun's RANK/WORLD_SIZE/MASTER_ADDR...:
    the host name for messages, threads per process, and NIC pinning."""
    env = {
        "SM_VISION_HOST": topology.host_name,
        # Threads per process: the cores split between the local processes.
        "OMP_NUM_THREADS": str(max(1, cpu_count() // topology.nproc_per_node)),
        # g4dn and most SageMaker hosts have no InfiniBand: probing for it only costs time.
        "NCCL_IB_DISABLE": "1",
    }
    if topology.socket_ifname:
        # Hosts also have docker0/lo: pin NCCL and gloo to the job's NIC.
        env["NCCL_SOCKET_IFNAME"] = topology.socket_ifname
        env["GLOO_SOCKET_IFNAME"] = topology.socket_ifname
    return env
