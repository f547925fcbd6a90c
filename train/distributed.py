"""Distributed set-up, in one place: where this host sits (topology), the in-image
launcher that starts one process per GPU, and per-process initialisation.

Topology comes from resourceconfig.json on SageMaker (the first host in sorted order
is the master), from flags or MASTER_ADDR/MASTER_PORT/NNODES/NODE_RANK on EC2 or
plain docker, and defaults to one host. Everything after init only asks
`dist_info.is_main`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist

from container import ConfigError, ResourceConfig
from train.config import TrainConfig

log = logging.getLogger(__name__)

CONFIG_ENV_VAR = "SM_VISION_TRAIN_CONFIG"  # the launcher hands workers the resolved config


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


def launch(topology: Topology, config_dict: dict) -> int:
    """Run nproc_per_node worker processes on this host; forward SIGTERM/SIGINT to them;
    if one fails, stop the rest (they would otherwise block in a collective)."""
    env = dict(os.environ)
    env.update(
        {
            CONFIG_ENV_VAR: json.dumps(config_dict),
            "MASTER_ADDR": topology.master_addr,
            "MASTER_PORT": str(topology.master_port),
            "WORLD_SIZE": str(topology.world_size),
            "LOCAL_WORLD_SIZE": str(topology.nproc_per_node),
            "NODE_RANK": str(topology.node_rank),
            "SM_VISION_HOST": topology.host_name,
            # Threads per process: the cores split between the local processes.
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // topology.nproc_per_node)),
        }
    )
    if topology.socket_ifname:
        # g4dn and most SageMaker hosts have no InfiniBand: pin sockets to the job's NIC.
        env.setdefault("NCCL_SOCKET_IFNAME", topology.socket_ifname)
        env.setdefault("GLOO_SOCKET_IFNAME", topology.socket_ifname)
    env.setdefault("NCCL_IB_DISABLE", "1")
    workers = []
    for local_rank in range(topology.nproc_per_node):
        rank = topology.node_rank * topology.nproc_per_node + local_rank
        worker_env = dict(env, RANK=str(rank), LOCAL_RANK=str(local_rank))
        workers.append(subprocess.Popen([sys.executable, "-m", "train.worker"], env=worker_env))
    log.info(
        "launched %d processes on host %s (node %d of %d, world size %d, master %s:%d)",
        len(workers),
        topology.host_name,
        topology.node_rank,
        topology.nnodes,
        topology.world_size,
        topology.master_addr,
        topology.master_port,
    )

    def forward(signum, _frame):
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _wait_all(workers)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


EXIT_STOPPED = 143  # a worker that saved a checkpoint after SIGTERM (train.cli.EXIT_STOPPED)


def _exit_code(code: int | None) -> int | None:
    # Popen reports "killed by signal N" as -N; a shell would say 128 + N.
    return 128 - code if code is not None and code < 0 else code


def _wait_all(workers, grace_s: float = 30) -> int:
    failed_at = None
    while True:
        codes = [_exit_code(w.poll()) for w in workers]
        if all(code is not None for code in codes):
            break
        # A worker that stopped on SIGTERM is no failure: its peers got the same signal
        # and are saving. Signalling them again would kill one that is already past its
        # handler (interpreter shutdown) and turn a clean stop into a crash.
        if failed_at is None and any(code not in (None, 0, EXIT_STOPPED) for code in codes):
            failed_at = time.monotonic()
            for w in workers:
                if w.poll() is None:
                    w.send_signal(signal.SIGTERM)
        if failed_at is not None and time.monotonic() - failed_at > grace_s:
            for w in workers:
                if w.poll() is None:
                    w.kill()
        time.sleep(0.2)
    # The first real failure is the cause (later ones are usually its echo); else a stop.
    failures = [code for code in codes if code not in (0, EXIT_STOPPED)]
    return failures[0] if failures else max(codes)


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
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )
        control = torch_dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s)) if device.type == "cuda" else None
        return DistInfo(rank, local_rank, world_size, device, host, control)
    return DistInfo(rank, local_rank, world_size, device, host)


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
