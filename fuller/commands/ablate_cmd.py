"""``fuller ablate``: single-task, naive, inter-only, intra-only and FULLER runs, one table."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ablate", help="train and evaluate the calibration ablation, print the table",
        description="Trains detection-only, map-only, naive multi-task (sum), inter only, intra only and full "
                    "FULLER with the same seed and step budget, evaluates each on the val split, and prints "
                    "mAP, NDS, mIoU and deltas vs naive (also OUT/ablation.md and OUT/ablation.json). "
                    "Finished runs in OUT are reused.")
    p.add_argument("--data", required=True, help="nuScenes dataset root")
    p.add_argument("--steps", type=int, required=True, help="training steps per variant")
    p.add_argument("--config", default="tiny", help="config name or YAML path (default tiny)")
    p.add_argument("--out", default="ablation", help="output folder (default ./ablation)")
    p.add_argument("--only", nargs="*", help="variant names to run (default all)")
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
    cfg = load_config(args.config, args.set)
    run_ablation(cfg, args.data, args.out, args.steps, variants)
    print((Path(args.out) / "ablation.md").read_text())
    return 0
