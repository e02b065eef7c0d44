"""`fastmedsam eval --protocol refine --clicks 5`: a box, then clicks, on the validation cases of the split.

2D, per object: the tight box, then `clicks` clicks, each at the deepest point (Euclidean distance transform
maximum) of the largest 8-connected error region, include where the object is; clicks accumulate and the previous
mask goes back with them. NoC@90 continues the same clicks up to `noc_max` (the clicks a model needs to reach
Dice 0.9; objects that never do count as `noc_max`).
3D, per object (CVPR 2025 interactive protocol): a 2D box on the object's middle slice with the object's z range
(a Box3D), propagated; then clicks at the deepest point of the largest 26-connected 3D error component.
Reported per dataset and step: Dice and NSD (the project's `metrics.score`), Dice-AUC (trapezoid area of the
Dice curve over steps 0..N, divided by N), the harm rate (share of objects whose Dice drops by more than 1 point
from the step before). Plain LiteMedSAM runs the same protocol as the baseline: it takes boxes only, so its clicks
are ignored (each step repeats its box result). `propagation` compares, on the 3D objects, the CVPR24 reference
propagation (litemedsam) with mask-prompted propagation (litemedsam-refine), both from the CVPR24 tight 3D box.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ..evaluation.metrics import score
from ..io.manifest import iter_cases, read_manifest, tight_box
from ..prompts import Box, Box3D, Point
from .clicks import deepest_error_click
from .split import VALIDATION, part

REFINE_MODEL = "litemedsam-refine"
BASELINE_MODEL = "litemedsam"
NOC_TARGET = 0.9
HARM_POINTS = 0.01


def cvpr25_box(truth: np.ndarray) -> Box3D:
    """The middle slice's 2D box with the object's z range."""
    zs = np.nonzero(truth.reshape(truth.shape[0], -1).any(axis=1))[0]
    z_mid = int(zs[len(zs) // 2])
    plane = tight_box(truth[z_mid])
    return Box3D(plane.x0, plane.y0, int(zs.min()), plane.x1, plane.y1, int(zs.max()))


def _point(click, three_d: bool) -> Point:
    index, positive = click
    if three_d:
        z, y, x = index
        return Point(float(x), float(y), float(z), positive=positive)
    y, x = index
    return Point(float(x), float(y), positive=positive)


def click_sequence(session: Any, box: Union[Box, Box3D], truth: np.ndarray, spacing, steps: int,
                   noc_max: int = 0, clicks_used: bool = True) -> Dict[str, Any]:
    """Dice/NSD after the box and after each of `steps` clicks (+ NoC@90 when noc_max): one object's run."""
    three_d = truth.ndim == 3
    prediction = session.predict(box=box).mask
    dsc, nsd = score(prediction, truth, spacing)
    row: Dict[str, Any] = {"dice": [dsc], "nsd": [nsd], "clicks": []}
    reached = 0 if dsc >= NOC_TARGET else None
    points: List[Point] = []
    last = max(steps, noc_max if reached is None else steps)
    for step in range(1, last + 1):
        click = deepest_error_click(prediction, truth)
        if click is None or not clicks_used:
            new_dsc, new_nsd = dsc, nsd  # exact already, or a box-only model: the click changes nothing
        else:
            points.append(_point(click, three_d))
            prediction = session.predict(box=box, points=points, mask=prediction).mask
            new_dsc, new_nsd = score(prediction, truth, spacing) if step <= steps else (score(prediction, truth, None)[0], nsd)
        dsc = new_dsc
        if step <= steps:
            nsd = new_nsd
            row["dice"].append(dsc)
            row["nsd"].append(nsd)
            if click is not None:
                row["clicks"].append([list(click[0]), click[1]])
        if reached is None and dsc >= NOC_TARGET:
            reached = step
        if step >= steps and (reached is not None or not clicks_used):
            break
    if noc_max:
        row["noc90"] = reached if reached is not None else noc_max
        row["noc90_reached"] = reached is not None
    return row


