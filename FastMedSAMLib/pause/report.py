"""Speed/accuracy curve of the token-paused LiteMedSAM encoder: a table and a PNG plot.

`python -m FastMedSAMLib.pause.report --pause 0,0.25,0.5,0.75,1 --eval out/eval.json --out out/pause`
* speed: measured here, in one process, on one real slice of every 2D dataset and the middle slice of the
  first volume of every 3D dataset of the manifest's reference table: the plain encoder, the paused code path
  with nothing paused (BatchNorm folding and fused oneDNN kernels alone), and every knob value, interleaved
  repeat by repeat so a busy machine slows all of them alike; medians over repeats of the per-slice mean;
  per-block paused fractions averaged over the slices;
* accuracy: DSC/NSD per dataset from the JSON of `fastmedsam eval --pause ...` (box protocol), as deltas to
  pause 0, averaged over the reference-table datasets (each dataset weighs the same).
Writes `<out>.md` (table), `<out>.json` (all figures) and `<out>.png` (curve, drawn with Pillow).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

NO_PAUSING = "fast path, nothing paused"


def reference_slices(manifest: Path) -> List[Tuple[str, np.ndarray]]:
    """(name, uint8 RGB slice): the first image of each 2D reference dataset, the middle slice of each 3D one."""
    from ..evaluate import REFERENCE
    from ..intensity import to_uint8
    from ..manifest import load_image, read_manifest
    from ..slice_engine import to_rgb

    seen, out = set(), []
    for entry in read_manifest(manifest):
        name = entry.datasets[0] if entry.datasets else None
        if name is None or name not in REFERENCE or name in seen:
            continue
        seen.add(name)
        u8 = to_uint8(load_image(entry))
        if u8.ndim == 3 and u8.shape[2] != 3:
            u8 = u8[u8.shape[0] // 2]
        out.append((name, to_rgb(u8)))
    return out


def measure_speed(pauses: Sequence[float], manifest: Path, repeats: int, progress: bool = True) -> Dict[str, Any]:
    """Encoder wall time per variant (ms, median over repeats of the mean over slices) and paused fractions."""
    import torch

    from ..models import load_model
    from ..models.litemedsam import LiteMedSAMAdapter
    from . import load_pause_heads, paused_encoder

    net = load_model("litemedsam")
    heads = load_pause_heads("litemedsam")
    slices = [(name, LiteMedSAMAdapter().preprocess(rgb)[0]) for name, rgb in reference_slices(manifest)]
    variants: Dict[str, Any] = {"0": net.encode}
    fast = paused_encoder(net, "litemedsam", 1.0, heads=heads)
    variants[NO_PAUSING] = lambda x, runner=fast.runner: runner(x)[0]
    encoders = {str(p): paused_encoder(net, "litemedsam", p, heads=heads) for p in pauses if p > 0}
    variants.update(encoders)
    times: Dict[str, List[float]] = {k: [] for k in variants}
    fractions: Dict[str, List[List[float]]] = {k: [] for k in encoders}
    with torch.inference_mode():
        for _, tensor in slices[:1]:
            for encode in variants.values():
                encode(tensor)  # warm-up
        for repeat in range(repeats):
            spent = {k: 0.0 for k in variants}
            for _, tensor in slices:
                for key, encode in variants.items():
                    start = time.perf_counter()
                    encode(tensor)
                    spent[key] += time.perf_counter() - start
                    if key in encoders and repeat == 0:
                        fractions[key].append(encoders[key].last_stats.paused_fraction())
            for key in variants:
                times[key].append(1000.0 * spent[key] / len(slices))
            if progress:
                print(f"repeat {repeat + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in times.items()),
                      file=sys.stderr)
    return {
        "threads": torch.get_num_threads(),
        "slices": [name for name, _ in slices],
        "repeats": repeats,
        "encoder_ms": {k: statistics.median(v) for k, v in times.items()},
        "encoder_ms_samples": times,
        "paused_fraction_per_block": {k: np.mean(v, axis=0).round(4).tolist() for k, v in fractions.items()},
        "heads_depths": list(heads.depths),
    }


def accuracy(eval_report: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """pause -> mean DSC/NSD over the reference-table datasets, and per-dataset values."""
    out = {}
    for pause, summary in eval_report["summary"].items():
        rows = {name: s for name, s in summary["datasets"].items() if "reference" in s and s["dsc"] is not None}
        out[str(float(pause))] = {
            "dsc": float(np.mean([s["dsc"] for s in rows.values()])),
            "nsd": float(np.mean([s["nsd"] for s in rows.values()])),
            "datasets": {name: {"dsc": s["dsc"], "nsd": s["nsd"], "n": s["n"]} for name, s in rows.items()},
        }
    return out


def table(speed: Dict[str, Any], acc: Optional[Dict[str, Dict[str, Any]]]) -> str:
    base = speed["encoder_ms"]["0"]
    depths = speed["heads_depths"]
    lines = [
        f"encoder wall ms: median of {speed['repeats']} repeats of the mean over {len(speed['slices'])} real slices "
        f"({', '.join(speed['slices'])}), {speed['threads']} threads; speed-up vs the plain encoder (pause 0).",
        "",
        "| pause | encoder ms | speed-up | paused per block " + "/".join(map(str, range(10))) + " | mean DSC | ΔDSC (points) | mean NSD | ΔNSD |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base_acc = acc.get("0.0") if acc else None
    for key, ms in speed["encoder_ms"].items():
        fractions = speed["paused_fraction_per_block"].get(key)
        frac = " ".join(f"{f:.2f}" for f in fractions) if fractions else ("0 (plain)" if key == "0" else "0")
        cells = ["–", "–", "–", "–"]
        row = acc.get(str(float(key))) if acc and key != NO_PAUSING else None
        if row is not None and base_acc is not None:
            cells = [f"{row['dsc']:.4f}", f"{100 * (row['dsc'] - base_acc['dsc']):+.2f}",
                     f"{row['nsd']:.4f}", f"{100 * (row['nsd'] - base_acc['nsd']):+.2f}"]
        lines.append(f"| {key} | {ms:.0f} | {base / ms:.2f}x | {frac} | " + " | ".join(cells) + " |")
    lines.append(f"\nheads before blocks {depths}; blocks 0-1 run on the 128x128 grid, 2-9 on 64x64.")
    return "\n".join(lines)


def plot(speed: Dict[str, Any], acc: Optional[Dict[str, Dict[str, Any]]], path: Path) -> Path:
    """Speed-up (x axis) against ΔDSC in points (y axis), one labelled point per knob value; Pillow only."""
    width, height, margin = 720, 480, 70
    image = PILImage.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    base = speed["encoder_ms"]["0"]
    points = []
    for key, ms in speed["encoder_ms"].items():
        if key == NO_PAUSING:
            continue
        delta = 0.0
        if acc and str(float(key)) in acc and "0.0" in acc:
            delta = 100 * (acc[str(float(key))]["dsc"] - acc["0.0"]["dsc"])
        points.append((base / ms, delta, key))
    xs = [p[0] for p in points] + [1.0]
    ys = [p[1] for p in points] + [0.0, -1.0]
    x_lo, x_hi = 0.9, max(xs) * 1.1
    y_lo, y_hi = min(ys) - 0.5, max(ys) + 0.5

    def at(x: float, y: float) -> Tuple[float, float]:
        return (margin + (x - x_lo) / (x_hi - x_lo) * (width - 2 * margin),
                height - margin - (y - y_lo) / (y_hi - y_lo) * (height - 2 * margin))

    draw.rectangle([margin, margin, width - margin, height - margin], outline="black")
    for goal_y in (-1.0, 0.0):
        draw.line([at(x_lo, goal_y), at(x_hi, goal_y)], fill=(200, 200, 200) if goal_y else (120, 120, 120))
    draw.line([at(1.8, y_lo), at(1.8, y_hi)], fill=(200, 200, 200))
    draw.text(at(1.8, y_hi), " 1.8x goal", fill="gray")
    draw.text(at(x_lo, -1.0), " -1 DSC point", fill="gray")
    ordered = sorted(points)
    draw.line([at(x, y) for x, y, _ in ordered], fill=(31, 119, 180), width=2)
    for x, y, key in ordered:
        cx, cy = at(x, y)
        draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=(31, 119, 180))
        draw.text((cx + 6, cy - 14), f"pause {key}", fill="black")
    for i in range(5):
        x = x_lo + i * (x_hi - x_lo) / 4
        draw.text((at(x, y_lo)[0] - 10, height - margin + 6), f"{x:.2f}x", fill="black")
        y = y_lo + i * (y_hi - y_lo) / 4
        draw.text((8, at(x_lo, y)[1] - 6), f"{y:+.1f}", fill="black")
    draw.text((margin, 20), "LiteMedSAM token pausing: encoder speed-up vs mean ΔDSC (points)", fill="black")
    draw.text((width // 2 - 60, height - 30), "encoder speed-up", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    from ..commands.eval import default_manifest

    parser = argparse.ArgumentParser(prog="python -m FastMedSAMLib.pause.report", description=__doc__.split("\n")[0])
    parser.add_argument("--pause", default="0.25,0.5,0.75,1", help="knob values to time (the plain model is always in)")
    parser.add_argument("--eval", type=Path, help="JSON of `fastmedsam eval --pause ...` for DSC/NSD")
    parser.add_argument("--manifest", type=Path, default=default_manifest())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("out/pause"), help="prefix of the .md/.json/.png outputs")
    args = parser.parse_args(argv)
    from . import validate_pause

    pauses = [validate_pause(float(v)) for v in args.pause.split(",") if v.strip()]
    speed = measure_speed(pauses, args.manifest, args.repeats)
    acc = accuracy(json.loads(args.eval.read_text(encoding="utf-8"))) if args.eval else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = table(speed, acc)
    args.out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps({"speed": speed, "accuracy": acc}, indent=1), encoding="utf-8")
    print(text)
    print(plot(speed, acc, args.out.with_suffix(".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
