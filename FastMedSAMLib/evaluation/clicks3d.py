"""The FastSAM3D / SAM-Med3D click protocol (`fastmedsam eval --protocol clicks3d`) on the 3D cases of the manifest.

Per target (each label value of each 3D case) a binary label. Image and label map go to the 1.5 mm RAS+ grid of
`crop_engine.CanonicalGrid` (image linear, label map nearest neighbour, as the reference's data preparation); the
128³ crop is centred on the target's bounding box (torchio `CropOrPad(mask_name=...)`), padded with 0; the image crop
is z-scored over its voxels > 0 and encoded once. Then N rounds, each feeding only the newest click and the previous
round's 32³ logits (zeros before the first round):
* clicks 1-2 ("deep"): the error region (false negatives or false positives) whose distance transform reaches
  further in; a voxel drawn uniformly among those deeper than half that maximum;
* later clicks ("uniform"): a voxel drawn uniformly from the whole error region;
* a click is positive when it lies in the false-negative region.
As in the reference code (SAM-Med3D `validation.py`, `utils/click_method.py`) the error regions are taken against
the upsampled logits > 0.5, the scored mask is sigmoid > 0.5 (logits > 0), distances are Euclidean in crop voxels
with the crop border counting as background, and Dice is computed in the 128³ crop. A round with no error left adds
no click and keeps the previous result. Reported per N: the max Dice over the first N clicks (the papers' figure) and
the Dice after click N. Draws come from a generator seeded by (seed, manifest entry, target), so a target's clicks do
not depend on which other targets run.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from ..engines.crop_engine import (
    CROP,
    LOW_RES,
    SPACING_MM,
    CanonicalGrid,
    grid_array,
    image_to_sitk,
    to_sitk,
    upsample,
    zscore_positive,
)
from ..errors import FastMedSAMError, WeightsError
from ..models.base import SamModel
from .box_protocol import environment
from .metrics import dice

PROTOCOL = "clicks3d"
DEFAULT_CLICKS = (1, 3, 5, 10)
DEFAULT_SEED = 2023  # SAM-Med3D validation.py's default
DEEP_CLICKS = 2
CLICK_THRESHOLD = 0.5  # on logits, as the reference click samplers apply it
POINT_MODELS = ("fastsam3d", "sam-med3d-turbo")
RECIPE_VARIANT = "gain"  # parity recipe whose outputs vary enough to exercise positive and negative clicks
RECIPE_WARNING = (
    "RECIPE WEIGHTS: deterministic untrained parity weights; these Dice values are meaningless and only prove that "
    "the protocol machinery runs"
)
WeightsArg = Union[str, Path]


@dataclass(frozen=True)
class Click:
    position: Tuple[int, int, int]  # (d, h, w) voxel of the 128³ crop
    positive: bool
    method: str  # "deep" or "uniform"


def _deep_distance(region: np.ndarray) -> Tuple[np.ndarray, Tuple[slice, ...], float]:
    """Distance to the nearest non-region voxel (the crop border counts as outside), computed on the region's
    bounding box plus one voxel, which gives the same values as on the whole crop."""
    coords = np.nonzero(region)
    if coords[0].size == 0:
        return np.zeros((0, 0, 0)), (slice(0, 0),) * 3, 0.0
    box = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coords)
    distance = distance_transform_edt(np.pad(region[box], 1))[1:-1, 1:-1, 1:-1]
    return distance, box, float(distance.max())


def next_click(prediction: np.ndarray, truth: np.ndarray, rng: np.random.Generator, deep: bool) -> Optional[Click]:
    """The protocol's next click given the current prediction and the truth (bool (d, h, w)); None when no error."""
    fn = truth & ~prediction
    fp = prediction & ~truth
    if deep:
        fn_dt, fn_box, fn_max = _deep_distance(fn)
        fp_dt, fp_box, fp_max = _deep_distance(fp)
        if max(fn_max, fp_max) == 0.0:
            return None
        distance, box = (fn_dt, fn_box) if fn_max > fp_max else (fp_dt, fp_box)
        candidates = np.argwhere(distance > max(fn_max, fp_max) / 2.0) + [s.start for s in box]
    else:
        candidates = np.argwhere(fn | fp)
        if len(candidates) == 0:
            return None
    point = tuple(int(v) for v in candidates[rng.integers(len(candidates))])
    return Click(point, bool(fn[point]), "deep" if deep else "uniform")  # type: ignore[arg-type]


