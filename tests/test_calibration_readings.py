"""The study's readings of FULLER against independent references: the bounded combination against a
brute-force search, IMTL-G at the sum's norm, per-task intra calibration against per-task autograd
in float64, and the diagnostics and evaluation switches the study reads."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fuller.train.calibration import (
    FuserSplit,
    GradientCalibrator,
    bounded_coefficients,
    imtl_coefficients,
    imtl_rescaled_coefficients,
    rms_scales,
)

TASKS = ["det", "map"]


def random_gram(rng: np.random.Generator, cos: float, ratio: float) -> torch.Tensor:
    """Gram of two vectors in R^5 with the given cosine and norm ratio |g_1| / |g_2|."""
    u = rng.normal(size=5)
    u /= np.linalg.norm(u)
    v = rng.normal(size=5)
    v -= (v @ u) * u
    v /= np.linalg.norm(v)
    g1, g2 = ratio * u, cos * u + math.sqrt(1 - cos * cos) * v
    rows = np.stack([g1, g2])
    return torch.from_numpy(rows @ rows.T)


def kept(gram: np.ndarray, c: np.ndarray, task: int) -> float:
    """cos(sum_t c_t g_t, g_task) from the Gram."""
    return float((gram @ c)[task] / math.sqrt(c @ gram @ c) / math.sqrt(gram[task, task]))


@pytest.mark.parametrize("cos,ratio,eps", [(0.0, 300.0, 0.1), (0.3, 20.0, 0.05), (-0.4, 0.02, 0.1),
                                           (0.0, 5.0, 0.4), (-0.9, 50.0, 0.2)])
def test_bounded_is_the_largest_mix_that_keeps_the_dominant_rate(cos, ratio, eps):
    g = random_gram(np.random.default_rng(0), cos, ratio)
    c = bounded_coefficients(g, eps).numpy()
    gn = g.numpy()
    dom = 0 if ratio > 1 else 1
    norms = np.sqrt(np.diag(gn))
    # reference: the weight on the other unit gradient, brute force over a fine grid in [0, 1]
    ws = np.linspace(0.0, 1.0, 200001)
    ok = [w for w in ws[::-1] if kept(gn, np.where(np.arange(2) == dom, 1 / norms[dom], w / norms[1 - dom]),
                                       dom) >= 1 - eps - 1e-12]
    w_ref = ok[0]
    w_got = c[1 - dom] * norms[1 - dom] / (c[dom] * norms[dom])
    assert w_got == pytest.approx(w_ref, abs=1e-5)
    assert kept(gn, c, dom) >= 1 - eps - 1e-9
    ones = np.ones(2)
    assert math.sqrt(c @ gn @ c) == pytest.approx(math.sqrt(ones @ gn @ ones), rel=1e-12)


def test_bounded_reaches_imtl_when_the_bound_allows_and_handles_edges():
    g = random_gram(np.random.default_rng(1), 0.0, 3.0)  # orthogonal: IMTL-G keeps cos 45 deg = 0.707
    c = bounded_coefficients(g, 0.35).numpy()
    imtl = imtl_coefficients(g).numpy()
    assert c / np.linalg.norm(c) == pytest.approx(imtl / np.linalg.norm(imtl), rel=1e-10)
    assert bounded_coefficients(torch.ones(1, 1, dtype=torch.float64), 0.1).tolist() == [1.0]
    zero = torch.tensor([[4.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert bounded_coefficients(zero, 0.1).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="epsilon: expected a fraction"):
        bounded_coefficients(g, 1.5)
    with pytest.raises(ValueError, match="defined for 2 tasks, got 3"):
        bounded_coefficients(torch.eye(3, dtype=torch.float64), 0.1)


def test_imtl_rescaled_has_imtl_direction_and_the_sums_norm():
    g = random_gram(np.random.default_rng(2), 0.2, 40.0).numpy()
    c, imtl = imtl_rescaled_coefficients(torch.from_numpy(g)).numpy(), imtl_coefficients(torch.from_numpy(g)).numpy()
    assert c / imtl == pytest.approx(np.full(2, c[0] / imtl[0]), rel=1e-12)
    assert math.sqrt(c @ g @ c) == pytest.approx(math.sqrt(g.sum()), rel=1e-12)


# ---------------------------------------------------------------- per-task intra, float64 toy


class SplitToy(nn.Module):
    """Camera (3 ch) and LiDAR (5 ch) branches -> fuser conv -> last conv -> z; det and map heads."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.cam, self.lid = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 5, 1)
        self.fuse, self.last = nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
        self.det, self.map = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 3, 1)
        self.double()

    def bevs(self, x):
        return [torch.tanh(self.cam(x[0])), torch.tanh(self.lid(x[1]))]

    def z(self, bevs):
        return self.last(torch.tanh(self.fuse(torch.cat(bevs, 1))))

    def losses(self, z, y):
        return {"det": ((self.det(z) - y[0]) ** 2).mean() * 30.0,
                "map": F.binary_cross_entropy_with_logits(self.map(z), y[1])}


