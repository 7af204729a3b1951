"""``fuller study``: the calibration study (docs/results.md): data, sensor check, ablation, tables."""
from __future__ import annotations

import argparse
import logging


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "study", help="the calibration study: study-world data, paired seeds, held-out test set, tables",
        description="Writes the study world's train/val set and a test set of new towns (unless present), "
                    "trains the single-modality sensor check (one seed), the ablation of FULLER's readings over "
                    "paired seeds (and the controls with --controls), evaluates every run on val and test with "
                    "the modality ablation, and prints the tables. Everything in OUT is reused on a rerun.")
    p.add_argument("--out", default="study", help="output folder (default ./study)")
    p.add_argument("--seeds", type=int, default=3, help="paired seeds per variant (default 3)")
    p.add_argument("--steps", type=int, default=350, help="training steps per run (default 350)")
    p.add_argument("--controls", action="store_true", help="also train the control readings")
    p.add_argument("--sensors-only", action="store_true",
                   help="only the sensor check (single-task, single-sensor models, one seed) and the map prior: "
                        "whether the world holds the modality bias, before the ablation")
    p.add_argument("--lidar-blind-map", action="store_true",
                   help="the study world with the LiDAR blind to the map: no paint contrast, walkways flush with "
                        "the road, parked-car rows on unmapped yards too (make-data --study-world "
                        "--lidar-ground-contrast 0 --kerb-height 0 --unmapped-yards)")
    p.add_argument("--pretrain-camera", type=int, default=0, metavar="STEPS",
                   help="first train a camera-only map model for STEPS on towns of a third seed and start every "
                        "run's image backbone from it, as camera BEV models start from a pretrained backbone "
                        "(default 0: from scratch)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (all runs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fuller.errors import UserInputError
    from fuller.train.study import run_study

    if args.seeds < 1 or args.steps < 1:
        raise UserInputError(f"--seeds and --steps: expected integers >= 1, got {args.seeds} and {args.steps}")
    if args.pretrain_camera < 0:
        raise UserInputError(f"--pretrain-camera: expected a number of steps >= 0, got {args.pretrain_camera}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for path in run_study(args.out, args.seeds, args.steps, args.controls, args.set,
                          lidar_blind_map=args.lidar_blind_map, sensors_only=args.sensors_only,
                          pretrain_camera=args.pretrain_camera):
        print(path.read_text())
    return 0
