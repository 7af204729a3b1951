"""Gradient calibration against independent references: closed forms, naive vector algorithms, brute force.

A tiny float64 convolutional trunk (camera and LiDAR branches, balance, fuser) with two heads stands
in for the network; plain ``backward`` and ``torch.autograd.grad`` on it are the references.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from torch import nn

from fuller.config import INTER_METHODS, ConfigError, load_config
from fuller.train.calibration import (
    GradientCalibrator,
    ModalityGradientBalance,
    aligned_coefficients,
    build_inter,
    cagrad_coefficients,
    combine,
    gram_of,
    imtl_coefficients,
    mgda_coefficients,
    parameter_pcgrad_backward,
    pcgrad_coefficients,
    pcgrad_orders,
)

TASKS = ["det", "map"]


# ---------------------------------------------------------------- toy network


class Toy(nn.Module):
    """Camera/LiDAR branches -> balance -> fuser -> z (B, 4, 4, 4); det and map heads on z."""

    def __init__(self, balance: ModalityGradientBalance, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.cam = nn.Conv2d(2, 3, 3, padding=1)
        self.lid = nn.Conv2d(3, 3, 1)
        self.fuse = nn.Conv2d(6, 4, 3, padding=1)
        self.det = nn.Sequential(nn.Conv2d(4, 3, 1), nn.Tanh(), nn.Conv2d(3, 2, 1))
        self.map = nn.Conv2d(4, 3, 1)
        self.balance = balance
        self.double()
        self.taps: dict[str, torch.Tensor] = {}

    def trunk(self, xc, xl):
        c, l = torch.tanh(self.cam(xc)), torch.tanh(self.lid(xl))
        c.register_hook(lambda g: self.taps.__setitem__("camera", g))
        l.register_hook(lambda g: self.taps.__setitem__("lidar", g))
        c, l = self.balance(c, l)
        return torch.tanh(self.fuse(torch.cat([c, l], 1)))

    def losses(self, z, y):
        return {"det": ((self.det(z) - y["det"]) ** 2).mean(),
                "map": F.binary_cross_entropy_with_logits(self.map(z), y["map"])}

    def head_params(self):
        return {"det": list(self.det.parameters()), "map": list(self.map.parameters())}

    def trunk_params(self):
        return [*self.cam.parameters(), *self.lid.parameters(), *self.fuse.parameters()]


def batch(seed: int = 1, b: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, 2, 4, 4, generator=g, dtype=torch.float64),
         torch.randn(b, 3, 4, 4, generator=g, dtype=torch.float64))
    y = {"det": torch.randn(b, 2, 4, 4, generator=g, dtype=torch.float64),
         "map": (torch.rand(b, 3, 4, 4, generator=g, dtype=torch.float64) > 0.5).double()}
    return x, y


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def calibrated(inter="sum", intra=False, target="mean", seed=0, weights=(), step=0, prepare=None):
    """One calibrated backward on the toy; returns (model, calibrator, diagnostics)."""
    model = Toy(ModalityGradientBalance(target, enabled=intra), seed)
    if prepare is not None:
        prepare(model)
    cal = GradientCalibrator(TASKS, inter, weights, seed=0).double()
    x, y = batch()
    z = model.trunk(*x)
    diag = cal.backward(z, lambda zd: model.losses(zd, y), model.head_params(), step, model.balance)
    return model, cal, diag


def plain(weights=(1.0, 1.0), seed=0, prepare=None):
    """Reference: one ordinary backward of sum_t w_t L_t on the same toy and batch."""
    model = Toy(ModalityGradientBalance(enabled=False, measure=False), seed)
    if prepare is not None:
        prepare(model)
    x, y = batch()
    losses = model.losses(model.trunk(*x), y)
    sum(w * losses[t] for w, t in zip(weights, TASKS)).backward()
    return model, {t: float(v.detach()) for t, v in losses.items()}


def task_grads_at_z(seed=0, prepare=None):
    """Reference task gradients at z, each by its own full autograd.grad, flattened."""
    model = Toy(ModalityGradientBalance(enabled=False, measure=False), seed)
    if prepare is not None:
        prepare(model)
    x, y = batch()
    z = model.trunk(*x)
    losses = model.losses(z, y)
    return model, z, [torch.autograd.grad(losses[t], z, retain_graph=True)[0] for t in TASKS]


# ---------------------------------------------------------------- IMTL-G


@pytest.mark.parametrize("t", [2, 3, 4])
def test_imtl_equal_projections_and_unit_sum(t):
    gen = torch.Generator().manual_seed(10 + t)
    for _ in range(40):
        d = int(torch.randint(t + 3, 40, (), generator=gen))
        a = torch.randn(t, d, generator=gen, dtype=torch.float64) * torch.rand(t, 1, generator=gen,
                                                                                 dtype=torch.float64) * 5
        c = imtl_coefficients(a @ a.T)
        agg = c @ a
        proj = a @ agg / a.norm(dim=1)
        assert torch.allclose(proj, proj.mean().expand(t), rtol=1e-9, atol=0)
        assert proj.mean() > 0
        assert float(c.sum()) == pytest.approx(1.0, abs=1e-12)


def test_imtl_two_tasks_closed_form_and_scale_invariance():
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        a = torch.randn(2, 7, generator=gen, dtype=torch.float64) * torch.tensor([[0.01], [30.0]],
                                                                                 dtype=torch.float64)
        n1, n2 = a.norm(dim=1)
        c = imtl_coefficients(a @ a.T)
        assert torch.allclose(c, torch.stack([n2, n1]) / (n1 + n2), rtol=1e-12, atol=0)
        for s in (1e-6, 3.0, 1e5):
            assert torch.allclose(imtl_coefficients((s * a) @ (s * a).T), c, rtol=1e-10, atol=0)


def test_imtl_degenerate_grams():
    g1 = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    # A zero task gradient: coefficient 0, the other task takes everything.
    a = torch.stack([g1, torch.zeros(3, dtype=torch.float64)])
    assert torch.equal(imtl_coefficients(a @ a.T), torch.tensor([1.0, 0.0], dtype=torch.float64))
    # All zero: uniform.
    assert torch.equal(imtl_coefficients(torch.zeros(3, 3, dtype=torch.float64)),
                       torch.full((3,), 1 / 3, dtype=torch.float64))
    # Same direction, norms 1:3 -> the general closed form (3/4, 1/4) is the limit.
    a = torch.stack([g1, 3 * g1])
    c = imtl_coefficients(a @ a.T)
    assert torch.isfinite(c).all() and torch.allclose(c, torch.tensor([0.75, 0.25], dtype=torch.float64))
    # Opposite directions: equal projections force a zero aggregate.
    a = torch.stack([g1, -3 * g1])
    c = imtl_coefficients(a @ a.T)
    assert torch.isfinite(c).all() and float(c.sum()) == pytest.approx(1.0)
    assert (c @ a).abs().max() < 1e-9
    # Three tasks in a plane (singular Gram) with a genuine equal-projection solution.
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    c = imtl_coefficients(a @ a.T)
    proj = a @ (c @ a) / a.norm(dim=1)
    assert torch.isfinite(c).all() and torch.allclose(proj, proj[0].expand(3), rtol=1e-6)


def test_imtl_negative_sum_fallback_keeps_positive_projection():
    gen = torch.Generator().manual_seed(0)
    for _ in range(2000):
        a = torch.randn(4, 4, generator=gen, dtype=torch.float64) * torch.rand(4, 1, generator=gen,
                                                                               dtype=torch.float64) * 10
        c = imtl_coefficients(a @ a.T)
        if abs(float(c.sum()) - 1.0) > 1e-6:
            break
    else:
        pytest.fail("no Gram with a non-positive IMTL sum found")
    proj = a @ (c @ a) / a.norm(dim=1)
    assert float(c.abs().sum()) == pytest.approx(1.0)
    assert torch.allclose(proj, proj.mean().expand(4), rtol=1e-8) and proj.mean() > 0


# ---------------------------------------------------------------- PCGrad


def naive_pcgrad(a: torch.Tensor, orders) -> torch.Tensor:
    """PCGrad on explicit vectors (Yu et al. 2020, Algorithm 1), the aggregate of the projected gradients."""
    out = torch.zeros_like(a[0])
    for i in range(len(a)):
        pc = a[i].clone()
        for j in orders[i]:
            if j != i and torch.dot(pc, a[j]) < 0:
                pc = pc - torch.dot(pc, a[j]) / torch.dot(a[j], a[j]) * a[j]
        out = out + pc
    return out


@pytest.mark.parametrize("t", [2, 3, 4])
def test_pcgrad_matches_naive_vectors(t):
    gen = torch.Generator().manual_seed(t)
    projected = 0
    for step in range(30):
        a = torch.randn(t, 5, generator=gen, dtype=torch.float64)
        orders = pcgrad_orders(7, step, t)
        c = pcgrad_coefficients(a @ a.T, orders)
        assert torch.allclose(c @ a, naive_pcgrad(a, orders), rtol=1e-12, atol=1e-12)
        projected += int(not torch.equal(c, torch.ones(t, dtype=torch.float64)))
    assert projected > 5  # conflicts did occur


def test_pcgrad_orders_are_seeded():
    assert pcgrad_orders(3, 11, 4) == pcgrad_orders(3, 11, 4)
    assert all(sorted(o) == [0, 1, 2, 3] for o in pcgrad_orders(3, 11, 4))
    assert len({str(pcgrad_orders(3, s, 4)) for s in range(10)}) > 1
    with programming_error("seed, step"):
        pcgrad_orders(-1, 0, 2)


# ---------------------------------------------------------------- MGDA


def simplex_grid(t: int, n: int) -> np.ndarray:
    if t == 2:
        x = np.linspace(0, 1, n + 1)
        return np.stack([x, 1 - x], 1)
    pts = [(i / n, j / n) for i in range(n + 1) for j in range(n + 1 - i)]
    p = np.array(pts)
    return np.concatenate([p, 1 - p.sum(1, keepdims=True)], 1)


@pytest.mark.parametrize("t", [2, 3])
def test_mgda_min_norm_vs_brute_force(t):
    rng = np.random.default_rng(t)
    grid = simplex_grid(t, 20000 if t == 2 else 300)
    for _ in range(10):
        a = rng.normal(size=(t, 4)) * rng.uniform(0.1, 3, size=(t, 1))
        c = mgda_coefficients(torch.from_numpy(a @ a.T)).numpy()
        assert c.min() >= 0 and c.sum() == pytest.approx(1.0)
        p = c @ a
        brute = np.linalg.norm(grid @ a, axis=1).min()
        assert np.linalg.norm(p) <= brute + 1e-12
        assert np.linalg.norm(p) >= brute - 1e-3 * np.abs(a).max()
        # Optimality of the min-norm point of a hull: p.g_t >= |p|^2 for all t, equality on the support.
        dots = a @ p
        assert (dots >= p @ p - 1e-10).all()
        assert np.allclose(dots[c > 1e-9], p @ p, atol=1e-10)


def test_mgda_zero_in_hull():
    a = np.array([[1.0, 0.0], [-2.0, 0.0], [0.0, 1.0]])
    c = mgda_coefficients(torch.from_numpy(a @ a.T)).numpy()
    assert np.allclose(c @ a, 0, atol=1e-12) and np.allclose(c, [2 / 3, 1 / 3, 0])


# ---------------------------------------------------------------- CAGrad


def naive_cagrad(a: np.ndarray, c: float = 0.5) -> np.ndarray:
    """The authors' CAGrad on explicit vectors: SLSQP on the simplex, d = g0 + lam g_w, rescale 1/(1+c^2)."""
    t = len(a)
    gg = a @ a.T
    g0 = a.mean(0)
    b = np.full(t, 1 / t)
    phi = c * np.linalg.norm(g0)

    def f(x):
        return x @ gg @ b + phi * np.sqrt(max(x @ gg @ x, 0.0))

    runs = [minimize(f, x0, bounds=[(0, 1)] * t, constraints=({"type": "eq", "fun": lambda x: 1 - x.sum()},),
                     method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000})
            for x0 in [b, *np.eye(t)]]
    w = min(runs, key=lambda r: r.fun).x
    gw = w @ a
    return (g0 + phi / np.linalg.norm(gw) * gw) / (1 + c * c)


