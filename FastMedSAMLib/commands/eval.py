"""`fastmedsam eval --manifest M --model litemedsam --out eval.json [--datasets a,b] [--max-targets N] [--pause 0,0.5]`"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import List, Optional


def emit(report: dict, table: str, out: Optional[Path]) -> int:
    """Write the JSON report (if asked) and print its markdown table."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(table)
    return 0


def default_manifest() -> Path:
    shared = os.environ.get("FASTMEDSAM_SHARED")
    root = Path(shared) if shared else Path(__file__).resolve().parents[3] / "shared"
    return root / "data" / "manifest.json"


def float_list(text: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"pause values are knob settings in [0, 1], got {text!r}")
    return values


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
    p.add_argument("--manifest", type=Path, default=default_manifest(), help="manifest.json (default: ../shared/data)")
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
    p.add_argument("--pause", type=float_list, default=[0.0], help="token-pause knob values in [0, 1], e.g. 0,0.25,0.5 (default 0 = the plain model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--out", type=Path, help="write the JSON report here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.protocol == "clicks3d":
        from ..clicks3d import run_cli

        return run_cli(args)
    from ..evaluate import evaluate, markdown
    from ..manifest import INSTANCES_PER_IMAGE

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
        progress=not args.quiet,
    )
    return emit(report, markdown(report), args.out)
