"""The whole network, assembled from the config: encoders -> fuser -> decoder -> heads.

Any subset of modalities (camera, LiDAR) and tasks (det, map) is a config switch, as in
BEVFusion's ``BEVFusion`` model. Training splits the forward pass at the shared representation z
(``trunk`` then ``task_losses``) because FULLER calibrates task gradients there; inference runs
``forward`` end to end and returns decoded boxes and map probabilities, which is also what the
exported graph emits.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from fuller.config import FullerConfig
from fuller.train.calibration import FuserSplit, ModalityGradientBalance

from .bev_decoder import SECOND, SECONDFPN, ConvFuser
from .camera_encoder import CameraEncoder, PoolGeometry
from .det_head import CenterHead
from .lidar_encoder import SparseEncoder
from .map_head import MapHead


@dataclass
class ModelInputs:
    """Preprocessed network inputs of a batch; a modality the model lacks may be None."""

    batch_size: int
    images: torch.Tensor | None = None  # (B, N, 3, H, W) normalised
    pool: PoolGeometry | None = None  # BEV-pool geometry of the batch's calibrations
    voxel_features: torch.Tensor | None = None  # (V, 5) mean point per voxel
    voxel_coords: torch.Tensor | None = None  # (V, 4) int32: batch, ix, iy, iz
    voxel_count: torch.Tensor | None = None  # (1,) int32: valid rows of a fixed-capacity list (the graph's), or None

    def to(self, device: torch.device) -> "ModelInputs":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if value is not None and hasattr(value, "to") and name != "batch_size":
                moved[name] = value.to(device)
        return ModelInputs(**moved)


@dataclass
class Targets:
    """Ground truth of a batch, in each sample's (augmented) LiDAR frame."""

    gt_boxes: list[torch.Tensor]  # B x (M, 9)
    gt_labels: list[torch.Tensor]  # B x (M,)
    map_masks: torch.Tensor | None = None  # (B, C, Xm, Ym) bool

    def to(self, device: torch.device) -> "Targets":
        return Targets([b.to(device) for b in self.gt_boxes], [l.to(device) for l in self.gt_labels],
                       None if self.map_masks is None else self.map_masks.to(device))


