"""Peak memory of a Session on a full-size CT: a 512×512×300 int16 volume (the DeepLesion lesion volume's real HU
slices tiled to 300) set, a 3D box over the lesion, a prefetch of every slice (it stops where the embedding cache
is full), then cached clicks on the lesion. Each runtime runs in a fresh child process, so its peak RSS (`ru_maxrss`) is its own.
"""
from __future__ import annotations

import multiprocessing
import resource
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

DEPTH = 300


def tiled_ct(lesion: np.ndarray, depth: int = DEPTH) -> np.ndarray:
    """`lesion` (Z, 512, 512) repeated along z to `depth` slices, int16."""
    reps = -(-depth // lesion.shape[0])
    return np.ascontiguousarray(np.tile(lesion.astype(np.int16), (reps, 1, 1))[:depth])


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _measure(manifest: str, runtime: Optional[str], device: str, threads: Optional[int], depth: int) -> Dict[str, Any]:
    import torch

    from ..errors import FastMedSAMError
    from ..io.images import Image
    from ..session import Session
    from .bench_data import load_bench_data

    if threads:
        torch.set_num_threads(threads)
    data = load_bench_data(manifest)
    name, lesion, box = data.volumes[0]
    volume = tiled_ct(lesion.array, depth)
    image = Image(volume, spacing=lesion.spacing, origin=lesion.origin, direction=lesion.direction, modality_hint="CT")
    figures: Dict[str, Any] = {"volume": name, "shape_zyx": list(volume.shape), "volume_mb": volume.nbytes / 2**20}
    try:
        session = Session(device=device, runtime=runtime)
    except FastMedSAMError as exc:  # a runtime this machine cannot run: reported, not fatal
        return {"runtime": runtime, "note": str(exc)}
    figures["runtime"] = session.runtime
    figures["after_load_mb"] = _peak_mb()
    session.set_image(image)
    start = time.perf_counter()
    session.predict(box=box)
    figures["box_3d_s"] = time.perf_counter() - start
    figures["box_slices"] = box.z1 - box.z0 + 1
    start = time.perf_counter()
    job = session.prefetch()
    job.wait()
    figures["prefetch_s"] = time.perf_counter() - start
    figures["prefetched_slices"] = len(job.encoded)
    for z in (box.z0, (box.z0 + box.z1) // 2, box.z1):  # cached clicks on the lesion
        session.predict(box=box.slice_box(z))
    figures["cache"] = session.cache_info()
    figures["peak_rss_mb"] = _peak_mb()
    return figures


def bench_memory(manifest: Union[str, Path], runtimes: Sequence[Optional[str]], device: str = "cpu",
                 threads: Optional[int] = None, depth: int = DEPTH) -> Dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    rows: List[Dict[str, Any]] = []
    with context.Pool(1, maxtasksperchild=1) as pool:
        for runtime in runtimes:
            rows.append(pool.apply(_measure, (str(manifest), runtime, device, threads, depth)))
    return {"memory": rows, "goal_mb": 2.5 * 1024}


def memory_markdown(report: Dict[str, Any]) -> str:
    lines = ["| runtime | volume | after load MiB | peak RSS MiB | cache (entries / MiB) | 3D box s (slices) | "
             "prefetch s (slices) |", "|---|---|---|---|---|---|---|"]
    for row in report["memory"]:
        if "note" in row:
            lines.append(f"| {row['runtime']} | skipped: {row['note']} | | | | | |")
            continue
        cache = row["cache"]
        lines.append(
            f"| {row['runtime']} | {'×'.join(map(str, row['shape_zyx'][::-1]))} int16 ({row['volume_mb']:.0f} MiB) "
            f"| {row['after_load_mb']:.0f} | **{row['peak_rss_mb']:.0f}** | {cache.get('entries')} / "
            f"{cache.get('bytes', 0) / 2**20:.0f} | {row['box_3d_s']:.1f} ({row['box_slices']}) | "
            f"{row['prefetch_s']:.1f} ({row['prefetched_slices']}) |")
    lines.append(f"\ngoal: peak RSS ≤ {report['goal_mb']:.0f} MiB (2.5 GB) with the embedding cache full")
    return "\n".join(lines)
