"""One process of a training job: joining the process group, and the few collectives
the trainer uses. Everything after `init_distributed` asks the `Process` it returns
(`process.is_main`, `process.device`); a single process (no launcher) is a job of one,
and every collective is then a no-op.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist


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


@dataclass(frozen=True)
class Process:
    """This process's place in the job: its rank, its device, and the job's size."""

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


def init_distributed(device: torch.device, timeout_s: int, environ: Mapping[str, str] | None = None) -> Process:
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
        return Process(rank, local_rank, world_size, device, host, control)
    return Process(rank, local_rank, world_size, device, host)


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


def all_reduce_sum(tensor: torch.Tensor, process: Process) -> torch.Tensor:
    if process.distributed:
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, process: Process) -> bool:
    """True on every rank when it is true on any: a SIGTERM reaches hosts (and the
    processes of one host) at different moments, so each rank voting alone would leave
    some in a collective that the others have left."""
    return any_ranks((flag,), process)[0]


def any_ranks(flags: tuple[bool, ...], process: Process) -> tuple[bool, ...]:
    """`any_rank` of several flags in one collective."""
    if not process.distributed:
        return tuple(flags)
    votes = torch.tensor([int(flag) for flag in flags], dtype=torch.int32)
    torch_dist.all_reduce(votes, op=torch_dist.ReduceOp.MAX, group=process.control_group)
    return tuple(bool(vote) for vote in votes.tolist())


def broadcast_from_main(obj, process: Process):
    """Rank 0's Python object on every rank (checkpoint state on resume)."""
    if not process.distributed:
        return obj
    holder = [obj if process.is_main else None]
    torch_dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather_objects(obj, process: Process) -> list:
    """Every rank's Python object, in rank order, on every rank (over the CPU control
    group: multi-label evaluation gathers every image's scores this way)."""
    if not process.distributed:
        return [obj]
    gathered = [None] * process.world_size
    torch_dist.all_gather_object(gathered, obj, group=process.control_group)
    return gathered


def barrier(process: Process) -> None:
    if process.distributed:
        torch_dist.barrier()


def cleanup(process: Process | None) -> None:
    if process is not None and process.distributed and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
