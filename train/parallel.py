"""Data-parallel training with torch.distributed (torchrun; gloo on CPU, nccl on GPU).

The calibrated step runs several backward passes (one head-only pass per task, then one through
the trunk), which DistributedDataParallel's reducer does not support (it expects one backward per
forward). So gradients are averaged explicitly after the step's backward passes, with one
flattened all-reduce; parameters start identical (same seed, then a broadcast from rank 0) and
stay identical because every rank applies the same averaged gradient.

Whatever mixes samples must also be whole-batch exact: calibration decisions (task coefficients,
modality scales) come from small statistics summed over ranks (`all_reduce_sum`), and loss
normalisers are averaged over ranks (`reduce_mean`). Every helper is a no-op in a single process,
so the same code runs in tests, on one machine and under torchrun.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def init_from_env(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world_size, this process's device); initialises the process group when launched by
    torchrun. On CUDA each process takes GPU ``LOCAL_RANK`` (global ranks on a second node start past
    its GPU count) and makes it current *before* the group starts: NCCL binds its communicator to the
    current device, and every process would otherwise initialise on GPU 0."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks in the default group; 1 without one."""
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks in place and return it."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over ranks, as a new tensor. Dividing each rank's summed loss by the
    rank-averaged normaliser makes the mean of the rank gradients equal the gradient of the whole
    batch's normalised loss."""
    if not is_distributed():
        return value
    return all_reduce_sum(value.detach().clone() / world_size())


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers (e.g. BatchNorm statistics) to every rank."""
    if not is_distributed():
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def average_gradients(parameters: list[nn.Parameter]) -> None:
    """Replace each gradient by its mean over ranks (absent gradients count as zeros)."""
    if not is_distributed():
        return
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    average_tensors([p.grad for p in parameters])


def average_tensors(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor by its mean over ranks in place, with one flattened all-reduce."""
    if not is_distributed() or not tensors:
        return
    flat = _flatten_dense_tensors(tensors)
    all_reduce_sum(flat)
    flat /= world_size()
    for t, synced in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
        t.copy_(synced)
