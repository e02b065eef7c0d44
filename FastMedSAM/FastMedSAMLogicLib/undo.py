"""One undo state per prompt: the touched region of the segment as it was before the prompt wrote into it."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Deque, List, Optional

import numpy as np

from .segment_io import Region


@dataclass
class UndoState:
    segmentation_id: str
    segment_id: str
    volume_id: str
    region: Region
    previous: np.ndarray  # bool, region.shape
    prompt_key: tuple = ()
    accepted: bool = False


class UndoStack:
    """Newest last; keeps at most `depth` states. States after the last `accept()` are "pending"."""

    def __init__(self, depth: int = 20) -> None:
        self.depth = depth
        self._states: Deque[UndoState] = deque(maxlen=depth)

    def push(self, state: UndoState) -> None:
        self._states.append(state)

    def pop(self) -> Optional[UndoState]:
        return self._states.pop() if self._states else None

    def peek(self) -> Optional[UndoState]:
        return self._states[-1] if self._states else None

    def pending(self) -> List[UndoState]:
        """States not accepted yet, newest last."""
        result: List[UndoState] = []
        for state in reversed(self._states):
            if state.accepted:
                break
            result.append(state)
        return result[::-1]

    def accept(self) -> None:
        for state in self._states:
            state.accepted = True

    def __len__(self) -> int:
        return len(self._states)
