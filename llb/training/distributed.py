"""Multi-process training with DistributedDataParallel, as `torchrun` launches it.

torchrun starts one process per device and tells each its place through the environment: RANK (0..WORLD_SIZE-1
over all nodes), WORLD_SIZE and LOCAL_RANK (the device index on its node), with MASTER_ADDR/MASTER_PORT for the
rendezvous. Without WORLD_SIZE (or with one process) training runs as a plain process: no process group is made.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Rank 0 validates, saves and exports while the other ranks wait in their next collective; the default NCCL
# timeout (10 minutes) could end a run during a long validation.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        """The place torchrun gave this process, read from RANK, WORLD_SIZE and LOCAL_RANK."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def enabled(self) -> bool:
        """Several processes train together (a process group exists)."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder, shows progress and validates."""
        return self.rank == 0

    def device_for(self, device: torch.device) -> torch.device:
        """The device of this process: with several processes, CUDA means the GPU numbered LOCAL_RANK."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        """Wait for every process (a no-op in a single process)."""
        if self.enabled:
            dist.barrier()

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """Each value averaged over the processes, e.g. the loss of the whole (all ranks') batch."""
        if not self.enabled:
            return values
        total = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return dict(zip(values, (total / self.world).tolist(), strict=True))


SINGLE_PROCESS = Distributed()


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Distributed]:
    """This process's place, inside a process group when torchrun started several (NCCL on CUDA, gloo on the
    CPU); the group is destroyed on the way out, also after an error."""
    place = Distributed.from_env()
    if not place.enabled:
        yield place
        return
    device = place.device_for(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
    try:
        yield place
    finally:
        dist.destroy_process_group()