class FullerModel(nn.Module):
    def __init__(self, cfg: FullerConfig) -> None:
        super().__init__()
        m = cfg.model
        self.modalities = list(m.modalities)
        self.tasks = list(m.tasks)
        bev_channels = []
        self.camera = self.lidar = None
        if "camera" in self.modalities:
            self.camera = CameraEncoder(cfg)
            bev_channels.append(self.camera.out_channels)
        if "lidar" in self.modalities:
            self.lidar = SparseEncoder(cfg)
            bev_channels.append(self.lidar.out_channels)
        whole = cfg.train.intra and cfg.train.intra_mode == "norm"
        self.balance = ModalityGradientBalance(enabled=whole and len(bev_channels) == 2,
                                               target=cfg.train.intra_target)
        self.fuser = ConvFuser(bev_channels, m.fuser_channels, m.norm)
        self.decoder = SECOND(m.fuser_channels, list(m.decoder_channels), list(m.decoder_layers), m.norm)
        self.decoder_neck = SECONDFPN(list(m.decoder_channels), m.decoder_out_channels, m.norm)
        heads = {"det": lambda: CenterHead(cfg, m.decoder_out_channels),
                 "map": lambda: MapHead(cfg, m.decoder_out_channels)}
        self.heads = nn.ModuleDict({t: heads[t]() for t in self.tasks})
        # Evaluation switch: zero one modality's BEV at the fuser input ("camera" or "lidar"), to
        # measure what each task takes from each sensor (the modality ablation of `fuller ablate`).
        self.zeroed_modality: str | None = None
        self.map_loss_weight = m.map_loss_weight

    def modality_bevs(self, inputs: ModelInputs, sparse_encoder: nn.Module | None = None) -> list[torch.Tensor]:
        """The BEV maps entering the fuser, camera first; gradient-balanced while training.

        ``sparse_encoder`` stands in for the trained LiDAR encoder: the export passes its folded
        layers (sparse index ops plus Gather and MatMul), which take the graph's fixed-capacity
        voxel list (features, coords, count) as it is."""
        bevs = []
        if self.camera is not None:
            bevs.append(self.camera(inputs.images, inputs.pool))
        if self.lidar is not None:
            features, coords = inputs.voxel_features, inputs.voxel_coords
            if sparse_encoder is not None:
                bevs.append(sparse_encoder(features, coords, inputs.voxel_count))
            else:
                if inputs.voxel_count is not None:
                    n = int(inputs.voxel_count[0])
                    features, coords = features[:n], coords[:n]
                bevs.append(self.lidar(features, coords, inputs.batch_size))
        if self.zeroed_modality is not None:
            if self.zeroed_modality not in self.modalities:
                raise ValueError(f"zeroed_modality: expected one of the model's modalities {self.modalities}, "
                                 f"got {self.zeroed_modality!r}")
            k = [m for m in ("camera", "lidar") if m in self.modalities].index(self.zeroed_modality)
            bevs[k] = torch.zeros_like(bevs[k])
        if len(bevs) == 2 and self.training and torch.is_grad_enabled():
            bevs = list(self.balance(*bevs))
        return bevs

    def trunk(self, inputs: ModelInputs, sparse_encoder: nn.Module | None = None) -> torch.Tensor:
        """Shared representation z on the detection grid, (B, decoder_out_channels, X, Y)."""
        return self.fuse_and_decode(self.modality_bevs(inputs, sparse_encoder))

    def fuse_and_decode(self, bevs: list[torch.Tensor]) -> torch.Tensor:
        """z from the modality BEVs (camera first): fuser, decoder, neck."""
        return self.decoder_neck(self.decoder(self.fuser(bevs)))

    def split_trunk(self, inputs: ModelInputs) -> tuple[torch.Tensor, FuserSplit]:
        """z computed from detached copies of the modality BEVs, and the cut that lets the
        calibration send each task's gradient back to the fuser input separately."""
        bevs = self.modality_bevs(inputs)
        leaves = [b.detach().requires_grad_(b.requires_grad) for b in bevs]
        names = [m for m in ("camera", "lidar") if m in self.modalities]
        params = [*self.fuser.parameters(), *self.decoder.parameters(), *self.decoder_neck.parameters()]
        return self.fuse_and_decode(leaves), FuserSplit(names, bevs, leaves, params,
                                                        list(self.decoder_neck.parameters()))

    def task_losses(self, z: torch.Tensor, targets: Targets) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Per-task total losses (what the calibration weighs) and their parts for logging."""
        losses, parts = {}, {}
        if "det" in self.heads:
            head = self.heads["det"]
            det = head.loss(head(z), targets.gt_boxes, targets.gt_labels)
            losses["det"] = det["heatmap"] + head.bbox_weight * det["bbox"]
            parts.update({f"det_{k}": float(v.detach()) for k, v in det.items()})
        if "map" in self.heads:
            head = self.heads["map"]
            losses["map"] = self.map_loss_weight * head.loss(head(z), targets.map_masks)
        return losses, parts

    def head_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {t: list(h.parameters()) for t, h in self.heads.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        head_ids = {id(p) for h in self.heads.values() for p in h.parameters()}
        return [p for p in self.parameters() if id(p) not in head_ids]

    def shared_parts(self) -> dict[str, list[nn.Parameter]]:
        """The shared parameters by part of the trunk (`SHARED_PARTS`): each branch present, and
        ``fusion``, the fuser, decoder and its neck where the modalities meet."""
        parts = {"camera": self.camera, "lidar": self.lidar,
                 "fusion": nn.ModuleList([self.fuser, self.decoder, self.decoder_neck])}
        return {name: list(module.parameters()) for name, module in parts.items() if module is not None}

    def predict(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        if "det" in self.heads:
            head = self.heads["det"]
            out["boxes"], out["scores"], out["labels"] = head.decode(head(z))
        if "map" in self.heads:
            head = self.heads["map"]
            out["map_probs"] = head.probabilities(head(z))
        return out

    def forward(self, inputs: ModelInputs, sparse_encoder: nn.Module | None = None) -> dict[str, torch.Tensor]:
        """Inference: boxes (B, K, 9), scores (B, K), labels (B, K), map_probs (B, C, Xm, Ym). The one
        stage order: evaluation, the exported graph and the PyTorch backend all run it."""
        return self.predict(self.trunk(inputs, sparse_encoder))


def build_model(cfg: FullerConfig) -> FullerModel:
    return FullerModel(cfg)
