"""The assembled network: torchvision-compatible backbone, shapes for every modality/task subset,
and the inference outputs' contract."""
from __future__ import annotations

import pytest
import torch

from fuller.config import updated_config
from fuller.train.batching import Collator
from fuller.train.model import build_model
from fuller.train.model.resnet import ResNet, load_torchvision_weights

# torchvision's resnet18 without its fc layer: 11,689,512 parameters minus fc's 512*1000 + 1000.
TORCHVISION_RESNET18_PARAMS_NO_FC = 11_689_512 - 513_000


def torchvision_resnet_keys(blocks: tuple[int, ...]) -> set[str]:
    """State-dict keys of torchvision's BasicBlock ResNet, written out from its module layout."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", *(f"bn1.{k}" for k in bn)}
    for i, n in enumerate(blocks, 1):
        for j in range(n):
            p = f"layer{i}.{j}"
            keys |= {f"{p}.conv1.weight", f"{p}.conv2.weight"}
            keys |= {f"{p}.bn1.{k}" for k in bn} | {f"{p}.bn2.{k}" for k in bn}
            if j == 0 and i > 1:
                keys |= {f"{p}.downsample.0.weight", *(f"{p}.downsample.1.{k}" for k in bn)}
    return keys


@pytest.mark.parametrize("depth,blocks", [(18, (2, 2, 2, 2)), (34, (3, 4, 6, 3))])
def test_resnet_state_dict_matches_torchvision_layout(depth, blocks):
    model = ResNet(depth, 64)
    assert set(model.state_dict()) == torchvision_resnet_keys(blocks)
    if depth == 18:
        assert sum(p.numel() for p in model.parameters()) == TORCHVISION_RESNET18_PARAMS_NO_FC
        assert model.state_dict()["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)


def test_resnet_loads_a_torchvision_file_and_names_mismatches(tmp_path):
    source = ResNet(18, 64)
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in source.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    torch.save(state, tmp_path / "r18.pth")
    target = ResNet(18, 64)
    load_torchvision_weights(target, tmp_path / "r18.pth")
    assert torch.equal(target.state_dict()["layer3.1.conv2.weight"], state["layer3.1.conv2.weight"])
    with pytest.raises(ValueError, match="r18.pth.*shape mismatches.*conv1.weight"):
        load_torchvision_weights(ResNet(18, 32), tmp_path / "r18.pth")


def test_resnet_strides():
    feats = ResNet(18, 8)(torch.zeros(1, 3, 64, 160))
    assert [f.shape[-2:] for f in feats] == [(8, 20), (4, 10), (2, 5)]


@pytest.mark.parametrize("modalities,tasks", [(["camera", "lidar"], ["det", "map"]), (["camera"], ["map"]),
                                              (["lidar"], ["det"]), (["lidar"], ["det", "map"])])
def test_every_subset_builds_trains_and_predicts(small_cfg, small_samples, modalities, tasks):
    cfg = updated_config(small_cfg, {"model.modalities": modalities, "model.tasks": tasks})
    torch.manual_seed(0)
    model = build_model(cfg)
    assert (model.camera is not None) == ("camera" in modalities)
    assert (model.lidar is not None) == ("lidar" in modalities)
    assert set(model.heads) == set(tasks)
    batch = Collator(cfg)(small_samples[:2])
    z = model.trunk(batch.inputs)
    assert z.shape == (2, cfg.model.decoder_out_channels, *cfg.geometry.det_grid.shape)
    losses, _ = model.task_losses(z, batch.targets)
    assert set(losses) == set(tasks) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"

    model.eval()
    with torch.no_grad():
        out = model(batch.inputs)
    if "det" in tasks:
        k = cfg.model.det_max_boxes
        assert out["boxes"].shape == (2, k, 9) and out["scores"].shape == (2, k) and out["labels"].shape == (2, k)
        assert bool((out["scores"][:, :-1] >= out["scores"][:, 1:]).all())
        assert int(out["labels"].max()) < cfg.geometry.num_classes
    if "map" in tasks:
        probs = out["map_probs"]
        assert probs.shape == (2, cfg.geometry.num_map_classes, *cfg.geometry.map_grid.shape)
        assert float(probs.min()) >= 0 and float(probs.max()) <= 1


def test_camera_branch_feels_the_image(small_cfg, small_samples):
    """The camera BEV changes where a camera looks when its image changes, proving the LSS path
    (depth net -> bev_pool with the calibration's geometry) is wired to the pixels."""
    cfg = updated_config(small_cfg, {"model.modalities": ["camera"]})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = Collator(cfg)(small_samples[:1])
    with torch.no_grad():
        bev = model.camera(batch.inputs.images, batch.inputs.pool)
        images = batch.inputs.images.clone()
        images[:, 0] = torch.randn_like(images[:, 0])  # CAM_FRONT only
        changed = (model.camera(images, batch.inputs.pool) - bev).abs().sum(dim=1)[0]
    nx, ny = changed.shape
    front = changed[:, ny // 2 + 4:].sum()  # CAM_FRONT looks along +y
    back = changed[:, : ny // 2 - 4].sum()
    assert front > 0 and front > 20 * back


def test_camera_branch_runs_with_cuda_autocast_dtypes(small_cfg, small_samples, monkeypatch):
    """CUDA autocast runs the depth softmax in float32 and the convolutions in bfloat16 (CPU autocast
    keeps softmax in bfloat16, so a CPU run never sees it). That policy, on CPU: softmax in float32
    under a bfloat16 autocast. The branch must run and agree with float32 to bfloat16 precision."""
    cfg = updated_config(small_cfg, {"model.modalities": ["camera"]})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    inputs = Collator(cfg)(small_samples[:1]).inputs
    with torch.no_grad():
        want = model.camera(inputs.images, inputs.pool)
        softmax = torch.Tensor.softmax
        monkeypatch.setattr(torch.Tensor, "softmax", lambda self, *a, **k: softmax(self.float(), *a, **k))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model.camera(inputs.images, inputs.pool)
    assert got.dtype == torch.bfloat16
    assert torch.linalg.vector_norm(got.float() - want) <= 0.05 * torch.linalg.vector_norm(want)
