"""Speed/accuracy curve of the token-paused LiteMedSAM encoder: a table, a JSON report and a PNG plot.

Reached as `fastmedsam pause-curve --eval eval.json [--pause 0.25,0.5,0.75,1] --out out/pause/litemedsam`.
* speed (`measure_speed`): measured here, in one process, on one real slice of every 2D dataset and the middle
  slice of the first volume of every 3D dataset of the manifest's reference table: the plain encoder (pause 0),
  the paused code path with nothing paused (BatchNorm folding and fused kernels alone) and every knob value,
  interleaved slice by slice and repeat by repeat so a busy machine slows all of them alike; medians over
  repeats of the per-slice mean; per-block paused fractions averaged over the slices;
* accuracy (`accuracy`): DSC/NSD from the JSON of `fastmedsam eval --pause ...` (box protocol) over the
  reference-table datasets, two ways: the mean of the per-dataset means (each dataset weighs the same) and the
  mean over their targets (each object weighs the same); deltas to pause 0 in points (1 point = 0.01).
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

from ..errors import FastMedSAMError

MODEL = "litemedsam"
PLAIN = "0"
NO_PAUSING = "fast path, nothing paused"
GOAL_SPEEDUP = 1.8
GOAL_DSC_POINTS = -1.0
MEANS = ("dsc_datasets", "dsc_targets", "nsd_datasets", "nsd_targets")


class EvalReportError(FastMedSAMError, ValueError):
    """The eval JSON given for the accuracy side of the curve is missing, malformed or lacks pause 0."""


def knob_key(pause: float) -> str:
    """One spelling per knob value, whatever wrote it: 0 -> "0", 0.50 -> "0.5", 1.0 -> "1"."""
    return f"{float(pause):g}"


def reference_slices(manifest: Path, limit: Optional[int] = None) -> List[Tuple[str, np.ndarray]]:
    """(dataset, uint8 RGB slice): the first image of each 2D reference dataset, the middle slice of the first
    volume of each 3D one, in manifest order; the first `limit` of them when given."""
    from ..engines.slice_engine import to_rgb
    from ..evaluation.box_protocol import REFERENCE
    from ..io.intensity import to_uint8
    from ..io.manifest import load_image, read_manifest

    seen, out = set(), []
    for entry in read_manifest(manifest):
        if limit is not None and len(out) == limit:
            break
        name = entry.datasets[0] if entry.datasets else None
        if name is None or name not in REFERENCE or name in seen:
            continue
        seen.add(name)
        image = load_image(entry)
        u8 = to_uint8(image)
        out.append((name, to_rgb(u8[u8.shape[0] // 2] if image.is_volume else u8)))
    return out


def measure_speed(pauses: Sequence[float], manifest: Path, repeats: int, slices: Optional[int] = None,
                  progress: bool = True) -> Dict[str, Any]:
    """Encoder wall time per variant (ms, median over repeats of the mean over slices) and paused fractions.
    The plain encoder and the nothing-paused fast path are always timed beside the knobs in `pauses` (> 0)."""
    import torch

    from ..models import load_model
    from ..models.litemedsam import LiteMedSAMAdapter
    from . import load_pause_heads, paused_encoder

    net = load_model(MODEL)
    heads = load_pause_heads(MODEL)
    inputs = [(name, LiteMedSAMAdapter().preprocess(rgb)[0]) for name, rgb in reference_slices(manifest, slices)]
    if not inputs:
        raise FastMedSAMError(f"{manifest} has no image of a reference-table dataset to time the encoder on")
    fast = paused_encoder(net, MODEL, 1.0, heads=heads)
    variants: Dict[str, Any] = {PLAIN: net.encode, NO_PAUSING: lambda x, runner=fast.runner: runner(x)[0]}
    encoders = {knob_key(p): paused_encoder(net, MODEL, p, heads=heads) for p in sorted(set(pauses)) if p > 0}
    variants.update(encoders)
    keys = list(variants)
    times: Dict[str, List[float]] = {k: [] for k in keys}
    fractions: Dict[str, List[List[float]]] = {k: [] for k in encoders}
    with torch.inference_mode():
        for key in keys:
            variants[key](inputs[0][1])  # warm-up
        for repeat in range(repeats):
            spent = dict.fromkeys(keys, 0.0)
            order = keys[repeat % len(keys):] + keys[:repeat % len(keys)]  # no variant always runs first
            for _, tensor in inputs:
                for key in order:
                    start = time.perf_counter()
                    variants[key](tensor)
                    spent[key] += time.perf_counter() - start
                    if key in encoders and repeat == 0:
                        fractions[key].append(encoders[key].last_stats.paused_fraction())
            for key in keys:
                times[key].append(1000.0 * spent[key] / len(inputs))
            if progress:
                print(f"repeat {repeat + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in times.items()),
                      file=sys.stderr)
    return {
        "threads": torch.get_num_threads(),
        "slices": [name for name, _ in inputs],
        "repeats": repeats,
        "encoder_ms": {k: statistics.median(v) for k, v in times.items()},
        "encoder_ms_samples": times,
        "paused_fraction_per_block": {k: np.mean(v, axis=0).round(4).tolist() for k, v in fractions.items()},
        "heads_depths": list(heads.depths),
    }


def load_eval(path: Path) -> Dict[str, Any]:
    """The JSON of `fastmedsam eval --pause 0,...` (box protocol, LiteMedSAM), checked for what the curve needs."""
    hint = "write one with `fastmedsam eval --pause 0,0.25,0.5,0.75,1 --out eval.json`"
    if not path.is_file():
        raise EvalReportError(f"eval report {path} does not exist: {hint}")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvalReportError(f"eval report {path} is not readable JSON ({exc})") from None
    summary = report.get("summary") if isinstance(report, dict) else None
    if not summary or not isinstance(summary, dict) or not all(isinstance(s, dict) and "datasets" in s
                                                               for s in summary.values()):
        raise EvalReportError(f"{path} is not a box-protocol `fastmedsam eval` report (no summary per pause): {hint}")
    if report.get("model", MODEL) != MODEL:
        raise EvalReportError(f"{path} evaluates {report['model']!r}; the pause curve is for {MODEL}")
    try:
        knobs = sorted(float(k) for k in summary)
    except ValueError:
        raise EvalReportError(f"{path}: summary keys must be pause values, got {sorted(summary)}") from None
    if 0.0 not in knobs:
        have = ", ".join(knob_key(k) for k in knobs) or "none"
        raise EvalReportError(f"{path} has no pause 0 (the plain model) to compare with (its pauses: {have}): "
                              f"rerun eval with pause 0 among the values, e.g. --pause 0,{have}")
    return report


def _scored(summary: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Reference-table datasets with DSC and NSD scored on at least one target."""
    return {name: {"dsc": s["dsc"], "nsd": s["nsd"], "n": int(s["n"])} for name, s in summary["datasets"].items()
            if "reference" in s and s.get("dsc") is not None and s.get("nsd") is not None and s.get("n")}


