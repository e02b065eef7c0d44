"""The token-pausing knob: a number in [0, 1] (0 = the plain model, 1 = pause the most). No torch needed, so
the Slicer panel can check a value before torch is installed."""
from __future__ import annotations

import math
import numbers
from typing import Any

from ..errors import PauseError


def validate_pause(pause: Any) -> float:
    """The knob as a float in [0, 1]; anything else raises PauseError saying what was wrong (no torch needed)."""
    if isinstance(pause, bool) or not isinstance(pause, numbers.Real):
        raise PauseError(f"pause must be a number in [0, 1] (0 = the plain model), got {pause!r}")
    value = float(pause)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise PauseError(f"pause must be in [0, 1] (0 = the plain model, 1 = pause the most), got {pause!r}")
    return value
