"""The one timing helper: milliseconds since a `time.perf_counter()` start (engines, Slicer logic, bench)."""
from __future__ import annotations

import time


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0
