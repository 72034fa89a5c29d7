"""torch.distributed as the trainer uses it: started by `torchrun` (the engine everyone
uses; no home-made launcher), NCCL on GPUs, gloo on the CPU.

    torchrun --nproc-per-node 4 -m core run pipeline.yaml

Outside torchrun every helper here is a no-op for one process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device_type: str) -> Dist:
    """Join the process group torchrun describes in the environment (idempotent)."""
    if not launched_by_torchrun():
        return Dist()
    info = Dist(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    if info.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return info


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank `src`'s `value` on every rank (run folders, metrics)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    if not active():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def any_true(flag: torch.Tensor) -> bool:
    """Whether `flag` (a bool tensor) is true on any rank: all ranks decide alike."""
    if active():
        flag = flag.to(torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag)


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous [start, stop) of `n` items for `rank`, sizes differing by at most one."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def gather_uneven(local: torch.Tensor) -> torch.Tensor:
    """Every process's rows concatenated in rank order, when processes hold different
    numbers of rows (e.g. a loss's batch features for a memory that must stay equal on
    every process); the tensor itself outside DDP. One all_gather of the sizes, one of
    the rows padded to the longest."""
    if not active():
        return local
    size = torch.tensor([local.shape[0]], device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return _gather_padded(local, [int(s.item()) for s in sizes])


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's contiguous shard (see `shard_range`) in rank order, so
    the result is in dataset order: all ranks get the full (n, ...) tensor."""
    if not active():
        return local
    world = dist.get_world_size()
    return _gather_padded(local, [stop - start for start, stop in (shard_range(n, r, world) for r in range(world))])


def _gather_padded(local: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """all_gather of `local` padded to the longest of every rank's row `counts`, the
    padding cut off again."""
    padded = torch.zeros((max(counts), *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)])
