"""Task calibration in AdamW's geometry: one pair of moments per task for every shared parameter.

AdamW divides each parameter's step by a running RMS of its gradient. With one pair of moments per
parameter, a task whose gradient is ten times smaller than the other's also gets a step ten times
smaller in every shared parameter, and a calibration that weights it up at z (IMTL-G, the bounded
combination) only moves that RMS: the weighted-up task now shrinks the other's step by as much as it
gains. Here every shared parameter keeps one pair of moments per task, and its update is the sum of
the tasks' own normalised steps,

    theta <- theta (1 - lr wd) - lr sum_t m_hat_t / (sqrt(v_hat_t) + eps),

so each task moves the shared layers as far as it would alone, whatever the other's gradient scale
(the inter-task level), and, per element, as far in the camera branch as in the LiDAR branch (the
intra-modality level). Any constant per-task coefficient of the calibration cancels in that step.
The heads and the calibrator's own parameters serve one objective and keep one pair of moments.
The arithmetic is torch's own AdamW (``torch.optim.adam.adam`` with decoupled weight decay), called
once per task on that task's gradients and moments.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.optim.adam import adam

from ..parallel import average_tensors
from .intra import accumulate_grad


class TaskGradients:
    """Each task's gradient of the shared parameters ``params``, kept apart while the backward pass
    also sums them into ``.grad`` (which the trainer's guard, clipping and logs read). With
    ``kept``, only those parameters' task gradients are kept (the ones with per-task moments,
    ``train.per_task_adam_parts``); the others go into ``.grad`` alone, with no copy per task."""

    def __init__(self, num_tasks: int, params: Sequence[nn.Parameter],
                 kept: Sequence[nn.Parameter] | None = None):
        if num_tasks < 1:
            raise ValueError(f"num_tasks: expected at least 1, got {num_tasks}")
        self.num_tasks = num_tasks
        self.params = [p for p in params if p.requires_grad]  # the shared parameters
        self._kept = None if kept is None else {id(p) for p in kept}
        self.grads: dict[nn.Parameter, list[Tensor | None]] = {}

    def add(self, task: int, p: nn.Parameter, g: Tensor) -> None:
        """Add task ``task``'s gradient ``g`` of ``p`` to ``p.grad`` and keep it apart."""
        if self._kept is not None and id(p) not in self._kept:
            accumulate_grad(p, g)
            return
        accumulate_grad(p, g.clone())  # .grad may alias what it is given; the record keeps g itself
        row = self.grads.setdefault(p, [None] * self.num_tasks)
        row[task] = g.detach() if row[task] is None else row[task] + g

    def average(self) -> None:
        """Mean over data-parallel ranks (absent gradients count as zeros; a no-op in one process)."""
        for row in self.grads.values():
            ref = next(g for g in row if g is not None)
            row[:] = [torch.zeros_like(ref) if g is None else g for g in row]
        average_tensors([g for row in self.grads.values() for g in row])

    def scale_(self, factor: float) -> None:
        """Multiply every recorded gradient by ``factor`` (the trainer's clipping factor)."""
        for row in self.grads.values():
            for g in row:
                if g is not None:
                    g.mul_(factor)


class TaskAdamW(torch.optim.Optimizer):
    """AdamW with one pair of moments per task for the parameters in ``shared``.

    ``TaskAdamW(params, shared, num_tasks, lr=..., betas=..., eps=..., weight_decay=...)``. Before
    each :meth:`step`, :meth:`set_task_gradients` hands over the step's :class:`TaskGradients`;
    a shared parameter with a ``.grad`` but no per-task gradients is an error (its update would
    silently fall back to the joint moments this optimiser exists to avoid). State of a shared
    parameter: ``exp_avg`` and ``exp_avg_sq`` of shape (T, *p.shape), ``step`` of shape (T,);
    of the others, AdamW's own (``step`` a scalar tensor).
    """

    def __init__(self, params: Iterable[nn.Parameter], shared: Sequence[nn.Parameter], num_tasks: int,
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        if num_tasks < 1:
            raise ValueError(f"num_tasks: expected at least 1, got {num_tasks}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.num_tasks = num_tasks
        self._shared = {id(p) for p in shared}
        self._task_grads: TaskGradients | None = None

    def set_task_gradients(self, grads: TaskGradients) -> None:
        if grads.num_tasks != self.num_tasks:
            raise ValueError(f"grads: expected gradients of {self.num_tasks} tasks, got {grads.num_tasks}")
        self._task_grads = grads

    def is_shared(self, p: nn.Parameter) -> bool:
        return id(p) in self._shared

    def per_task_parameters(self) -> list[nn.Parameter]:
        """The parameters stepped with per-task moments (those of ``shared``), in group order."""
        return [p for group in self.param_groups for p in group["params"] if self.is_shared(p)]

    def _state_of(self, p: nn.Parameter, tasks: int | None) -> dict:
        state = self.state[p]
        if not state:
            shape = (tasks, *p.shape) if tasks else p.shape
            state["step"] = torch.zeros(tasks if tasks else (), dtype=torch.float32)
            state["exp_avg"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
            state["exp_avg_sq"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("closure: TaskAdamW steps on gradients already computed; got a closure")
        task_grads = self._task_grads.grads if self._task_grads is not None else {}
        self._task_grads = None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            lists = [([], [], [], [], []) for _ in range(self.num_tasks + 1)]  # last: the unshared parameters
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not self.is_shared(p):
                    state = self._state_of(p, None)
                    for target, value in zip(lists[-1], (p, p.grad, state["exp_avg"], state["exp_avg_sq"],
                                                         state["step"])):
                        target.append(value)
                    continue
                if p not in task_grads:
                    raise RuntimeError(f"TaskAdamW: a shared parameter of shape {tuple(p.shape)} has a gradient "
                                       "but no per-task gradients; set_task_gradients was not called this step")
                state = self._state_of(p, self.num_tasks)
                p.mul_(1.0 - lr * wd)  # decoupled weight decay, once for the sum of the task steps
                for t, g in enumerate(task_grads[p]):
                    if g is None:
                        continue
                    for target, value in zip(lists[t], (p, g, state["exp_avg"][t], state["exp_avg_sq"][t],
                                                        state["step"][t])):
                        target.append(value)
            for t, (ps, gs, ms, vs, steps) in enumerate(lists):
                if ps:
                    adam(ps, gs, ms, vs, [], steps, foreach=False, decoupled_weight_decay=True, amsgrad=False,
                         beta1=beta1, beta2=beta2, lr=lr, weight_decay=wd if t == self.num_tasks else 0.0,
                         eps=eps, maximize=False)
        return None
