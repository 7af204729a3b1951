"""Per-task AdamW moments for the shared parameters (train.per_task_adam), against torch's AdamW."""
from __future__ import annotations

import pytest
import torch

from fuller.config import updated_config
from fuller.train.batching import Collator
from fuller.train.calibration import TaskAdamW, TaskGradients
from fuller.train.trainer import Trainer


def _steps(opt_params, grads_per_step, make, record_tasks=None):
    opt = make(opt_params)
    for grads in grads_per_step:
        record = TaskGradients(len(grads), opt_params) if record_tasks else None
        for p in opt_params:
            p.grad = None
        for t, g in enumerate(grads):
            if record is not None:
                record.add(t, opt_params[0], g)
            else:
                opt_params[0].grad = g.clone() if opt_params[0].grad is None else opt_params[0].grad + g
        if record is not None:
            opt.set_task_gradients(record)
        opt.step()
    return opt_params[0].detach().clone()


def test_one_task_is_torchs_adamw_and_two_are_the_sum_of_their_own_adamw_steps():
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(5, 3, generator=gen)
    steps = [[torch.randn(5, 3, generator=gen), 1e-3 * torch.randn(5, 3, generator=gen)] for _ in range(6)]

    def fresh():
        return [torch.nn.Parameter(start.clone())]

    one = _steps(fresh(), [[g[0]] for g in steps], lambda ps: TaskAdamW(ps, ps, 1, lr=0.1, weight_decay=0.05), True)
    ref = _steps(fresh(), [[g[0]] for g in steps], lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.05))
    torch.testing.assert_close(one, ref, rtol=0, atol=1e-6)

    two = _steps(fresh(), steps, lambda ps: TaskAdamW(ps, ps, 2, lr=0.1, weight_decay=0.0), True)
    alone = [_steps(fresh(), [[g[t]] for g in steps], lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.0))
             for t in range(2)]
    torch.testing.assert_close(two, alone[0] + alone[1] - start, rtol=0, atol=1e-6)
    joint = _steps(fresh(), steps, lambda ps: torch.optim.AdamW(ps, lr=0.1, weight_decay=0.0))
    # the small task's step is as large as the large one's: joint moments would have drowned it
    assert (two - alone[0]).abs().mean() > 100 * (joint - alone[0]).abs().mean()


def test_a_shared_gradient_without_task_gradients_is_refused():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = TaskAdamW([p], [p], 2, lr=0.1)
    p.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="no per-task gradients"):
        opt.step()


@pytest.mark.parametrize("diagnostics", [False, True])
def test_trainer_records_each_tasks_part_of_the_calibrated_gradient(small_cfg, small_samples, diagnostics):
    """The recorded task gradients sum to what the joint step sends into every shared parameter,
    through the plain trunk backward and the one cut at the fuser input."""
    cfg = updated_config(small_cfg, {"train.inter": "bounded", "train.intra": False,
                                     "train.task_diagnostics": diagnostics})
    batch = Collator(cfg)(small_samples[:2])
    joint = Trainer.create(cfg, torch.device("cpu"))
    joint.backward(batch)
    split = Trainer.create(updated_config(cfg, {"train.per_task_adam": True}), torch.device("cpu"))
    split.backward(batch)
    record = split.task_grads
    shared = split.model.shared_parameters()
    assert set(record.grads) == {p for p in shared if p.grad is not None}
    def close(a, b):  # per tensor, to 5e-3 of its norm: float32 sums in another order (a missing part is far off)
        return float(torch.linalg.vector_norm(a - b)) <= 5e-3 * float(torch.linalg.vector_norm(b)) + 1e-12

    for (name, p), q in zip(split.model.named_parameters(), joint.model.parameters()):
        if q.grad is None:
            continue
        assert close(p.grad, q.grad), name
        if p in record.grads:
            assert close(sum(g for g in record.grads[p] if g is not None), q.grad), name
    split.update({"grad_norm": 1.0, "loss/det": 1.0})
    state = split.optimizer.state[shared[0]]
    assert state["exp_avg"].shape == (2, *shared[0].shape) and state["step"].tolist() == [1.0, 1.0]
    assert split.adam_diagnostics()


def test_parts_outside_per_task_adam_parts_step_as_torchs_adamw_on_the_sum(small_cfg, small_samples):
    """With ``train.per_task_adam_parts=[camera]`` the camera branch keeps one pair of moments per
    task and the LiDAR branch and fusion take AdamW's step on the summed gradient, with no per-task
    copies of their gradients; the parts cover the shared parameters once each."""
    cfg = updated_config(small_cfg, {"train.inter": "sum", "train.intra": False, "train.per_task_adam": True,
                                     "train.per_task_adam_parts": ["camera"]})
    trainer = Trainer.create(cfg, torch.device("cpu"))
    parts = trainer.model.shared_parts()
    owned = [id(p) for ps in parts.values() for p in ps]
    assert sorted(owned) == sorted(id(p) for p in trainer.model.shared_parameters())
    before = {id(p): p.detach().clone() for p in trainer.model.parameters()}
    trainer.backward(Collator(cfg)(small_samples[:2]))
    summed = {id(p): p.grad.clone() for p in trainer.parameters() if p.grad is not None}
    # task gradients are kept apart only where they have moments of their own
    assert {id(p) for p in trainer.task_grads.grads} == {id(p) for p in parts["camera"] if id(p) in summed}
    lr = trainer.optimizer.param_groups[0]["lr"]
    trainer.update({"grad_norm": 1.0, "loss/det": 1.0})
    clip = cfg.train.grad_clip
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in summed.values()])))
    factor = min(1.0, clip / (norm + 1e-6)) if clip > 0 else 1.0
    for name in ("lidar", "fusion"):
        for p in parts[name]:
            if id(p) not in summed:
                continue
            ref = torch.nn.Parameter(before[id(p)].clone())
            ref.grad = summed[id(p)] * factor
            torch.optim.AdamW([ref], lr=lr, weight_decay=cfg.train.weight_decay).step()
            torch.testing.assert_close(p.detach(), ref.detach(), rtol=0, atol=1e-6)
            assert trainer.optimizer.state[p]["exp_avg"].shape == p.shape
    camera = [p for p in parts["camera"] if id(p) in summed]
    assert camera and all(trainer.optimizer.state[p]["exp_avg"].shape == (2, *p.shape) for p in camera)
