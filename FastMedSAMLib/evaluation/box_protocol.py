"""The CVPR24 box protocol on the development manifest, through the public `Session` API only.

2D targets get their tight box on the image; 3D targets their 3D box, propagated middle-out by the Session. One
Session per model (and per pause value), `set_image` once per image, so every target of an image shares the
embedding cache. Intensities follow the Session's rule with the manifest's modality as hint (CT in HU: window
[-160, 240]; uint8 sources as stored; MR: 0.5/99.5 percentiles). Scores: DSC and NSD (2 mm in 3D, 1 px in 2D).
"""
from __future__ import annotations

import math
import platform
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import PromptError
from ..io.manifest import MANUAL, Entry, Target, iter_cases, read_manifest, select
from ..prompts import Box3D
from .metrics import TOLERANCE_2D_PX, TOLERANCE_3D_MM, score

# LiteMedSAM on the development set: (prompt, objects, DSC, NSD), from shared/docs/reference-baseline.md (measured
# with an independent re-implementation of the official CVPR24 inference script, real weights).
REFERENCE: Dict[str, Tuple[str, int, float, float]] = {
    "ct_2d_btcv_imis": ("2D tight box", 47, 0.7010, 0.3953),
    "ct_deeplesion_medsam2": ("3D box → propagation", 3, 0.8227, 0.7773),
    "ct_mr_2d_samm2d_demo": ("2D tight box", 15, 0.7722, 0.5436),
    "ct_mr_totalseg_example": ("3D box → propagation", 38, 0.6002, 0.4874),
    "derm_ham10000": ("2D tight box", 3, 0.9398, 0.0735),
    "endo_kvasir": ("2D tight box", 3, 0.9714, 0.2824),
    "micro_dsb2018_stardist": ("2D tight box", 60, 0.7850, 0.4825),
    "micro_em_isbi2012": ("2D tight box", 300, 0.6715, 0.3820),
    "mr_la_heart": ("3D box → propagation", 2, 0.7412, 0.5755),
    "mr_pyradiomics": ("3D box → propagation", 2, 0.4176, 0.6226),
    "path_tcga_gbm_nuclei": ("2D tight box", 60, 0.8668, 0.7103),
    "us_hc18": ("2D tight box", 4, 0.8976, 0.0427),
    "xray_lung": ("2D tight box", 3, 0.9500, 0.3581),
    "xray_lung_cc": ("2D tight box", 6, 0.9575, 0.3785),
}
REFERENCE_MODEL = "litemedsam"


@dataclass
class CaseResult:
    dataset: str
    image: str
    target: str
    modality: str
    gt: str  # "manual" or "model-generated"
    dim: str
    pause: float
    dsc: Optional[float]
    nsd: Optional[float]
    encoder_calls: int
    seconds: float
    intensity: str  # the Session's intensity rule for this image
    error: Optional[str] = None


def _mean(values: Iterable[float]) -> Optional[float]:
    values = list(values)
    return float(np.mean(values)) if values else None


def _summary(rows: Sequence[CaseResult]) -> Dict[str, Any]:
    scored = [r for r in rows if r.error is None]
    return {
        "n": len(scored),
        "errors": len(rows) - len(scored),
        "dsc": _mean(r.dsc for r in scored),  # type: ignore[misc]
        "nsd": _mean(r.nsd for r in scored),  # type: ignore[misc]
        "encoder_calls": int(sum(r.encoder_calls for r in rows)),
        "seconds": float(sum(r.seconds for r in rows)),
        "gt": sorted({r.gt for r in rows}),
        "modalities": sorted({r.modality for r in rows}),
    }


def summarise(cases: Sequence[CaseResult]) -> Dict[str, Any]:
    """Means per pause value: per dataset (with the reference beside it), per modality and per label kind, with
    manual and model-generated labels kept apart."""
    out: Dict[str, Any] = {}
    for pause in sorted({c.pause for c in cases}):
        rows = [c for c in cases if c.pause == pause]
        groups: Dict[str, Dict[Any, List[CaseResult]]] = {"dataset": defaultdict(list), "modality": defaultdict(list)}
        kinds: Dict[str, List[CaseResult]] = defaultdict(list)
        for row in rows:
            groups["dataset"][row.dataset].append(row)
            groups["modality"][f"{row.modality} ({row.gt})"].append(row)
            kinds[row.gt].append(row)
        datasets = {}
        for name, members in sorted(groups["dataset"].items()):
            summary = _summary(members)
            if name in REFERENCE:
                _, objects, dsc, nsd = REFERENCE[name]
                summary["reference"] = {"objects": objects, "dsc": dsc, "nsd": nsd}
            datasets[name] = summary
        out[str(pause)] = {
            "datasets": datasets,
            "modalities": {k: _summary(v) for k, v in sorted(groups["modality"].items())},
            "gt": {k: _summary(v) for k, v in sorted(kinds.items())},
        }
    return out