@pytest.mark.parametrize("t", [2, 3])
def test_cagrad_vs_naive_and_defining_property(t):
    rng = np.random.default_rng(20 + t)
    for _ in range(8):
        a = rng.normal(size=(t, 5)) * rng.uniform(0.2, 3, size=(t, 1))
        coef = cagrad_coefficients(torch.from_numpy(a @ a.T), 0.5).numpy()
        d = coef @ a
        assert np.allclose(d, naive_cagrad(a), atol=1e-5 * np.abs(d).max())
        # d (1 + c^2) lies on the ball |d - g0| = c |g0| and maximises the worst task improvement there.
        g0 = a.mean(0)
        du = d * 1.25
        assert np.linalg.norm(du - g0) == pytest.approx(0.5 * np.linalg.norm(g0), rel=1e-9)
        u = rng.normal(size=(20000, 5))
        ball = g0 + 0.5 * np.linalg.norm(g0) * u / np.linalg.norm(u, axis=1, keepdims=True) * rng.uniform(
            0, 1, size=(20000, 1)) ** (1 / 5)
        assert (a @ du).min() >= (ball @ a.T).min(1).max() - 1e-9


def test_cagrad_two_task_edges():
    g = np.array([1.0, 0.5, -0.2])
    same = np.stack([g, g])  # identical tasks: CAGrad is the mean gradient, scaled by (1 + c) / (1 + c^2)
    coef = cagrad_coefficients(torch.from_numpy(same @ same.T)).numpy()
    assert np.allclose(coef @ same, g * 1.5 / 1.25)
    assert np.allclose(cagrad_coefficients(torch.from_numpy(same @ same.T), c=0.0).numpy(), [0.5, 0.5])
    zero = np.zeros((2, 2))
    assert np.isfinite(cagrad_coefficients(torch.from_numpy(zero)).numpy()).all()


