"""Prompt latency with and without background prefetch on a real volume (the held-out left-atrium MR).

Without prefetch: a 3D box over the atrium, cold (every slice encoded by the prompt), and one cold click.
With prefetch: prefetch starts at the middle slice when the volume is set; after `look_seconds` (the user looking
at the image) a click lands on the farthest slice of the box (not yet prefetched: it pre-empts the prefetch and
encodes its own slice); prefetch then finishes; a click on the middle slice and the 3D box follow (all cached).
The report keeps the prefetch's per-slice timeline and the prompts' times on the same clock.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..errors import FastMedSAMError
from ..io.manifest import load_image, load_label, read_manifest, tight_box
from ..prompts import Box

TIMELINE_DATASET = "mr_la_heart"


def _ms(prediction: Any) -> float:
    return float(prediction.timings["total"])


def prefetch_timeline(manifest: Union[str, Path], runtime: Optional[str] = None, device: str = "cpu",
                      look_seconds: float = 2.0) -> Dict[str, Any]:
    from ..session import Session

    entries = [e for e in read_manifest(manifest) if TIMELINE_DATASET in e.datasets]
    if not entries:
        raise FastMedSAMError(f"the manifest {manifest} has no {TIMELINE_DATASET} volume for the prefetch timeline")
    entry = entries[0]
    image, label = load_image(entry), load_label(entry) > 0
    box = tight_box(label)
    z_mid, z_far = (box.z0 + box.z1) // 2, box.z1
    plane = Box(box.x0, box.y0, box.x1, box.y1, z=z_mid)
    far = Box(box.x0, box.y0, box.x1, box.y1, z=z_far)

    session = Session(device=device, runtime=runtime)
    session.set_image(image)
    cold_click = session.predict(box=plane)
    session.clear_cache()
    cold_box = session.predict(box=box)

    session.clear_cache()
    session.set_image(image)
    start = time.perf_counter()
    job = session.prefetch(slices=range(box.z0, box.z1 + 1), center=z_mid)
    time.sleep(look_seconds)
    sent = time.perf_counter() - start
    during = session.predict(box=far)
    done_then = len(job.encoded)
    job.wait()
    finished = time.perf_counter() - start
    cached_click = session.predict(box=plane)
    warm_box = session.predict(box=box)
    events: List[Dict[str, Any]] = [{"slice": z, "start_s": a, "end_s": b} for z, a, b in job.timeline]
    return {
        "volume": entry.image_name, "shape_zyx": list(image.array.shape), "runtime": session.runtime,
        "box_slices": box.z1 - box.z0 + 1, "look_seconds": look_seconds,
        "without_prefetch": {"click_ms": _ms(cold_click), "click_encoder_calls": cold_click.encoder_calls,
                             "box3d_seconds": _ms(cold_box) / 1000.0, "box3d_encoder_calls": cold_box.encoder_calls},
        "with_prefetch": {
            "click_during_prefetch": {"sent_s": sent, "ms": _ms(during), "encoder_calls": during.encoder_calls,
                                      "slices_prefetched_when_sent": done_then},
            "prefetch_seconds": finished, "slices_prefetched": len(job.encoded),
            "click_ms": _ms(cached_click), "click_encoder_calls": cached_click.encoder_calls,
            "box3d_seconds": _ms(warm_box) / 1000.0, "box3d_encoder_calls": warm_box.encoder_calls,
        },
        "prefetch_events": events,
    }


def timeline_markdown(report: Dict[str, Any]) -> str:
    a, b = report["without_prefetch"], report["with_prefetch"]
    during = b["click_during_prefetch"]
    return "\n".join([
        f"{report['volume']} {report['shape_zyx']}, runtime {report['runtime']}, 3D box over "
        f"{report['box_slices']} slices",
        "",
        "| prompt | without prefetch | with prefetch |",
        "|---|---|---|",
        f"| click on the middle slice | {a['click_ms']:.0f} ms (encodes) | {b['click_ms']:.0f} ms (cached) |",
        f"| 3D box | {a['box3d_seconds']:.2f} s ({a['box3d_encoder_calls']} encodes) | "
        f"{b['box3d_seconds']:.2f} s ({b['box3d_encoder_calls']} encodes) |",
        f"| click on the far slice at t={during['sent_s']:.1f} s, during prefetch | – | {during['ms']:.0f} ms "
        f"({during['encoder_calls']} encode; {during['slices_prefetched_when_sent']} slices prefetched by then) |",
        "",
        f"prefetch of {b['slices_prefetched']} slices finished at t={b['prefetch_seconds']:.1f} s",
    ])
