"""The embedding cache: LRU order, the byte bound, and statistics."""
import pytest
import torch

from FastMedSAMLib.engines.cache import EmbeddingCache

MB = 2**20


def embedding(mb: int) -> torch.Tensor:
    return torch.zeros(mb * MB // 4, dtype=torch.float32)


def test_evicts_least_recently_used_beyond_the_byte_bound():
    cache = EmbeddingCache(3 * MB)
    for key in "abc":
        cache.put(key, (embedding(1), "frame"))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", (embedding(1), "frame"))
    assert "b" not in cache and all(k in cache for k in "acd")
    assert cache.info()["bytes"] == 3 * MB and len(cache) == 3


def test_statistics_and_replacement():
    cache = EmbeddingCache(4 * MB)
    assert cache.get("x") is None
    cache.put("x", embedding(2))
    cache.put("x", embedding(1))  # replacing an entry releases its old bytes
    assert cache.get("x") is not None
    assert cache.info() == {"hits": 1, "misses": 1, "entries": 1, "bytes": MB}


def test_an_entry_larger_than_the_budget_is_not_cached():
    cache = EmbeddingCache(MB)
    cache.put("big", embedding(2))
    assert "big" not in cache and cache.info()["bytes"] == 0


def test_negative_budget_is_refused():
    with pytest.raises(ValueError):
        EmbeddingCache(-1)
