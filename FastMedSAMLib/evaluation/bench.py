"""Speed and memory of models through the public `Session` API, all variants side by side in one process.

A variant is (model, token-pause knob, runtime, prompt crop). Each model family has a workload: a list of named measurements, each one
call `(session, data) -> {figure: value}`. Every repeat runs every measurement on every variant before the next
repeat starts, so slow phases of a shared machine hit all variants alike and their ratios stay meaningful; the
report gives medians over the repeats.

Box-prompt 2D families (LiteMedSAM, MedficientSAM): cold encode of one real CT slice (cache cleared), a cached
click (a second box on the same slice: decode only), 20 cached clicks with shifted boxes (p50 / p99), and 3D
propagation over the real DeepLesion volumes (13-16 slices: cold, again with every slice cached, and after a
background prefetch of its slices). A new family plugs in by adding its workload to `WORKLOADS`.
"""
from __future__ import annotations

import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import FastMedSAMError
from ..prompts import Box
from .bench3d import WORKLOADS_3D
from .bench_data import BenchData, load_bench_data

Figures = Dict[str, float]
Measurement = Callable[[Any, "BenchData"], Figures]


def _prediction_figures(prediction: Any, stages: Sequence[str]) -> Figures:
    figures = {f"{stage}_ms": float(prediction.timings.get(stage, 0.0)) for stage in stages}
    figures["encoder_calls"] = float(prediction.encoder_calls)
    figures["paused_fraction"] = prediction.paused_fraction
    for block, fraction in enumerate(prediction.paused_by_block or ()):
        figures[f"paused_block{block}"] = float(fraction)
    return figures


def encode_cold(session: Any, data: BenchData) -> Figures:
    session.set_image(data.slice_image)
    session.clear_cache()
    prediction = session.predict(box=data.boxes[0])
    return _prediction_figures(prediction, ("preprocess", "encode", "decode", "postprocess", "total"))


def click_cached(session: Any, data: BenchData) -> Figures:
    session.set_image(data.slice_image)  # same content: its embedding stays cached from encode_cold
    prediction = session.predict(box=data.boxes[1])
    return _prediction_figures(prediction, ("encode", "decode", "postprocess", "total"))


CLICKS = 20  # cached clicks per repeat for the p50 / p99


