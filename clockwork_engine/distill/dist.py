"""torchrun support for the trainers: DistributedDataParallel over gloo (works on CPU).

Run with `torchrun --nproc_per_node 2 -m clockwork_engine.distill.guidance ...`; without
torchrun's environment everything is a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    # Each rank gets its share of the cores.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    return Dist(dist.get_rank(), world)


def wrap(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    if d.world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model)


def barrier(d: Dist):
    if d.world > 1:
        dist.barrier()


def cleanup(d: Dist):
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