# ---------------------------------------------------------------- Aligned-MTL


@pytest.mark.parametrize("t", [2, 3, 4])
def test_aligned_mtl_vs_svd(t):
    rng = np.random.default_rng(30 + t)
    for _ in range(10):
        a = rng.normal(size=(t, 9)) * rng.uniform(0.1, 4, size=(t, 1))
        u, s, vt = np.linalg.svd(a, full_matrices=False)
        aligned = s.min() * u @ vt  # the rows made orthogonal with common norm sigma_min (Procrustes)
        assert np.allclose(aligned @ aligned.T, s.min() ** 2 * np.eye(t), atol=1e-10)
        coef = aligned_coefficients(torch.from_numpy(a @ a.T)).numpy()
        assert np.allclose(coef @ a, aligned.sum(0), atol=1e-10 * np.abs(a).max())


# ---------------------------------------------------------------- calibrator on the toy network


def test_sum_without_intra_is_plain_backward_exactly():
    model, _, diag = calibrated("sum", intra=False)
    ref, ref_losses = plain()
    got, want = grads(model), grads(ref)
    assert got.keys() == want.keys() and len(got) == 12
    for name in want:  # z is used once by each of two heads: the same two-term sums, bitwise
        assert torch.equal(got[name], want[name]), name
    for t in TASKS:
        assert diag[f"loss/{t}"] == ref_losses[t]
        assert diag[f"coef/{t}"] == 1.0


