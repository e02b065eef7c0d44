"""A least-recently-used cache of image embeddings, bounded by the bytes its tensors hold."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Hashable, Optional, Tuple

import torch


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class EmbeddingCache:
    """Maps a key (image identity, slice or crop, encoder variant) to an embedding and what decoding needs with it.

    Evicts the least recently used entries once the tensors held exceed `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: "OrderedDict[Hashable, Tuple[Any, int]]" = OrderedDict()
        self._bytes = 0
        self.stats = CacheStats()

    def get(self, key: Hashable) -> Optional[Any]:
        entry = self._entries.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return entry[0]

    def put(self, key: Hashable, value: Any) -> None:
        size = _nbytes(value)
        if key in self._entries:
            self._bytes -= self._entries.pop(key)[1]
        if size > self.max_bytes:
            return  # larger than the whole budget: never cache it
        self._entries[key] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def entry_bytes(self, key: Hashable) -> int:
        """Bytes the entry under `key` holds (0 if absent)."""
        entry = self._entries.get(key)
        return 0 if entry is None else entry[1]

    def __len__(self) -> int:
        return len(self._entries)

    def info(self) -> Dict[str, int]:
        return {"hits": self.stats.hits, "misses": self.stats.misses, "entries": len(self), "bytes": self._bytes}
