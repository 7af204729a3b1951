"""Intra-gradient (modality) calibration at the fuser input.

The gradient that reaches the fuser splits into a camera-BEV part and a LiDAR-BEV part. When one
modality explains the training signal more easily, its branch receives most of the gradient and
the other branch learns slowly (modality bias). FULLER calibrates the two magnitudes to the same
level before they flow on into the branches: here both gradients are rescaled to a common target
norm, leaving their directions alone. One autograd function sees both gradients at once, so the
two scales come from one consistent measurement; under data-parallel training the squared norms
are summed across ranks first, so every rank applies the same two scales, equal to those one
process would compute on the whole batch.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fuller.config import INTRA_TARGETS

from ..parallel import all_reduce_sum, world_size


def sq_norm(g: Tensor) -> Tensor:
    """Squared L2 norm accumulated in float32 at least (float64 for float64 gradients)."""
    acc = torch.float64 if g.dtype == torch.float64 else torch.float32
    return torch.linalg.vector_norm(g, dtype=acc).to(torch.float64).square()


class _Balance(torch.autograd.Function):
    """Identity forward; backward hands both incoming gradients to the module's ``_calibrate``."""

    @staticmethod
    def forward(ctx, camera: Tensor, lidar: Tensor, module: "ModalityGradientBalance"):
        ctx.module = module
        return camera.view_as(camera), lidar.view_as(lidar)

    @staticmethod
    def backward(ctx, g_camera: Tensor, g_lidar: Tensor):
        g_camera, g_lidar = ctx.module._calibrate(g_camera, g_lidar)
        return g_camera, g_lidar, None


class ModalityGradientBalance(nn.Module):
    """``forward(camera_bev, lidar_bev) -> (camera_bev, lidar_bev)``: identity, calibrating backward.

    In backward, with ``n_c, n_l`` the whole-batch gradient norms, both gradients are scaled to the
    target ``T``: ``mean`` ((n_c + n_l)/2, default), ``max``, ``min``, ``camera`` (n_c) or ``lidar``
    (n_l); the camera gradient is multiplied by ``T/n_c`` and the LiDAR one by ``T/n_l``.

    * ``enabled=False``: gradients pass untouched (the same tensors). With ``measure=True`` (default)
      the norms are still measured and recorded, so an ablation without intra calibration still
      logs the modality ratio; ``enabled=False, measure=False`` is a plain identity.
    * If either gradient is zero (a branch that received no signal, e.g. absent modality), there
      is no magnitude to balance against: both gradients are left untouched (scales 1), no NaN.
    * Outside autograd (``torch.no_grad``, inference, export) or when neither input requires a
      gradient, forward returns its inputs and adds nothing to the graph.

    Under data-parallel training each rank's BEV holds different samples and, as the trainer
    averages rank gradients, the whole-batch gradient is the concatenation of the rank gradients
    divided by the world size W; the squared norms are summed across ranks and divided by W^2.
    The scales are invariant to that normalisation; the recorded norms are whole-batch norms.

    ``diagnostics()`` returns the last backward's measurements as Python floats (empty before one).
    """

    def __init__(self, target: str = "mean", enabled: bool = True, measure: bool = True):
        super().__init__()
        if target not in INTRA_TARGETS:
            raise ValueError(f"target: expected one of {list(INTRA_TARGETS)}, got {target!r}")
        self.target, self.enabled, self.measure = target, bool(enabled), bool(measure)
        self._record: Tensor | None = None

    def extra_repr(self) -> str:
        return f"target={self.target!r}, enabled={self.enabled}, measure={self.measure}"

    def forward(self, camera_bev: Tensor, lidar_bev: Tensor) -> tuple[Tensor, Tensor]:
        active = self.enabled or self.measure
        if not (active and torch.is_grad_enabled() and (camera_bev.requires_grad or lidar_bev.requires_grad)):
            return camera_bev, lidar_bev
        return _Balance.apply(camera_bev, lidar_bev, self)

    def _calibrate(self, g_camera: Tensor, g_lidar: Tensor) -> tuple[Tensor, Tensor]:
        sq = all_reduce_sum(torch.stack([sq_norm(g_camera), sq_norm(g_lidar)]))
        norms = sq.clamp_min(0.0).sqrt() / world_size()
        target = {
            "mean": norms.mean(),
            "max": norms.max(),
            "min": norms.min(),
            "camera": norms[0],
            "lidar": norms[1],
        }[self.target]
        both = (norms > 0).all() if self.enabled else torch.zeros((), dtype=torch.bool, device=norms.device)
        scales = torch.where(both, target / norms.clamp_min(torch.finfo(torch.float64).tiny),
                             torch.ones_like(norms))
        self._record = torch.cat([norms, norms * scales, scales, target.reshape(1)]).detach()
        if not self.enabled:
            return g_camera, g_lidar
        return g_camera * scales[0], g_lidar * scales[1]

    def diagnostics(self) -> dict[str, float]:
        """Norms before/after, scales, target and the camera/LiDAR norm ratio before calibration.

        Keys: ``modality/camera_norm``, ``modality/lidar_norm`` (before), ``modality/ratio``
        (camera/LiDAR before; inf if only LiDAR is zero, nan if both are),
        ``modality/camera_norm_after``, ``modality/lidar_norm_after``, ``modality/camera_scale``,
        ``modality/lidar_scale``, ``modality/target``.
        """
        if self._record is None:
            return {}
        cam, lid, cam_after, lid_after, cam_scale, lid_scale, target = self._record.tolist()
        ratio = cam / lid if lid > 0 else (math.inf if cam > 0 else math.nan)
        return {
            "modality/camera_norm": cam,
            "modality/lidar_norm": lid,
            "modality/ratio": ratio,
            "modality/camera_norm_after": cam_after,
            "modality/lidar_norm_after": lid_after,
            "modality/camera_scale": cam_scale,
            "modality/lidar_scale": lid_scale,
            "modality/target": target,
        }


def accumulate_grad(p: nn.Parameter, g: Tensor) -> None:
    """Add ``g`` to ``p.grad`` as backward would (taking ``g`` as the gradient when there is none)."""
    if p.grad is None:
        p.grad = g.to(p.dtype)
    else:
        p.grad.add_(g)