def toy_batch():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, 4, 4, generator=g,
                                                                               dtype=torch.float64))
    y = (torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64),
         (torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) > 0.5).double())
    return x, y


def split_step(equalise: bool, target: str = "mean", inter: str = "sum"):
    model = SplitToy()
    x, y = toy_batch()
    bevs = model.bevs(x)
    leaves = [b.detach().requires_grad_() for b in bevs]
    z = model.z(leaves)
    split = FuserSplit(["camera", "lidar"], bevs, leaves, [*model.fuse.parameters(), *model.last.parameters()],
                       list(model.last.parameters()))
    heads = {"det": list(model.det.parameters()), "map": list(model.map.parameters())}
    diag = GradientCalibrator(TASKS, inter).backward(z, lambda zd: model.losses(zd, y), heads, 0, split=split,
                                                     equalise=equalise, intra_target=target)
    return model, diag


def reference_step(equalise: bool, target: str = "mean"):
    """Each task's gradient at the BEVs by its own autograd.grad, scales by hand, branch gradients
    of the scaled sum; the fuser and heads get the plain sum's gradients."""
    model = SplitToy()
    x, y = toy_batch()
    bevs = model.bevs(x)
    losses = model.losses(model.z(bevs), y)
    parts = [torch.autograd.grad(losses[t], bevs, retain_graph=True) for t in TASKS]
    rms = np.array([[float(a.norm()) / math.sqrt(a.numel()) for a in p] for p in parts])
    goal = {"mean": rms.mean(1), "max": rms.max(1), "min": rms.min(1), "camera": rms[:, 0], "lidar": rms[:, 1]}[target]
    scales = goal[:, None] / rms if equalise else np.ones_like(rms)
    shared = [*model.fuse.parameters(), *model.last.parameters(), *model.det.parameters(), *model.map.parameters()]
    want = dict(zip(map(id, shared), torch.autograd.grad(losses["det"] + losses["map"], shared, retain_graph=True)))
    for k, (branch, b) in enumerate(zip((model.cam, model.lid), bevs)):
        out = sum(scales[i, k] * parts[i][k] for i in range(2))
        want.update(zip(map(id, branch.parameters()), torch.autograd.grad(b, list(branch.parameters()), out,
                                                                          retain_graph=True)))
    last = list(model.last.parameters())
    per_task_last = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], last, retain_graph=True)])
                     for t in TASKS]
    cos_last = float(per_task_last[0] @ per_task_last[1] / per_task_last[0].norm() / per_task_last[1].norm())
    return model, want, rms, scales, cos_last


@pytest.mark.parametrize("equalise,target", [(False, "mean"), (True, "mean"), (True, "max"), (True, "lidar")])
def test_per_task_intra_matches_per_task_autograd(equalise, target):
    model, diag = split_step(equalise, target)
    ref, want, rms, scales, cos_last = reference_step(equalise, target)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, want[id(q)], rtol=1e-10, atol=1e-14, msg=name)
    for i, t in enumerate(TASKS):
        for k, m in enumerate(["camera", "lidar"]):
            assert diag[f"grad_rms/{t}/{m}"] == pytest.approx(rms[i, k], rel=1e-10)
            assert diag[f"intra_scale/{t}/{m}"] == pytest.approx(scales[i, k], rel=1e-10)
    assert diag["cos_last/det-map"] == pytest.approx(cos_last, rel=1e-8)
    if equalise:  # the task mix inside a branch changes: scales differ between the tasks
        assert not np.allclose(scales[0], scales[1], rtol=1e-3)


