"""What this machine gives a server process, asked once at start-up: the device, its
share of the CPUs, the container's memory (container.Machine). ServeConfig.resolve
turns these facts into settings; `share_cores` applies the one process-wide choice
that follows from them (torch's intra-op threads).

torch is imported inside the functions that need it, so importing this module stays
cheap for tools that only read the config.
"""

from __future__ import annotations

import logging

from container import ServeConfig, cpu_count
from container.serving import Machine, container_memory_bytes

log = logging.getLogger("serve")


def probe(config: ServeConfig, processes: int = 1, worker_index: int = 0, gpu: int | None = None) -> Machine:
    """This process's machine. `processes` server processes share it; worker `worker_index`
    of them takes GPU worker_index mod the GPU count (or `gpu` when the caller was given
    one, as MMS gives each worker)."""
    import torch

    from vision.devices import select_device

    if gpu is not None and torch.cuda.is_available():
        device = torch.device("cuda", gpu)
    else:
        device = select_device(config.device)
        if device.type == "cuda" and processes > 1 and torch.cuda.device_count() > 1:
            device = torch.device("cuda", worker_index % torch.cuda.device_count())  # one GPU per worker, round robin
    return Machine(device=str(device), cpus=max(1, cpu_count() // processes), memory_bytes=container_memory_bytes(), processes=processes)


def share_cores(config: ServeConfig, machine: Machine) -> None:
    """On CPU each concurrent forward gets its share of the cores, so they do not
    oversubscribe (forwards scale better across requests than across intra-op threads,
    which stall whenever decoding takes a core from one of them)."""
    if config.device == "cpu":
        import torch

        torch.set_num_threads(machine.torch_threads(config.workers))