@torch.inference_mode()
def click_rounds(
    net: SamModel, embedding: torch.Tensor, truth: np.ndarray, rounds: int, rng: np.random.Generator
) -> Tuple[List[Optional[Click]], List[float], List[float]]:
    """`rounds` protocol rounds on one encoded crop: (click per round or None, Dice per round, IoU estimate)."""
    device = embedding.device
    low_res = torch.zeros((1, 1, LOW_RES, LOW_RES, LOW_RES), device=device)
    logits = torch.zeros((CROP,) * 3)
    clicks: List[Optional[Click]] = []
    dices: List[float] = []
    ious: List[float] = []
    for n in range(rounds):
        click = next_click((logits > CLICK_THRESHOLD).numpy(), truth, rng, deep=n < DEEP_CLICKS)
        clicks.append(click)
        if click is None:
            dices.append(dices[-1] if dices else 0.0)
            ious.append(ious[-1] if ious else float("nan"))
            continue
        coords = torch.tensor([[list(click.position)]], dtype=torch.float32, device=device)
        labels = torch.tensor([[int(click.positive)]], dtype=torch.int64, device=device)
        low_res, iou = net.decode(embedding, points=(coords, labels), masks=low_res)
        logits = upsample(low_res)[0, 0].float().cpu()
        dices.append(dice((logits > 0).numpy(), truth))
        ious.append(float(iou[0, 0]))
    return clicks, dices, ious


def summarise_dice(dices: Sequence[float], clicks: Sequence[int]) -> Dict[str, float]:
    """max Dice over the first N rounds and Dice after round N, for each N."""
    out: Dict[str, float] = {}
    for n in clicks:
        out[f"max@{n}"] = float(max(dices[:n]))
        out[f"last@{n}"] = float(dices[n - 1])
    return out


# -- model -------------------------------------------------------------------------------------------------------------
def installed_point_model() -> Optional[str]:
    from ..weights.store import cache_state

    return next((name for name in POINT_MODELS if cache_state(name) in ("verified", "unchecked")), None)


def load_point_model(model: str, weights: WeightsArg, device: torch.device, parity_dir: Path) -> SamModel:
    """`weights`: "official" (the verified cached checkpoint), "recipe" (parity recipe weights) or a checkpoint."""
    from ..models import load_model
    from ..models.recipe import recipe_model

    if weights == "recipe":
        return recipe_model(model, parity_dir, gain=RECIPE_VARIANT == "gain").to(device)
    return load_model(model, device, None if weights == "official" else Path(weights))


# -- the protocol on the manifest ------------------------------------------------------------------------------------
def _target_seed(seed: int, entry_index: int, target: str) -> List[int]:
    return [int(seed), int(entry_index), zlib.crc32(target.encode("utf-8"))]


