"""`fastmedsam` command line. Each sub-command lives in FastMedSAMLib/commands/<name>.py and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`. Command modules keep heavy imports
(torch, SimpleITK) inside their functions so that `fastmedsam --help` is instant."""
from __future__ import annotations

import argparse
import sys
from importlib import import_module
from typing import List, Optional

from .errors import FastMedSAMError

COMMANDS = ["segment", "demo", "eval", "bench", "models", "serve", "train_pause", "calibrate_pause", "tune_pause", "pause_curve",
            "pause_curve_3d", "pause_map", "export_onnx"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastmedsam", description="Fast interactive medical image segmentation with efficient SAM models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        import_module(f".commands.{name}", __package__).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # tables use "Δ", "³": never crash on an ASCII-only terminal
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage error (or --help): the exit code is the answer
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    try:
        return int(args.func(args) or 0)
    except FastMedSAMError as exc:
        print(f"fastmedsam: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
