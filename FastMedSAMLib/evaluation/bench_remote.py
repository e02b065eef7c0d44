"""`fastmedsam bench --remote URL`: the local Session and a RemoteSession side by side, in one process, on real CT.

- cached click: p50 / p99 of a second prompt on an already-encoded slice, local vs remote (round trip), with the
  server's own share and the wire's;
- upload: a 512×512×300 int16 CT (the DeepLesion volume's real HU slices, tiled to 300, one voxel randomised so the
  digest is new) — first `set_image` time and bytes sent, then the same image again (bytes sent must be 0);
- load: N concurrent clients × M cached clicks on their own sessions: errors, p50 / p99, clicks per second;
- sessions: S sessions held open at once, each on its own 2D slice image (a new digest each, encoded once): the
  server's peak RSS as they accumulate, and how many the per-token limit refused — the memory bounds at work.
"""
from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..client.remote_session import RemoteSession
from ..prompts import Box
from .bench_memory import tiled_ct

LESION_CT = "ct_deeplesion_medsam2/CT_Lesion_000015_01_01_103-115_HU.nii.gz"
LESION_LABEL = "ct_deeplesion_medsam2/CT_Lesion_000015_01_01_103-115_label.nii.gz"


def _percentile(values: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _clicks(session: Any, box: Box, n: int) -> List[float]:
    session.predict(box=box)  # encode once; every later click is cached
    out = []
    for _ in range(n):
        start = time.perf_counter()
        session.predict(box=box)
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def bench_remote(url: str, token: Optional[str], data_dir: Path, model: str = "litemedsam", clicks: int = 50,
                 clients: int = 8, device: str = "cpu", local: bool = True, sessions: int = 100) -> Dict[str, Any]:
    from ..io.images import read_image, read_label

    image = read_image(data_dir / LESION_CT)
    label = read_label(data_dir / LESION_LABEL).array > 0
    z = int(np.argmax(label.sum(axis=(1, 2))))
    ys, xs = np.nonzero(label[z])
    box = Box(xs.min(), ys.min(), xs.max(), ys.max(), z=z)
    report: Dict[str, Any] = {"url": url, "model": model, "image": LESION_CT, "clicks": clicks, "clients": clients}

    remote = RemoteSession(url, token=token, model=model)
    remote.set_image(image)
    remote_ms = _clicks(remote, box, clicks)
    last = remote.predict(box=box)
    report["remote_click"] = {"p50_ms": _percentile(remote_ms, 50), "p99_ms": _percentile(remote_ms, 99),
                              "server_ms": last.transport["server"], "queue_ms": last.transport["queue"],
                              "transfer_ms": last.transport["transfer"], "decode_ms": last.timings["decode"]}
    if local:
        from ..session import Session

        session = Session(model=model, device=device)
        session.set_image(image)
        local_ms = _clicks(session, box, clicks)
        report["local_click"] = {"p50_ms": _percentile(local_ms, 50), "p99_ms": _percentile(local_ms, 99)}
        np.testing.assert_array_equal(session.predict(box=box).mask, last.mask)  # the same mask either way
        report["remote_minus_local_p50_ms"] = report["remote_click"]["p50_ms"] - report["local_click"]["p50_ms"]

    report["upload"] = _upload(url, token, model, image.array)
    report["load"] = _load(url, token, model, image, box, clicks, clients)
    report["sessions"] = _sessions(url, token, model, image.array[z], Box(box.x0, box.y0, box.x1, box.y1), sessions)
    return report


def _upload(url: str, token: Optional[str], model: str, lesion: np.ndarray) -> Dict[str, Any]:
    volume = tiled_ct(lesion)
    volume[0, 0, 0] = np.random.default_rng().integers(-1000, 1000)  # a digest this server has not seen
    out: Dict[str, Any] = {"shape": list(volume.shape), "dtype": "int16", "raw_mb": volume.nbytes / 2**20}
    for name in ("first", "second"):
        session = RemoteSession(url, token=token, model=model)
        start = time.perf_counter()
        session.set_image(volume, spacing=(0.8, 0.8, 1.0), modality="CT")
        out[name] = {"set_image_s": time.perf_counter() - start, "bytes_sent": session.uploaded_bytes}
        session.close()
    return out


def _load(url: str, token: Optional[str], model: str, image: Any, box: Box, clicks: int, clients: int) -> Dict[str, Any]:
    latencies: List[float] = []
    errors: List[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        try:
            session = RemoteSession(url, token=token, model=model)
            session.set_image(image)
            session.predict(box=box)
            barrier.wait()
            mine = []
            for _ in range(clicks):
                start = time.perf_counter()
                session.predict(box=box)
                mine.append((time.perf_counter() - start) * 1000.0)
            with lock:
                latencies.extend(mine)
            session.close()
        except Exception as exc:  # counted and reported: the load check's answer is the error count
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"requests": len(latencies), "errors": len(errors), "error_samples": errors[:3],
            "p50_ms": _percentile(latencies, 50), "p99_ms": _percentile(latencies, 99),
            "mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
            "clicks_per_s": len(latencies) / wall if wall else float("nan")}


def _sessions(url: str, token: Optional[str], model: str, plane: np.ndarray, box: Box, count: int) -> Dict[str, Any]:
    from ..client import protocol as p
    from ..client.transport import Transport
    from ..errors import TooManySessionsError

    health = Transport(url, token)
    held: List[RemoteSession] = []
    refused, peaks = 0, [(0, health.request("GET", p.PATH_HEALTH).json().get("peak_rss_mb"))]
    for i in range(count):
        image = plane.astype(np.int16)
        image[0, 0] = i  # a digest of its own: every session uploads and encodes its image
        session = RemoteSession(url, token=token, model=model)
        try:
            session.set_image(image, modality="CT")
            session.predict(box=box)
            held.append(session)
        except TooManySessionsError:
            refused += 1
            session.close()
        if (i + 1) % 10 == 0:
            peaks.append((i + 1, health.request("GET", p.PATH_HEALTH).json().get("peak_rss_mb")))
    cache = held[0].cache_info() if held else {}
    for session in held:
        session.close()
    return {"opened": len(held), "refused": refused, "peak_rss_mb": peaks, "cache": cache}


def markdown(report: Dict[str, Any]) -> str:
    r, up, load = report["remote_click"], report["upload"], report["load"]
    rows = ["| measure | local Session | RemoteSession |", "|---|---|---|"]
    local = report.get("local_click")
    rows.append(f"| cached click p50 / p99 (ms) | {local['p50_ms']:.1f} / {local['p99_ms']:.1f} | "
                f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} |" if local else
                f"| cached click p50 / p99 (ms) | – | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} |")
    rows.append(f"| of which server / queue / wire (ms, last click) | – | {r['server_ms']:.1f} / {r['queue_ms']:.1f} / {r['transfer_ms']:.1f} |")
    rows.append(f"| 512×512×300 int16 CT, first set_image | – | {up['first']['set_image_s']:.2f} s, "
                f"{up['first']['bytes_sent'] / 2**20:.1f} MB sent of {up['raw_mb']:.0f} MB |")
    rows.append(f"| same CT again | – | {up['second']['set_image_s']:.2f} s, {up['second']['bytes_sent']} bytes sent |")
    rows.append(f"| {report['clients']} clients × {report['clicks']} cached clicks | – | {load['errors']} errors, "
                f"p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms, {load['clicks_per_s']:.1f} clicks/s |")
    held = report.get("sessions")
    if held:
        curve = ", ".join(f"{n}: {mb}" for n, mb in held["peak_rss_mb"])
        rows.append(f"| {held['opened'] + held['refused']} sessions on new images, held open | – | {held['opened']} open, "
                    f"{held['refused']} refused (per-token limit); server peak RSS MB after n sessions: {curve}; "
                    f"embedding cache {held['cache'].get('bytes', 0) / 2**20:.0f} MB in {held['cache'].get('entries', 0)} entries |")
    return "\n".join(rows)
