"""Representation-level multi-task backward: calibrated task gradients at ``z``, one trunk backward.

The trunk (camera and LiDAR branches, fuser, shared decoder) runs once to the shared
representation ``z``. Each task head runs once on ``z.detach().requires_grad_()``; one head-only
backward per task gives that task's gradient at ``z`` (and its head's parameter gradients); the
inter-task method turns the Gram of those gradients into coefficients; the combined gradient goes
through the trunk in a single ``z.backward``. Calibration thus costs T cheap head backwards, not T
full backwards (that is parameter-level PCGrad, kept in :mod:`.param_pcgrad` for comparison).
The intra-modality calibration happens inside that trunk backward, in the fuser's
:class:`~.intra.ModalityGradientBalance`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn


from ..parallel import all_reduce_sum, world_size
from .fuser_split import FuserSplit, per_task_backward
from .inter import Uncertainty, build_inter
from .intra import ModalityGradientBalance, accumulate_grad
from .task_moments import TaskGradients

if TYPE_CHECKING:
    from fuller.config import FullerConfig


def _accumulation_dtype(rows: Tensor) -> torch.dtype:
    return torch.float64 if rows.dtype == torch.float64 else torch.float32


def gram_of(rows: Tensor) -> Tensor:
    """Gram matrix of the rows of ``rows`` (T, N) in float64; accumulated in float32 for lower
    precisions. Autocast is off here: the trainer calls the calibrator inside its bfloat16 region,
    which would run this product in bfloat16 (relative errors ~1e-2 in cosines and weights)."""
    with torch.autocast(rows.device.type, enabled=False):
        r = rows.to(_accumulation_dtype(rows))
        return (r @ r.T).to(torch.float64)


def combine(coef: Tensor, rows: Tensor) -> Tensor:
    """``sum_t coef[t] * rows[t]``, accumulated like `gram_of` (float32 at least, autocast off)."""
    with torch.autocast(rows.device.type, enabled=False):
        acc = _accumulation_dtype(rows)
        return coef.to(device=rows.device, dtype=acc) @ rows.to(acc)


def gram_diagnostics(tasks: Sequence[str], gram: Tensor, coef: Tensor, losses: Tensor) -> dict[str, float]:
    """Per-task loss, gradient norm and coefficient, pairwise cosines, norm of the combined gradient.

    Keys: ``loss/<task>``, ``grad_norm/<task>``, ``coef/<task>``, ``cos/<a>-<b>`` for each pair in
    task order (0 when either gradient is zero), ``grad_norm/combined`` (``sqrt(c^T G c)``).
    """
    g = gram.to("cpu", torch.float64)
    c = coef.to("cpu", torch.float64)
    norms = g.diagonal().clamp_min(0.0).sqrt()
    out: dict[str, float] = {}
    for i, t in enumerate(tasks):
        out[f"loss/{t}"] = float(losses[i])
        out[f"grad_norm/{t}"] = float(norms[i])
        out[f"coef/{t}"] = float(c[i])
    for i in range(len(tasks)):
        for j in range(i + 1, len(tasks)):
            den = float(norms[i] * norms[j])
            out[f"cos/{tasks[i]}-{tasks[j]}"] = float(g[i, j]) / den if den > 0 else 0.0
    out["grad_norm/combined"] = float((c @ g @ c).clamp_min(0.0).sqrt())
    return out


class GradientCalibrator(nn.Module):
    """FULLER's inter-task calibration at the shared representation, one interface for every method.

    ``GradientCalibrator(tasks, inter="imtl", inter_weights=(), seed=0)``; ``inter`` is one of
    ``train.inter`` (see :mod:`.inter`). The module's parameters are the method's own (only
    ``uncertainty`` has some: ``log_vars``); the trainer adds ``calibrator.parameters()`` to the
    optimizer and, under data-parallel training, to the gradients it averages.

    Data-parallel assumption: each rank normalises its losses so that the mean of the rank
    gradients is the whole-batch gradient (e.g. per-rank mean losses with equal per-rank batch
    sizes) and the trainer averages all gradients explicitly after :meth:`backward`
    (``fuller.train.parallel.average_gradients``; DistributedDataParallel's reducer does not fit:
    the head gradients are written here with ``torch.autograd.grad``). Then the whole-batch
    gradient at z is the concatenation of the rank gradients divided by the world size W, its
    Gram is the sum of the rank Grams divided by W^2, and every rank gets the coefficients (and
    diagnostics) one process would compute on the whole batch.
    """

    def __init__(self, tasks: Sequence[str], inter: str = "imtl", inter_weights: Sequence[float] = (),
                 seed: int = 0, epsilon: float = 0.1):
        super().__init__()
        tasks = list(tasks)
        if not tasks or len(set(tasks)) != len(tasks) or not all(isinstance(t, str) for t in tasks):
            raise ValueError(f"tasks: expected a non-empty list of unique task names, got {tasks}")
        self.tasks = tasks
        self.inter = inter
        self.method = build_inter(inter, len(tasks), inter_weights, seed, epsilon)

    @classmethod
    def from_config(cls, cfg: "FullerConfig") -> "GradientCalibrator":
        """The calibrator ``cfg.model.tasks`` / ``cfg.train.{inter, inter_weights, seed, inter_epsilon}`` describe."""
        t = cfg.train
        return cls(cfg.model.tasks, t.inter, t.inter_weights, t.seed, t.inter_epsilon)

    @property
    def log_vars(self) -> nn.Parameter | None:
        """Uncertainty weighting's learnable log-variances (one per task), else None."""
        return self.method.log_vars if isinstance(self.method, Uncertainty) else None

    def backward(self, z: Tensor, losses_fn: Callable[[Tensor], Mapping[str, Tensor]],
                 head_params: Mapping[str, Sequence[nn.Parameter]], step: int,
                 balance: ModalityGradientBalance | None = None, split: FuserSplit | None = None,
                 equalise: bool = False, intra_target: str = "mean",
                 record: TaskGradients | None = None) -> dict[str, float]:
        """Calibrated backward of all task losses; gradients accumulate into ``.grad`` like ``backward``.

        ``z``: the trunk output (requires grad). ``losses_fn(zd)`` runs the heads on ``zd`` (a
        detached copy of z that requires grad) and returns ``{task: scalar loss}`` for every task;
        it must reach trunk parameters only through ``zd``. ``head_params[task]``: the parameters
        of that task's head (``loss_t`` gets no gradient with respect to other tasks' heads).
        ``step``: the global step (seeds PCGrad's orders). ``balance``: the fuser's modality
        balance, whose diagnostics are merged in when given. ``split``: the trunk cut at the fuser
        input (z computed from ``split.leaves``); the calibrated gradient then goes back task by
        task (:func:`.fuser_split.per_task_backward`, equalising each task's per-element RMS over
        the modalities with ``intra_target`` when ``equalise``) and its diagnostics are merged in.
        ``record``: when given, each task's calibrated gradient goes through the trunk on its own and
        its gradients of the shared parameters are kept apart there as well (for
        :class:`~.task_moments.TaskAdamW`): one trunk backward per task instead of one.

        A non-finite Gram (a loss or gradient overflowed) is not calibrated: the coefficients are
        1, so the non-finite values reach ``.grad`` and the trainer's guard can skip the step
        (no solver sees NaN).

        Returns Python floats (see :func:`gram_diagnostics`; plus ``log_var/<task>`` for
        uncertainty weighting and the ``modality/*`` keys of
        :meth:`ModalityGradientBalance.diagnostics` when ``balance`` is given).
        """
        if not (isinstance(z, Tensor) and z.requires_grad):
            raise ValueError(f"z: expected the trunk output, a tensor that requires grad, got {type(z).__name__}")
        unknown = sorted(set(head_params) - set(self.tasks))
        if unknown:
            raise ValueError(f"head_params: expected keys among the tasks {self.tasks}, got {unknown}")
        zd = z.detach().requires_grad_()
        losses = losses_fn(zd)
        if not isinstance(losses, Mapping) or set(losses) != set(self.tasks):
            got = sorted(losses) if isinstance(losses, Mapping) else type(losses).__name__
            raise ValueError(f"losses_fn: expected a dict with one scalar loss per task {self.tasks}, got {got}")
        for t in self.tasks:
            if not (isinstance(losses[t], Tensor) and losses[t].numel() == 1):
                raise ValueError(f"losses_fn()[{t!r}]: expected a scalar tensor, "
                                 f"got {getattr(losses[t], 'shape', losses[t])}")

        rows, head_grads = [], []
        last = len(self.tasks) - 1
        for i, t in enumerate(self.tasks):
            params = [p for p in head_params.get(t, ()) if p.requires_grad]
            loss = losses[t].reshape(())
            if loss.requires_grad:
                grads = torch.autograd.grad(loss, [zd, *params], retain_graph=i < last, allow_unused=True)
            else:
                grads = (None,) * (1 + len(params))
            rows.append((grads[0] if grads[0] is not None else torch.zeros_like(zd)).reshape(-1))
            head_grads.append([(p, g) for p, g in zip(params, grads[1:]) if g is not None])
        stacked = torch.stack(rows)

        t_count = len(self.tasks)
        loss_vec = torch.stack([losses[t].detach().reshape(()).to(torch.float64) for t in self.tasks])
        packed = all_reduce_sum(torch.cat([gram_of(stacked).reshape(-1), loss_vec.to(stacked.device)]))
        n = world_size()
        host = packed.cpu()
        gram = host[: t_count * t_count].view(t_count, t_count) / (n * n)
        whole_losses = host[t_count * t_count:] / n

        if torch.isfinite(gram).all():
            coef = self.method.coefficients(gram, whole_losses, step).to(torch.float64)
        else:  # overflow: pass the non-finite gradients on unweighted, for the trainer's NaN/Inf guard
            coef = torch.ones(t_count, dtype=torch.float64)
        self.method.accumulate_grads(whole_losses)
        for i, pairs in enumerate(head_grads):
            scale = float(coef[i]) if self.method.weights_losses else 1.0
            for p, g in pairs:
                accumulate_grad(p, g if scale == 1.0 else g * scale)

        out = gram_diagnostics(self.tasks, gram, coef, whole_losses)
        if split is not None:
            per_task = [combine(coef[i:i + 1], stacked[i:i + 1]).view_as(z) for i in range(t_count)]
            out.update(per_task_backward(z, per_task, self.tasks, split, equalise, intra_target, record))
        elif record is not None:
            params = record.params
            for i in range(t_count):
                grad_z = combine(coef[i:i + 1], stacked[i:i + 1]).to(z.dtype).view_as(z)
                grads = torch.autograd.grad(z, params, grad_outputs=grad_z, retain_graph=i < t_count - 1,
                                            allow_unused=True)
                for p, g in zip(params, grads):
                    if g is not None:
                        record.add(i, p, g)
        else:
            z.backward(combine(coef, stacked).to(z.dtype).view_as(z))

        if self.log_vars is not None:
            out.update({f"log_var/{t}": float(v) for t, v in zip(self.tasks, self.log_vars.detach().cpu())})
        if balance is not None:
            out.update(balance.diagnostics())
        return out