def clicks_cached(session: Any, data: BenchData) -> Figures:
    """CLICKS boxes around the lesion box, shifted by a few px each, on the cached slice: decode + postprocess."""
    session.set_image(data.slice_image)
    base = data.boxes[1]
    totals = []
    for i in range(CLICKS):
        dx, dy = (i % 5) - 2, (i // 5) - 2
        box = Box(max(base.x0 + dx, 0), max(base.y0 + dy, 0), base.x1 + dx, base.y1 + dy)
        totals.append(session.predict(box=box).timings["total"])
    totals.sort()
    return {"p50_ms": float(statistics.median(totals)), "p99_ms": totals[min(len(totals) - 1, int(0.99 * len(totals)))]}


def propagate_3d(session: Any, data: BenchData) -> Figures:
    figures: Figures = {}
    for name, volume, box in data.volumes:
        session.set_image(volume)
        session.clear_cache()
        cold = session.predict(box=box)
        warm = session.predict(box=box)
        figures[f"{name}.slices"] = float(box.z1 - box.z0 + 1)
        figures[f"{name}.seconds"] = cold.timings["total"] / 1000.0
        figures[f"{name}.encoder_calls"] = float(cold.encoder_calls)
        figures[f"{name}.warm_seconds"] = warm.timings["total"] / 1000.0
        if hasattr(session, "prefetch") and getattr(session, "crop", None) is None:  # a crop never uses whole slices
            session.clear_cache()
            start = time.perf_counter()
            session.prefetch(slices=range(box.z0, box.z1 + 1), center=(box.z0 + box.z1) // 2).wait()
            figures[f"{name}.prefetch_seconds"] = time.perf_counter() - start
            figures[f"{name}.after_prefetch_seconds"] = session.predict(box=box).timings["total"] / 1000.0
    return figures


BOX_2D: List[Tuple[str, Measurement]] = [
    ("encode_cold", encode_cold),
    ("click_cached", click_cached),
    ("clicks_cached", clicks_cached),
    ("propagate_3d", propagate_3d),
]
# registry family -> workload. A family without one is reported as skipped.
WORKLOADS: Dict[str, List[Tuple[str, Measurement]]] = {
    "litemedsam": BOX_2D,
    "medficientsam": BOX_2D,
    **WORKLOADS_3D,  # fastsam3d, sam-med3d: 128³ crop encode, per-click decode
}


# -- variants --------------------------------------------------------------------------------------------------------
@dataclass
class Variant:
    model: str
    pause: float
    weights: str  # "official" or "recipe"
    runtime: Optional[str] = None  # None: the Session's default
    crop: Optional[float] = None  # the Session's prompt-crop factor (None: whole slices)
    session: Any = None
    workload: List[Tuple[str, Measurement]] = field(default_factory=list)
    note: Optional[str] = None  # why it was skipped
    load_seconds: float = 0.0
    rss_mb_after_load: float = 0.0
    first_predict_ms: float = 0.0
    samples: Dict[str, List[Figures]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        suffix = f" pause={self.pause:g}" if self.pause else ""
        runtime = f" [{self.runtime}]" if self.runtime else ""
        crop = f" crop={self.crop:g}" if self.crop else ""
        return f"{self.model}{suffix}{runtime}{crop}" + (" (recipe weights)" if self.weights == "recipe" else "")


def rss_mb() -> float:
    """Resident set size of this process now (Linux /proc), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def recipe_checkpoint(model: str, parity_dir: Path, folder: Path) -> Path:
    """A checkpoint of `model` holding the deterministic parity-recipe weights, in the registry's layout, for
    speed-only numbers of models whose official weights cannot be had."""
    import torch

    from ..models.recipe import recipe_model
    from ..weights.registry import get_spec

    spec = get_spec(model)
    state = {spec.key_prefix + k: v for k, v in recipe_model(model, parity_dir).state_dict().items()}
    path = folder / f"{model.replace('-', '_')}.recipe.pth"
    torch.save(state if spec.state_dict_key is None else {spec.state_dict_key: state}, path)
    return path


def _open_variant(variant: Variant, device: str, parity_dir: Path, scratch: Path) -> None:
    from ..session import Session
    from ..weights.registry import get_spec
    from ..weights.store import cache_state

    spec = get_spec(variant.model)
    if spec.family not in WORKLOADS:
        variant.note = f"no bench workload for family {spec.family!r} yet (add one to bench.WORKLOADS)"
        return
    variant.workload = WORKLOADS[spec.family]
    if spec.dimensionality == "3D" and variant.runtime not in (None, "torch-exact"):
        variant.note = "3D point models run their eager modules whatever the runtime (see the torch-exact column)"
        return
    weights = None
    if variant.weights == "recipe":
        weights = recipe_checkpoint(variant.model, parity_dir, scratch)
    elif cache_state(variant.model) in ("missing", "corrupt"):
        variant.note = (
            f"weights not cached ({cache_state(variant.model)}): run `fastmedsam models pull {variant.model}`, "
            "or use --weights recipe for speed-only numbers"
        )
        return
    start = time.perf_counter()
    try:
        variant.session = Session(model=variant.model, device=device, weights=weights, pause=variant.pause,
                                  runtime=variant.runtime, crop=variant.crop)
    except FastMedSAMError as exc:
        variant.note = str(exc)
        return
    variant.load_seconds = time.perf_counter() - start
    variant.rss_mb_after_load = rss_mb()


def _warm_up(variant: Variant, data: BenchData) -> None:
    """One untimed run of the workload's first step (lazy initialisation, allocator warm-up); its latency is kept
    as first_predict."""
    start = time.perf_counter()
    variant.workload[0][1](variant.session, data)
    variant.first_predict_ms = (time.perf_counter() - start) * 1000.0


def _medians(samples: List[Figures]) -> Figures:
    keys = samples[0].keys()
    return {k: float(statistics.median(s[k] for s in samples)) for k in keys}


def bench(
    models: Sequence[str],
    manifest: Union[str, Path],
    *,
    pauses: Sequence[float] = (0.0,),
    runtimes: Sequence[Optional[str]] = (None,),
    crops: Sequence[Optional[float]] = (None,),
    repeats: int = 5,
    weights: str = "official",
    device: str = "cpu",
    threads: Optional[int] = None,
    parity_dir: Optional[Path] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Benchmark every (model, pause, runtime, crop) variant; returns the JSON-ready report."""
    import torch
    from tqdm import tqdm

    from ..runtime.device import resolve_device
    from .box_protocol import environment

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if threads:
        torch.set_num_threads(threads)
    data = load_bench_data(manifest)
    parity_dir = parity_dir or Path(manifest).resolve().parent.parent / "parity"
    rss_start = rss_mb()
    variants = [Variant(m, float(p), weights, r, c) for m in models for p in pauses for r in runtimes for c in crops]
    with tempfile.TemporaryDirectory(prefix="fastmedsam-bench-") as scratch:
        for variant in variants:
            _open_variant(variant, device, parity_dir, Path(scratch))
    live = [v for v in variants if v.session is not None]
    for variant in live:
        _warm_up(variant, data)
    steps = list(dict.fromkeys(step for v in live for step in v.workload))
    bar = tqdm(total=repeats * len(live) * len(steps), desc="bench", disable=not progress)
    for _ in range(repeats):
        for name, measure in steps:
            for variant in live:
                if (name, measure) in variant.workload:
                    variant.samples.setdefault(name, []).append(measure(variant.session, data))
                bar.update(1)
    bar.close()
    return {
        "environment": environment(live[0].session.device if live else resolve_device(device)),
        "settings": {"repeats": repeats, "weights": weights, "pauses": [float(p) for p in pauses], "models": list(models),
                     "runtimes": list(runtimes), "crops": list(crops)},
        "data": {
            "slice": f"{data.volumes[0][0]} middle lesion slice {data.slice_image.array.shape}",
            "boxes": [list((b.x0, b.y0, b.x1, b.y1)) for b in data.boxes],
            "volumes": {name: list(volume.array.shape) for name, volume, _ in data.volumes},
        },
        "rss_mb_at_start": rss_start,
        "peak_rss_mb": peak_rss_mb(),
        "variants": [_variant_report(v) for v in variants],
    }


def _variant_report(variant: Variant) -> Dict[str, Any]:
    report: Dict[str, Any] = {"label": variant.label, "model": variant.model, "pause": variant.pause,
                              "weights": variant.weights, "runtime": variant.runtime}
    if variant.session is None:
        report.update(status="skipped", note=variant.note)
        return report
    report.update(
        status="ok",
        load_seconds=variant.load_seconds,
        rss_mb_after_load=variant.rss_mb_after_load,
        first_predict_ms=variant.first_predict_ms,
        median={name: _medians(samples) for name, samples in variant.samples.items()},
        samples=variant.samples,
    )
    return report


# -- markdown ------------------------------------------------------------------------------------------------------
def _row(title: str, values: List[Optional[float]], fmt: str) -> str:
    return "| " + title + " | " + " | ".join("–" if v is None else format(v, fmt) for v in values) + " |"


def markdown(report: Dict[str, Any]) -> str:
    ok = [v for v in report["variants"] if v["status"] == "ok"]
    env = report["environment"]
    lines = [f"torch {env['torch']}, {env['threads']} threads, {env['device']}, {env.get('gpu') or env['cpu']}; "
             f"medians of {report['settings']['repeats']} repeats", ""]
    if ok:
        lines += ["| figure | " + " | ".join(v["label"] for v in ok) + " |", "|---" * (len(ok) + 1) + "|"]

        def get(v: Dict[str, Any], step: str, key: str) -> Optional[float]:
            return v["median"].get(step, {}).get(key)

        base = get(ok[0], "encode_cold", "encode_ms")
        lines.append(_row("encoder ms (cold slice / 128³ crop)", [get(v, "encode_cold", "encode_ms") for v in ok], ".1f"))
        lines.append(_row("encoder speed-up vs first", [
            None if base is None or not get(v, "encode_cold", "encode_ms") else base / get(v, "encode_cold", "encode_ms")
            for v in ok], ".2f"))
        if any(v["pause"] for v in ok):
            lines.append(_row("tokens paused (mean over blocks)", [get(v, "encode_cold", "paused_fraction") for v in ok], ".2f"))
            blocks = sorted({int(k[len("paused_block"):]) for v in ok for k in v["median"].get("encode_cold", {})
                             if k.startswith("paused_block")})
            for block in blocks:
                lines.append(_row(f"  paused at block {block}", [get(v, "encode_cold", f"paused_block{block}") for v in ok], ".2f"))
        lines.append(_row("cold click total ms", [get(v, "encode_cold", "total_ms") for v in ok], ".1f"))
        lines.append(_row("cached click total ms", [get(v, "click_cached", "total_ms") for v in ok], ".1f"))
        lines.append(_row("cached click decode ms", [get(v, "click_cached", "decode_ms") for v in ok], ".1f"))
        lines.append(_row(f"cached clicks p50 ms ({CLICKS}/repeat)", [get(v, "clicks_cached", "p50_ms") for v in ok], ".1f"))
        lines.append(_row("cached clicks p99 ms", [get(v, "clicks_cached", "p99_ms") for v in ok], ".1f"))
        names = sorted({k.split(".")[0] for v in ok for k in v["median"].get("propagate_3d", {})})
        for name in names:
            slices = next(v["median"]["propagate_3d"][f"{name}.slices"] for v in ok if "propagate_3d" in v["median"])
            lines.append(_row(f"3D {name} ({slices:.0f} sl) s", [get(v, "propagate_3d", f"{name}.seconds") for v in ok], ".2f"))
            lines.append(_row("  encoder calls", [get(v, "propagate_3d", f"{name}.encoder_calls") for v in ok], ".0f"))
            lines.append(_row("  again, all cached, s", [get(v, "propagate_3d", f"{name}.warm_seconds") for v in ok], ".2f"))
            lines.append(_row("  prefetch (background) s", [get(v, "propagate_3d", f"{name}.prefetch_seconds") for v in ok], ".2f"))
            lines.append(_row("  after prefetch s", [get(v, "propagate_3d", f"{name}.after_prefetch_seconds") for v in ok], ".2f"))
        lines.append(_row("load s", [v["load_seconds"] for v in ok], ".2f"))
        lines.append(_row("RSS after load MiB", [v["rss_mb_after_load"] for v in ok], ".0f"))
    lines.append(f"\npeak RSS {report['peak_rss_mb']:.0f} MiB (whole process, all variants)")
    if "gpu_peak_memory_mb" in env:
        lines.append(f"peak GPU memory {env['gpu_peak_memory_mb']:.0f} MiB; fp32 matmul {env['matmul_fp32']}, conv {env['conv_fp32']}")
    for v in report["variants"]:
        if v["status"] != "ok":
            lines.append(f"skipped {v['label']}: {v['note']}")
    return "\n".join(lines)
