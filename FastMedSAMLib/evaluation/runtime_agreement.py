"""How closely each runtime reproduces torch-exact on real 2D slices: Dice of the final masks and the largest
absolute difference of the low-res mask logits where the runtime computed them (the prepared decoder leaves the
cells far from the prompt at OUTSIDE_LOGIT; there the masks are compared, not the logits), per target (the tight
box of each object, CVPR24 protocol)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np

AGREEMENT_DATASETS = ("ct_2d_btcv_imis", "xray_lung", "us_hc18", "ct_mr_2d_samm2d_demo", "endo_kvasir")


def runtime_agreement(manifest: Union[str, Path], runtimes: Sequence[str], *, model: str = "litemedsam",
                      datasets: Sequence[str] = AGREEMENT_DATASETS, per_dataset: int = 4,
                      device: str = "cpu") -> Dict[str, Any]:
    import torch

    from ..engines.slice_engine import to_rgb
    from ..io.intensity import to_uint8
    from ..io.manifest import iter_cases, read_manifest
    from ..models import load_model, slice_adapter
    from ..models.window import OUTSIDE_LOGIT
    from ..runtime import build_runtime
    from ..runtime.device import resolve_device
    from .metrics import dice

    where = resolve_device(device)
    net = load_model(model, where)
    adapter = slice_adapter(model)
    names = ["torch-exact"] + [r for r in runtimes if r != "torch-exact"]
    built = {r: build_runtime(r, net, model, where, frame=adapter.size) for r in names}
    rows: Dict[str, List[Dict[str, float]]] = {r: [] for r in names[1:]}
    taken: Dict[str, int] = {}
    cases = []
    for entry, image, _, found in iter_cases(read_manifest(manifest), list(datasets)):
        if image.is_volume or taken.get(entry.datasets[0], 0) >= per_dataset or not found:
            continue
        taken[entry.datasets[0]] = taken.get(entry.datasets[0], 0) + 1
        cases.append(entry.image_name)
        tensor, frame = adapter.preprocess(to_rgb(to_uint8(image)))
        boxes = [torch.as_tensor(frame.box_to_frame(t.box.x0, t.box.y0, t.box.x1, t.box.y1))[:, None, :].to(where)
                 for t in found[:3]]
        outputs = {}
        for name, runtime in built.items():
            embedding = runtime.encoder(tensor.to(where))
            outputs[name] = [runtime.decoder(embedding, boxes=b)[0] for b in boxes]
        for name in names[1:]:
            for ref, got in zip(outputs["torch-exact"], outputs[name]):
                rows[name].append({"dice": dice(adapter.postprocess(got, frame), adapter.postprocess(ref, frame)),
                                   "max_logit_error": _max_error(got, ref, OUTSIDE_LOGIT)})
    return {
        "model": model, "images": cases, "targets": len(rows[names[1]]) if len(names) > 1 else 0,
        "runtimes": {name: {"mean_dice": float(np.mean([r["dice"] for r in v])),
                            "min_dice": float(np.min([r["dice"] for r in v])),
                            "max_logit_error": float(np.max([r["max_logit_error"] for r in v]))}
                     for name, v in rows.items() if v},
    }


def _max_error(got: Any, ref: Any, outside: float) -> float:
    """Largest |got - ref| where `got` was computed; inf where it was not but `ref` is positive there (a mask
    pixel the runtime dropped)."""
    skipped = got == outside
    if bool((ref[skipped] > 0).any()):
        return float("inf")
    computed = ~skipped
    return float((got - ref)[computed].abs().max()) if bool(computed.any()) else 0.0


def agreement_markdown(report: Dict[str, Any]) -> str:
    lines = [f"{report['model']}: {report['targets']} targets on {len(report['images'])} real 2D images, vs torch-exact",
             "", "| runtime | mean Dice | min Dice | max logit error |", "|---|---|---|---|"]
    for name, r in report["runtimes"].items():
        lines.append(f"| {name} | {r['mean_dice']:.4f} | {r['min_dice']:.4f} | {r['max_logit_error']:.2e} |")
    return "\n".join(lines)
