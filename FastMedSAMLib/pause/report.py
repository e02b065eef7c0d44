"""Speed/accuracy curve of the token-paused LiteMedSAM encoder: tables, a JSON report and a PNG plot.

Reached as `fastmedsam pause-curve --eval eval.json [--pause 0.1,0.25,0.5,0.75,1] --out out/pause/litemedsam`.
Everything is measured on the evaluation split only (images neither the pause heads nor the knob saw, see
`split.py`):
* speed (`measure_speed`): measured here, in one process, on one slice of each dataset's first evaluation image
  (3D: the middle of the labelled z-range): the plain encoder (pause 0), the paused code path with nothing paused
  (BatchNorm folding and fused kernels alone) and every knob value, interleaved slice by slice and repeat by
  repeat so a busy machine slows all of them alike; medians over repeats of the per-slice mean. The base of every
  speed-up is the fastest UNPAUSED variant of the run (in practice the fused path with nothing paused), so the
  figure is what pausing itself buys; the speed-up over the plain encoder is given beside it;
* accuracy (`accuracy`): DSC/NSD from `fastmedsam eval --split evaluation --pause 0,...` (box protocol), per
  dataset and as the mean of the per-dataset means (each dataset weighs the same) and the mean over targets;
  deltas to pause 0 in points (1 point = 0.01), the worst dataset named per knob.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

from ..errors import FastMedSAMError

MODEL = "litemedsam"
PLAIN = "0"
NO_PAUSING = "fast path, nothing paused"
# the goals, speed-up from pausing itself: >= 1.8x at <= 1 DSC point lost (mean of dataset means) and <= 3
# on the worst dataset; >= 2.5x at <= 2 points (no worst-dataset bound)
GOALS = {
    "1.8x": {"speedup": 1.8, "mean_dsc_points": -1.0, "worst_dsc_points": -3.0},
    "2.5x": {"speedup": 2.5, "mean_dsc_points": -2.0, "worst_dsc_points": None},
}
DATASET_COLOURS = [(141, 211, 199), (190, 186, 218), (251, 128, 114), (128, 177, 211), (253, 180, 98),
                   (179, 222, 105), (252, 205, 229), (188, 128, 189), (204, 235, 197), (255, 237, 111),
                   (110, 110, 110), (166, 86, 40), (228, 26, 28), (77, 175, 74)]
MEANS = ("dsc_datasets", "dsc_targets", "nsd_datasets", "nsd_targets")


class EvalReportError(FastMedSAMError, ValueError):
    """The eval JSON given for the accuracy side of the curve is missing, malformed or lacks pause 0."""


def knob_key(pause: float) -> str:
    """One spelling per knob value, whatever wrote it: 0 -> "0", 0.50 -> "0.5", 1.0 -> "1"."""
    return f"{float(pause):g}"


def evaluation_slices(manifest: Path, limit: Optional[int] = None) -> List[Tuple[str, np.ndarray]]:
    """(dataset folder, uint8 RGB slice): one per folder of the evaluation split (its first image; 3D: the middle
    of the labelled z-range), in split order; the first `limit` of them when given."""
    from .calibrate import split_slices
    from .split import committed_split

    first: Dict[str, str] = {}
    for name in committed_split()["evaluation"]:
        first.setdefault(name.split("/")[0], name)
    out = [(folder, rgb) for folder, _, rgb in split_slices(manifest, list(first.values()), per_volume=1)]
    return out[:limit] if limit is not None else out


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
    inputs = [(name, LiteMedSAMAdapter().preprocess(rgb)[0]) for name, rgb in evaluation_slices(manifest, slices)]
    if not inputs:
        raise FastMedSAMError(f"{manifest} has no evaluation-split image to time the encoder on")
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


def _read_eval(path: Path) -> Dict[str, Any]:
    hint = "write one with `fastmedsam eval --split evaluation --pause 0,0.25,0.5,0.75,1 --out eval.json`"
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
    if report.get("split") != "evaluation":
        raise EvalReportError(f"{path} was not run on the evaluation split (images the pause heads and the knob "
                              f"never saw): rerun `fastmedsam eval --split evaluation ...`")
    try:
        knobs = sorted(float(k) for k in summary)
    except ValueError:
        raise EvalReportError(f"{path}: summary keys must be pause values, got {sorted(summary)}") from None
    if 0.0 not in knobs:
        have = ", ".join(knob_key(k) for k in knobs) or "none"
        raise EvalReportError(f"{path} has no pause 0 (the plain model) to compare with (its pauses: {have}): "
                              f"rerun eval with pause 0 among the values, e.g. --pause 0,{have}")
    return report


def load_eval(paths: Union[Path, Sequence[Path]]) -> Dict[str, Any]:
    """The JSON(s) of `fastmedsam eval --split evaluation --pause 0,...` (box protocol, LiteMedSAM), checked for
    what the curve needs; several reports (e.g. a capped 3D run beside the 2D one) merge their datasets, which
    must not overlap; knobs missing from one report are dropped."""
    paths = [paths] if isinstance(paths, Path) else list(paths)
    reports = [_read_eval(p) for p in paths]
    if len(reports) == 1:
        return reports[0]
    knobs = set.intersection(*({knob_key(float(k)) for k in r["summary"]} for r in reports))
    merged: Dict[str, Any] = {"model": MODEL, "split": "evaluation", "summary": {}, "sources": [str(p) for p in paths]}
    for key in sorted(knobs, key=float):
        datasets: Dict[str, Any] = {}
        for path, report in zip(paths, reports):
            summary = next(v for k, v in report["summary"].items() if knob_key(float(k)) == key)
            both = set(datasets) & set(summary["datasets"])
            if both:
                raise EvalReportError(f"{path} evaluates dataset(s) another report also has: {sorted(both)}")
            datasets.update(summary["datasets"])
        merged["summary"][key] = {"datasets": datasets}
    return merged


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
    same), `dsc_targets`/`nsd_targets` (each object weighs the same), the per-dataset values with their deltas,
    `delta_points`: the same four means minus pause 0's, in points, over the datasets both knobs scored, and
    `worst`: the dataset whose DSC fell most."""
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
        for name in common:
            rows[name]["delta_dsc_points"] = 100.0 * (rows[name]["dsc"] - base[name]["dsc"])
            rows[name]["delta_nsd_points"] = 100.0 * (rows[name]["nsd"] - base[name]["nsd"])
        worst = min(common, key=lambda n: (rows[n]["delta_dsc_points"], n))
        out[key] = {
            **_means(rows),
            "n_datasets": len(rows),
            "n_targets": sum(r["n"] for r in rows.values()),
            "delta_points": {m: 100.0 * (ours[m] - theirs[m]) for m in MEANS},
            "delta_datasets": common,
            "worst": {"dataset": worst, "delta_dsc_points": rows[worst]["delta_dsc_points"],
                      "delta_nsd_points": rows[worst]["delta_nsd_points"]},
            "datasets": rows,
        }
    return out