def test_imtl_path_matches_reference_and_runs_trunk_once():
    model, z, (g1, g2) = task_grads_at_z()
    n1, n2 = g1.norm(), g2.norm()
    alpha = (n2 / (n1 + n2), n1 / (n1 + n2))
    want = torch.autograd.grad(z, model.trunk_params(), alpha[0] * g1 + alpha[1] * g2, retain_graph=True)

    model2 = Toy(ModalityGradientBalance(enabled=False), 0)
    x, y = batch()
    z2 = model2.trunk(*x)
    calls = []
    z2.register_hook(lambda g: calls.append(1))
    cal = GradientCalibrator(TASKS, "imtl")
    diag = cal.backward(z2, lambda zd: model2.losses(zd, y), model2.head_params(), 0)
    assert len(calls) == 1
    for p, w in zip(model2.trunk_params(), want):
        assert torch.allclose(p.grad, w, rtol=1e-12, atol=1e-15)
    ref, _ = plain()  # IMTL leaves the heads' gradients raw: those of the unweighted sum
    for name, g in grads(ref).items():
        if name.startswith(("det", "map")):
            assert torch.equal(dict(model2.named_parameters())[name].grad, g), name
    assert diag["coef/det"] == pytest.approx(float(alpha[0]), rel=1e-12)
    assert diag["grad_norm/det"] == pytest.approx(float(n1), rel=1e-12)
    assert diag["cos/det-map"] == pytest.approx(float((g1 * g2).sum() / (n1 * n2)), rel=1e-10)
    assert diag["grad_norm/combined"] == pytest.approx(float((alpha[0] * g1 + alpha[1] * g2).norm()), rel=1e-10)


