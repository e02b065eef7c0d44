"""Speed curve of the token-paused 3D ViT (FastSAM3D, SAM-Med3D-turbo) with the parity-recipe weights.

The official 3D weights cannot be had here, so there are no trained pause heads for them and no accuracy to
report: the curve is speed only. Which tokens pause comes from a parameter-free, label-free rule standing in for
heads: at each decision depth, the fraction `pause` of the still-active tokens whose features moved least in the
previous block (relative L2 update) pause. The count paused per depth, and so the time, is what a trained head at
the same knob would give; the choice of tokens is not.

Timing: one real CT volume of the manifest (intensity-normalised, centre 128³ crop), the plain encoder (pause 0)
and every knob interleaved repeat by repeat; medians.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from .vit3d_paused import PausedViT3D

DECISION_DEPTHS = {"fastsam3d": (2, 4), "sam-med3d-turbo": (3, 6, 9)}
CROP = 128


class SmallestUpdate:
    """decide(depth, features, indices) pausing, at each decision depth, the fraction `pause` of the active
    tokens with the smallest relative update since the previous block."""

    def __init__(self, depths: Sequence[int], pause: float) -> None:
        self.depths, self.pause = tuple(depths), pause
        self.previous: Optional[torch.Tensor] = None

    def __call__(self, depth: int, features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        paused = torch.zeros(len(indices), dtype=torch.bool, device=features.device)
        if self.previous is not None and depth in self.depths:
            before = self.previous.index_select(0, indices)
            change = (features - before).norm(dim=1) / before.norm(dim=1).clamp_min(1e-6)
            count = int(round(self.pause * len(indices)))
            paused[torch.argsort(change)[:count]] = True
        if self.previous is None:
            self.previous = features.new_zeros(int(indices.max()) + 1, features.shape[1])
        self.previous = self.previous.index_copy(0, indices, features)
        return paused


def ct_crop(manifest: Path) -> torch.Tensor:
    """(1, 1, 128, 128, 128): the first 3D CT of the manifest, z-scored over its voxels, centre-cropped/padded."""
    from ..errors import FastMedSAMError
    from ..io.manifest import load_image, read_manifest

    entry = next((e for e in read_manifest(manifest) if e.modality_class == "CT" and e.dim == "3D"), None)
    if entry is None:
        raise FastMedSAMError(f"the manifest {manifest} has no 3D CT volume to time the 3D encoder on")
    volume = load_image(entry).array.astype(np.float32)
    volume = (volume - volume.mean()) / max(float(volume.std()), 1e-6)
    out = np.zeros((CROP, CROP, CROP), dtype=np.float32)
    src = [slice(max((n - CROP) // 2, 0), max((n - CROP) // 2, 0) + min(n, CROP)) for n in volume.shape]
    dst = [slice(max((CROP - n) // 2, 0), max((CROP - n) // 2, 0) + min(n, CROP)) for n in volume.shape]
    out[tuple(dst)] = volume[tuple(src)]
    return torch.from_numpy(out)[None, None]


@torch.inference_mode()
def measure_vit3d_speed(model: str, weights: Path, pauses: Sequence[float], manifest: Path, repeats: int) -> Dict[str, Any]:
    """Encoder ms per knob (median over repeats; "0" = the plain encoder) and tokens entering each block."""
    from ..errors import PauseError
    from ..models import load_model

    if model not in DECISION_DEPTHS:
        raise PauseError(f"no 3D pause curve for {model!r}; 3D ViTs: {', '.join(DECISION_DEPTHS)}")
    encoder = load_model(model, torch.device("cpu"), weights).image_encoder.eval()
    runner = PausedViT3D(encoder)
    volume = ct_crop(manifest)
    variants: Dict[str, Any] = {"0": lambda: encoder(volume)}
    tokens: Dict[str, List[int]] = {}
    for pause in pauses:
        if pause > 0:
            key = f"{pause:g}"
            variants[key] = lambda p=pause, k=key: tokens.__setitem__(
                k, runner(volume, decide=SmallestUpdate(DECISION_DEPTHS[model], p))[1].tokens)
    for run in variants.values():
        run()  # warm-up
    times: Dict[str, List[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for key, run in variants.items():
            start = time.perf_counter()
            run()
            times[key].append(1000.0 * (time.perf_counter() - start))
    base = statistics.median(times["0"])
    rows = [{"pause": key, "encoder_ms": statistics.median(v), "speedup": base / statistics.median(v),
             "tokens_per_block": tokens.get(key, [runner.grid**3] * len(encoder.blocks))} for key, v in times.items()]
    return {"model": model, "weights": "recipe (speed only)", "threads": torch.get_num_threads(), "repeats": repeats,
            "decision_depths": list(DECISION_DEPTHS[model]), "rows": rows, "samples_ms": times}


def table(report: Dict[str, Any]) -> str:
    lines = [
        f"{report['model']} encoder, 128³ CT crop, {report['weights']}, {report['threads']} threads, medians of "
        f"{report['repeats']}; pausing rule: smallest relative update at blocks {report['decision_depths']}",
        "",
        "| pause | encoder ms | speed-up | tokens entering each block |",
        "|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(f"| {row['pause']} | {row['encoder_ms']:.0f} | {row['speedup']:.2f}x | "
                     + " ".join(map(str, row["tokens_per_block"])) + " |")
    return "\n".join(lines)
