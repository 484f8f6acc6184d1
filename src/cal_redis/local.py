"""LocalTier: the in-process L1, one TTL + byte-bounded LRU per namespace.

Budgets come from :class:`~cal_redis.config.CacheConfig` (SPEC defaults: regions
5 MB/60 s, accounts 50 MB/60 s, users 20 MB/60 s, devices 20 MB/60 s, flow states
50 MB/4 h), in bytes of memory really held. The weight of an entry estimates that
memory from the byte length of its JSON as read from Redis, with a formula
calibrated per namespace (:class:`~cal_redis.config.EntryWeight`): within 20 % of
what tracemalloc measures for the compiled L1. Each namespace's budget holds at all
times.

With serve-stale on error (``CacheConfig.stale_if_error``), each namespace keeps
expired entries for its stale window (``LRUCache(stale_window=...)``): in the budget,
evicted like any other, never served by ``get``, read only by ``get_stale``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

from ._fast import EXTENSION_ACTIVE, LRUCache, warn_if_unexpectedly_pure
from .config import CacheConfig

__all__ = ("LocalTier",)


class LocalTier:
    """Named L1 namespaces over the compiled (or pure-Python) LRU.

    Example::

        tier = LocalTier(CacheConfig(), ["users"])
        tier["users"].set("u1", user, tier.weight("users", len(raw_json)))
    """

    __slots__ = ("_base", "_caches", "_ident_base", "_per_byte", "implementation")

    def __init__(self, config: CacheConfig, namespaces: Iterable[str]) -> None:
        self.implementation = "cython" if EXTENSION_ACTIVE else "python"
        warn_if_unexpectedly_pure()  # once per process, from the first cache made
        self._caches: dict[str, LRUCache] = {}
        self._base: dict[str, int] = {}
        self._per_byte: dict[str, float] = {}
        self._ident_base: dict[str, int] = {}
        for name in namespaces:
            budget = config.budget(name)
            max_bytes = budget.max_bytes if config.local_cache else 0
            self._caches[name] = LRUCache(
                max_bytes, budget.ttl, stale_window=config.stale_if_error_for(name)
            )
            weight = config.entry_weight(name)
            self._base[name] = weight.base
            self._per_byte[name] = weight.per_byte
            self._ident_base[name] = weight.ident_base

    def __getitem__(self, namespace: str) -> LRUCache:
        return self._caches[namespace]

    def __contains__(self, namespace: object) -> bool:
        return namespace in self._caches

    @property
    def namespaces(self) -> list[str]:
        """Names of the namespaces, in creation order."""
        return list(self._caches)

    def weight(self, namespace: str, json_len: int) -> int:
        """L1 weight of an entry of ``namespace`` whose JSON was ``json_len`` bytes long.

        For ``trunks_ip``, ``json_len`` is ``len(ip) + len(account_id)``.
        """
        per_byte = self._per_byte[namespace]
        if per_byte == 1.0:
            return self._base[namespace] + json_len
        return self._base[namespace] + int(per_byte * json_len)

    def weights(self, namespace: str, sizes: Sequence[int]) -> list[int]:
        """``[weight(namespace, n) for n in sizes]``; :meth:`fill_many` avoids the list."""
        base = self._base[namespace]
        per_byte = self._per_byte[namespace]
        if per_byte == 1.0:
            return [base + n for n in sizes]
        return [base + int(per_byte * n) for n in sizes]

    def ident_weight(self, namespace: str, chars: int) -> int:
        """L1 weight of an ident -> id entry of ``namespace``; ``chars`` is
        ``len(ident) + len(id)``."""
        return self._ident_base[namespace] + chars

    def fill_many(
        self,
        namespace: str,
        keys: Sequence[Hashable],
        values: Sequence[Any],
        sizes: Sequence[int],
        token: int,
        ttl: float | None = None,
    ) -> int:
        """The batch fill: ``set_many_if_fresh`` of ``namespace`` with ``weight(n)`` for
        each JSON length ``n`` in ``sizes``; returns how many entries were stored.

        A one-byte-per-byte namespace passes its base as ``extra_weight``, so no weight
        list is built (no cost per entry beyond the LRU's own).
        """
        l1 = self._caches[namespace]
        if self._per_byte[namespace] == 1.0:
            return l1.set_many_if_fresh(
                keys, values, sizes, token, ttl, extra_weight=self._base[namespace]
            )
        return l1.set_many_if_fresh(keys, values, self.weights(namespace, sizes), token, ttl)

    def flush(self, namespace: str) -> int:
        """Drop every entry of one namespace (fencing in-flight fills); return the count."""
        return self._caches[namespace].invalidate_all()

    def flush_all(self) -> int:
        """Drop every entry of every namespace; return the count."""
        return sum(cache.invalidate_all() for cache in self._caches.values())

    def suspend(self) -> None:
        """Hold every namespace's entries without serving them (see ``LRUCache.suspend``)."""
        for cache in self._caches.values():
            cache.suspend()

    def resume(self) -> None:
        """Serve the entries held since :meth:`suspend` again."""
        for cache in self._caches.values():
            cache.resume()

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters and weights per namespace (hits, misses, evictions, weight, ...)."""
        return {name: cache.stats() for name, cache in self._caches.items()}
