"""`fastmedsam eval --manifest M --model litemedsam --out eval.json [--datasets a,b] [--max-targets N] [--pause 0,0.5]`"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

from .arguments import add_device, add_manifest, add_pause, add_runtime, emit, name_list, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model on the development manifest (CVPR24 box protocol, DSC/NSD vs the reference)",
        description=(
            "Run the CVPR24 box protocol on every target of the manifest through a Session: tight 2D boxes, 3D "
            "boxes propagated middle-out. Writes per-case rows and per-dataset/modality means as JSON and prints "
            "a markdown table beside the LiteMedSAM reference numbers."
        ),
    )
    add_manifest(p)
    p.add_argument("--model", help="registry model name (default: litemedsam; clicks3d: the installed 3D model)")
    p.add_argument("--protocol", choices=("box", "clicks3d"), default="box",
                   help="box: CVPR24 box protocol (default); clicks3d: FastSAM3D/SAM-Med3D clicks on the 3D cases")
    p.add_argument("--clicks", type=name_list, default=["1", "3", "5", "10"], help="clicks3d: N to report (1,3,5,10)")
    p.add_argument("--seed", type=int, default=2023, help="clicks3d: seed of the click draws (default 2023)")
    p.add_argument("--weights", default="official",
                   help="clicks3d: official, recipe (untrained parity weights: machinery only) or a checkpoint path")
    p.add_argument("--datasets", type=name_list, help="comma-separated dataset rows to evaluate (default: all)")
    p.add_argument("--max-targets", type=positive_int, help="at most N targets per dataset row (quick runs)")
    p.add_argument(
        "--instances-per-image", type=positive_int,
        help="sample N instances per image in the instance datasets (default: the reference's 60, EM 100)",
    )
    p.add_argument("--split", choices=("calibration", "evaluation"),
                   help="only the token-pausing split's images (models/litemedsam-pause-split.json): evaluation = "
                        "images neither the pause heads nor the knob saw")
    add_pause(p, several=True)
    add_runtime(p)
    add_device(p)
    p.add_argument("--out", type=Path, help="write the JSON report here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.protocol == "clicks3d":
        from ..evaluation.clicks3d import run_cli

        return run_cli(args)
    from ..evaluation.box_protocol import evaluate, markdown
    from ..io.manifest import INSTANCES_PER_IMAGE

    caps: Optional[dict] = None
    if args.instances_per_image is not None:
        caps = dict.fromkeys(INSTANCES_PER_IMAGE, args.instances_per_image)
    report = evaluate(
        args.manifest,
        args.model or "litemedsam",
        datasets=args.datasets,
        max_targets=args.max_targets,
        pauses=args.pause,
        device=args.device,
        instances_per_image=caps,
        images=_split_images(args.split),
        progress=not args.quiet,
        runtime=args.runtime,
    )
    report["split"] = args.split
    return emit(report, markdown(report), args.out)


def _split_images(role: Optional[str]) -> Optional[List[str]]:
    if role is None:
        return None
    from ..pause.split import committed_split

    return committed_split()[role]