def run_clicks3d(
    manifest: Union[str, Path],
    model: Optional[str] = None,
    clicks: Sequence[int] = DEFAULT_CLICKS,
    seed: int = DEFAULT_SEED,
    weights: WeightsArg = "official",
    *,
    device: str = "cpu",
    datasets: Optional[Sequence[str]] = None,
    max_targets: Optional[int] = None,
    parity_dir: Optional[Path] = None,
    progress: bool = False,
) -> Dict[str, Any]:
    """Run the protocol on every 3D target of the manifest; returns the JSON-ready report (see `markdown`)."""
    from tqdm import tqdm

    from ..io.manifest import iter_cases, read_manifest
    from ..runtime.device import resolve_device

    requested = list(clicks)
    try:
        clicks = sorted({int(n) for n in requested})
    except (TypeError, ValueError):
        clicks = []
    if not clicks or clicks[0] < 1:
        raise FastMedSAMError(f"click counts must be positive integers such as 1,3,5,10; got {requested}")
    if model is None:
        model = "fastsam3d" if weights == "recipe" else installed_point_model()
        if model is None:
            raise WeightsError(
                "no 3D point model is installed: run `fastmedsam models pull fastsam3d` (or sam-med3d-turbo), "
                "or use --weights recipe to check the machinery with meaningless untrained weights"
            )
    if model not in POINT_MODELS:
        raise FastMedSAMError(
            f"the clicks3d protocol needs a 3D point model ({', '.join(POINT_MODELS)}), not {model!r}"
        )
    manifest = Path(manifest)
    parity_dir = parity_dir or manifest.resolve().parent.parent / "parity"
    torch_device = resolve_device(device)
    start = time.perf_counter()
    net = load_point_model(model, weights, torch_device, parity_dir)
    load_seconds = time.perf_counter() - start

    entries = [e for e in read_manifest(manifest) if e.dim == "3D"]
    rows: List[Dict[str, Any]] = []
    bar = tqdm(desc="clicks3d", unit="target", disable=not progress)
    per_dataset: Dict[str, int] = {}
    for entry, image, label, targets in iter_cases(entries, datasets):
        grid = CanonicalGrid.of(image)
        label_sitk = to_sitk(label, image.origin, image.spacing, image.direction)
        case = _Case(entry, image_to_sitk(image), grid, grid_array(grid, label_sitk))
        for target in targets:
            if max_targets is not None and per_dataset.get(target.dataset, 0) >= max_targets:
                continue
            per_dataset[target.dataset] = per_dataset.get(target.dataset, 0) + 1
            rows.append(_run_target(net, case, target, clicks, seed, torch_device))
            bar.update(1)
    bar.close()
    weights_kind = weights if weights in ("official", "recipe") else "file"
    report: Dict[str, Any] = {
        "protocol": PROTOCOL,
        "header": f"clicks3d protocol, {model}, {weights_kind} weights"
        + (f" -- {RECIPE_WARNING}" if weights == "recipe" else ""),
        "model": model,
        "weights": weights_kind if weights_kind != "file" else str(weights),
        "meaningful": weights != "recipe",
        "warning": RECIPE_WARNING if weights == "recipe" else None,
        "recipe": RECIPE_VARIANT if weights == "recipe" else None,
        "seed": int(seed),
        "clicks": clicks,
        "settings": {
            "spacing_mm": SPACING_MM,
            "crop": CROP,
            "deep_clicks": DEEP_CLICKS,
            "click_threshold_logit": CLICK_THRESHOLD,
            "dice_space": "128^3 crop at 1.5 mm",
            "manifest": str(manifest),
        },
        "environment": environment(torch_device),
        "load_seconds": load_seconds,
        "rows": rows,
        "summary": summarise(rows, clicks),
    }
    return report


@dataclass
class _Case:
    """One 3D manifest case on its 1.5 mm grid, with the embeddings of the crops encoded so far."""

    entry: Any
    image: Any  # SimpleITK image
    grid: CanonicalGrid
    label_grid: np.ndarray  # label map on the grid, (i, j, k)
    embeddings: Dict[Tuple[int, int, int], torch.Tensor] = field(default_factory=dict)