def test_calibration_arithmetic_stays_float32_under_autocast():
    """The trainer calls the calibrator inside its bfloat16 autocast region, where a matrix product
    of float32 task gradients would run in bfloat16 (relative errors ~1e-2) unless autocast is off."""
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(2, 50_000, generator=g)  # float32: task gradients at z of a float32 trunk
    rows[1] += 0.5 * rows[0]
    coef = torch.tensor([0.3, 0.7], dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gram, combined = gram_of(rows), combine(coef, rows)
    assert gram.dtype == torch.float64 and combined.dtype == torch.float32
    exact = rows.double()
    assert torch.allclose(gram, exact @ exact.T, rtol=1e-5)
    assert torch.allclose(combined.double(), coef @ exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["mean", "max", "min", "camera", "lidar"])
def test_intra_equalises_modality_norms(target):
    off, _, _ = calibrated("sum", intra=False)
    on, _, diag = calibrated("sum", intra=True, target=target)
    gc, gl = off.taps["camera"], off.taps["lidar"]
    nc, nl = float(gc.norm()), float(gl.norm())
    tgt = {"mean": (nc + nl) / 2, "max": max(nc, nl), "min": min(nc, nl), "camera": nc, "lidar": nl}[target]
    assert nc != pytest.approx(nl, rel=1e-3)  # the toy is unbalanced to begin with
    assert torch.allclose(on.taps["camera"], gc * (tgt / nc), rtol=1e-12, atol=0)
    assert torch.allclose(on.taps["lidar"], gl * (tgt / nl), rtol=1e-12, atol=0)
    assert float(on.taps["camera"].norm()) == pytest.approx(tgt, rel=1e-12)
    assert float(on.taps["lidar"].norm()) == pytest.approx(tgt, rel=1e-12)
    g_off, g_on = grads(off), grads(on)
    for name in g_off:  # heads and fuser sit downstream of the balance: untouched
        if name.startswith(("det", "map", "fuse")):
            assert torch.equal(g_on[name], g_off[name]), name
    for name, scale in (("cam.weight", tgt / nc), ("lid.weight", tgt / nl)):  # branches: linear in the scale
        assert torch.allclose(g_on[name], g_off[name] * scale, rtol=1e-12, atol=1e-16)
    assert diag["modality/ratio"] == pytest.approx(nc / nl, rel=1e-12)
    assert diag["modality/camera_norm"] == pytest.approx(nc, rel=1e-12)
    assert diag["modality/camera_norm_after"] == pytest.approx(tgt, rel=1e-12)
    assert diag["modality/lidar_norm_after"] == pytest.approx(tgt, rel=1e-12)


def test_intra_zero_side_leaves_gradients():
    def cut_lidar(model):
        with torch.no_grad():
            model.fuse.weight[:, 3:] = 0.0  # the LiDAR BEV no longer reaches z: its gradient is exactly 0

    off, _, _ = calibrated("sum", intra=False, prepare=cut_lidar)
    on, _, diag = calibrated("sum", intra=True, prepare=cut_lidar)
    assert torch.equal(on.taps["lidar"], torch.zeros_like(on.taps["lidar"]))
    for name, g in grads(off).items():
        assert torch.equal(grads(on)[name], g), name
    assert diag["modality/ratio"] == float("inf")
    assert diag["modality/camera_scale"] == 1.0 and diag["modality/lidar_scale"] == 1.0


def test_intra_disabled_is_identity():
    x = torch.randn(2, 3, requires_grad=True)
    y = torch.randn(2, 4, requires_grad=True)
    plain_identity = ModalityGradientBalance(enabled=False, measure=False)
    a, b = plain_identity(x, y)
    assert a is x and b is y and plain_identity.diagnostics() == {}
    measuring = ModalityGradientBalance(enabled=False)
    a, b = measuring(x, y)
    (3 * a.sum() + b.sum()).backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0)) and torch.equal(y.grad, torch.ones_like(y))
    d = measuring.diagnostics()
    assert d["modality/ratio"] == pytest.approx(3 * 6 ** 0.5 / 8 ** 0.5)
    assert d["modality/camera_scale"] == 1.0
    with torch.no_grad():
        a, b = ModalityGradientBalance()(x, y)
    assert a is x and b is y


