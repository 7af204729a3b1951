"""CenterHead: targets against closed forms, decode round trip, losses against naive float64, ONNX."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fuller.config import load_config
from fuller.train.model.det_head import CenterHead, gaussian_radius
from fuller.train.model.losses import gaussian_focal_loss

IN_CHANNELS = 8
# 64 x 48 cells of 0.8 m: small for speed, and not square, so a swapped x/y axis cannot pass.
SMALL_GRID = ("geometry.det_grid.x_range=[-25.6,25.6]", "geometry.det_grid.y_range=[-19.2,19.2]")


def small_cfg(*overrides: str):
    """The tiny config (detection grid 128 x 128 cells of 0.8 m) with a narrow head."""
    return load_config("tiny", ["model.head_channels=8", *overrides])


def make_head(*overrides: str, seed: int = 0) -> CenterHead:
    torch.manual_seed(seed)
    return CenterHead(small_cfg(*overrides), IN_CHANNELS)


def ref_radius(h: float, w: float, overlap: float = 0.1) -> float:
    """CenterPoint's gaussian_radius, literally: the three quadratics a r^2 + b r + c."""
    a1, b1, c1 = 1.0, h + w, w * h * (1 - overlap) / (1 + overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2, c2 = 4.0, 2 * (h + w), (1 - overlap) * w * h
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * overlap, -2 * overlap * (h + w), (overlap - 1) * w * h
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def ref_heatmap(cfg, boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Dense float64 splats: every cell of the grid evaluated for every box, then max."""
    grid = cfg.geometry.det_grid
    nx, ny = grid.shape
    heat = np.zeros((cfg.geometry.num_classes, nx, ny))
    ixs, iys = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    for box, label in zip(boxes.astype(np.float64), labels):
        cx, cy = (int(v) for v in grid.index(box[0], box[1]))
        if not (0 <= cx < nx and 0 <= cy < ny):
            continue
        r = max(2, int(ref_radius(box[4] / grid.resolution, box[3] / grid.resolution)))
        sigma = (2 * r + 1) / 6
        dx, dy = ixs - cx, iys - cy
        inside = (np.abs(dx) <= r) & (np.abs(dy) <= r)
        heat[label] = np.maximum(heat[label], np.where(inside, np.exp(-(dx**2 + dy**2) / (2 * sigma**2)), 0))
    return heat


def random_boxes(cfg, n: int, rng: np.random.Generator, classes: int | None = None):
    """(boxes (n, 9), labels (n,)) on distinct cells of the detection grid, away from the cell edges."""
    grid = cfg.geometry.det_grid
    nx, ny = grid.shape
    cells = rng.choice(nx * ny, size=n, replace=False)
    ix, iy = cells // ny, cells % ny
    x = grid.x_range[0] + (ix + rng.uniform(0.05, 0.95, n)) * grid.resolution
    y = grid.y_range[0] + (iy + rng.uniform(0.05, 0.95, n)) * grid.resolution
    boxes = np.stack([x, y, rng.uniform(-2, 1, n), rng.uniform(0.4, 3, n), rng.uniform(0.4, 12, n),
                      rng.uniform(0.8, 4, n), rng.uniform(-math.pi + 1e-3, math.pi - 1e-3, n),
                      rng.normal(0, 5, n), rng.normal(0, 5, n)], axis=1)
    labels = rng.integers(0, classes or cfg.geometry.num_classes, n)
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64)


def test_gaussian_radius_matches_centerpoint_formula():
    rng = np.random.default_rng(0)
    h, w = rng.uniform(0.3, 40, 200), rng.uniform(0.3, 40, 200)
    got = gaussian_radius(torch.tensor(h), torch.tensor(w), 0.1).numpy()
    want = np.array([ref_radius(a, b) for a, b in zip(h, w)])
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_heatmap_matches_dense_closed_form():
    head = make_head(*SMALL_GRID)
    cfg = small_cfg(*SMALL_GRID)
    rng = np.random.default_rng(1)
    boxes, labels = random_boxes(cfg, 40, rng, classes=3)  # few classes: many overlapping splats
    boxes[0, :2] = torch.tensor([-25.5, 19.0])  # corner cell: the splat is clipped by the grid
    outside = torch.tensor([[60.0, 0, 0, 2, 4, 1.5, 0, 0, 0]])
    t = head.targets([torch.cat([boxes, outside]), boxes[:5]], [torch.cat([labels, labels[:1]]), labels[:5]])
    want0 = ref_heatmap(cfg, boxes.numpy(), labels.numpy())
    want1 = ref_heatmap(cfg, boxes[:5].numpy(), labels[:5].numpy())
    np.testing.assert_allclose(t.heatmap[0].numpy(), want0, atol=1e-6)
    np.testing.assert_allclose(t.heatmap[1].numpy(), want1, atol=1e-6)
    assert t.mask.tolist() == [[True] * 40 + [False], [True] * 5 + [False] * 36]
    assert float(t.num_objects) == 45


def test_box_at_known_xy_lights_expected_cell():
    """(x, y) = (10.1, -20.5) on the tiny grid (x_min = y_min = -51.2, 0.8 m): ix = 76, iy = 38."""
    head = make_head()
    box = torch.tensor([[10.1, -20.5, 0.0, 2.0, 4.5, 1.6, 0.3, 0.0, 0.0]])
    t = head.targets([box], [torch.tensor([4])])
    heat = t.heatmap[0]
    assert heat[4, 76, 38] == 1.0
    assert (heat == 1).sum() == 1
    assert heat[4, 38, 76] == 0.0
    assert heat[[0, 1, 2, 3, 5, 6, 7, 8, 9]].abs().sum() == 0
    assert int(t.index[0, 0]) == 76 * 128 + 38
    np.testing.assert_allclose(t.box[0, 0, :2].numpy(), [61.3 / 0.8 - 76, 30.7 / 0.8 - 38], atol=1e-5)


def predictions_from_targets(head: CenterHead, t) -> dict[str, torch.Tensor]:
    """Perfect raw maps: logit of the target heatmap, regression targets written at centre cells."""
    batch, k, nx, ny = t.heatmap.shape
    reg = torch.zeros(batch, 10, nx * ny)
    for b, j in t.mask.nonzero().tolist():
        reg[b, :, t.index[b, j]] = t.box[b, j]
    reg = reg.view(batch, 10, nx, ny)
    preds = {"heatmap": torch.logit(t.heatmap.clamp(1e-6, 1 - 1e-6))}
    for name, (lo, hi) in {"reg": (0, 2), "height": (2, 3), "dim": (3, 6), "rot": (6, 8), "vel": (8, 10)}.items():
        preds[name] = reg[:, lo:hi]
    return preds


@pytest.mark.parametrize("grid", [(), SMALL_GRID], ids=["tiny", "small"])
def test_decode_of_targets_reproduces_boxes(grid):
    head = make_head(*grid)
    cfg = small_cfg(*grid)
    rng = np.random.default_rng(2)
    gt = [random_boxes(cfg, n, rng) for n in (30, 7)]
    outside = torch.tensor([[0.0, cfg.geometry.det_grid.y_range[0] - 0.1, 0, 2, 4, 1.5, 0, 0, 0]])  # ignored
    gt_boxes = [torch.cat([gt[0][0], outside]), gt[1][0]]
    gt_labels = [torch.cat([gt[0][1], torch.tensor([2])]), gt[1][1]]
    t = head.targets(gt_boxes, gt_labels)
    boxes, scores, labels = head.decode(predictions_from_targets(head, t))
    assert boxes.shape == (2, 200, 9) and scores.shape == (2, 200) and labels.dtype == torch.int64
    assert (scores[:, 1:] <= scores[:, :-1]).all()
    for b, (want_boxes, want_labels) in enumerate(gt):
        n = len(want_boxes)
        assert (scores[b, :n] > 0.999).all() and (scores[b, n:] < 0.999).all()
        got = boxes[b, :n].double()
        dist = torch.cdist(got[:, :2], want_boxes[:, :2].double())
        match = dist.argmin(dim=1)
        assert sorted(match.tolist()) == list(range(n))
        want = want_boxes[match].double()
        assert (labels[b, :n] == want_labels[match]).all()
        yaw_err = torch.atan2(torch.sin(got[:, 6] - want[:, 6]), torch.cos(got[:, 6] - want[:, 6]))
        assert yaw_err.abs().max() < 1e-4
        keep = [0, 1, 2, 3, 4, 5, 7, 8]
        np.testing.assert_allclose(got[:, keep].numpy(), want[:, keep].numpy(), atol=1e-4, rtol=0)


def test_peak_suppression_keeps_only_the_local_max():
    head = make_head(*SMALL_GRID)
    nx, ny = head.grid_shape
    heat = torch.full((1, 10, nx, ny), -10.0)
    heat[0, 3, 5, 5] = 3.0
    heat[0, 3, 5, 6] = 2.0  # inside the 3x3 neighbourhood of (5, 5): suppressed
    heat[0, 3, 5, 8] = 1.0  # two cells away: a peak of its own
    heat[0, 7, 5, 6] = 0.5  # another class at the same cell: not suppressed by class 3
    preds = {"heatmap": heat, "reg": torch.zeros(1, 2, nx, ny), "height": torch.zeros(1, 1, nx, ny),
             "dim": torch.zeros(1, 3, nx, ny), "rot": torch.zeros(1, 2, nx, ny), "vel": torch.zeros(1, 2, nx, ny)}
    preds["rot"][:, 1] = 1.0
    boxes, scores, labels = head.decode(preds)
    want = torch.sigmoid(torch.tensor([3.0, 1.0, 0.5]))
    torch.testing.assert_close(scores[0, :3], want)
    assert scores[0, 3] < 1e-4
    assert labels[0, :3].tolist() == [3, 3, 7]
    torch.testing.assert_close(boxes[0, :3, 0], torch.full((3,), 5 * 0.8 - 25.6))
    torch.testing.assert_close(boxes[0, :3, 1], torch.tensor([5, 8, 6]) * 0.8 - 19.2)


def naive_gaussian_focal(pred: torch.Tensor, target: torch.Tensor, alpha=2.0, beta=4.0) -> float:
    total = 0.0
    for p, g in zip(pred.double().flatten().tolist(), target.double().flatten().tolist()):
        if g == 1.0:
            total += -math.log(p) * (1 - p) ** alpha
        else:
            total += -math.log(1 - p) * p**alpha * (1 - g) ** beta
    return total


def test_gaussian_focal_loss_against_naive():
    torch.manual_seed(0)
    pred = torch.rand(3, 4, 5).clamp(1e-4, 1 - 1e-4)
    target = torch.rand(3, 4, 5)
    target[0, 1, 2] = target[2, 3, 4] = 1.0
    got = gaussian_focal_loss(pred, target, reduction="sum")
    assert float(got) == pytest.approx(naive_gaussian_focal(pred, target), rel=1e-5)
    got = gaussian_focal_loss(pred, target, alpha=1.5, beta=3.0, reduction="mean")
    assert float(got) == pytest.approx(naive_gaussian_focal(pred, target, 1.5, 3.0) / 60, rel=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        gaussian_focal_loss(pred, target, reduction="avg")


def test_head_loss_against_naive():
    """Heatmap focal and L1 box loss written from the boxes themselves, normalised by the count."""
    head = make_head(*SMALL_GRID)
    cfg = small_cfg(*SMALL_GRID)
    grid = cfg.geometry.det_grid
    rng = np.random.default_rng(3)
    boxes, labels = random_boxes(cfg, 6, rng)
    boxes[2, 7] = float("nan")  # a NaN velocity: that value is not supervised
    outside = torch.tensor([[80.0, 0, 0, 2, 4, 1.5, 0, 0, 0]])
    gt_boxes, gt_labels = [torch.cat([boxes, outside]), boxes[:2]], [torch.cat([labels, labels[:1]]), labels[:2]]
    torch.manual_seed(1)
    preds = head(torch.randn(2, IN_CHANNELS, *grid.shape))
    losses = head.loss(preds, gt_boxes, gt_labels)
    num = 8

    p = np.clip(1 / (1 + np.exp(-preds["heatmap"].detach().double().numpy())), 1e-4, 1 - 1e-4)
    g = np.stack([ref_heatmap(cfg, b.numpy(), lab.numpy()) for b, lab in zip(gt_boxes, gt_labels)])
    focal = np.where(g == 1, -np.log(p) * (1 - p) ** 2, -np.log(1 - p) * p**2 * (1 - g) ** 4).sum()
    assert float(losses["heatmap"].detach()) == pytest.approx(focal / num, rel=1e-4)

    weights = [1, 1, 1, 1, 1, 1, 1, 1, 0.2, 0.2]
    total = 0.0
    for b in range(2):
        for box in gt_boxes[b].double().tolist():
            cx, cy = (int(v) for v in grid.index(box[0], box[1]))
            if not (0 <= cx < grid.shape[0] and 0 <= cy < grid.shape[1]):
                continue
            gx, gy = (box[0] - grid.x_range[0]) / grid.resolution, (box[1] - grid.y_range[0]) / grid.resolution
            want = [gx - cx, gy - cy, box[2], math.log(box[3]), math.log(box[4]), math.log(box[5]),
                    math.sin(box[6]), math.cos(box[6]), box[7], box[8]]
            got = [float(preds[name][b, i, cx, cy].detach()) for name, n in
                   (("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2)) for i in range(n)]
            total += sum(w * abs(g - v) for w, g, v in zip(weights, got, want) if math.isfinite(v))
    assert float(losses["bbox"].detach()) == pytest.approx(total / num, rel=1e-4)
    (losses["heatmap"] + head.bbox_weight * losses["bbox"]).backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in head.parameters())


def test_loss_without_objects_is_finite():
    head = make_head(*SMALL_GRID)
    preds = head(torch.randn(1, IN_CHANNELS, 64, 48))
    losses = head.loss(preds, [torch.zeros(0, 9)], [torch.zeros(0, dtype=torch.int64)])
    assert losses["bbox"] == 0 and losses["heatmap"].isfinite()


def test_loss_decreases_when_fitting_one_target():
    head = make_head(*SMALL_GRID)
    rng = np.random.default_rng(4)
    boxes, labels = random_boxes(small_cfg(*SMALL_GRID), 5, rng)
    torch.manual_seed(2)
    z = torch.randn(1, IN_CHANNELS, 64, 48)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    history = []
    for _ in range(6):
        losses = head.loss(head(z), [boxes], [labels])
        total = losses["heatmap"] + head.bbox_weight * losses["bbox"]
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(float(total.detach()))
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.7 * history[0]


def test_bad_inputs_name_the_argument():
    head = make_head()
    with pytest.raises(ValueError, match="z: expected shape"):
        head(torch.randn(1, IN_CHANNELS, 128, 64))
    box = torch.zeros(1, 9)
    box[0, 3:6] = 1
    with pytest.raises(ValueError, match=r"gt_labels\[0\]: expected class indices"):
        head.targets([box], [torch.tensor([10])])
    with pytest.raises(ValueError, match=r"gt_boxes\[0\]: expected shape \(M, 9\)"):
        head.targets([torch.zeros(2, 7)], [torch.zeros(2, dtype=torch.int64)])
    with pytest.raises(ValueError, match="gt_boxes: expected positive sizes"):
        head.targets([torch.zeros(1, 9)], [torch.tensor([0])])
    with pytest.raises(ValueError, match=r"preds\['heatmap'\]"):
        head.decode({"heatmap": torch.zeros(1, 3, 128, 128)})


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    head, z, gt_boxes, gt_labels = _ddp_problem()
    losses = head.loss(head(z[rank:rank + 1]), gt_boxes[rank:rank + 1], gt_labels[rank:rank + 1])
    (losses["heatmap"] + head.bbox_weight * losses["bbox"]).backward()
    grads = torch.cat([p.grad.flatten() for p in head.parameters()])
    dist.all_reduce(grads)
    if rank == 0:
        torch.save(grads / world, f"{out_dir}/grads.pt")
    dist.destroy_process_group()


def _ddp_problem():
    """Two samples with unequal object counts: per-rank normalisation alone would be wrong."""
    torch.set_num_threads(1)
    head = make_head("model.norm=gn", *SMALL_GRID)
    cfg = small_cfg(*SMALL_GRID)
    rng = np.random.default_rng(5)
    a, b = random_boxes(cfg, 6, rng), random_boxes(cfg, 1, rng)
    torch.manual_seed(3)
    z = torch.randn(2, IN_CHANNELS, 64, 48)
    return head, z, [a[0], b[0]], [a[1], b[1]]


@pytest.mark.slow
def test_data_parallel_gradient_equals_whole_batch(tmp_path):
    """Two gloo ranks, one sample each: mean of rank gradients == one process on both samples."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    head, z, gt_boxes, gt_labels = _ddp_problem()
    losses = head.loss(head(z), gt_boxes, gt_labels)
    (losses["heatmap"] + head.bbox_weight * losses["bbox"]).backward()
    want = torch.cat([p.grad.flatten() for p in head.parameters()])
    torch.testing.assert_close(torch.load(tmp_path / "grads.pt"), want, rtol=1e-4, atol=1e-6)


class _Decoded(torch.nn.Module):
    def __init__(self, head: CenterHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, z: torch.Tensor):
        return self.head.decode(self.head(z))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, torch.nn.Module, torch.Tensor]:
    """Head forward + decode exported once by the TorchScript-based exporter at opset 17."""
    pytest.importorskip("onnx", reason="onnx is not installed (pip install fuller[export])")
    head = make_head(*SMALL_GRID).eval()
    torch.manual_seed(4)
    z = torch.randn(2, IN_CHANNELS, 64, 48)
    model = _Decoded(head).eval()
    path = tmp_path_factory.mktemp("onnx") / "det.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (z,), str(path), opset_version=17, dynamo=False, input_names=["z"],
                          output_names=["boxes", "scores", "labels"], dynamic_axes={"z": {0: "batch"}})
    return path, model, z


def test_decode_exports_to_onnx_and_matches_onnxruntime(exported):
    path, model, z = exported
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install fuller[export])")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {"z": z.numpy()})
    with torch.no_grad():
        want_boxes, want_scores, want_labels = model(z)
    np.testing.assert_array_equal(labels, want_labels.numpy())
    np.testing.assert_allclose(scores, want_scores.numpy(), atol=1e-6)
    np.testing.assert_allclose(boxes, want_boxes.numpy(), atol=1e-4, rtol=1e-5)


def test_exported_decode_uses_only_tensorrt_parser_ops(exported):
    import onnx

    from fuller.export.tensorrt_ops import tensorrt_onnx_ops

    path, _, _ = exported
    allowed = tensorrt_onnx_ops()
    used = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert used <= allowed, f"ops TensorRT's parser lacks: {sorted(used - allowed)}"
