"""PNG of where tokens paused: the model's input frame beside the same frame tinted by each token's pause depth.

`python -m FastMedSAMLib.pause.visualize IMAGE [--slice K] [--pause 0.5] --out pause_map.png`
Early pauses are blue, late ones yellow-red; tokens that never paused keep the plain image. Background and
homogeneous interiors should pause first, boundaries last.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

# one colour per head, earliest first (blue -> red)
PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (49, 54, 149), (69, 117, 180), (116, 173, 209), (171, 217, 233), (254, 224, 144), (253, 174, 97),
    (244, 109, 67), (215, 48, 39), (165, 0, 38), (103, 0, 31),
)
SCALE = 2  # output pixels per frame pixel
ALPHA = 0.55


def pause_overlay(frame_rgb: np.ndarray, depths: np.ndarray, head_depths: Sequence[int], never: int) -> np.ndarray:
    """(S, S, 3) uint8 frame and an (h, w) map of pause depths -> (S, S, 3) uint8 tinted frame."""
    size = frame_rgb.shape[0]
    cell = size // depths.shape[0]
    big = np.kron(depths, np.ones((cell, cell), dtype=depths.dtype))
    out = frame_rgb.astype(np.float32)
    for i, depth in enumerate(head_depths):
        mask = big == depth
        colour = np.array(PALETTE[i * (len(PALETTE) - 1) // max(len(head_depths) - 1, 1)], dtype=np.float32)
        out[mask] = (1 - ALPHA) * out[mask] + ALPHA * colour
    return out.clip(0, 255).astype(np.uint8)


def render(frame_rgb: np.ndarray, depths: np.ndarray, head_depths: Sequence[int], never: int, title: str) -> PILImage.Image:
    """Side-by-side PNG image with a legend."""
    tinted = pause_overlay(frame_rgb, depths, head_depths, never)
    size = frame_rgb.shape[0] * SCALE
    legend = 18 * (len(head_depths) + 2)
    canvas = PILImage.new("RGB", (2 * size, size + legend), (255, 255, 255))
    canvas.paste(PILImage.fromarray(frame_rgb).resize((size, size), PILImage.NEAREST), (0, 0))
    canvas.paste(PILImage.fromarray(tinted).resize((size, size), PILImage.NEAREST), (size, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, size + 2), title, fill=(0, 0, 0))
    total = depths.size
    for i, depth in enumerate(head_depths):
        colour = PALETTE[i * (len(PALETTE) - 1) // max(len(head_depths) - 1, 1)]
        y = size + 18 * (i + 1)
        draw.rectangle([4, y + 2, 18, y + 14], fill=colour)
        share = float((depths == depth).sum()) / total
        draw.text((24, y + 2), f"paused before block {depth}: {share:.0%} of the final grid", fill=(0, 0, 0))
    share = float((depths == never).sum()) / total
    draw.text((24, size + 18 * (len(head_depths) + 1) + 2), f"never paused: {share:.0%}", fill=(0, 0, 0))
    return canvas


def save_pause_map(rgb: np.ndarray, encoder, out: Union[str, Path], title: str = "") -> Path:
    """Run `encoder` (a PausedEncoder) on one (H, W, 3) uint8 slice and write the pause-depth PNG to `out`."""
    from ..models.litemedsam import LiteMedSAMAdapter

    tensor, frame = LiteMedSAMAdapter().preprocess(rgb)
    encoder(tensor)
    stats = encoder.last_stats
    shown = (tensor[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    never = len(stats.tokens)
    label = title or f"pause={encoder.pause:g}: {encoder.paused_fraction():.0%} of the ViT token work skipped"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    render(shown, stats.pause_depths.cpu().numpy(), encoder.heads.depths, never, label).save(out)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m FastMedSAMLib.pause.visualize", description=__doc__.split("\n")[0])
    parser.add_argument("image", help="image or volume file")
    parser.add_argument("--slice", type=int, default=None, help="slice index of a volume (default: the middle)")
    parser.add_argument("--pause", type=float, default=0.5, help="knob in (0, 1] (default 0.5)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)

    from ..errors import FastMedSAMError
    from ..imageio import read_image
    from ..intensity import to_uint8
    from ..models import load_model
    from ..slice_engine import to_rgb
    from . import paused_encoder

    try:
        image = read_image(args.image)
        u8 = to_uint8(image)
        if image.is_volume:
            index = u8.shape[0] // 2 if args.slice is None else args.slice
            if not 0 <= index < u8.shape[0]:
                raise FastMedSAMError(f"--slice {index} is outside the volume (0..{u8.shape[0] - 1})")
            u8 = u8[index]
        encoder = paused_encoder(load_model("litemedsam"), "litemedsam", args.pause)
        if encoder is None:
            raise FastMedSAMError("--pause 0 pauses nothing: give a value in (0, 1]")
        print(save_pause_map(to_rgb(u8), encoder, args.out))
    except FastMedSAMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
