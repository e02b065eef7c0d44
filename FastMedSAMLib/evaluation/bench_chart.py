"""The bench report as a PNG: one panel per figure (cold encode, cached click p50, 3D box cold and after
prefetch), one horizontal bar per variant, the value written at each bar's end. ASCII labels (Pillow's font)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

PANELS: List[Tuple[str, str, str, str]] = [  # title, step, figure ("*" = summed over the volumes), unit
    ("cold slice encode", "encode_cold", "encode_ms", "ms"),
    ("cached click p50", "clicks_cached", "p50_ms", "ms"),
    ("3D boxes, cold", "propagate_3d", "*.seconds", "s"),
    ("3D boxes, after prefetch", "propagate_3d", "*.after_prefetch_seconds", "s"),
]
COLOURS = [(90, 90, 90), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _value(variant: Dict[str, Any], step: str, figure: str) -> Optional[float]:
    figures = variant.get("median", {}).get(step)
    if not figures:
        return None
    if figure.startswith("*."):
        values = [v for k, v in figures.items() if k.endswith(figure[1:]) and k.count(".") == 1]
        return sum(values) if values else None
    return figures.get(figure)


def draw_chart(report: Dict[str, Any], path: Path) -> Path:
    from PIL import Image as PILImage
    from PIL import ImageDraw

    from ..pause.visualize import font

    ok = [v for v in report["variants"] if v["status"] == "ok"]
    bar, gap, left, width, label_w = 22, 8, 20, 1000, 300
    panel_h = 40 + len(ok) * (bar + gap)
    image = PILImage.new("RGB", (width, 60 + panel_h * len(PANELS)), "white")
    draw = ImageDraw.Draw(image)
    small, big = font(13), font(17)
    env = report["environment"]
    draw.text((left, 12), f"fastmedsam bench: {env['device']}, {env['threads']} threads, medians of "
              f"{report['settings']['repeats']} repeats (shorter is faster)", fill="black", font=big)
    for p, (title, step, figure, unit) in enumerate(PANELS):
        top = 50 + p * panel_h
        values = [_value(v, step, figure) for v in ok]
        scale = max([x for x in values if x is not None] + [1e-9])
        draw.text((left, top + 8), title + (" (sum over the volumes)" if figure.startswith("*") else ""),
                  fill="black", font=big)
        for i, (variant, value) in enumerate(zip(ok, values)):
            y = top + 34 + i * (bar + gap)
            draw.text((left, y + bar / 2), variant["label"][:40], fill="black", font=small, anchor="lm")
            if value is None:
                draw.text((left + label_w, y + bar / 2), "n/a", fill="grey", font=small, anchor="lm")
                continue
            length = (width - left - label_w - 110) * value / scale
            draw.rectangle([left + label_w, y, left + label_w + max(length, 1), y + bar], fill=COLOURS[i % len(COLOURS)])
            text = f"{value:.1f} {unit}" if unit == "ms" else f"{value:.2f} {unit}"
            draw.text((left + label_w + length + 6, y + bar / 2), text, fill="black", font=small, anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