def _run_target(
    net: SamModel, case: _Case, target: Any, clicks: Sequence[int], seed: int, device: torch.device
) -> Dict[str, Any]:
    entry = case.entry
    row: Dict[str, Any] = {
        "dataset": target.dataset,
        "image": entry.image_name,
        "target": target.name,
        "modality": entry.modality,
        "gt": entry.gt_kind,
    }
    start = time.perf_counter()
    binary = np.asarray(target.mask(case.label_grid), dtype=bool)
    coords = np.nonzero(binary)
    if coords[0].size == 0:
        row["error"] = f"the target has no voxel on the {SPACING_MM} mm grid (nearest-neighbour resampling)"
        return row
    crop = case.grid.crop_around([c.min() for c in coords], [c.max() for c in coords])
    truth = crop.window(binary)
    if crop.start not in case.embeddings:
        tensor = torch.from_numpy(zscore_positive(crop.resample(case.image)))[None, None].to(device)
        encode_start = time.perf_counter()
        case.embeddings[crop.start] = net.encode(tensor)
        row["encoder_ms"] = (time.perf_counter() - encode_start) * 1000.0
    rng = np.random.default_rng(_target_seed(seed, entry.index, target.name))
    made, dices, ious = click_rounds(net, case.embeddings[crop.start], truth, max(clicks), rng)
    row.update(
        crop_start=list(crop.start),
        voxels=int(truth.sum()),
        fraction_in_crop=float(truth.sum()) / float(binary.sum()),
        clicks=[None if c is None else [*c.position, int(c.positive), c.method] for c in made],
        dice=dices,
        iou_estimate=ious,
        scores=summarise_dice(dices, clicks),
        seconds=time.perf_counter() - start,
    )
    return row


def summarise(rows: Sequence[Dict[str, Any]], clicks: Sequence[int]) -> Dict[str, Dict[str, float]]:
    """Mean scores per dataset row and over all targets (targets that could not run are counted apart)."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["dataset"], []).append(row)
    groups["all"] = list(rows)
    summary: Dict[str, Dict[str, float]] = {}
    for name, members in groups.items():
        scored = [r for r in members if "scores" in r]
        entry: Dict[str, float] = {"targets": float(len(scored)), "failed": float(len(members) - len(scored))}
        for key in (f"{kind}@{n}" for n in clicks for kind in ("max", "last")):
            entry[key] = float(np.mean([r["scores"][key] for r in scored])) if scored else float("nan")
        summary[name] = entry
    return summary


def markdown(report: Dict[str, Any]) -> str:
    clicks = report["clicks"]
    lines = [f"**{report['header']}**", ""]
    if report.get("warning"):
        lines += [f"> {report['warning']}", ""]
    lines.append(
        f"seed {report['seed']}, {report['settings']['spacing_mm']} mm, {CROP}³ crop, Dice in the crop; "
        f"torch {report['environment']['torch']} on {report['environment']['device']}"
    )
    lines.append("")
    heads = [f"max@{n}" for n in clicks] + [f"last@{n}" for n in clicks]
    lines.append("| dataset | targets | " + " | ".join(heads) + " |")
    lines.append("|---" * (len(heads) + 2) + "|")
    for name, s in report["summary"].items():
        values = " | ".join(f"{s[h]:.4f}" for h in heads)
        failed = f" (+{s['failed']:.0f} failed)" if s["failed"] else ""
        lines.append(f"| {name} | {s['targets']:.0f}{failed} | {values} |")
    return "\n".join(lines)


# -- command line (for `fastmedsam eval --protocol clicks3d`) --------------------------------------------------------
def run_cli(args: Any, write: Callable[[str], None] = print) -> int:
    """Run from parsed `eval` arguments: manifest, model (None: the installed 3D model), clicks (counts, as numbers
    or strings), seed, weights ("official", "recipe" or a checkpoint path), device, datasets, max_targets, out,
    quiet. Writes the JSON report to `out` when given and the markdown table through `write`."""
    import json

    report = run_clicks3d(
        args.manifest,
        getattr(args, "model", None),
        getattr(args, "clicks", None) or DEFAULT_CLICKS,
        getattr(args, "seed", DEFAULT_SEED),
        getattr(args, "weights", "official"),
        device=getattr(args, "device", "cpu"),
        datasets=getattr(args, "datasets", None),
        max_targets=getattr(args, "max_targets", None),
        progress=not getattr(args, "quiet", False),
    )
    out = getattr(args, "out", None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1))
    write(markdown(report))
    return 0
