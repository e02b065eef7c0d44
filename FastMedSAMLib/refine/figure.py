"""A PNG of one click sequence: the image with its box, then the mask after the box and after each click, the
clicks drawn where they were placed (green include, red exclude) and the Dice against the ground truth above each
panel. Built with Pillow; the image is whatever case it is given, so a patient image stays out of the repository."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

from ..prompts import Box

PANEL = 256
TRUTH = (255, 215, 0)
MASK = (0, 160, 255)


def _panel(grey: np.ndarray, mask: np.ndarray, truth: np.ndarray, scale: float) -> PILImage.Image:
    rgb = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32) if grey.ndim == 2 else grey.astype(np.float32)
    rgb[mask] = 0.55 * rgb[mask] + 0.45 * np.array(MASK)
    edge = truth & ~np.pad(truth, 1)[2:, 1:-1] | truth & ~np.pad(truth, 1)[:-2, 1:-1] \
        | truth & ~np.pad(truth, 1)[1:-1, 2:] | truth & ~np.pad(truth, 1)[1:-1, :-2]
    rgb[edge] = TRUTH
    image = PILImage.fromarray(rgb.clip(0, 255).astype(np.uint8))
    return image.resize((int(grey.shape[1] * scale), int(grey.shape[0] * scale)), PILImage.NEAREST)


def draw_sequence(
    grey: np.ndarray, truth: np.ndarray, box: Box, masks: Sequence[np.ndarray], clicks: Sequence[Any],
    dices: Sequence[float], out: Union[str, Path],
) -> Path:
    """grey (H, W[, 3]) uint8; masks[0] after the box, masks[i] after click i; clicks[i-1] = ((y, x), positive)."""
    scale = PANEL / max(grey.shape[:2])
    width, height = int(grey.shape[1] * scale), int(grey.shape[0] * scale)
    sheet = PILImage.new("RGB", (len(masks) * (width + 4), height + 18), "black")
    for step, mask in enumerate(masks):
        panel = _panel(grey, mask, truth, scale)
        pen = ImageDraw.Draw(panel)
        pen.rectangle([box.x0 * scale, box.y0 * scale, box.x1 * scale, box.y1 * scale], outline=(255, 255, 255))
        for (y, x), positive in clicks[:step]:
            cx, cy, r = (x + 0.5) * scale, (y + 0.5) * scale, 4
            pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(0, 220, 0) if positive else (230, 0, 0), outline="white")
        sheet.paste(panel, (step * (width + 4), 18))
        label = "box" if step == 0 else f"+{step} click{'s' if step > 1 else ''}"
        ImageDraw.Draw(sheet).text((step * (width + 4) + 4, 3), f"{label}: Dice {dices[step]:.3f}", fill="white")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def record_sequence(session: Any, box: Box, truth: np.ndarray, clicks: int) -> Dict[str, List[Any]]:
    """Run the 2D protocol on one object, keeping every mask (for `draw_sequence`)."""
    from ..evaluation.metrics import dice
    from ..prompts import Point
    from .clicks import deepest_error_click

    mask = session.predict(box=box).mask
    masks, placed, points, dices = [mask], [], [], [dice(mask, truth)]
    for _ in range(clicks):
        click = deepest_error_click(mask, truth)
        if click is None:
            break
        (y, x), positive = click
        placed.append(click)
        points.append(Point(float(x), float(y), positive=positive))
        mask = session.predict(box=box, points=points, mask=mask).mask
        masks.append(mask)
        dices.append(dice(mask, truth))
    return {"masks": masks, "clicks": placed, "dice": dices}
