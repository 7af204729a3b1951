"""FULLER's multi-level gradient calibration (docs/training.md).

* inter-task, at the shared representation: :class:`GradientCalibrator` with one of the methods
  of :mod:`.inter` (``train.inter``);
* intra-modality, at the fuser input: :class:`ModalityGradientBalance` (``train.intra``,
  ``train.intra_target``, ``train.intra_mode=norm``), or task by task on the trunk cut at the
  fuser input, :func:`per_task_backward` (``train.intra_mode=per_task``; also the per-task
  diagnostics, ``train.task_diagnostics``);
* either level in AdamW's geometry: :class:`TaskAdamW`, one pair of moments per task for the shared
  parameters, fed the :class:`TaskGradients` the calibrator records (``train.per_task_adam``);
* the expensive comparison, parameter-level PCGrad: :func:`parameter_pcgrad_backward`;
* the collectives both need under data-parallel training live in :mod:`fuller.train.parallel`.
"""
from .calibrator import GradientCalibrator, combine, gram_diagnostics, gram_of
from .fuser_split import FuserSplit, per_task_backward, rms_scales
from ..parallel import all_reduce_sum, is_distributed, world_size
from .inter import (
    IMTL,
    MGDA,
    Bounded,
    IMTLRescaled,
    AlignedMTL,
    CAGrad,
    InterMethod,
    PCGrad,
    Static,
    Sum,
    Uncertainty,
    aligned_coefficients,
    bounded_coefficients,
    build_inter,
    cagrad_coefficients,
    imtl_coefficients,
    imtl_rescaled_coefficients,
    mgda_coefficients,
    pcgrad_coefficients,
    pcgrad_orders,
)
from .intra import ModalityGradientBalance
from .param_pcgrad import parameter_pcgrad_backward
from .task_moments import TaskAdamW, TaskGradients

__all__ = [
    "IMTL", "MGDA", "AlignedMTL", "Bounded", "CAGrad", "FuserSplit", "GradientCalibrator", "IMTLRescaled",
    "InterMethod", "ModalityGradientBalance", "PCGrad", "Static", "Sum", "TaskAdamW", "TaskGradients",
    "Uncertainty", "aligned_coefficients",
    "all_reduce_sum", "bounded_coefficients", "build_inter", "cagrad_coefficients", "combine",
    "gram_diagnostics", "gram_of", "imtl_coefficients", "imtl_rescaled_coefficients", "is_distributed",
    "per_task_backward", "rms_scales",
    "mgda_coefficients", "parameter_pcgrad_backward", "pcgrad_coefficients", "pcgrad_orders", "world_size",
]
