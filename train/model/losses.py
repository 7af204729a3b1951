"""Focal losses shared by the task heads.

Both focal losses down-weight the easy cells that dominate a BEV raster (almost every cell is
background), so the few object centres and map pixels drive the gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("none", "sum", "mean")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction: expected one of {list(REDUCTIONS)}, got {reduction!r}")


def _check_same_shape(pred: torch.Tensor, target: torch.Tensor, pred_name: str, target_name: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{target_name}: expected the shape of {pred_name} {tuple(pred.shape)}, "
                         f"got {tuple(target.shape)}")


def gaussian_focal_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0,
                        reduction: str = "sum", eps: float = 1e-12) -> torch.Tensor:
    """CenterNet's focal loss on probabilities ``pred`` against a Gaussian-splatted ``target``.

    Cells where the target is exactly 1 are positives, weighted by ``(1 - p)**alpha``; every other
    cell is a negative whose weight ``(1 - target)**beta`` fades near an object centre (and is 0 at
    it), so a peak one cell off is barely punished. Callers normalise the sum by the object count.
    """
    _check_same_shape(pred, target, "pred", "target")
    pos = target.eq(1).to(pred.dtype)
    neg = (1 - target).pow(beta)
    pos_loss = -(pred + eps).log() * (1 - pred).pow(alpha) * pos
    neg_loss = -(1 - pred + eps).log() * pred.pow(alpha) * neg
    return _reduce(pos_loss + neg_loss, reduction)


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
                       reduction: str = "mean") -> torch.Tensor:
    """RetinaNet's focal loss on logits against binary targets (multi-label: one sigmoid per channel).

    ``alpha`` < 0 turns off the class-balance factor, as in torchvision/BEVFusion.
    """
    _check_same_shape(logits, target, "logits", "target")
    target = target.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return _reduce(loss, reduction)
