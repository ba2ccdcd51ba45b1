"""Several processes (torchrun / accelerate launch): who speaks, who writes, and sums over processes."""

from __future__ import annotations

import os

import torch


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """Processes in this run: WORLD_SIZE as set by torchrun / accelerate launch, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def use_local_gpu() -> None:
    """Under torchrun / accelerate launch on CUDA: pin this process to its own GPU (LOCAL_RANK) before any model
    loads, so that a 4-bit base lands there (model.load_base_model maps it to the current device). The process group
    starts later, with the Trainer's arguments: once it exists, transformers' save_pretrained writes on rank 0 only,
    which would break each rank's round trip of a random 4-bit base through disk."""
    if world_size() > 1 and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _reduce(n: int, op: str) -> int:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return n
    t = torch.tensor([n], dtype=torch.long, device="cuda" if torch.distributed.get_backend() == "nccl" else "cpu")
    torch.distributed.all_reduce(t, op=getattr(torch.distributed.ReduceOp, op))
    return int(t.item())


def sum_over_processes(n: int) -> int:
    """`n` summed over all processes (a collective: every rank must call it); `n` itself in a single process."""
    return _reduce(n, "SUM")


def max_over_processes(n: int) -> int:
    """The largest `n` of all processes (a collective, like sum_over_processes)."""
    return _reduce(n, "MAX")