def _goals(speedup: float, acc: Dict[str, Any]) -> Dict[str, bool]:
    delta = acc["delta_points"]["dsc_datasets"]
    return {name: bool(speedup >= goal["speedup"] and delta >= goal["mean_dsc_points"]
                       and (goal["worst_dsc_points"] is None
                            or acc["worst"]["delta_dsc_points"] >= goal["worst_dsc_points"]))
            for name, goal in GOALS.items()}


def curve(speed: Dict[str, Any], acc: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per timed variant: speed (vs the fastest unpaused variant and vs the plain encoder), paused
    fractions, accuracy (None with a note when not evaluated) and the goals it meets."""
    times = speed["encoder_ms"]
    base = min(times[PLAIN], times[NO_PAUSING])
    rows = []
    for key, ms in times.items():
        fractions = speed["paused_fraction_per_block"].get(key)
        row: Dict[str, Any] = {
            "pause": key,
            "encoder_ms": ms,
            "speedup": base / ms,
            "speedup_vs_plain": times[PLAIN] / ms,
            "paused_fraction_per_block": fractions,
            "paused_fraction": float(np.mean(fractions)) if fractions else 0.0,
            "accuracy": None,
        }
        if key == NO_PAUSING:
            row["note"] = "speed only: the plain model's computation on the paused code path"
        elif key in acc:
            row["accuracy"] = {k: v for k, v in acc[key].items() if k != "datasets"}
            if key != PLAIN:
                row["goals"] = _goals(row["speedup"], acc[key])
        else:
            row["note"] = f"pause {key} is not in the eval report (it has {', '.join(acc)}): no accuracy"
        rows.append(row)
    return rows


def build(speed: Dict[str, Any], acc: Dict[str, Dict[str, Any]], eval_paths: Sequence[Path] = ()) -> Dict[str, Any]:
    """The whole report: speed, accuracy per knob of the eval, the curve's rows and which goals are met."""
    timed = [k for k in speed["encoder_ms"] if k != NO_PAUSING]
    rows = curve(speed, acc)
    return {
        "model": MODEL,
        "eval": [str(p) for p in eval_paths],
        "split": "evaluation",
        "base": min((PLAIN, NO_PAUSING), key=lambda k: speed["encoder_ms"][k]),
        "goals": GOALS,
        "goals_met": {name: [r["pause"] for r in rows if r.get("goals", {}).get(name)] for name in GOALS},
        "speed": speed,
        "accuracy": acc,
        "missing_accuracy": [k for k in timed if k not in acc],
        "rows": rows,
    }


def _threads(speed: Dict[str, Any]) -> str:
    return f"{speed['threads']} thread" + ("" if speed["threads"] == 1 else "s")


def _pair(values: Optional[Dict[str, Any]], a: str, b: str, fmt: str) -> str:
    return "–" if values is None else f"{values[a]:{fmt}} / {values[b]:{fmt}}"


def table(report: Dict[str, Any]) -> str:
    """Markdown: the curve (one row per timed variant), then ΔDSC / ΔNSD per dataset and knob, the worst dataset
    and the goals."""
    speed = report["speed"]
    base = "the plain encoder" if report["base"] == PLAIN else "the fused path with nothing paused"
    lines = [
        f"encoder wall ms: median of {speed['repeats']} repeats of the mean over {len(speed['slices'])} evaluation "
        f"slices ({', '.join(speed['slices'])}), {_threads(speed)}; speed-up vs the fastest unpaused variant of "
        f"this run ({base}), and vs the plain encoder. DSC/NSD on the evaluation split: mean of the dataset means / "
        "mean over targets; Δ vs pause 0 in points (0.01); worst = the dataset whose DSC fell most.",
        "",
        "| pause | encoder ms | speed-up | vs plain | tokens paused | DSC | ΔDSC pts | NSD | ΔNSD pts | worst dataset ΔDSC / ΔNSD |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        acc = row["accuracy"]
        delta = acc["delta_points"] if acc else None
        worst = acc["worst"] if acc and row["pause"] != PLAIN else None
        cells = [_pair(acc, "dsc_datasets", "dsc_targets", ".4f"), _pair(delta, "dsc_datasets", "dsc_targets", "+.2f"),
                 _pair(acc, "nsd_datasets", "nsd_targets", ".4f"), _pair(delta, "nsd_datasets", "nsd_targets", "+.2f"),
                 "–" if worst is None else
                 f"{worst['dataset']} {worst['delta_dsc_points']:+.2f} / {worst['delta_nsd_points']:+.2f}"]
        lines.append(f"| {row['pause']} | {row['encoder_ms']:.0f} | {row['speedup']:.2f}x | "
                     f"{row['speedup_vs_plain']:.2f}x | {row['paused_fraction']:.2f} | " + " | ".join(cells) + " |")
    lines += _dataset_table(report)
    for name, goal in GOALS.items():
        met = report["goals_met"][name]
        worst = "" if goal["worst_dsc_points"] is None else f" and >= {goal['worst_dsc_points']:g} on the worst dataset"
        lines.append(f"goal {name}: >= {goal['speedup']:g}x from pausing at >= {goal['mean_dsc_points']:g} DSC points "
                     f"(mean of dataset means){worst}: " + (f"met at pause {', '.join(met)}" if met else "not met"))
    lines.append(f"pause heads before blocks {speed['heads_depths']}; tokens paused = mean over the 10 ViT blocks.")
    for key in report["missing_accuracy"]:
        lines.append(f"pause {key}: not in the eval report, so no accuracy (rerun eval with --pause including {key}).")
    return "\n".join(lines)


def _dataset_table(report: Dict[str, Any]) -> List[str]:
    acc = report["accuracy"]
    knobs = [k for k in acc if k != PLAIN]
    if not knobs:
        return [""]
    lines = ["", "ΔDSC / ΔNSD points per dataset (DSC at pause 0 beside the name):", "",
             "| dataset (n, DSC at 0) | " + " | ".join(f"pause {k}" for k in knobs) + " |",
             "|---|" + "---|" * len(knobs)]
    for name, base in acc[PLAIN]["datasets"].items():
        cells = []
        for key in knobs:
            row = acc[key]["datasets"].get(name)
            cells.append("–" if row is None else f"{row['delta_dsc_points']:+.2f} / {row['delta_nsd_points']:+.2f}")
        lines.append(f"| {name} ({base['n']}, {base['dsc']:.4f}) | " + " | ".join(cells) + " |")
    return lines + [""]


def _nice_ticks(lo: float, hi: float, count: int = 6) -> List[float]:
    """Round tick values (steps of 1, 2 or 5 x 10^k) covering [lo, hi]."""
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def dataset_colour(index: int) -> Tuple[int, int, int]:
    """A distinct colour per dataset line (a fixed qualitative palette, repeated past its end)."""
    return DATASET_COLOURS[index % len(DATASET_COLOURS)]


def plot(report: Dict[str, Any], path: Path) -> Path:
    """Speed-up from pausing (x, vs the fastest unpaused variant) against the change of DSC vs pause 0 in points
    (y): one thin line per dataset, the mean of dataset means thick (DSC blue, NSD orange), the two goal regions
    shaded; ASCII labels only (Pillow's bundled font)."""
    from .visualize import font

    width, height = 1100, 660
    left, right, top, bottom = 90, 250, 70, 100
    blue, orange, green, grey = (31, 119, 180), (255, 127, 14), (44, 160, 44), (150, 150, 150)
    rows = [r for r in report["rows"] if r["pause"] != NO_PAUSING]
    evaluated = [r for r in rows if r["accuracy"] is not None]
    unevaluated = [r for r in rows if r["accuracy"] is None]
    acc = report["accuracy"]
    datasets = list(acc[PLAIN]["datasets"]) if PLAIN in acc else []
    speed_of = {r["pause"]: r["speedup"] for r in evaluated}
    lines = {name: sorted((speed_of[k], acc[k]["datasets"][name]["delta_dsc_points"], k)
                          for k in speed_of if name in acc[k]["datasets"]) for name in datasets}
    ys = [y for pts in lines.values() for _, y, _ in pts] + [
        r["accuracy"]["delta_points"]["nsd_datasets"] for r in evaluated]
    xs = [r["speedup"] for r in rows]
    x_lo, x_hi = min(xs + [1.0]) - 0.1, max(xs + [max(g["speedup"] for g in GOALS.values())]) + 0.2
    y_lo, y_hi = min(ys + [-3.0]) - 1.0, max(ys + [0.0]) + 1.0

    def at(x: float, y: float) -> Tuple[float, float]:
        return (left + (x - x_lo) / (x_hi - x_lo) * (width - left - right),
                top + (y_hi - y) / (y_hi - y_lo) * (height - top - bottom))

    image = PILImage.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    small, text, big = font(12), font(14), font(17)
    for goal, fill in zip(GOALS.values(), ((223, 240, 216), (200, 230, 190))):
        x0, y0 = at(goal["speedup"], y_hi)
        x1, y1 = at(x_hi, goal["mean_dsc_points"])
        draw.rectangle([x0, y0, x1, y1], fill=fill)
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
    for i, name in enumerate(datasets):
        points = lines[name]
        colour = dataset_colour(i)
        if len(points) > 1:
            draw.line([at(x, y) for x, y, _ in points], fill=colour, width=1)
        for x, y, _ in points:
            cx, cy = at(x, y)
            draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=colour)
    for series, colour, marker in (("nsd_datasets", orange, "square"), ("dsc_datasets", blue, "circle")):
        points = sorted((r["speedup"], r["accuracy"]["delta_points"][series], r["pause"]) for r in evaluated)
        if len(points) > 1:
            draw.line([at(x, y) for x, y, _ in points], fill=colour, width=4)
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
    draw.text(((left + width - right) / 2, 22), "LiteMedSAM token pausing on unseen images: speed-up vs accuracy",
              fill="black", font=big, anchor="mm")
    draw.text(((left + width - right) / 2, 46),
              f"{len(report['speed']['slices'])} evaluation slices, {_threads(report['speed'])}; "
              "thin lines: DSC change per dataset", fill=(80, 80, 80), font=small, anchor="mm")
    draw.text(((left + width - right) / 2, height - bottom + 42),
              "encoder speed-up from pausing (vs the fastest unpaused run: fused path, nothing paused)",
              fill="black", font=text, anchor="mm")
    label = PILImage.new("RGB", (height - top - bottom, 20), "white")
    ImageDraw.Draw(label).text((label.width / 2, 10), "change vs pause 0 (points, 1 point = 0.01)", fill="black",
                               font=text, anchor="mm")
    image.paste(label.rotate(90, expand=True), (16, top))
    legend = [("circle", blue, "DSC, mean of datasets", 4), ("square", orange, "NSD, mean of datasets", 4)]
    legend += [("circle", dataset_colour(i), name, 1) for i, name in enumerate(datasets)]
    lx, ly = width - right + 15, top + 6
    for kind, colour, name, line_width in legend:
        draw.line([lx, ly, lx + 22, ly], fill=colour, width=line_width)
        shape = draw.ellipse if kind == "circle" else draw.rectangle
        shape([lx + 8, ly - 3, lx + 14, ly + 3], fill=colour)
        draw.text((lx + 30, ly), name, fill="black", font=small, anchor="lm")
        ly += 20
    for goal, fill in zip(GOALS.values(), ((223, 240, 216), (200, 230, 190))):
        draw.rectangle([lx, ly - 6, lx + 22, ly + 6], fill=fill, outline=green)
        draw.text((lx + 30, ly), f">= {goal['speedup']:g}x at >= {goal['mean_dsc_points']:g} pt", fill="black",
                  font=small, anchor="lm")
        ly += 20
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
