"""``python export/build_engine.py --fp16``: build the TensorRT engine of the exported graph.

A thin front end over `fuller.engine.tensorrt_build.build_engine` (``fuller build-engine`` is the
other one): defaults to ``exports/fuller.onnx`` -> ``exports/fuller.engine`` and its sidecar record
(``--int8``: ``exports/fuller.int8.onnx`` -> ``exports/fuller.int8.engine``).
Without TensorRT (or without an NVIDIA GPU) it prints one line saying what is missing and exits
with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fuller.engine.artifacts import DEFAULT_ONNX, sidecar_path
from fuller.engine.tensorrt_build import build_engine, check_precision
from fuller.export.quantize import int8_path
from fuller.errors import UserInputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", type=Path, default=DEFAULT_ONNX,
                        help=f"exported graph (default: {DEFAULT_ONNX}, where fuller export writes it)")
    parser.add_argument("--out", type=Path, default=None,
                        help="engine to write (default: the graph's path with the suffix .engine)")
    parser.add_argument("--fp16", action="store_true",
                        help="cast the graph to float16 first (inputs and outputs keep their types)")
    parser.add_argument("--int8", action="store_true",
                        help="build the INT8 graph of fuller quantize (default --onnx: exports/fuller.int8.onnx): "
                             "INT8 where its Q/DQ pairs say, float32 elsewhere")
    parser.add_argument("--workspace-gib", type=float, default=4.0,
                        help="workspace memory pool limit in GiB (default: 4)")
    parser.add_argument("--timing-cache", type=Path, default=None, metavar="PATH",
                        help="timing cache to read if it exists and to write after the build")
    parser.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="build_engine.py", description="Build a TensorRT engine (strongly typed) from the exported ONNX graph.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.workspace_gib <= 0:
        parser.error(f"--workspace-gib: expected a positive number, got {args.workspace_gib}")
    if args.out is None:
        args.out = graph_path(args).with_suffix(".engine")
    return args


def graph_path(args: argparse.Namespace) -> Path:
    """``--onnx``; with ``--int8`` and no ``--onnx``, the INT8 graph beside the default export."""
    return int8_path(DEFAULT_ONNX) if args.int8 and args.onnx == DEFAULT_ONNX else args.onnx


def check_int8_graph(path: Path, fp16: bool = False) -> None:
    """`check_precision` of the INT8 graph at ``path`` before TensorRT is imported, so that a
    machine without TensorRT still says what is wrong with the graph."""
    import onnx

    if not path.is_file():
        raise UserInputError(f"{path}: no INT8 graph there; make one with fuller quantize --data DIR --out {path}")
    check_precision(onnx.load(str(path)), path, fp16=fp16, int8=True)


def run(args: argparse.Namespace, prog: str = "build_engine") -> int:
    """Build as the parsed arguments say; one line on stdout (done) or stderr (what is wrong, exit 2).
    An INT8 graph is checked first (`check_int8_graph`), with or without TensorRT here."""
    onnx_path = graph_path(args)
    try:
        if args.int8:
            check_int8_graph(onnx_path, args.fp16)
        engine = build_engine(onnx_path, args.out, fp16=args.fp16, int8=args.int8, workspace_gib=args.workspace_gib,
                              timing_cache=args.timing_cache, verbose=args.verbose)
    except UserInputError as exc:
        print(f"{prog}: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, whatever the message
        return 2
    precision = "int8" if args.int8 else "fp16" if args.fp16 else "fp32"
    print(f"{prog}: wrote {engine} ({precision}, strongly typed) and its record "
          f"{sidecar_path(engine)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
