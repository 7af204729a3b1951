"""``fuller ablate``: single-task, naive, inter-only, intra-only and FULLER runs over paired seeds,
evaluated on held-out sets, summarised with confidence intervals."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ablate", help="train and evaluate the calibration ablation over seeds, print the tables",
        description="Trains detection-only, map-only, naive multi-task (sum), inter only, intra only and full "
                    "FULLER with the same step budget, once per seed (every variant gets the same seeds: same "
                    "initialisation and data order), evaluates each run on the val split and on --test-data, "
                    "and prints per set the mean mAP and mIoU over seeds with 95 % confidence intervals and the "
                    "paired differences against naive (also OUT/ablation.md and OUT/ablation.json). Finished "
                    "runs and evaluations in OUT are reused; an interrupted run resumes.")
    p.add_argument("--data", required=True, help="nuScenes dataset root (training and val split)")
    p.add_argument("--steps", type=int, required=True, help="training steps per run")
    p.add_argument("--config", default="tiny", help="config name or YAML path (default tiny)")
    p.add_argument("--out", default="ablation", help="output folder (default ./ablation)")
    p.add_argument("--only", nargs="*", help="variant names to run (default all)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=1, metavar="N", help="run seeds 0..N-1 (default 1)")
    seeds.add_argument("--seed-list", type=int, nargs="+", metavar="S", help="run these seeds instead")
    p.add_argument("--test-data", metavar="DIR", help="a second dataset root to evaluate every run on (test set)")
    p.add_argument("--test-split", default="all", help="split of --test-data (default all, from its splits.json)")
    p.add_argument("--test-version", help="release of --test-data (default the config's data.version)")
    p.add_argument("--modality-ablation", action="store_true",
                   help="also evaluate multi-task runs with the camera or the LiDAR BEV zeroed at the fuser "
                        "input (on the test set if given, else val)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fuller.config import load_config
    from fuller.errors import UserInputError
    from fuller.train.ablation import VARIANTS, run_ablation

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    variants = VARIANTS
    if args.only:
        known = {v.name: v for v in VARIANTS}
        unknown = [n for n in args.only if n not in known]
        if unknown:
            raise UserInputError(f"--only: unknown variants {unknown} (known: {list(known)})")
        variants = tuple(known[n] for n in args.only)
    if args.seed_list is not None:
        seeds = list(args.seed_list)
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise UserInputError(f"--seed-list: expected distinct non-negative seeds, got {seeds}")
    else:
        if args.seeds < 1:
            raise UserInputError(f"--seeds: expected a number of seeds >= 1, got {args.seeds}")
        seeds = list(range(args.seeds))
    if args.steps < 1:
        raise UserInputError(f"--steps: expected a number of steps >= 1, got {args.steps}")
    cfg = load_config(args.config, args.set)
    run_ablation(cfg, args.data, args.out, args.steps, variants, seeds, test_data=args.test_data,
                 test_split=args.test_split, test_version=args.test_version,
                 modality_ablation=args.modality_ablation)
    print((Path(args.out) / "ablation.md").read_text())
    return 0
