"""Several processes (torchrun) training one model: process group set-up and gathering the
embeddings of every rank, with gradients, so that N ranks with batch B compute exactly the loss
of one process with batch N x B (the contrastive negatives come from the whole global batch).

Gradient bookkeeping: every rank computes the same loss L on the gathered batch. The backward of
`all_gather` sums the gradients that all ranks send to a rank's own rows, giving N dL/dz_r; DDP
then averages parameter gradients over the N ranks, which leaves the true dL/dtheta.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """The process's place in a torchrun job (a single process when not launched by torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(world: World, cuda: bool) -> None:
    """Join the process group (NCCL on GPUs, gloo on CPUs) once, when there is more than one rank."""
    if world.size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")


class _Gather(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient of the gathered tensor and keeps
    this rank's rows (a reduce-scatter written as all_reduce, which every backend has)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rank: int, size: int) -> torch.Tensor:
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None, None


def gather(x: torch.Tensor, world: World) -> torch.Tensor:
    """Concatenate every rank's x along dim 0, in rank order, keeping gradients to each rank's rows.

    Every rank must pass the same number of rows.
    """
    if world.size == 1:
        return x
    return _Gather.apply(x, world.rank, world.size)


def gather_outputs(out: dict[str, torch.Tensor], world: World) -> dict[str, torch.Tensor]:
    """Gather every tensor of a model output dict (see `gather`)."""
    return {k: gather(v, world) for k, v in out.items()}


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank when the flag is true on any rank (a stop request, say)."""
    if world.size == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
