"""`fastmedsam pause-curve-3d --model fastsam3d [--pause 0.25,0.5,0.75,1] [--repeats 3] --out out/pause/fastsam3d.json`"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .arguments import add_manifest, emit, pause_list, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pause-curve-3d",
        help="speed curve of the token-paused 3D ViT (FastSAM3D, SAM-Med3D-turbo) with recipe weights",
        description=(
            "Time the plain 3D ViT encoder and the token-paused one at every --pause knob, interleaved, on a real "
            "128³ CT crop, with the deterministic parity-recipe weights (official weights are not reachable: speed "
            "only, no accuracy). Tokens pause by a parameter-free rule (smallest relative update)."
        ),
    )
    p.add_argument("--model", default="fastsam3d", choices=("fastsam3d", "sam-med3d-turbo"))
    p.add_argument("--pause", type=pause_list, default=[0.25, 0.5, 0.75, 1.0],
                   help="knob values in [0, 1] (default 0.25,0.5,0.75,1; the plain encoder is always timed)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timing repeats; medians are reported (default 3)")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's own)")
    add_manifest(p, "the CT volume")
    p.add_argument("--parity", type=Path, help="parity fixtures folder (default: beside the manifest's data folder)")
    p.add_argument("--out", type=Path, help="write the JSON report here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.bench import recipe_checkpoint
    from ..pause.vit3d_curve import measure_vit3d_speed, table

    if args.threads:
        torch.set_num_threads(args.threads)
    parity = args.parity or args.manifest.resolve().parent.parent / "parity"
    with tempfile.TemporaryDirectory(prefix="fastmedsam-pause3d-") as scratch:
        weights = recipe_checkpoint(args.model, parity, Path(scratch))
        report = measure_vit3d_speed(args.model, weights, args.pause, args.manifest, args.repeats)
    return emit(report, table(report), args.out)
