"""Distributed set-up, in one place: where this host sits (topology), launching the
workers with PyTorch's elastic agent (torchrun's engine), and per-process initialisation.

Topology comes from resourceconfig.json on SageMaker (the first host in sorted order
is the master), from flags or MASTER_ADDR/MASTER_PORT/NNODES/NODE_RANK on EC2 or
plain docker, and defaults to one host. A process that a launcher already started
(RANK/WORLD_SIZE set: torchrun, a PyTorchJob) is one worker and launches nothing.
Everything after init only asks `dist_info.is_main`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist
import torch.distributed.elastic.rendezvous.registry as rendezvous_registry
from torch.distributed.elastic.agent.server.api import WorkerSpec
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, ProcessFailure, SignalException
from torch.distributed.elastic.rendezvous import RendezvousParameters

from container import EXIT_STOPPED, ConfigError, ResourceConfig, cpu_count
from train.config import TrainConfig

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


def wait_for_host(host: str, timeout_s: float) -> None:
    """Peers' DNS names appear with a delay on SageMaker; retry instead of failing."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.getaddrinfo(host, None)
            return
        except socket.gaierror as err:
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot resolve master host {host!r} after {timeout_s:.0f} s: {err}") from None
            time.sleep(1)


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


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    host: str
    # A CPU (gloo) group for small control messages such as the stop vote, so they
    # never wait on the GPU stream; None means the default group (already gloo on CPU).
    control_group: object = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device, timeout_s: int, environ: Mapping[str, str] | None = None) -> DistInfo:
    """Join the process group when the launcher set RANK/WORLD_SIZE; otherwise a
    single process. CUDA processes take the GPU of their local rank."""
    environ = os.environ if environ is None else environ
    world_size = int(environ.get("WORLD_SIZE", "1"))
    rank = int(environ.get("RANK", "0"))
    local_rank = int(environ.get("LOCAL_RANK", "0"))
    host = environ.get("SM_VISION_HOST", socket.gethostname())
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world_size > 1:
        wait_for_host(environ["MASTER_ADDR"], timeout_s)
        torch_dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
            **_rendezvous_store(environ, world_size, timeout_s),
        )
        control = torch_dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s)) if device.type == "cuda" else None
        return DistInfo(rank, local_rank, world_size, device, host, control)
    return DistInfo(rank, local_rank, world_size, device, host)


def _rendezvous_store(environ: Mapping[str, str], world_size: int, timeout_s: int) -> dict:
    """How init_process_group meets the other ranks: MASTER_ADDR/MASTER_PORT (env://), and
    under torchelastic the agent's store there, with one key prefix per attempt. The
    agent keeps its store across restarts, but torch >= 2.4 no longer prefixes the keys
    per attempt, so a restarted group would read the dead workers' addresses."""
    if environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {"init_method": "env://"}
    agent_store = torch_dist.TCPStore(
        environ["MASTER_ADDR"], int(environ["MASTER_PORT"]), world_size, is_master=False, timeout=timedelta(seconds=timeout_s)
    )
    attempt = environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {"store": torch_dist.PrefixStore(f"/worker/attempt_{attempt}", agent_store)}


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when it is true on any: a SIGTERM reaches hosts (and the
    processes of one host) at different moments, so each rank voting alone would leave
    some in a collective that the others have left."""
    if not info.distributed:
        return flag
    vote = torch.tensor([int(flag)], dtype=torch.int32)
    torch_dist.all_reduce(vote, op=torch_dist.ReduceOp.MAX, group=info.control_group)
    return bool(vote.item())


def broadcast_from_main(obj, info: DistInfo):
    """Rank 0's Python object on every rank (checkpoint state on resume)."""
    if not info.distributed:
        return obj
    holder = [obj if info.is_main else None]
    torch_dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier(info: DistInfo) -> None:
    if info.distributed:
        torch_dist.barrier()


def cleanup(info: DistInfo | None) -> None:
    if info is not None and info.distributed and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
