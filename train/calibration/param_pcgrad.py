"""Parameter-level PCGrad: the expensive reference the representation-level path is measured against.

PCGrad as published (Yu et al., NeurIPS 2020) projects the task gradients of all shared
parameters, which needs one full backward per task (the graph retained between them) and, under
data-parallel training, an all-reduce of T full gradient vectors. The representation-level path
(:class:`.calibrator.GradientCalibrator`) needs one trunk backward and a T x T all-reduce. This
module exists for the training-cost benchmark and as a behavioural comparison.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn


from .calibrator import gram_diagnostics, gram_of
from .intra import accumulate_grad
from ..parallel import all_reduce_sum, world_size
from .inter import pcgrad_coefficients, pcgrad_orders


def parameter_pcgrad_backward(losses: Mapping[str, Tensor], shared_params: Sequence[nn.Parameter],
                              head_params: Mapping[str, Sequence[nn.Parameter]], seed: int,
                              step: int) -> dict[str, float]:
    """PCGrad over the flattened gradients of ``shared_params``; gradients accumulate into ``.grad``.

    ``losses``: ``{task: scalar loss}`` from an ordinary forward (tasks in the dict's order, which
    fixes the meaning of PCGrad's orders). Each task's loss is differentiated with respect to all
    shared parameters and its own head's parameters (one full backward per task). Heads receive
    their raw loss gradients. The shared gradients are stacked into a (T, P) matrix, averaged over
    ranks (the whole-batch per-task gradients, under the same per-rank normalisation as the
    calibrator assumes), and combined with the PCGrad coefficients of their Gram, with the orders
    :func:`.inter.pcgrad_orders` draws for ``(seed, step)``; the projections are linear in the
    gradients, so the result equals projecting the vectors one by one. Returns the same
    diagnostics as :meth:`.calibrator.GradientCalibrator.backward` (without modality keys).
    """
    tasks = list(losses)
    unknown = sorted(set(head_params) - set(tasks))
    if unknown:
        raise ValueError(f"head_params: expected keys among the tasks {tasks}, got {unknown}")
    shared = [p for p in shared_params if p.requires_grad]
    if not shared:
        raise ValueError("shared_params: expected at least one parameter that requires grad, "
                         f"got {len(shared_params)}")
    rows = []
    for i, t in enumerate(tasks):
        heads = [p for p in head_params.get(t, ()) if p.requires_grad]
        grads = torch.autograd.grad(losses[t].reshape(()), [*shared, *heads], retain_graph=i < len(tasks) - 1,
                                    allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                               for p, g in zip(shared, grads[: len(shared)])]))
        for p, g in zip(heads, grads[len(shared):]):
            if g is not None:
                accumulate_grad(p, g)
    n = world_size()
    stacked = all_reduce_sum(torch.stack(rows)) / n
    loss_vec = all_reduce_sum(torch.stack([losses[t].detach().reshape(()).to(torch.float64) for t in tasks])) / n

    gram = gram_of(stacked).cpu()
    orders = pcgrad_orders(seed, step, len(tasks))
    finite = bool(torch.isfinite(gram).all())  # as in the calibrator: no projections of NaN/Inf
    coef = pcgrad_coefficients(gram, orders) if finite else torch.ones(len(tasks), dtype=torch.float64)
    acc = torch.float64 if stacked.dtype == torch.float64 else torch.float32
    combined = coef.to(device=stacked.device, dtype=acc) @ stacked.to(acc)
    offset = 0
    for p in shared:
        accumulate_grad(p, combined[offset:offset + p.numel()].view_as(p).to(p.dtype))
        offset += p.numel()
    return gram_diagnostics(tasks, gram, coef, loss_vec.cpu())
