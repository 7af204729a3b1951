"""`fuller train`: calibrated multi-task training, single process or torchrun data-parallel.

One step: trunk forward to z -> per-task head-only backward -> inter-task calibration -> one
backward through the trunk (intra-modality balancing happens inside it at the fuser input) ->
gradient average across ranks -> NaN/Inf guard -> clipping -> AdamW. `GradientCalibrator` does the
middle part; this module owns the loop, checkpoints and logs.
"""
from __future__ import annotations

import logging
import math
import os
import random
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fuller.config import FullerConfig, updated_config
from fuller.errors import UserInputError

from .batching import Batch, Collator
from .calibration import GradientCalibrator, TaskAdamW, TaskGradients, parameter_pcgrad_backward
from .checkpoint import load_checkpoint, restore_rng_states, save_checkpoint
from .dataset import TrainingSet
from .model import FullerModel, build_model
from .parallel import average_gradients, broadcast_module, init_from_env
from .run_log import RunLog
from .sampler import StepBatchSampler

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


def warmup_cosine(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """LR factor: linear warm-up from 1/warmup to 1, then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Trainer:
    """Model, calibrator, optimiser and scheduler of one run, and the step that updates them."""

    cfg: FullerConfig
    model: FullerModel
    calibrator: GradientCalibrator
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    step: int = 0
    skipped_steps: int = 0
    dropped_voxels: int = 0
    parameter_pcgrad: bool = False  # the expensive reference (training-cost benchmark only)
    task_grads: TaskGradients | None = None  # this step's per-task gradients (train.per_task_adam)

    @classmethod
    def create(cls, cfg: FullerConfig, device: torch.device, parameter_pcgrad: bool = False) -> "Trainer":
        seed_everything(cfg.train.seed)
        model = build_model(cfg).to(device)
        calibrator = GradientCalibrator.from_config(cfg).to(device)
        params = [*model.parameters(), *calibrator.parameters()]
        t = cfg.train
        if t.per_task_adam:
            if parameter_pcgrad:
                raise ValueError("parameter_pcgrad: the parameter-level reference has no per-task moments; "
                                 "got train.per_task_adam=true")
            parts = model.shared_parts()
            scoped = [p for name in t.per_task_adam_parts for p in parts.get(name, [])]
            optimizer = TaskAdamW(params, scoped, len(cfg.model.tasks), lr=t.lr,
                                  weight_decay=t.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(t.warmup_steps, t.steps, t.min_lr_ratio))
        return cls(cfg, model, calibrator, optimizer, scheduler, device, parameter_pcgrad=parameter_pcgrad)

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "calibrator": self.calibrator.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "skipped_steps": self.skipped_steps, "dropped_voxels": self.dropped_voxels}

    def load_state(self, payload: dict) -> None:
        self.model.load_state_dict(payload["model"])
        self.calibrator.load_state_dict(payload["calibrator"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.step = payload["step"]
        self.skipped_steps = payload["skipped_steps"]
        self.dropped_voxels = payload["dropped_voxels"]
        restore_rng_states(payload["rng"])

    def backward(self, batch: Batch) -> dict[str, float]:
        """Calibrated backward pass of a batch: leaves gradients averaged over ranks in ``.grad``
        and returns the step's record (losses, calibration diagnostics, gradient norm)."""
        self.model.train()
        inputs, targets = batch.inputs.to(self.device), batch.targets.to(self.device)
        parts: dict[str, float] = {}

        def losses_fn(z: torch.Tensor) -> dict[str, torch.Tensor]:
            losses, loss_parts = self.model.task_losses(z, targets)
            parts.update(loss_parts)
            return losses

        amp = self.cfg.train.amp and self.device.type == "cuda"
        record = (TaskGradients(len(self.cfg.model.tasks), self.model.shared_parameters(),
                                kept=self.optimizer.per_task_parameters())
                  if self.cfg.train.per_task_adam else None)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
            if self.parameter_pcgrad:
                losses = losses_fn(self.model.trunk(inputs))
                diagnostics = parameter_pcgrad_backward(losses, self.model.shared_parameters(),
                                                        self.model.head_parameters(), seed=self.cfg.train.seed,
                                                        step=self.step)
            elif self.per_task_split:
                z, split = self.model.split_trunk(inputs)
                t = self.cfg.train
                diagnostics = self.calibrator.backward(z, losses_fn, self.model.head_parameters(), self.step,
                                                       split=split, equalise=t.intra and t.intra_mode == "per_task",
                                                       intra_target=t.intra_target, record=record)
            else:
                z = self.model.trunk(inputs)
                diagnostics = self.calibrator.backward(z, losses_fn, self.model.head_parameters(), self.step,
                                                       record=record)
        diagnostics.update(self.model.balance.diagnostics())
        average_gradients(self.parameters())
        if record is not None:
            record.average()
        self.task_grads = record
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        return {"step": self.step, "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                **{f"loss_part/{k}": v for k, v in parts.items()}, **diagnostics}

    @property
    def per_task_split(self) -> bool:
        """Whether the step sends each task's gradient back to the fuser input separately (per-task
        intra calibration, or its diagnostics)."""
        t = self.cfg.train
        return (t.intra and t.intra_mode == "per_task") or t.task_diagnostics

    def adam_diagnostics(self) -> dict[str, float]:
        """Min, median and max over each branch's parameters of AdamW's step normaliser sqrt(v_hat)
        (the bias-corrected running RMS of the gradient), ``adam_rms/<branch>/{min,median,max}``:
        a gradient scale that such a normaliser absorbs leaves the update unchanged."""
        beta2 = self.optimizer.param_groups[0]["betas"][1]
        branches = {"camera": self.model.camera, "lidar": self.model.lidar, "fusion": self.model.fuser,
                    **{f"head_{t}": h for t, h in self.model.heads.items()}}
        out = {}
        for name, module in branches.items():
            if module is None:
                continue
            rms = []
            for p in module.parameters():
                state = self.optimizer.state.get(p, {})
                if "exp_avg_sq" in state:  # per-task moments (TaskAdamW) carry a leading task axis
                    steps = state["step"].reshape(state["step"].shape + (1,) * p.dim()).to(state["exp_avg_sq"])
                    v_hat = state["exp_avg_sq"] / (1.0 - beta2 ** steps)
                    rms.append(v_hat.sqrt().reshape(-1).float().cpu())
            if rms:
                values = torch.cat(rms)
                values = values[torch.isfinite(values) & (values > 0)]
                if len(values):
                    out.update({f"adam_rms/{name}/min": float(values.min()),
                                f"adam_rms/{name}/median": float(values.median()),
                                f"adam_rms/{name}/max": float(values.max())})
        return out

    @torch.no_grad()
    def held_out_losses(self, batches: list[Batch]) -> dict[str, float]:
        """Mean task losses over held-out batches in evaluation mode, ``val_loss/<task>``."""
        self.model.eval()
        totals: dict[str, float] = {}
        for batch in batches:
            inputs, targets = batch.inputs.to(self.device), batch.targets.to(self.device)
            losses, _ = self.model.task_losses(self.model.trunk(inputs), targets)
            for t, v in losses.items():
                totals[t] = totals.get(t, 0.0) + float(v) / len(batches)
        self.model.train()
        return {f"val_loss/{t}": v for t, v in totals.items()}

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def update(self, record: dict[str, float], dropped_voxels: int = 0) -> dict[str, float]:
        """Apply the gradients of `backward` unless they or the losses are not finite (then the
        step is skipped and counted); the schedule advances either way."""
        total_loss = sum(v for k, v in record.items() if k.startswith("loss/"))
        if not (math.isfinite(record["grad_norm"]) and math.isfinite(total_loss)):
            self.skipped_steps += 1
            log.warning("step %d: non-finite loss or gradient (loss %s, grad norm %s); step skipped "
                        "(%d so far)", self.step, total_loss, record["grad_norm"], self.skipped_steps)
        else:
            clip = self.cfg.train.grad_clip
            if clip > 0:
                total = float(torch.nn.utils.clip_grad_norm_(self.parameters(), clip))
                if self.task_grads is not None:  # the factor clip_grad_norm_ applied, to the tasks' parts too
                    self.task_grads.scale_(min(1.0, clip / (total + 1e-6)))
            if self.task_grads is not None:
                self.optimizer.set_task_gradients(self.task_grads)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.task_grads = None
        with warnings.catch_warnings():  # a skipped step still advances the schedule, on purpose
            warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"))
            self.scheduler.step()
        self.dropped_voxels += dropped_voxels
        self.step += 1
        return {**record, "skipped_steps": self.skipped_steps, "dropped_voxels": self.dropped_voxels}

    def train_step(self, batch: Batch) -> dict[str, float]:
        return self.update(self.backward(batch), batch.dropped_voxels)


def run_finished(run: str | Path, steps: int) -> bool:
    """Whether ``run`` holds a checkpoint that reached ``steps`` (the demo and the ablation reuse it)."""
    ckpt = Path(run) / CHECKPOINT
    return ckpt.is_file() and load_checkpoint(ckpt)[1]["step"] >= steps


def _open_run(out: Path, resume: bool) -> Path | None:
    ckpt = out / CHECKPOINT
    if resume:
        if not ckpt.is_file():
            raise UserInputError(f"{out}: --resume given but there is no {CHECKPOINT} to resume from")
        return ckpt
    if ckpt.is_file():
        raise FileExistsError(f"{out}: already holds a run ({CHECKPOINT}); pass --resume to continue it "
                              f"or choose another --out")
    return None


def loader_workers(wanted: int) -> int:
    """``train.num_workers``, at most one per CPU this process may run on: more only compete for them."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if wanted > cpus:
        log.info("train.num_workers=%d: using %d loader workers, one per available CPU", wanted, cpus)
    return min(wanted, cpus)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _held_out_batches(cfg: FullerConfig, data_root: str | Path) -> list[Batch]:
    """``train.val_samples`` keyframes spread evenly over the val split, collated once: the fixed
    held-out set whose losses the run logs every ``train.val_every`` steps."""
    from fuller.data import NuScenesDataset

    reader = NuScenesDataset(cfg, data_root, cfg.data.val_split)
    picks = np.unique(np.linspace(0, len(reader) - 1, min(cfg.train.val_samples, len(reader))).round().astype(int))
    samples = [reader[int(i)] for i in picks]
    collate, size = Collator(cfg), cfg.train.batch_size
    return [collate(samples[i:i + size]) for i in range(0, len(samples), size)]


def train(cfg: FullerConfig, data_root: str | Path, out: str | Path, *, resume: bool = False,
          device: torch.device | None = None, progress: bool = True, dataset: Dataset | None = None,
          stop_at: int | None = None) -> Path:
    """Train to ``cfg.train.steps``, checkpointing to ``out/checkpoint.pt``; returns its path.

    ``stop_at`` pauses the run after that step (checkpointed; ``resume=True`` continues it on the
    same schedule), for runs split across time budgets.
    """
    out = Path(out)
    device = device or default_device()
    rank, world, device = init_from_env(device)
    resume_from = _open_run(out, resume)
    payload = None
    if resume_from is not None:
        saved_cfg, payload = load_checkpoint(resume_from, map_location=device)
        saved_cfg = updated_config(saved_cfg, {"train.steps": cfg.train.steps})
        if saved_cfg != cfg:
            log.warning("%s: resuming with the checkpoint's config; the one given differs (only train.steps "
                        "may change on resume)", resume_from)
        cfg = saved_cfg
    trainer = Trainer.create(cfg, device)
    if payload is not None:
        trainer.load_state(payload)
    broadcast_module(trainer.model)
    if dataset is None:
        dataset = TrainingSet.open(cfg, data_root, cfg.data.train_split)
    t = cfg.train
    last = t.steps if stop_at is None else min(stop_at, t.steps)
    sampler = StepBatchSampler(len(dataset), t.batch_size, t.seed, trainer.step, last, rank, world)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=Collator(cfg),
                        num_workers=loader_workers(t.num_workers))
    held_out = _held_out_batches(cfg, data_root) if t.val_every > 0 and rank == 0 else []
    run_log = RunLog(out, resume_step=trainer.step if resume_from else None) if rank == 0 else None
    bar = tqdm(total=t.steps, initial=trainer.step, desc="train", unit="step", disable=not progress or rank != 0,
               dynamic_ncols=True)
    samples_done, clock = 0, time.perf_counter()
    try:
        for batch in loader:
            record = trainer.train_step(batch)
            samples_done += batch.inputs.batch_size * world
            if record["step"] % t.log_every == 0 or trainer.step == t.steps:
                elapsed = time.perf_counter() - clock
                record["samples_per_s"] = samples_done / max(elapsed, 1e-9)
                if t.task_diagnostics:  # copies every optimiser state to the host: study runs only
                    record.update(trainer.adam_diagnostics())
                if held_out and (record["step"] % t.val_every == 0 or trainer.step == t.steps):
                    record.update(trainer.held_out_losses(held_out))
                samples_done, clock = 0, time.perf_counter()
                if run_log:
                    run_log.write(record)
                losses = {k[5:]: v for k, v in record.items() if k.startswith("loss/")}
                bar.set_postfix({**{k: f"{v:.3f}" for k, v in losses.items()},
                                 "samples/s": f"{record['samples_per_s']:.2f}"})
            bar.update(1)
            if trainer.step % t.checkpoint_every == 0 or trainer.step == last:
                broadcast_module(trainer.model)  # one set of BatchNorm statistics: rank 0's
                if rank == 0:
                    save_checkpoint(out / CHECKPOINT, cfg, trainer.step, **trainer.state())
    finally:
        bar.close()
        if run_log:
            run_log.close()
    return out / CHECKPOINT