def _open_sessions(model: str, pauses: Sequence[float], device: str, cache_mb: float,
                   runtime: Optional[str] = None, crop: Optional[float] = None) -> Dict[float, Any]:
    """One Session per knob value (each with its own embedding cache)."""
    from ..session import Session

    return {pause: Session(model=model, device=device, cache_mb=cache_mb, pause=pause, runtime=runtime, crop=crop)
            for pause in pauses}


def _run_target(session: Any, target: Target, label: np.ndarray, spacing: Optional[Tuple[float, ...]]) -> Tuple[Optional[float], Optional[float], int, float, Optional[str]]:
    start = time.perf_counter()
    try:
        prediction = session.predict(box=target.box)
    except PromptError as exc:
        return None, None, 0, time.perf_counter() - start, str(exc)
    seconds = time.perf_counter() - start
    dsc, nsd = score(prediction.mask, target.mask(label), spacing)
    return dsc, nsd, int(prediction.encoder_calls), seconds, None


def _capped(found: List[Target], counts: Dict[str, int], max_targets: Optional[int]) -> List[Target]:
    if max_targets is None:
        return found
    kept = []
    for target in found:
        if counts[target.dataset] < max_targets:
            counts[target.dataset] += 1
            kept.append(target)
    return kept


def evaluate(
    manifest: Union[str, Path],
    model: str = REFERENCE_MODEL,
    *,
    datasets: Optional[Sequence[str]] = None,
    max_targets: Optional[int] = None,
    pauses: Sequence[float] = (0.0,),
    device: str = "cpu",
    cache_mb: float = 1024,
    instances_per_image: Optional[Mapping[str, Optional[int]]] = None,
    images: Optional[Sequence[str]] = None,
    progress: bool = True,
    runtime: Optional[str] = None,
    crop: Optional[float] = None,
) -> Dict[str, Any]:
    """Run the protocol and return the report (see `report_json`): cases, summaries, skipped entries, settings.
    `images`: only these manifest image names (e.g. the token-pausing evaluation split); `runtime` None is the
    Session's default runtime; `crop`: the Sessions' window factor (None: whole slices)."""
    from tqdm import tqdm

    from ..io.intensity import intensity_rule

    entries = read_manifest(manifest)
    chosen = select(entries, datasets)
    if images is not None:
        chosen = [e for e in chosen if e.image_name in set(images)]
    sessions = _open_sessions(model, list(pauses), device, cache_mb, runtime, crop)
    cases: List[CaseResult] = []
    counts: Dict[str, int] = defaultdict(int)
    started = time.perf_counter()
    bar = tqdm(total=len(chosen), desc=f"eval {model}", unit="image", disable=not progress)
    options = {} if instances_per_image is None else {"instances_per_image": instances_per_image}
    for entry, image, label, found in iter_cases(chosen, datasets, **options):
        bar.update(1)
        found = _capped(found, counts, max_targets)
        if not found:
            continue
        spacing = tuple(reversed(image.spacing)) if entry.dim == "3D" else None  # (z, y, x) mm; 2D: pixels
        rule = intensity_rule(image)
        for pause, session in sessions.items():
            session.set_image(image)
            for target in found:
                dsc, nsd, calls, seconds, error = _run_target(session, target, label, spacing)
                cases.append(_case(entry, target, pause, dsc, nsd, calls, seconds, rule, error))
                bar.set_postfix_str(f"{target.dataset} {len(cases)} targets")
    bar.close()
    return {
        "model": model,
        "runtime": next(iter(sessions.values())).runtime if sessions else runtime,
        "manifest": str(Path(manifest).resolve()),
        "pauses": [float(p) for p in pauses],
        "crop": crop,
        "images": None if images is None else sorted(set(images)),
        "protocol": {
            "2D": "tight box on the image",
            "3D": "3D box -> middle-out propagation",
            "nsd_tolerance": {"3D_mm": TOLERANCE_3D_MM, "2D_px": TOLERANCE_2D_PX},
        },
        "environment": environment(sessions[next(iter(sessions))].device),
        "seconds": time.perf_counter() - started,
        "cases": [asdict(c) for c in cases],
        "summary": summarise(cases),
        "skipped": _skipped(entries),
    }