def test_rms_scales_edges():
    rms = torch.tensor([[2.0, 0.5], [0.0, 1.0]], dtype=torch.float64)
    s = rms_scales(rms, "mean", ["camera", "lidar"])
    assert s[0].tolist() == pytest.approx([1.25 / 2.0, 1.25 / 0.5]) and s[1].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="target: expected one of"):
        rms_scales(rms, "median", ["camera", "lidar"])
    with pytest.raises(ValueError, match="not among the modalities"):
        rms_scales(rms[:, :1], "lidar", ["camera"])


# ---------------------------------------------------------------- on the network


def test_zeroed_modality_makes_the_outputs_independent_of_that_sensor(small_cfg, small_samples):
    from fuller.train.batching import Collator
    from fuller.train.model import build_model

    torch.manual_seed(0)
    model = build_model(small_cfg).eval()
    batch = Collator(small_cfg)(small_samples[:2])
    inputs = batch.inputs
    other_images = dataclasses.replace(inputs, images=torch.randn_like(inputs.images))
    other_points = dataclasses.replace(inputs, voxel_features=inputs.voxel_features.flip(0))

    def outputs(x):
        with torch.no_grad():
            out = model(x)
        return torch.cat([out["map_probs"].flatten(), out["scores"].flatten()])

    assert not torch.equal(outputs(inputs), outputs(other_images))
    assert not torch.equal(outputs(inputs), outputs(other_points))
    model.zeroed_modality = "camera"
    torch.testing.assert_close(outputs(inputs), outputs(other_images), rtol=0, atol=0)
    assert not torch.equal(outputs(inputs), outputs(other_points))
    model.zeroed_modality = "lidar"
    torch.testing.assert_close(outputs(inputs), outputs(other_points), rtol=0, atol=0)
    model.zeroed_modality = "radar"
    with pytest.raises(ValueError, match="zeroed_modality: expected one of the model's modalities"):
        outputs(inputs)


def test_adam_diagnostics_after_one_step_are_the_gradient_magnitudes(small_cfg, small_samples):
    """After AdamW's first step the bias-corrected v is g^2 exactly, so sqrt(v_hat) = |g|."""
    from fuller.config import updated_config
    from fuller.train.batching import Collator
    from fuller.train.trainer import Trainer

    cfg = updated_config(small_cfg, {"train.grad_clip": 0.0, "train.task_diagnostics": True})
    trainer = Trainer.create(cfg, torch.device("cpu"))
    record = trainer.backward(Collator(cfg)(small_samples[:2]))
    g = torch.cat([p.grad.abs().reshape(-1) for p in trainer.model.camera.parameters() if p.grad is not None])
    trainer.update(record)
    diag = trainer.adam_diagnostics()
    assert diag["adam_rms/camera/max"] == pytest.approx(float(g.max()), rel=1e-5)
    assert diag["adam_rms/camera/median"] == pytest.approx(float(g[g > 0].median()), rel=1e-5)
    assert {"grad_rms/det/camera", "grad_rms/map/lidar", "cos_last/det-map"} <= record.keys()


def test_training_logs_held_out_losses(small_cfg, synth_root, tmp_path):
    from fuller.config import updated_config
    from fuller.train.run_log import read_metrics
    from fuller.train.trainer import train

    cfg = updated_config(small_cfg, {"train.steps": 3, "train.val_every": 2, "train.val_samples": 3})
    train(cfg, synth_root, tmp_path / "run", progress=False)
    records = read_metrics(tmp_path / "run")
    with_val = [r["step"] for r in records if "val_loss/det" in r]
    assert with_val == [0, 2]
    assert all(math.isfinite(r["val_loss/map"]) for r in records if "val_loss/map" in r)
