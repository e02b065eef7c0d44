"""`fastmedsam refine-figure --image NAME [--target T] --out clicks.png`: one validation object's click sequence."""
from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_device, add_manifest, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "refine-figure",
        help="draw one validation object's click sequence with litemedsam-refine (image, clicks, mask per step)",
        description=("Runs the refine protocol (box, then clicks at the deepest error point) on one 2D object of a "
                     "validation case and writes a PNG strip: one panel per step, clicks in green (include) and red "
                     "(exclude), the ground truth outlined in yellow, Dice above each panel."),
    )
    add_manifest(p)
    p.add_argument("--image", required=True, help="manifest image path of a 2D validation case, e.g. us_hc18/001_HC.png")
    p.add_argument("--target", help="target name (default: the first target of the image)")
    p.add_argument("--clicks", type=positive_int, default=5, help="clicks after the box (default 5)")
    p.add_argument("--model", default="litemedsam-refine", help="registry model (default litemedsam-refine)")
    add_device(p)
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import PromptError
    from ..io.intensity import to_uint8
    from ..io.manifest import iter_cases, read_manifest
    from ..refine.figure import draw_sequence, record_sequence
    from ..refine.split import VALIDATION, part
    from ..session import Session

    entries = [e for e in part(read_manifest(args.manifest), VALIDATION) if e.image_name == args.image and e.dim == "2D"]
    if not entries:
        raise PromptError(f"{args.image} is not a 2D validation image of the manifest (see FastMedSAMLib/refine/split.py)")
    session = Session(model=args.model, device=args.device)
    for entry, image, label, found in iter_cases(entries):
        for target in found:
            if args.target in (None, target.name):
                session.set_image(image)
                truth = target.mask(label)
                run_ = record_sequence(session, target.box, truth, args.clicks)
                out = draw_sequence(to_uint8(image), truth, target.box, run_["masks"], run_["clicks"], run_["dice"], args.out)
                print(f"wrote {out}: {entry.image_name} {target.name}, Dice " + " -> ".join(f"{d:.3f}" for d in run_["dice"]))
                return 0
    raise PromptError(f"no target {args.target!r} in {args.image}")