def _share_cache(a: Any, b: Any, stored: Optional[Path]) -> None:
    """Both sessions use one embedding cache (same encoder): each slice is encoded once for both models. `stored`:
    embeddings a previous run of this command kept (a local scratch file it wrote itself), loaded first."""
    import torch

    b.cache = a.cache
    b._engine.cache = a.cache
    if stored is not None and stored.exists():
        for key, value in torch.load(stored, weights_only=False):
            a.cache.put(key, value)


def _keep_cache(session: Any, stored: Optional[Path]) -> None:
    import torch

    if stored is not None:
        stored.parent.mkdir(parents=True, exist_ok=True)
        torch.save(session.cache.items(), stored)


def evaluate_refine(
    manifest: Union[str, Path], *, clicks: int = 5, noc_max: int = 20, datasets: Optional[Sequence[str]] = None,
    max_targets: Optional[int] = 20, device: str = "cpu", refine_model: str = REFINE_MODEL,
    refine_weights: Optional[Path] = None, embedding_cache: Optional[Path] = None, progress: bool = True, log=print,
    split: str = VALIDATION, rule: Optional[Dict[str, Any]] = None, rule_3d: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """`split`: the side of the split to run on (validation for every reported figure; train to tune on);
    `rule`, `rule_3d`: fields of the engine's click rules (`refine/focus.ClickRule`) to change, e.g. {"focus": 2.0}."""
    from ..session import Session
    from .requests import refine_engine

    entries = part(read_manifest(manifest), split)
    refine = Session(model=refine_model, device=device, weights=refine_weights, cache_mb=4096)
    engine = refine_engine(refine)
    engine.rule = replace(engine.rule, **(rule or {}))
    engine.rule_3d = replace(engine.rule_3d, **(rule_3d or {}))
    baseline = Session(model=BASELINE_MODEL, device=device, cache_mb=4096)
    _share_cache(refine, baseline, embedding_cache)
    rows: List[Dict[str, Any]] = []
    counts: Dict[str, int] = defaultdict(int)
    started = time.perf_counter()
    for entry, image, label, found in iter_cases(entries, datasets):
        refine.set_image(image)
        baseline.set_image(image)
        three_d = entry.dim == "3D"
        spacing = tuple(reversed(image.spacing)) if three_d else None
        for target in found:
            if max_targets is not None and counts[target.dataset] >= max_targets:
                continue
            counts[target.dataset] += 1
            truth = target.mask(label)
            box = cvpr25_box(truth) if three_d else target.box
            row = {"dataset": target.dataset, "image": entry.image_name, "target": target.name, "dim": entry.dim}
            row[refine_model] = click_sequence(refine, box, truth, spacing, clicks, 0 if three_d else noc_max)
            row[BASELINE_MODEL] = click_sequence(baseline, box, truth, spacing, clicks, 0 if three_d else noc_max,
                                                 clicks_used=False)
            if three_d:
                row["propagation"] = {
                    name: float(score(session.predict(box=target.box).mask, truth, spacing)[0])
                    for name, session in ((BASELINE_MODEL, baseline), (refine_model, refine))
                }
            rows.append(row)
            if progress:
                r, b = row[refine_model]["dice"], row[BASELINE_MODEL]["dice"]
                log(f"{target.dataset} {target.name}: refine {r[0]:.3f} -> {r[-1]:.3f}, litemedsam {b[0]:.3f} "
                    f"({time.perf_counter() - started:.0f} s)")
    _keep_cache(refine, embedding_cache)
    return {"protocol": "refine", "clicks": clicks, "noc_max": noc_max, "max_targets": max_targets,
            "split": split, "rule": asdict(engine.rule), "rule_3d": asdict(engine.rule_3d),
            "models": [refine_model, BASELINE_MODEL], "seconds": time.perf_counter() - started,
            "rows": rows, "summary": summarise(rows, [refine_model, BASELINE_MODEL], clicks)}


def _auc(curve: Sequence[float]) -> float:
    return float(np.trapezoid(curve) / (len(curve) - 1)) if len(curve) > 1 else float(curve[0])


def _summary(runs: List[Dict[str, Any]], clicks: int) -> Dict[str, Any]:
    dice = np.array([r["dice"] for r in runs])
    nsd = np.array([r["nsd"] for r in runs])
    harm = [float(np.mean(dice[:, s] < dice[:, s - 1] - HARM_POINTS)) for s in range(1, clicks + 1)]
    out = {"n": len(runs), "dice": dice.mean(axis=0).tolist(), "nsd": nsd.mean(axis=0).tolist(),
           "dice_auc": float(np.mean([_auc(r["dice"]) for r in runs])), "harm": harm}
    if all("noc90" in r for r in runs):
        out["noc90"] = float(np.mean([r["noc90"] for r in runs]))
        out["noc90_failed"] = float(np.mean([not r["noc90_reached"] for r in runs]))
    return out


def summarise(rows: List[Dict[str, Any]], models: Sequence[str], clicks: int) -> Dict[str, Any]:
    by_dataset: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_dataset[row["dataset"]].append(row)
    out: Dict[str, Any] = {"datasets": {}, "mean_of_datasets": {}}
    for name, members in sorted(by_dataset.items()):
        out["datasets"][name] = {"dim": members[0]["dim"], **{m: _summary([r[m] for r in members], clicks) for m in models}}
        if "propagation" in members[0]:
            out["datasets"][name]["propagation"] = {m: float(np.mean([r["propagation"][m] for r in members])) for m in models}
    for dim in ("2D", "3D"):
        names = [n for n, d in out["datasets"].items() if d["dim"] == dim]
        if names:
            out["mean_of_datasets"][dim] = {
                m: {"dice": np.mean([out["datasets"][n][m]["dice"] for n in names], axis=0).tolist(),
                    "harm_max": float(max(max(out["datasets"][n][m]["harm"]) for n in names))}
                for m in models
            }
    return out


def markdown(report: Dict[str, Any]) -> str:
    models, clicks = report["models"], report["clicks"]
    steps = " | ".join(["box"] + [f"+{i}" for i in range(1, clicks + 1)])
    lines = [f"| dataset | n | model | Dice: {steps} | NSD box → +{clicks} | Dice-AUC | NoC@90 | max harm |",
             "|---|---|---|" + "---|" * (clicks + 1) + "---|---|---|---|"]
    for name, d in report["summary"]["datasets"].items():
        for m in models:
            s = d[m]
            noc = f"{s['noc90']:.1f}" if "noc90" in s else "–"
            lines.append(f"| {name} ({d['dim']}) | {s['n']} | {m} | " + " | ".join(f"{v:.4f}" for v in s["dice"])
                         + f" | {s['nsd'][0]:.4f} → {s['nsd'][-1]:.4f} | {s['dice_auc']:.4f} | {noc} | {max(s['harm']):.2f} |")
    for dim, means in report["summary"]["mean_of_datasets"].items():
        for m in models:
            lines.append(f"| **mean of {dim} datasets** | | {m} | " + " | ".join(f"{v:.4f}" for v in means[m]["dice"])
                         + f" | | | | {means[m]['harm_max']:.2f} |")
    prop = [(n, d["propagation"]) for n, d in report["summary"]["datasets"].items() if "propagation" in d]
    if prop:
        lines += ["", f"| 3D dataset | CVPR24 propagation ({models[1]}) | mask-prompted propagation ({models[0]}) | Δ |",
                  "|---|---|---|---|"]
        for name, p in prop:
            lines.append(f"| {name} | {p[models[1]]:.4f} | {p[models[0]]:.4f} | {p[models[0]] - p[models[1]]:+.4f} |")
    return "\n".join(lines)
