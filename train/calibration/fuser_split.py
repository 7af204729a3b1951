"""Per-task gradients at the fuser input: FULLER's intra-modality calibration task by task.

The whole-gradient balance (:mod:`.intra`) multiplies each branch's gradient by one factor. The
ratio of the branch norms changes slowly, so under AdamW, which divides every parameter's step by
a running RMS of its gradient, such a factor is nearly absorbed. Here each task's calibrated
gradient at z is pushed back separately to the fuser's inputs (one backward of the fuser and
decoder per task); its per-element RMS in the camera and LiDAR BEVs is brought to a common level,
and only then are the tasks summed and sent into the two branches. The task mix inside each branch
changes (camera features get more of the task the LiDAR serves, and the reverse): a change of
direction, which Adam does not absorb.

The same split measures, with no calibration, what the diagnostics need: each task's RMS gradient
per modality and the cosine between the tasks' gradients of the last shared layer's parameters.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fuller.config import INTRA_TARGETS

from ..parallel import all_reduce_sum, world_size
from .intra import accumulate_grad, sq_norm
from .task_moments import TaskGradients


@dataclass
class FuserSplit:
    """The trunk cut at the fuser input.

    ``modalities``: names, in the fuser's order; ``bevs``: the branch outputs with their encoder
    graphs; ``leaves``: detached copies of them the fuser ran on; ``params``: the parameters between
    the leaves and z (fuser, decoder, neck); ``last_layer``: those of the last shared layer (the
    neck), whose per-task gradients the diagnostics compare.
    """

    modalities: Sequence[str]
    bevs: Sequence[Tensor]
    leaves: Sequence[Tensor]
    params: Sequence[nn.Parameter]
    last_layer: Sequence[nn.Parameter]


def rms_scales(rms: Tensor, target: str, modalities: Sequence[str]) -> Tensor:
    """(T, M) per-task, per-modality RMS -> (T, M) scales bringing each task's modalities to a
    common level: ``train.intra_target`` over the modalities (mean, max, min, or the named
    modality's). A task with a zero RMS anywhere keeps scales 1 (nothing to balance against)."""
    if target not in INTRA_TARGETS:
        raise ValueError(f"target: expected one of {list(INTRA_TARGETS)}, got {target!r}")
    if target in ("camera", "lidar"):
        if target not in modalities:
            raise ValueError(f"target: {target!r} is not among the modalities {list(modalities)}")
        goal = rms[:, list(modalities).index(target)]
    else:
        goal = {"mean": rms.mean(1), "max": rms.amax(1), "min": rms.amin(1)}[target]
    live = (rms > 0).all(1, keepdim=True)
    return torch.where(live, goal[:, None] / rms.clamp_min(torch.finfo(torch.float64).tiny), torch.ones_like(rms))


def per_task_backward(z: Tensor, task_grads: Sequence[Tensor], tasks: Sequence[str], split: FuserSplit,
                      equalise: bool, target: str = "mean",
                      record: TaskGradients | None = None) -> dict[str, float]:
    """Backward of ``sum_t task_grads[t]`` (each shaped like z) through fuser, decoder and branches,
    equalising each task's per-element RMS across modalities at the fuser input when ``equalise``.

    Gradients accumulate into ``.grad``; with ``record``, each task's also goes through the branches on
    its own and its parameter gradients are kept apart there (one branch backward per task instead of
    one). Under data-parallel training the squared norms are summed over ranks first, so every rank
    applies the same scales (those of the whole batch). Returns
    ``grad_rms/<task>/<modality>`` (before scaling), ``intra_scale/<task>/<modality>`` and
    ``cos_last/<a>-<b>`` (cosine of the tasks' last-layer parameter gradients, whole batch).
    """
    leaves = list(split.leaves)
    params = [p for p in split.params if p.requires_grad]
    last_ids = {id(p) for p in split.last_layer}
    n_leaves, last = len(leaves), len(task_grads) - 1
    parts, last_vecs = [], []
    for i, g in enumerate(task_grads):
        grads = torch.autograd.grad(z, [*leaves, *params], grad_outputs=g.to(z.dtype).view_as(z),
                                    retain_graph=i < last, allow_unused=True)
        parts.append([torch.zeros_like(x) if d is None else d for x, d in zip(leaves, grads[:n_leaves])])
        vec = []
        for p, d in zip(params, grads[n_leaves:]):
            if d is None:
                continue
            if record is None:
                accumulate_grad(p, d)
            else:
                record.add(i, p, d)
            if id(p) in last_ids:
                vec.append(d.reshape(-1).to(torch.float64 if d.dtype == torch.float64 else torch.float32))
        last_vecs.append(torch.cat(vec) if vec else torch.zeros(1, device=z.device, dtype=torch.float64))
    t, m = len(task_grads), n_leaves
    n = world_size()
    last_stack = torch.stack(last_vecs)
    stats = torch.cat([torch.stack([sq_norm(p) for row in parts for p in row]),
                       (last_stack.double() @ last_stack.double().T).reshape(-1)])
    stats = all_reduce_sum(stats)
    numel = torch.tensor([float(x.numel() * n) for x in leaves], dtype=torch.float64, device=stats.device)
    rms = (stats[: t * m].view(t, m).clamp_min(0.0).sqrt() / n) / numel.sqrt()
    scales = rms_scales(rms, target, split.modalities) if equalise else torch.ones_like(rms)
    live = [k for k, b in enumerate(split.bevs) if b.requires_grad]
    if record is None:
        combined = [sum(float(scales[i, k]) * parts[i][k] for i in range(t)) for k in live]
        if live:
            torch.autograd.backward([split.bevs[k] for k in live],
                                    [c.to(split.bevs[k].dtype) for k, c in zip(live, combined)])
    elif live:
        inside = {id(p) for p in params}
        branch = [p for p in record.params if id(p) not in inside]
        for i in range(t):
            grads = torch.autograd.grad([split.bevs[k] for k in live], branch,
                                        grad_outputs=[(float(scales[i, k]) * parts[i][k]).to(split.bevs[k].dtype)
                                                      for k in live], retain_graph=i < last, allow_unused=True)
            for p, d in zip(branch, grads):
                if d is not None:
                    record.add(i, p, d)

    out: dict[str, float] = {}
    host_rms, host_scales = rms.cpu(), scales.cpu()
    for i, task in enumerate(tasks):
        for k, mod in enumerate(split.modalities):
            out[f"grad_rms/{task}/{mod}"] = float(host_rms[i, k])
            out[f"intra_scale/{task}/{mod}"] = float(host_scales[i, k])
    gram = stats[t * m:].view(t, t).cpu()
    for i in range(t):
        for j in range(i + 1, t):
            den = float(gram[i, i].clamp_min(0).sqrt() * gram[j, j].clamp_min(0).sqrt())
            out[f"cos_last/{tasks[i]}-{tasks[j]}"] = float(gram[i, j]) / den if den > 0 else 0.0
    return out