def test_static_weights_are_weighted_loss_gradients():
    w = (0.3, 1.7)
    model, _, diag = calibrated("static", weights=w)
    ref, _ = plain(w)
    for name, g in grads(ref).items():
        assert torch.allclose(grads(model)[name], g, rtol=1e-12, atol=1e-16), name
    assert (diag["coef/det"], diag["coef/map"]) == w


def test_uncertainty_weights_and_log_var_gradients():
    s = torch.tensor([0.4, -0.7], dtype=torch.float64)
    model = Toy(ModalityGradientBalance(enabled=False), 0)
    cal = GradientCalibrator(TASKS, "uncertainty").double()
    assert cal.log_vars is not None and [p for p in cal.parameters()] == [cal.log_vars]
    with torch.no_grad():
        cal.log_vars.copy_(s)
    x, y = batch()
    diag = cal.backward(model.trunk(*x), lambda zd: model.losses(zd, y), model.head_params(), 0)
    ref, losses = plain(tuple(float(v) for v in torch.exp(-s)))
    for name, g in grads(ref).items():
        assert torch.allclose(grads(model)[name], g, rtol=1e-12, atol=1e-16), name
    loss = torch.tensor([losses[t] for t in TASKS], dtype=torch.float64)
    assert torch.allclose(cal.log_vars.grad, 1 - torch.exp(-s) * loss, rtol=1e-14)
    assert diag["coef/map"] == pytest.approx(float(np.exp(0.7)))
    assert diag["log_var/det"] == pytest.approx(0.4)


@pytest.mark.parametrize("seed", [0, 10])  # toy task gradients at z: cosine +0.07 (seed 0), -0.07 (seed 10)
@pytest.mark.parametrize("inter", ["pcgrad", "mgda", "cagrad", "aligned"])
def test_manipulation_methods_on_toy(inter, seed):
    """Trunk gets J^T sum_t c_t g_t with c from the method's own function on the reference Gram; heads raw."""
    _, z, gs = task_grads_at_z(seed)
    a = torch.stack([g.reshape(-1) for g in gs])
    fn = {"pcgrad": lambda gram: pcgrad_coefficients(gram, pcgrad_orders(0, 5, 2)), "mgda": mgda_coefficients,
          "cagrad": cagrad_coefficients, "aligned": aligned_coefficients}[inter]
    c = fn(a @ a.T)
    model, _, diag = calibrated(inter, seed=seed, step=5)
    ref_model = Toy(ModalityGradientBalance(enabled=False), seed)
    x, _ = batch()
    zr = ref_model.trunk(*x)
    want = torch.autograd.grad(zr, ref_model.trunk_params(), (c @ a).view_as(zr))
    for p, w in zip(model.trunk_params(), want):
        assert torch.allclose(p.grad, w, rtol=1e-10, atol=1e-14)
    ref, _ = plain(seed=seed)
    for name, g in grads(ref).items():
        if name.startswith(("det", "map")):
            assert torch.equal(grads(model)[name], g), name
    assert [diag["coef/det"], diag["coef/map"]] == pytest.approx(c.tolist(), rel=1e-10)
    if inter == "pcgrad":  # projections happen exactly when the toy's task gradients conflict
        assert (diag["cos/det-map"] < 0) == (seed == 10) == (c.tolist() != [1.0, 1.0])


# ---------------------------------------------------------------- parameter-level PCGrad


