"""Refresh-ahead: a hot L1 entry is read again from Redis before it expires.

A namespace with ``refresh_ahead = f`` (``CacheConfig.refresh_ahead`` or its
``NamespaceBudget``) hands its L1 a handler (``LRUCache.set_refresh_ahead``): the first
hit on an entry during the last ``f`` of its TTL calls :meth:`Refresher.due` from inside
``get``, which returns the cached value at once. ``due`` starts one background task
that reads the key through the engine's single-flight and fills it fenced, exactly as
a miss does (an invalidation or write racing the read wins), so the entry is replaced
before it expires and the next reads keep hitting.

At most one refresh per key is in flight (a key already being loaded, by a miss or a
refresh, is not refreshed again); none starts while the L1 gate is closed (the event
subscription is not confirmed, so L1 is not filled). A refresh that fails is counted
(:attr:`Refresher.errors`) and logged at debug level, never raised into a caller.
:meth:`Refresher.close` cancels and awaits the tasks in flight (``CallableCache.close``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._context import Gate
    from .._fast import LRUCache
    from .single_flight import SingleFlight

__all__ = ("Refresher",)

log = logging.getLogger("cal_redis.refresh")


class Refresher:
    """The refresh-ahead tasks of one L1 namespace (see the module docstring)."""

    __slots__ = ("_flights", "_gate", "_refresh", "_tasks", "errors", "namespace", "refreshes")

    def __init__(
        self,
        l1: LRUCache,
        gate: Gate,
        flights: SingleFlight[Any, Any],
        refresh: Callable[[Hashable], Awaitable[object]],
        fraction: float,
        namespace: str,
    ) -> None:
        """``refresh(key)``: the engine's read and fenced fill of one L1 key (through
        ``flights``, its single-flight); ``fraction`` 0: refresh-ahead off."""
        self._gate = gate
        self._flights = flights
        self._refresh = refresh
        self._tasks: dict[Hashable, asyncio.Task[None]] = {}
        self.namespace = namespace
        #: Refreshes that read the key again (filled, or refused by a newer change).
        self.refreshes = 0
        #: Refreshes that failed (Redis unreachable, bad data): counted, logged at debug.
        self.errors = 0
        if fraction:
            l1.set_refresh_ahead(fraction, self.due)

    def __len__(self) -> int:
        """Refreshes in flight."""
        return len(self._tasks)

    def due(self, key: Hashable) -> None:
        """The L1 handler: ``key`` was hit in its refresh window. Starts its refresh
        unless one (or a miss's load) is in flight or the gate is closed; runs inside
        ``LRUCache.get``, so it never raises."""
        if not self._gate.fill_ok or key in self._tasks or key in self._flights:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._run(key))
        except RuntimeError:  # no running loop (a synchronous read of L1): no refresh
            return
        self._tasks[key] = task
        task.add_done_callback(functools.partial(self._done, key))

    def _done(self, key: Hashable, task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]

    async def _run(self, key: Hashable) -> None:
        try:
            await self._refresh(key)
        except Exception as err:  # never raised into a caller (cancellation still is)
            self.errors += 1
            log.debug("refresh-ahead of %s %r failed: %r", self.namespace, key, err)
        else:
            self.refreshes += 1

    async def close(self) -> None:
        """Cancel every refresh in flight and wait until they have ended."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