def _skipped(entries: Sequence[Entry]) -> List[Dict[str, Any]]:
    images: Dict[str, List[str]] = defaultdict(list)
    reasons: Dict[str, str] = {}
    for entry in entries:
        if entry.skip_reason:
            images[entry.folder].append(entry.image_name)
            reasons[entry.folder] = entry.skip_reason
    return [{"dataset": name, "images": images[name], "reason": reasons[name]} for name in sorted(images)]


def _case(entry: Entry, target: Target, pause: float, dsc, nsd, calls: int, seconds: float, rule: str, error) -> CaseResult:
    return CaseResult(
        dataset=target.dataset,
        image=entry.image_name,
        target=target.name,
        modality=entry.modality_class,
        gt=entry.gt_kind,
        dim="3D" if isinstance(target.box, Box3D) else "2D",
        pause=float(pause),
        dsc=dsc,
        nsd=nsd,
        encoder_calls=calls,
        seconds=seconds,
        intensity=rule,
        error=error,
    )


def environment(device: Any) -> Dict[str, Any]:
    """What figures were measured on: torch, threads, the CPU, and for a CUDA `device` (a torch.device) the GPU,
    its peak memory so far and the float32 precision setting."""
    import torch

    env: Dict[str, Any] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "cpu": cpu_model(),
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device),
                   gpu_peak_memory_mb=torch.cuda.max_memory_allocated(device) / 2**20,
                   matmul_fp32=torch.backends.cuda.matmul.fp32_precision,
                   conv_fp32=torch.backends.cudnn.conv.fp32_precision)
    return env


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# -- markdown ------------------------------------------------------------------------------------------------------
def _fmt(value: Optional[float], signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _delta(ours: Optional[float], reference: Optional[float]) -> Optional[float]:
    return None if ours is None or reference is None else ours - reference


def markdown(report: Mapping[str, Any]) -> str:
    """Per-dataset table (ours beside the reference; manual rows first, then model-generated, then rows the
    reference does not have), a per-modality table, and the skipped entries."""
    summaries = report["summary"]
    pauses = [str(p) for p in sorted(float(k) for k in summaries)]
    base, extra = pauses[0], pauses[1:]
    datasets = summaries[base]["datasets"]
    head = ["dataset", "gt", "n", "ref n", "DSC", "ref DSC", "ΔDSC", "NSD", "ref NSD", "ΔNSD"]
    head += [f"{m} p={p}" for p in extra for m in ("DSC", "NSD")]
    lines = [f"{report['model']} (pause {base})", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def order(name: str) -> Tuple[int, str]:
        kind = datasets[name]["gt"]
        return (2 if name not in REFERENCE else (0 if kind == [MANUAL] else 1), name)

    for name in sorted(datasets, key=order):
        s = datasets[name]
        ref = s.get("reference", {})
        cells = [
            name + ("" if name in REFERENCE else " *"),
            "/".join(s["gt"]),
            f"{s['n']}" + (f" ({s['errors']} err)" if s["errors"] else ""),
            str(ref.get("objects", "–")),
            _fmt(s["dsc"]), _fmt(ref.get("dsc")), _fmt(_delta(s["dsc"], ref.get("dsc")), True),
            _fmt(s["nsd"]), _fmt(ref.get("nsd")), _fmt(_delta(s["nsd"], ref.get("nsd")), True),
        ]
        for p in extra:
            other = summaries[p]["datasets"].get(name, {})
            cells += [_fmt(other.get("dsc")), _fmt(other.get("nsd"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "\\* not in the reference table", "", "| modality (labels) | n | DSC | NSD |", "|---|---|---|---|"]
    for name, s in summaries[base]["modalities"].items():
        lines.append(f"| {name} | {s['n']} | {_fmt(s['dsc'])} | {_fmt(s['nsd'])} |")
    for kind, s in summaries[base]["gt"].items():
        lines.append(f"| all {kind} | {s['n']} | {_fmt(s['dsc'])} | {_fmt(s['nsd'])} |")
    for skipped in report.get("skipped", []):
        lines.append(f"\nskipped {skipped['dataset']} ({len(skipped['images'])} images): {skipped['reason']}")
    return "\n".join(lines)
