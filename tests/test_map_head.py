"""MapHead: grid resampling against a linear ramp, losses against naive float64, parameter counts."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from fuller.config import BEVGrid, load_config, updated_config
from fuller.train.batching import Collator
from fuller.train.model import build_model
from fuller.train.model.losses import sigmoid_focal_loss
from fuller.train.model.map_head import BEVGridTransform, MapHead


def ramp(grid: BEVGrid, coeffs: list[tuple[float, float, float]]) -> np.ndarray:
    """(C, X, Y) float64: channel c is a_c x + b_c y + c_c at the cell centres of ``grid``."""
    xs, ys = grid.cell_centers()
    x, y = np.meshgrid(xs, ys, indexing="ij")
    return np.stack([a * x + b * y + c for a, b, c in coeffs])


COEFFS = [(0.03, -0.02, 0.5), (-0.01, 0.04, -0.3)]  # different x and y slopes: a swapped axis fails


def interior(inp: BEVGrid, out: BEVGrid) -> np.ndarray:
    """(Xo, Yo) bool: output centres with four input centres around them (bilinear is exact there)."""
    xi, yi = inp.cell_centers()
    xo, yo = out.cell_centers()
    mx = (xo >= xi[0]) & (xo <= xi[-1])
    my = (yo >= yi[0]) & (yo <= yi[-1])
    return mx[:, None] & my[None, :]


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_grid_transform_reproduces_a_linear_ramp(name):
    g = load_config(name).geometry
    transform = BEVGridTransform(g.det_grid, g.map_grid)
    x = torch.tensor(ramp(g.det_grid, COEFFS), dtype=torch.float32)[None].repeat(2, 1, 1, 1)
    got = transform(x)
    assert got.shape == (2, 2, *g.map_grid.shape)
    inside = interior(g.det_grid, g.map_grid)
    assert inside.mean() > 0.95
    want = ramp(g.map_grid, COEFFS)
    err = np.abs(got[1].double().numpy() - want)[:, inside]
    assert err.max() < 1e-5


def test_grid_transform_axes_on_non_square_grids():
    """Different extents, resolutions and cell counts along x and y, the output partly outside."""
    inp = BEVGrid(x_range=[-10.0, 10.0], y_range=[-6.0, 6.0], resolution=0.5)  # 40 x 24
    out = BEVGrid(x_range=[-12.0, 8.0], y_range=[-4.0, 5.0], resolution=0.25)  # 80 x 36
    transform = BEVGridTransform(inp, out)
    got = transform(torch.tensor(ramp(inp, COEFFS), dtype=torch.float32)[None])[0].double().numpy()
    assert got.shape == (2, 80, 36)
    inside = interior(inp, out)
    np.testing.assert_allclose(got[:, inside], ramp(out, COEFFS)[:, inside], atol=1e-5)
    xo, _ = out.cell_centers()
    assert np.abs(got[:, xo < -10.5]).max() == 0  # beyond the input's half-cell border: zero padding


def test_grid_transform_checks_the_input_grid():
    g = load_config("tiny").geometry
    with pytest.raises(ValueError, match=r"x: expected shape \(B, C, 128, 128\)"):
        BEVGridTransform(g.det_grid, g.map_grid)(torch.zeros(1, 2, 100, 100))


def head_params(cfg, kind: str) -> int:
    head = MapHead(load_config(cfg, [f"model.map_head={kind}"]), load_config(cfg).model.decoder_out_channels)
    return sum(p.numel() for p in head.parameters())


@pytest.mark.parametrize("name", ["tiny", "base"])
def test_parameter_counts(name):
    """Closed forms (BatchNorm: 2c each; 6 map classes): the light head is the smaller."""
    c = load_config(name).model.decoder_out_channels
    standard, light = head_params(name, "standard"), head_params(name, "light")
    classifier = 6 * c + 6
    assert standard == 2 * (9 * c * c + 2 * c) + classifier
    assert light == 2 * (9 * c + c * c + 2 * c) + classifier
    assert light < standard


@pytest.mark.parametrize("name,kind", [("tiny", "standard"), ("tiny", "light"), ("base", "light")])
def test_head_output_shape(name, kind):
    cfg = load_config(name, [f"model.map_head={kind}"])
    head = MapHead(cfg, 8).eval()
    with torch.no_grad():
        logits = head(torch.randn(1, 8, *cfg.geometry.det_grid.shape))
    assert logits.shape == (1, cfg.geometry.num_map_classes, *cfg.geometry.map_grid.shape)
    probs = MapHead.probabilities(logits)
    assert ((probs >= 0) & (probs <= 1)).all()
    torch.testing.assert_close(probs, 1 / (1 + torch.exp(-logits)))


def naive_focal(logits: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float) -> float:
    total = 0.0
    for x, t in zip(logits.double().flatten().tolist(), target.double().flatten().tolist()):
        p = 1 / (1 + math.exp(-x))
        p_t = p if t == 1 else 1 - p
        a_t = (alpha if t == 1 else 1 - alpha) if alpha >= 0 else 1.0
        total += -a_t * (1 - p_t) ** gamma * math.log(p_t)
    return total / logits.numel()


def naive_bce(logits: torch.Tensor, target: torch.Tensor) -> float:
    total = 0.0
    for x, t in zip(logits.double().flatten().tolist(), target.double().flatten().tolist()):
        p = 1 / (1 + math.exp(-x))
        total += -(t * math.log(p) + (1 - t) * math.log(1 - p))
    return total / logits.numel()


def test_sigmoid_focal_loss_against_naive():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5) * 3
    target = torch.rand(2, 3, 4, 5) > 0.7
    for alpha, gamma in ((0.25, 2.0), (0.6, 1.0), (-1.0, 2.0)):
        got = float(sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma))
        assert got == pytest.approx(naive_focal(logits, target, alpha, gamma), rel=1e-5)
    got = sigmoid_focal_loss(logits, target, reduction="sum")
    assert float(got) == pytest.approx(naive_focal(logits, target, 0.25, 2.0) * 120, rel=1e-5)
    with pytest.raises(ValueError, match="target: expected the shape of logits"):
        sigmoid_focal_loss(logits, target[0])


@pytest.mark.parametrize("kind", ["focal", "focal_mean", "bce"])
def test_head_loss_against_naive(kind):
    cfg = load_config("tiny", [f"model.map_loss={kind}"])
    head = MapHead(cfg, 8)
    torch.manual_seed(1)
    logits = torch.randn(2, 6, 5, 7) * 2
    masks = torch.rand(2, 6, 5, 7) > 0.5
    masks[:, 2] = torch.rand(2, 5, 7) > 0.9  # classes of different frequency: the reductions differ
    got = float(head.loss(logits, masks))
    if kind == "focal":  # BEVFusion: a mean per class, summed over classes, no alpha
        want = sum(naive_focal(logits[:, c], masks[:, c], -1.0, 2.0) for c in range(6))
    elif kind == "focal_mean":
        want = naive_focal(logits, masks, 0.25, 2.0)
    else:
        want = naive_bce(logits, masks)
    assert got == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="masks: expected a bool tensor of the logits' shape"):
        head.loss(logits, masks[:, :5])


def test_map_loss_weight_scales_the_task_loss(small_cfg, small_samples):
    losses = []
    for weight in (1.0, 3.0):
        torch.manual_seed(0)
        model = build_model(updated_config(small_cfg, {"model.map_loss_weight": weight})).eval()
        batch = Collator(small_cfg)(small_samples[:1])
        with torch.no_grad():
            z = model.trunk(batch.inputs)
            losses.append(float(model.task_losses(z, batch.targets)[0]["map"]))
    assert losses[1] == pytest.approx(3.0 * losses[0], rel=1e-6)


def test_head_checks_its_input():
    cfg = load_config("tiny")
    head = MapHead(cfg, 8)
    with pytest.raises(ValueError, match=r"z: expected shape \(B, 8, 128, 128\)"):
        head(torch.zeros(1, 16, 128, 128))


def test_map_head_exports_to_onnx_and_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install fuller[export])")
    cfg = load_config("tiny", ["model.map_head=light"])
    head = MapHead(cfg, 8).eval()
    torch.manual_seed(2)
    z = torch.randn(1, 8, 128, 128)
    path = tmp_path / "map.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(head, (z,), str(path), opset_version=17, dynamo=False, input_names=["z"],
                          output_names=["logits"])
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install fuller[export])")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"z": z.numpy()})
    with torch.no_grad():
        want = head(z)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)
