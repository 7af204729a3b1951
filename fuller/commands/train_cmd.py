"""``fuller train`` and ``fuller eval``: calibrated multi-task training and official evaluation."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fuller.config import INTER_METHODS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a model with multi-level gradient calibration",
        description="Train on a nuScenes root (real or synthetic). Single process, or data-parallel under "
                    "torchrun (gloo on CPU, nccl on GPU). Writes RUN/checkpoint.pt (atomic), "
                    "RUN/metrics.jsonl and RUN/tensorboard.")
    p.add_argument("--config", default="tiny", help="config name or YAML path (default tiny)")
    p.add_argument("--data", required=True, help="nuScenes dataset root")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--steps", type=int, help="total optimisation steps (default: the config's train.steps)")
    p.add_argument("--inter", choices=INTER_METHODS, help="task-gradient calibration (default: the config's, imtl)")
    p.add_argument("--intra", choices=("on", "off"), help="camera/LiDAR gradient-norm calibration (default on)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--stop-at", type=int, metavar="STEP",
                   help="pause after STEP (checkpointed); a later --resume continues on the same schedule")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. train.batch_size=4 model.tasks=[det]")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "eval", help="evaluate a checkpoint with the nuScenes devkit and map IoU",
        description="Predict a split, write the devkit results JSON, run DetectionEval (mAP, NDS, TP errors) "
                    "and the BEV map IoU (max over thresholds 0.35-0.65 and at 0.5), metrics.json, a table "
                    "and BEV pictures of predictions against ground truth.")
    e.add_argument("--checkpoint", required=True, help="checkpoint.pt of a run")
    e.add_argument("--data", required=True, help="nuScenes dataset root")
    e.add_argument("--split", default=None, help="devkit split (default: the config's val split)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--pictures", type=int, default=4, help="number of BEV pictures (default 4)")
    e.set_defaults(func=run_eval)


def overrides(args: argparse.Namespace) -> list[str]:
    items = list(args.set)
    if args.steps is not None:
        items.append(f"train.steps={args.steps}")
    if args.inter is not None:
        items.append(f"train.inter={args.inter}")
    if args.intra is not None:
        items.append(f"train.intra={'true' if args.intra == 'on' else 'false'}")
    return items


def run_train(args: argparse.Namespace) -> int:
    from fuller.config import load_config
    from fuller.train.trainer import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, overrides(args))
    checkpoint = train(cfg, args.data, args.out, resume=args.resume, stop_at=args.stop_at)
    print(f"checkpoint: {checkpoint}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from fuller.evaluation import format_table
    from fuller.train.predict import evaluate_model, load_model
    from fuller.train.trainer import default_device

    device = default_device()
    cfg, model = load_model(args.checkpoint, device)
    metrics = evaluate_model(model, cfg, args.data, args.split or cfg.data.val_split, args.out, device,
                             pictures=args.pictures)
    print(format_table(metrics))
    print(f"metrics: {Path(args.out) / 'metrics.json'}")
    return 0
