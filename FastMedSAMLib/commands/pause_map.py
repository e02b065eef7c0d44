"""`fastmedsam pause-map IMAGE [--slice K] [--pause 0.5] [--model litemedsam] --out map.png`"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from .arguments import pause_value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pause-map",
        help="PNG of the encoder depth at which each token paused, over one slice",
        description=(
            "Run the token-paused encoder at knob --pause on one slice (as the Session sees it: same intensity "
            "rule) and write a PNG: the model's input frame beside the same frame tinted by each token's pause "
            "depth (blue = paused at the first head, red = at the last; untinted = never paused)."
        ),
    )
    p.add_argument("image", type=Path, help="NIfTI, NRRD, MHA, DICOM, PNG, JPG, TIFF or CVPR24 .npz")
    p.add_argument("--slice", type=int, help="slice index k of a volume (default: the middle slice)")
    p.add_argument("--pause", type=pause_value, default=0.5, help="token-pause knob in (0, 1] (default 0.5)")
    p.add_argument("--model", default="litemedsam", help="a model with pause heads (default litemedsam)")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.set_defaults(func=run)


def load_slice(path: Path, index: Optional[int]) -> Tuple[np.ndarray, str]:
    """(H, W, 3) uint8 slice of `path` through the Session's intensity rule, and a short description of it."""
    from ..engines.slice_engine import to_rgb
    from ..errors import ImageError
    from ..io.images import read_image
    from ..io.intensity import to_uint8

    image = read_image(path)
    u8 = to_uint8(image)
    if not image.is_volume:
        if index is not None:
            raise ImageError(f"--slice {index}: {path.name} is a 2D image, it has no slices")
        return to_rgb(u8), path.name
    depth = u8.shape[0]
    k = depth // 2 if index is None else index
    if not 0 <= k < depth:
        raise ImageError(f"--slice {k} is outside {path.name}, whose slices are 0..{depth - 1}")
    return to_rgb(u8[k]), f"{path.name} slice {k}/{depth - 1}"


def run(args: argparse.Namespace) -> int:
    from ..models import load_model
    from ..pause import PauseError, heads_entry, paused_encoder
    from ..pause.visualize import save_pause_map

    pause = args.pause
    if pause == 0.0:
        raise PauseError("--pause 0 is the plain model and pauses nothing: give a value in (0, 1]")
    heads_entry(args.model)  # PauseError naming the models with heads
    if args.out.suffix.lower() != ".png":
        raise PauseError(f"--out {args.out}: the pause map is a PNG, name it *.png")
    rgb, what = load_slice(args.image, args.slice)
    encoder = paused_encoder(load_model(args.model), args.model, pause)
    out = save_pause_map(rgb, encoder, args.out, title=what)
    print(f"{what}: pause {pause:g}, {encoder.paused_fraction():.0%} of the block tokens paused (mean over the blocks)")
    print(out)
    return 0
