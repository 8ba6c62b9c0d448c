"""Several processes training one model with ``torchrun`` (torch.distributed:
NCCL on GPUs, gloo on CPU), in a few helpers rather than a framework.

Every rank holds the whole model and walks the same global batches (a pure
function of seed and epoch); each takes its slice of each batch. Objectives
report a loss as sums over their units with the count to divide by
(``Objective.parts``); the counts are summed over ranks before dividing, and
the gradients summed after the backward pass, so a step of N ranks equals one
step of one process on the whole batch. Gradients are summed by hand in one
flat buffer, not by ``DistributedDataParallel``: self-critical training
samples captions outside ``forward`` (which DDP needs to see), and the model
stays a plain ``CaptionModel`` whose ``state_dict`` any single process loads.

Rank 0 alone writes the feature cache, checkpoints and logs and runs
validation; the others wait for it and receive its decisions.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over ranks (in place), or ``t`` itself in one process."""
        if self.active:
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t

    def from_main(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a picklable value)."""
        if not self.active:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def share(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (sizes differ by at most one)."""
        return rows.tensor_split(self.world)[self.rank] if self.active else rows

    def sync_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank."""
        if self.active:
            for t in list(module.parameters()) + list(module.buffers()):
                tdist.broadcast(t.data, src=0)

    def sum_gradients(self, params: list[torch.nn.Parameter], *extra: torch.Tensor) -> list[torch.Tensor]:
        """Sum the gradients of ``params`` (a missing one counts as zeros) and
        the scalars ``extra`` over ranks in one all-reduce; returns the summed extras."""
        if not self.active:
            return list(extra)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads] + [e.reshape(1).to(grads[0]) for e in extra])
        tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
        at = 0
        for p in params:
            p.grad = flat[at:at + p.numel()].view_as(p)
            at += p.numel()
        return [flat[at + i] for i in range(len(extra))]


def setup_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group ``torchrun`` describes in the environment
    (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR...), or stay one process when
    there is none. On CUDA each rank takes the GPU of its local rank. Returns
    the ranks and this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                 **({"device_id": device} if device.type == "cuda" else {}))
    return Distributed(rank, world, local_rank), device


def teardown_distributed(dist: Distributed) -> None:
    """Leave the process group (after the last collective call)."""
    if dist.active and tdist.is_initialized():
        tdist.destroy_process_group()