def test_param_pcgrad_matches_naive_vectors():
    seed = 10  # the toy's two shared-parameter gradients conflict (cosine -0.28), so PCGrad projects
    ref_model = Toy(ModalityGradientBalance(enabled=False), seed)
    x, y = batch()
    losses = ref_model.losses(ref_model.trunk(*x), y)
    shared = ref_model.trunk_params()
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(losses[t], shared, retain_graph=True)])
            for t in TASKS]
    assert torch.dot(rows[0], rows[1]) < 0
    want = naive_pcgrad(torch.stack(rows), pcgrad_orders(4, 9, 2))
    assert not torch.allclose(want, rows[0] + rows[1])

    model = Toy(ModalityGradientBalance(enabled=False), seed)
    losses = model.losses(model.trunk(*x), y)
    diag = parameter_pcgrad_backward(losses, model.trunk_params(), model.head_params(), seed=4, step=9)
    got = torch.cat([p.grad.reshape(-1) for p in model.trunk_params()])
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-15)
    plain_model, _ = plain(seed=seed)
    for name, g in grads(plain_model).items():
        if name.startswith(("det", "map")):
            assert torch.equal(grads(model)[name], g), name
    assert diag["grad_norm/det"] == pytest.approx(float(rows[0].norm()), rel=1e-12)
    assert diag["cos/det-map"] < 0


# ---------------------------------------------------------------- interface and errors


@pytest.mark.parametrize("inter", INTER_METHODS)
def test_non_finite_loss_reaches_grads_without_solver_error(inter):
    model = Toy(ModalityGradientBalance(), 0)
    cal = GradientCalibrator(TASKS, inter, [1.0, 1.0]).double()
    x, y = batch()
    y["det"][0, 0, 0, 0] = float("inf")
    diag = cal.backward(model.trunk(*x), lambda zd: model.losses(zd, y), model.head_params(), 0, model.balance)
    assert not torch.isfinite(model.cam.weight.grad).all()
    assert diag["loss/det"] == float("inf") and diag["coef/det"] == 1.0


def test_every_config_method_builds():
    for name in INTER_METHODS:
        method = build_inter(name, 2, [1.0, 2.0])
        c = method.coefficients(torch.eye(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64), 0)
        assert c.shape == (2,) and c.dtype == torch.float64 and torch.isfinite(c).all()
    cal = GradientCalibrator.from_config(load_config("tiny"))
    assert cal.tasks == list(load_config("tiny").model.tasks)


@contextlib.contextmanager
def programming_error(match: str):
    """A ValueError naming the argument, and not a ConfigError: these are a caller's mistakes, which
    the CLI must not report as if the user's config were wrong."""
    with pytest.raises(ValueError, match=match) as info:
        yield
    assert not isinstance(info.value, ConfigError)


def test_bad_inputs_name_the_argument():
    with programming_error("inter: expected one of"):
        GradientCalibrator(TASKS, "gradnorm")
    with programming_error("inter_weights"):
        GradientCalibrator(TASKS, "static", [1.0])
    with programming_error("tasks"):
        GradientCalibrator(["det", "det"])
    with programming_error("target"):
        ModalityGradientBalance("median")
    with programming_error("gram"):
        imtl_coefficients(torch.ones(2, 3))
    model = Toy(ModalityGradientBalance(enabled=False), 0)
    cal = GradientCalibrator(TASKS)
    x, y = batch()
    with programming_error("losses_fn"):
        cal.backward(model.trunk(*x), lambda zd: {"det": model.losses(zd, y)["det"]}, model.head_params(), 0)
    with programming_error("head_params"):
        cal.backward(model.trunk(*x), lambda zd: model.losses(zd, y), {"occ": []}, 0)
    with programming_error("z: expected"):
        cal.backward(model.trunk(*x).detach(), lambda zd: model.losses(zd, y), model.head_params(), 0)


def test_brute_force_helpers_cover_the_simplex():
    """Guards the MGDA reference itself: the grid spans the simplex with the requested spacing."""
    g = simplex_grid(3, 10)
    assert np.allclose(g.sum(1), 1) and g.min() >= 0 and len(g) == 66
    assert {tuple(np.round(p, 6)) for p in np.eye(3)} <= {tuple(np.round(p, 6)) for p in g}
