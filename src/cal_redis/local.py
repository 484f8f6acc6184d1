"""LocalTier: the in-process L1, one TTL + byte-bounded LRU per namespace.

Budgets come from :class:`~cal_redis.config.CacheConfig` (SPEC defaults: regions
5 MB/60 s, accounts 50 MB/60 s, users 20 MB/60 s, devices 20 MB/60 s, flow states
50 MB/4 h). The weight of an entry is the byte length of its JSON as read from
Redis plus ``config.entry_overhead``, so each namespace's budget holds at all times.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._fast import EXTENSION_ACTIVE, LRUCache
from .config import CacheConfig

__all__ = ("LocalTier",)


class LocalTier:
    """Named L1 namespaces over the compiled (or pure-Python) LRU.

    Example::

        tier = LocalTier(CacheConfig(), ["users"])
        tier["users"].set("u1", user, tier.weight(raw_json))
    """

    __slots__ = ("_caches", "_overhead", "implementation")

    def __init__(self, config: CacheConfig, namespaces: Iterable[str]) -> None:
        self._overhead = config.entry_overhead
        self.implementation = "cython" if EXTENSION_ACTIVE else "python"
        self._caches: dict[str, LRUCache] = {}
        for name in namespaces:
            budget = config.budget(name)
            max_bytes = budget.max_bytes if config.local_cache else 0
            self._caches[name] = LRUCache(max_bytes, budget.ttl)

    def __getitem__(self, namespace: str) -> LRUCache:
        return self._caches[namespace]

    def __contains__(self, namespace: object) -> bool:
        return namespace in self._caches

    @property
    def namespaces(self) -> list[str]:
        """Names of the namespaces, in creation order."""
        return list(self._caches)

    def weight(self, namespace: str, json_len: int) -> int:
        """L1 weight of an entry of ``namespace`` whose JSON is ``json_len`` bytes long."""
        return json_len + self._overhead

    def overhead(self, namespace: str) -> int:
        """What :meth:`weight` adds to the JSON length (batch fills pass it once)."""
        return self._overhead

    def flush(self, namespace: str) -> int:
        """Drop every entry of one namespace (fencing in-flight fills); return the count."""
        return self._caches[namespace].invalidate_all()

    def flush_all(self) -> int:
        """Drop every entry of every namespace; return the count."""
        return sum(cache.invalidate_all() for cache in self._caches.values())

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters and weights per namespace (hits, misses, evictions, weight, ...)."""
        return {name: cache.stats() for name, cache in self._caches.items()}
