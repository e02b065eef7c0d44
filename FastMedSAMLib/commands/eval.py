"""`fastmedsam eval --manifest M --model litemedsam --out eval.json [--datasets a,b] [--max-targets N] [--pause 0,0.5]`"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Tuple

from .arguments import add_crop, add_device, add_manifest, add_pause, add_runtime, emit, name_list, positive_int


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
    p.add_argument("--protocol", choices=("box", "clicks3d", "refine"), default="box",
                   help="box: CVPR24 box protocol (default); clicks3d: FastSAM3D/SAM-Med3D clicks on the 3D cases; "
                        "refine: box then clicks on the validation cases, litemedsam-refine vs litemedsam")
    p.add_argument("--clicks", type=name_list, default=["1", "3", "5", "10"],
                   help="clicks3d: N to report (1,3,5,10); refine: one number, the clicks after the box (5)")
    p.add_argument("--noc-max", type=positive_int, default=20, help="refine: clicks allowed for NoC@90 (2D, default 20)")
    p.add_argument("--embedding-cache", type=Path,
                   help="refine: keep the image embeddings in this scratch file and reuse them on the next run")
    p.add_argument("--seed", type=int, default=2023, help="clicks3d: seed of the click draws (default 2023)")
    p.add_argument("--weights", default="official",
                   help="clicks3d: official, recipe (untrained parity weights: machinery only) or a checkpoint path; "
                        "refine: a candidate fine-tuned file instead of the registry's")
    p.add_argument("--datasets", type=name_list, help="comma-separated dataset rows to evaluate (default: all)")
    p.add_argument("--max-targets", type=positive_int, help="at most N targets per dataset row (quick runs)")
    p.add_argument(
        "--instances-per-image", type=positive_int,
        help="sample N instances per image in the instance datasets (default: the reference's 60, EM 100)",
    )
    p.add_argument("--split", choices=("calibration", "evaluation", "train", "validation"),
                   help="box: only the token-pausing split's images (models/litemedsam-pause-split.json): evaluation = "
                        "images neither the pause heads nor the knob saw; refine: the side of refine/split.py to run "
                        "on (validation, the default and every reported figure, or train, to tune on)")
    p.add_argument("--focus", type=_focus,
                   help="refine: the clicks' focus window factor on 2D slices (refine/focus.py; inf = no window; "
                        "default: the engine's tuned value)")
    p.add_argument("--focus-3d", type=_focus, help="refine: the same for clicks on volumes")
    p.add_argument("--follow", type=float,
                   help="refine: largest radius in pixels that a click the decoder does not obey still sets to its "
                        "side (0 = none; default: the engine's)")
    p.add_argument("--spot-depth", type=_focus,
                   help="refine: that spot's radius on a 2D slice in click depths, from 2 px up to --follow (inf = "
                        "always --follow; default: the engine's)")
    p.add_argument("--border", type=_band, metavar="WIDTH,REACH",
                   help="refine: the focus window's reach along the previous border on 2D slices, in click depths "
                        "(0,0 = none; default: the engine's)")
    p.add_argument("--border-3d", type=_band, metavar="WIDTH,REACH", help="refine: the same for clicks on volumes")
    p.add_argument("--spot-border", type=_band, metavar="WIDTH,REACH",
                   help="refine: the same for the spot a click the decoder does not obey sets on a 2D slice")
    add_pause(p, several=True)
    add_runtime(p)
    add_crop(p)
    add_device(p)
    p.add_argument("--out", type=Path, help="write the JSON report here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.crop is not None and args.protocol != "box":
        from ..errors import RuntimeChoiceError

        raise RuntimeChoiceError(f"--crop is for the box protocol (LiteMedSAM box prompts), not --protocol {args.protocol}")
    if args.protocol == "refine":
        return _refine(args)
    if args.protocol == "clicks3d":
        from ..evaluation.clicks3d import run_cli

        return run_cli(args)
    from ..errors import PromptError
    from ..evaluation.box_protocol import evaluate, markdown
    from ..io.manifest import INSTANCES_PER_IMAGE

    if args.split not in (None, "calibration", "evaluation"):
        raise PromptError(f"--split {args.split} belongs to --protocol refine; the box protocol takes calibration or "
                          "evaluation (the token-pausing split)")
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
        crop=args.crop,
    )
    report["split"] = args.split
    return emit(report, markdown(report), args.out)


def _focus(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a focus or spot factor must be > 0 (inf: no limit), got {text}")
    return value


def _band(text: str) -> Tuple[float, float]:
    try:
        width, reach = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a band is WIDTH,REACH (e.g. 0.5,8), got {text}") from None
    if width < 0 or reach < 0:
        raise argparse.ArgumentTypeError(f"a band's width and reach must be >= 0, got {text}")
    return width, reach


def _given(**fields) -> dict:
    return {k: v for k, v in fields.items() if v is not None}


def _refine(args: argparse.Namespace) -> int:
    from ..errors import PromptError
    from ..refine.protocol import REFINE_MODEL, evaluate_refine, markdown
    from ..refine.split import TRAIN, VALIDATION

    if len(args.clicks) != 1 or not args.clicks[0].isdigit():
        raise PromptError(f"--protocol refine takes one number of clicks (e.g. --clicks 5), got {','.join(args.clicks)}")
    if args.split not in (None, TRAIN, VALIDATION):
        raise PromptError(f"--protocol refine runs on --split {TRAIN} or {VALIDATION}, not {args.split}")
    report = evaluate_refine(
        args.manifest, clicks=int(args.clicks[0]), noc_max=args.noc_max, datasets=args.datasets,
        max_targets=args.max_targets or 20, device=args.device, refine_model=args.model or REFINE_MODEL,
        refine_weights=None if args.weights == "official" else Path(args.weights),
        embedding_cache=args.embedding_cache, progress=not args.quiet, split=args.split or VALIDATION,
        rule=_given(focus=args.focus, follow=args.follow, spot_depth=args.spot_depth, border=args.border,
                    spot_border=args.spot_border),
        rule_3d=_given(focus=args.focus_3d, follow=args.follow, border=args.border_3d),
    )
    return emit(report, markdown(report), args.out)


def _split_images(role: Optional[str]) -> Optional[List[str]]:
    if role is None:
        return None
    from ..pause.split import committed_split

    return committed_split()[role]
