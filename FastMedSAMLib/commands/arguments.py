"""Argument types and options shared by the sub-commands, so that every command parses them the same way and
has the same defaults (`--device auto`, `--pause 0`, `--manifest ../shared/data/manifest.json`).

Type functions raise `argparse.ArgumentTypeError`: argparse prints the message and `cli.main` returns 2."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import List, Optional

from ..errors import PauseError
from ..pause.knob import validate_pause


def default_manifest() -> Path:
    """`$FASTMEDSAM_SHARED/data/manifest.json`, else `<repository>/../shared/data/manifest.json`."""
    shared = os.environ.get("FASTMEDSAM_SHARED")
    root = Path(shared) if shared else Path(__file__).resolve().parents[3] / "shared"
    return root / "data" / "manifest.json"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def name_list(text: str) -> List[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def pause_value(text: str) -> float:
    """One token-pausing knob in [0, 1]."""
    try:
        return validate_pause(float(text))
    except ValueError as exc:  # float() or PauseError
        message = str(exc) if isinstance(exc, PauseError) else f"pause must be a number in [0, 1], got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def pause_list(text: str) -> List[float]:
    """Comma-separated knob values in [0, 1], e.g. 0,0.25,0.5."""
    values = [pause_value(v) for v in name_list(text)]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated knob values in [0, 1], got {text!r}")
    return values


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: a GPU if torch sees one)")


def add_pause(p: argparse.ArgumentParser, several: bool = False) -> None:
    if several:
        p.add_argument("--pause", type=pause_list, default=[0.0],
                       help="token-pause knob values in [0, 1], e.g. 0,0.25,0.5,0.75,1 (default 0 = the plain model)")
    else:
        p.add_argument("--pause", type=pause_value, default=0.0,
                       help="token-pausing knob in [0, 1]: 0 = the plain model (default), higher = faster, less exact")


def add_crop(p: argparse.ArgumentParser) -> None:
    p.add_argument("--crop", type=float, default=None, metavar="FACTOR",
                   help="LiteMedSAM box prompts: encode only a window of FACTOR x the box's longer side around each "
                        "box, at the frame's scale (fewer tokens; default: the whole slice)")


def add_runtime(p: argparse.ArgumentParser, several: bool = False) -> None:
    from ..runtime import CPU_FALLBACK_RUNTIME, DEFAULT_RUNTIME, GPU_DEFAULT_RUNTIME, RUNTIMES

    default = (f"the device's: {DEFAULT_RUNTIME} on a CPU with bf16 instructions, else {CPU_FALLBACK_RUNTIME}; "
               f"{GPU_DEFAULT_RUNTIME} on a GPU")
    if several:
        p.add_argument("--runtimes", type=runtime_list, default=[None],
                       help=f"comma-separated runtimes side by side ({', '.join(RUNTIMES)}, or all; default {default})")
    else:
        p.add_argument("--runtime", choices=RUNTIMES, default=None,
                       help=f"how the model computes (default {default}; torch-exact = the reference modules)")


def runtime_list(text: str) -> List[str]:
    from ..runtime import RUNTIMES

    names = list(RUNTIMES) if text.strip() == "all" else name_list(text)
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown runtime(s) {unknown or text!r}; use {', '.join(RUNTIMES)} or all")
    return names


def add_manifest(p: argparse.ArgumentParser, what: str = "the development data") -> None:
    p.add_argument("--manifest", type=Path, default=default_manifest(),
                   help=f"manifest.json giving {what} (default: ../shared/data/manifest.json)")


def emit(report: dict, table: str, out: Optional[Path]) -> int:
    """Write the JSON report (if asked) and print its markdown table."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(table)
    return 0
