"""The ``fuller`` command line: one subcommand per module in ``fuller.commands``.

Each module registers its own parser (see ``fuller/commands/__init__.py``); ``COMMANDS`` fixes the
order they appear in ``fuller --help``. Expected failures (a bad config value, a missing file) end
with one line on stderr and exit code 2, like argparse's own usage errors, rather than a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fuller.commands import (ablate_cmd, bench_cmd, config_cmd, data_cmd, demo_cmd, export_cmd, infer_cmd, ros_cmd,
                             selftest_cmd, show_cmd, study_cmd, train_cmd)
from fuller.config import ConfigError
from fuller.errors import UserInputError

COMMANDS = (demo_cmd, data_cmd, show_cmd, train_cmd, ablate_cmd, study_cmd, export_cmd, infer_cmd, ros_cmd, bench_cmd, config_cmd,
            selftest_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fuller", description="Camera + LiDAR 3D perception: configs, data, training, export."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(subparsers)
    return parser


def one_line(exc: BaseException) -> str:
    """The error's message on one line. An error raised in a DataLoader worker comes back with the
    worker's traceback in its message ("Caught DatasetError in DataLoader worker process 0. Original
    Traceback ..."); its last line is the original ``Type: message``."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, UserInputError, FileNotFoundError, FileExistsError) as exc:
        print(f"fuller: error: {one_line(exc)}", file=sys.stderr)
        return 2