def _means(rows: Dict[str, Dict[str, Any]]) -> Dict[str, float]:
    """Mean of the per-dataset means, and mean over targets (per-dataset means weighted by their targets)."""
    n = np.array([r["n"] for r in rows.values()], dtype=np.float64)
    out = {}
    for metric in ("dsc", "nsd"):
        values = np.array([r[metric] for r in rows.values()], dtype=np.float64)
        out[f"{metric}_datasets"] = float(values.mean())
        out[f"{metric}_targets"] = float((values * n).sum() / n.sum())
    return out


def accuracy(eval_report: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """knob -> DSC/NSD over the reference-table datasets: `dsc_datasets`/`nsd_datasets` (each dataset weighs the
    same), `dsc_targets`/`nsd_targets` (each object weighs the same), the per-dataset values, and
    `delta_points`: the same four means minus pause 0's, in points, over the datasets both knobs scored."""
    summaries = {knob_key(float(k)): v for k, v in eval_report["summary"].items()}
    if PLAIN not in summaries:
        raise EvalReportError("the eval report has no pause 0 (the plain model) to compare with")
    base = _scored(summaries[PLAIN])
    if not base:
        raise EvalReportError("the eval report scored no reference-table dataset at pause 0")
    out: Dict[str, Dict[str, Any]] = {}
    for key in sorted(summaries, key=float):
        rows = _scored(summaries[key])
        common = sorted(set(rows) & set(base))
        if not common:
            continue
        ours = _means({n: rows[n] for n in common})
        theirs = _means({n: base[n] for n in common})
        out[key] = {
            **_means(rows),
            "n_datasets": len(rows),
            "n_targets": sum(r["n"] for r in rows.values()),
            "delta_points": {m: 100.0 * (ours[m] - theirs[m]) for m in MEANS},
            "delta_datasets": common,
            "datasets": rows,
        }
    return out


def curve(speed: Dict[str, Any], acc: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per timed variant: speed, paused fractions, and accuracy (None with a note when not evaluated)."""
    base = speed["encoder_ms"][PLAIN]
    rows = []
    for key, ms in speed["encoder_ms"].items():
        fractions = speed["paused_fraction_per_block"].get(key)
        row: Dict[str, Any] = {
            "pause": key,
            "encoder_ms": ms,
            "speedup": base / ms,
            "paused_fraction_per_block": fractions,
            "paused_fraction": float(np.mean(fractions)) if fractions else 0.0,
            "accuracy": None,
        }
        if key == NO_PAUSING:
            row["note"] = "speed only: the plain model's computation on the paused code path"
        elif key in acc:
            row["accuracy"] = {k: v for k, v in acc[key].items() if k != "datasets"}
        else:
            row["note"] = f"pause {key} is not in the eval report (it has {', '.join(acc)}): no accuracy"
        rows.append(row)
    return rows


def build(speed: Dict[str, Any], acc: Dict[str, Dict[str, Any]], eval_path: Optional[Path] = None) -> Dict[str, Any]:
    """The whole report: speed, accuracy per knob of the eval, and the curve's rows."""
    timed = [k for k in speed["encoder_ms"] if k != NO_PAUSING]
    return {
        "model": MODEL,
        "eval": str(eval_path) if eval_path else None,
        "goal": {"speedup": GOAL_SPEEDUP, "delta_dsc_points": GOAL_DSC_POINTS},
        "speed": speed,
        "accuracy": acc,
        "missing_accuracy": [k for k in timed if k not in acc],
        "rows": curve(speed, acc),
    }


def _threads(speed: Dict[str, Any]) -> str:
    return f"{speed['threads']} thread" + ("" if speed["threads"] == 1 else "s")


def _pair(values: Optional[Dict[str, Any]], a: str, b: str, fmt: str) -> str:
    return "–" if values is None else f"{values[a]:{fmt}} / {values[b]:{fmt}}"


def table(report: Dict[str, Any]) -> str:
    """Markdown table of the curve, one row per timed variant."""
    speed = report["speed"]
    blocks = len(next(iter(speed["paused_fraction_per_block"].values()), [])) or 10
    lines = [
        f"encoder wall ms: median of {speed['repeats']} repeats of the mean over {len(speed['slices'])} real slices "
        f"({', '.join(speed['slices'])}), {_threads(speed)}; speed-up vs the plain encoder (pause 0). "
        "DSC/NSD over the reference-table datasets: mean of the dataset means / mean over targets; Δ vs pause 0 "
        "in points (0.01).",
        "",
        f"| pause | encoder ms | speed-up | paused per block {'/'.join(map(str, range(blocks)))} | DSC | ΔDSC pts | "
        "NSD | ΔNSD pts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        acc = row["accuracy"]
        fractions = row["paused_fraction_per_block"]
        frac = " ".join(f"{f:.2f}" for f in fractions) if fractions else ("0 (plain)" if row["pause"] == PLAIN else "0")
        delta = acc["delta_points"] if acc else None
        cells = [_pair(acc, "dsc_datasets", "dsc_targets", ".4f"), _pair(delta, "dsc_datasets", "dsc_targets", "+.2f"),
                 _pair(acc, "nsd_datasets", "nsd_targets", ".4f"), _pair(delta, "nsd_datasets", "nsd_targets", "+.2f")]
        speed_cells = f"| {row['pause']} | {row['encoder_ms']:.0f} | {row['speedup']:.2f}x | {frac} | "
        lines.append(speed_cells + " | ".join(cells) + " |")
    lines.append(f"\npause heads before blocks {speed['heads_depths']}; "
                 "blocks 0-1 run on the 128x128 grid, 2-9 on 64x64.")
    for key in report["missing_accuracy"]:
        lines.append(f"pause {key}: not in the eval report, so no accuracy (rerun eval with --pause including {key}).")
    return "\n".join(lines)


def _nice_ticks(lo: float, hi: float, count: int = 6) -> List[float]:
    """Round tick values (steps of 1, 2 or 5 x 10^k) covering [lo, hi]."""
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def plot(report: Dict[str, Any], path: Path) -> Path:
    """Speed-up (x) against the change of mean DSC and NSD vs pause 0 in points (y; per-dataset means), one
    labelled point per knob, the goal region shaded; ASCII labels only (Pillow's bundled font)."""
    from .visualize import font

    width, height = 900, 620
    left, right, top, bottom = 90, 30, 70, 100
    blue, orange, green, grey = (31, 119, 180), (255, 127, 14), (44, 160, 44), (150, 150, 150)
    rows = report["rows"]
    evaluated = [r for r in rows if r["accuracy"] is not None]
    unevaluated = [r for r in rows if r["accuracy"] is None and r["pause"] != NO_PAUSING]
    fast = next(r for r in rows if r["pause"] == NO_PAUSING)
    ys = [v for r in evaluated for v in (r["accuracy"]["delta_points"]["dsc_datasets"],
                                         r["accuracy"]["delta_points"]["nsd_datasets"])]
    xs = [r["speedup"] for r in rows]
    x_lo, x_hi = min(xs + [1.0]) - 0.1, max(xs + [GOAL_SPEEDUP]) + 0.2
    y_lo, y_hi = min(ys + [GOAL_DSC_POINTS]) - 1.0, max(ys + [0.0]) + 1.0

    def at(x: float, y: float) -> Tuple[float, float]:
        return (left + (x - x_lo) / (x_hi - x_lo) * (width - left - right),
                top + (y_hi - y) / (y_hi - y_lo) * (height - top - bottom))

    image = PILImage.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    small, text, big = font(12), font(14), font(17)
    x0, y0 = at(GOAL_SPEEDUP, y_hi)
    x1, y1 = at(x_hi, GOAL_DSC_POINTS)
    draw.rectangle([x0, y0, x1, y1], fill=(223, 240, 216))
    for x in _nice_ticks(x_lo, x_hi):
        px = at(x, y_lo)[0]
        draw.line([px, top, px, height - bottom], fill=(235, 235, 235))
        draw.line([px, height - bottom, px, height - bottom + 5], fill="black")
        draw.text((px, height - bottom + 8), f"{x:g}x", fill="black", font=small, anchor="mt")
    for y in _nice_ticks(y_lo, y_hi):
        py = at(x_lo, y)[1]
        draw.line([left, py, width - right, py], fill=(235, 235, 235))
        draw.line([left - 5, py, left, py], fill="black")
        draw.text((left - 8, py), f"{y:+g}" if y else "0", fill="black", font=small, anchor="rm")
    draw.line([at(x_lo, 0.0), at(x_hi, 0.0)], fill=(120, 120, 120))
    draw.line([at(x_lo, GOAL_DSC_POINTS), at(x_hi, GOAL_DSC_POINTS)], fill=green)
    draw.line([at(GOAL_SPEEDUP, y_lo), at(GOAL_SPEEDUP, y_hi)], fill=green)
    fx = at(fast["speedup"], y_lo)[0]
    draw.line([fx, top, fx, height - bottom], fill=grey)
    draw.text((fx + 3, top + 3), f"fast path, nothing paused ({fast['speedup']:.2f}x)", fill=grey, font=small)
    for series, colour, marker in (("nsd_datasets", orange, "square"), ("dsc_datasets", blue, "circle")):
        points = sorted((r["speedup"], r["accuracy"]["delta_points"][series], r["pause"]) for r in evaluated)
        if len(points) > 1:
            draw.line([at(x, y) for x, y, _ in points], fill=colour, width=2)
        for x, y, key in points:
            cx, cy = at(x, y)
            shape = draw.ellipse if marker == "circle" else draw.rectangle
            shape([cx - 5, cy - 5, cx + 5, cy + 5], fill=colour)
            if series == "dsc_datasets":
                draw.text((cx + 8, cy - 16), f"p={key}", fill="black", font=small)
    for r in unevaluated:  # timed but not in the eval: a hollow triangle on the x axis
        cx, cy = at(r["speedup"], y_lo)
        draw.polygon([(cx, cy - 12), (cx - 6, cy), (cx + 6, cy)], outline=grey)
        draw.text((cx + 6, cy - 26), f"p={r['pause']} (no eval)", fill=grey, font=small)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((width / 2, 22), "LiteMedSAM token pausing: encoder speed-up vs accuracy change", fill="black",
              font=big, anchor="mm")
    draw.text((width / 2, 46), f"{len(report['speed']['slices'])} real slices, {_threads(report['speed'])}; "
              "accuracy = mean over reference-table datasets, change vs pause 0", fill=(80, 80, 80), font=small,
              anchor="mm")
    draw.text(((left + width - right) / 2, height - bottom + 42), "encoder speed-up vs the plain encoder (pause 0)",
              fill="black", font=text, anchor="mm")
    label = PILImage.new("RGB", (height - top - bottom, 20), "white")
    ImageDraw.Draw(label).text((label.width / 2, 10), "change vs pause 0 (points, 1 point = 0.01)", fill="black",
                               font=text, anchor="mm")
    image.paste(label.rotate(90, expand=True), (16, top))
    legend = [("circle", blue, "DSC change (mean over datasets)"),
              ("square", orange, "NSD change (mean over datasets)"),
              ("patch", green, f"goal: >= {GOAL_SPEEDUP:g}x at >= {GOAL_DSC_POINTS:g} DSC point")]
    lx, y = left, height - 22
    for kind, colour, name in legend:  # one row under the axis title, outside the data
        if kind == "patch":
            draw.rectangle([lx, y - 6, lx + 22, y + 6], fill=(223, 240, 216), outline=colour)
        else:
            draw.line([lx, y, lx + 22, y], fill=colour, width=2)
            shape = draw.ellipse if kind == "circle" else draw.rectangle
            shape([lx + 7, y - 4, lx + 15, y + 4], fill=colour)
        draw.text((lx + 30, y), name, fill="black", font=small, anchor="lm")
        lx += 40 + draw.textlength(name, font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write(report: Dict[str, Any], prefix: Path) -> Tuple[str, Dict[str, Path]]:
    """Write `<prefix>.md`, `<prefix>.json` and `<prefix>.png`; return the table and the paths."""
    paths = {ext: prefix.with_name(prefix.name + "." + ext) for ext in ("md", "json", "png")}
    prefix.parent.mkdir(parents=True, exist_ok=True)
    text = table(report)
    paths["md"].write_text(text + "\n", encoding="utf-8")
    paths["json"].write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    plot(report, paths["png"])
    return text, paths
