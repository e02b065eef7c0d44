"""PNG of where tokens paused: the model's input frame beside the same frame tinted by each token's pause depth.

Reached as `fastmedsam pause-map IMAGE [--slice K] [--pause 0.5] --out pause_map.png`. Early pauses are blue,
late ones yellow-red; tokens that never paused keep the plain image. Background and homogeneous interiors should
pause first, boundaries last.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, Tuple, Union

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

# one colour per head, earliest first (blue -> red)
PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (49, 54, 149), (69, 117, 180), (116, 173, 209), (171, 217, 233), (254, 224, 144), (253, 174, 97),
    (244, 109, 67), (215, 48, 39), (165, 0, 38), (103, 0, 31),
)
SCALE = 2  # output pixels per frame pixel
ALPHA = 0.55
LINE = 18  # legend line height, px


def font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled font at `size` px (ASCII glyphs only; FreeType builds scale it, others keep the bitmap)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def head_colour(index: int, heads: int) -> Tuple[int, int, int]:
    return PALETTE[index * (len(PALETTE) - 1) // max(heads - 1, 1)]


def pause_overlay(frame_rgb: np.ndarray, depths: np.ndarray, head_depths: Sequence[int]) -> np.ndarray:
    """(S, S, 3) uint8 frame and an (h, w) map of pause depths -> (S, S, 3) uint8 tinted frame."""
    cell = frame_rgb.shape[0] // depths.shape[0]
    big = np.kron(depths, np.ones((cell, cell), dtype=depths.dtype))
    out = frame_rgb.astype(np.float32)
    for i, depth in enumerate(head_depths):
        mask = big == depth
        out[mask] = (1 - ALPHA) * out[mask] + ALPHA * np.array(head_colour(i, len(head_depths)), dtype=np.float32)
    return out.clip(0, 255).astype(np.uint8)


def render(frame_rgb: np.ndarray, depths: np.ndarray, head_depths: Sequence[int], never: int,
           title: str) -> PILImage.Image:
    """The frame and its tinted copy side by side, with a title and one legend line per head.

    Size: (2 * S * SCALE, S * SCALE + LINE * (len(head_depths) + 2)) for an (S, S, 3) frame."""
    tinted = pause_overlay(frame_rgb, depths, head_depths)
    size = frame_rgb.shape[0] * SCALE
    canvas = PILImage.new("RGB", (2 * size, size + LINE * (len(head_depths) + 2)), (255, 255, 255))
    canvas.paste(PILImage.fromarray(frame_rgb).resize((size, size), PILImage.NEAREST), (0, 0))
    canvas.paste(PILImage.fromarray(tinted).resize((size, size), PILImage.NEAREST), (size, 0))
    draw = ImageDraw.Draw(canvas)
    text = font(13)
    draw.text((4, size + 2), title, fill=(0, 0, 0), font=text)
    total, grid = depths.size, "x".join(map(str, depths.shape))
    for i, depth in enumerate(head_depths):
        y = size + LINE * (i + 1)
        draw.rectangle([4, y + 2, 18, y + 14], fill=head_colour(i, len(head_depths)))
        share = float((depths == depth).sum()) / total
        line = f"paused before block {depth}: {share:.0%} of the final {grid} grid"
        draw.text((24, y + 1), line, fill=(0, 0, 0), font=text)
    y = size + LINE * (len(head_depths) + 1)
    draw.rectangle([4, y + 2, 18, y + 14], outline=(0, 0, 0))
    share = float((depths == never).sum()) / total
    draw.text((24, y + 1), f"never paused: {share:.0%}", fill=(0, 0, 0), font=text)
    return canvas


def pause_depths(rgb: np.ndarray, encoder: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Run `encoder` (a PausedEncoder) on one (H, W, 3) uint8 slice: (the model's (S, S, 3) uint8 input frame,
    the (h, w) map of the block index each final-grid token paused before; len(blocks) where it never paused)."""
    from ..models.litemedsam import LiteMedSAMAdapter

    tensor, _ = LiteMedSAMAdapter().preprocess(rgb)
    encoder(tensor)
    shown = (tensor[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return shown, encoder.last_stats.pause_depths.cpu().numpy()


def save_pause_map(rgb: np.ndarray, encoder: Any, out: Union[str, Path], title: str = "") -> Path:
    """Run `encoder` (a PausedEncoder) on one (H, W, 3) uint8 slice and write the pause-depth PNG to `out`;
    `title` (what the slice is) heads the caption, followed by the knob and the paused share."""
    shown, depths = pause_depths(rgb, encoder)
    never = len(encoder.last_stats.tokens)
    label = (f"{title}, " if title else "") + (
        f"pause {encoder.pause:g}: {encoder.paused_fraction():.0%} of the block tokens paused (mean over the blocks)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    render(shown, depths, encoder.heads.depths, never, label).save(out)
    return out
