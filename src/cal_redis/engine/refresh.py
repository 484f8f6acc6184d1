"""Refresh-ahead: a hot L1 entry is read again from Redis before it expires.

A namespace with ``refresh_ahead = f`` (``CacheConfig.refresh_ahead`` or its
``NamespaceBudget``) hands its L1 a handler (``LRUCache.set_refresh_ahead``): the first
hit on an entry during the last ``f`` of its TTL calls :meth:`Refresher.due` from inside
``get``, which returns the cached value at once. ``due`` only notes the key (a few
hundred nanoseconds); once per event-loop tick the keys noted are refreshed by one
background task: the engine reads them through its single-flight (one ``HMGET`` per
hash for the hash-field entities) and fills them fenced, exactly as a miss does (an
invalidation or write racing the read wins). The entry is replaced before it
expires, so the next reads keep hitting.

At most one refresh per key is in flight (a key already being loaded, by a miss or a
refresh, is not refreshed again); none starts while the L1 gate is closed (the event
subscription is not confirmed, so L1 is not filled). A refresh that fails is counted
(:attr:`Refresher.errors`) and logged at debug level, never raised into a caller.
:meth:`Refresher.close` cancels and awaits the refreshes in flight
(``CallableCache.close``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._context import Gate
    from .._fast import LRUCache
    from .single_flight import SingleFlight

__all__ = ("Failures", "Refresher")

log = logging.getLogger("cal_redis.refresh")

#: What an engine's refresh of some keys reports: (how many keys, why) per failed part.
Failures = list[tuple[int, BaseException]]


class Refresher:
    """The refresh-ahead of one L1 namespace (see the module docstring)."""

    __slots__ = (
        "_due",
        "_flights",
        "_gate",
        "_handle",
        "_inflight",
        "_refresh",
        "_tasks",
        "errors",
        "namespace",
        "refreshes",
    )

    def __init__(
        self,
        l1: LRUCache,
        gate: Gate,
        flights: SingleFlight[Any, Any],
        refresh: Callable[[list[Hashable]], Awaitable[Failures]],
        fraction: float,
        namespace: str,
    ) -> None:
        """``refresh(keys)``: the engine's read and fenced fill of distinct L1 keys
        (through ``flights``, its single-flight), returning the parts that failed;
        ``fraction`` 0: refresh-ahead off."""
        self._gate = gate
        self._flights = flights
        self._refresh = refresh
        self._due: list[Hashable] = []  # noted this tick, not yet started
        self._inflight: set[Hashable] = set()  # noted or being refreshed
        self._handle: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.namespace = namespace
        #: Entries read again (filled, or refused by a newer change: fenced).
        self.refreshes = 0
        #: Entries whose refresh failed (Redis unreachable, bad data): logged at debug.
        self.errors = 0
        if fraction:
            l1.set_refresh_ahead(fraction, self.due)

    def __len__(self) -> int:
        """Keys noted or being refreshed."""
        return len(self._inflight)

    def due(self, key: Hashable) -> None:
        """The L1 handler: ``key`` was hit in its refresh window. Notes it for this
        tick's refresh unless it is already being refreshed or loaded, or the gate is
        closed. Runs inside ``LRUCache.get``: cheap, and never raises."""
        if not self._gate.fill_ok or key in self._inflight or key in self._flights:
            return
        if self._handle is None:
            try:
                self._handle = asyncio.get_running_loop().call_soon(self._start)
            except RuntimeError:  # no running loop (a synchronous read of L1): no refresh
                return
        self._due.append(key)
        self._inflight.add(key)

    def _start(self) -> None:
        self._handle = None
        keys, self._due = self._due, []
        if keys:
            task = asyncio.get_running_loop().create_task(self._run(keys))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, keys: list[Hashable]) -> None:
        try:
            failures = await self._refresh(keys)
        except Exception as err:  # never raised into a caller (cancellation still is)
            failures = [(len(keys), err)]
        finally:
            self._inflight.difference_update(keys)
        failed = sum(n for n, _ in failures)
        self.errors += failed
        self.refreshes += len(keys) - failed
        for n, why in failures:
            log.debug("refresh-ahead of %d %s entries failed: %r", n, self.namespace, why)

    async def close(self) -> None:
        """Cancel every refresh noted or in flight and wait until they have ended."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._inflight.difference_update(self._due)
        self._due = []
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def gathered(jobs: list[tuple[int, Awaitable[object]]]) -> Failures:
    """Run ``(keys, awaitable)`` jobs concurrently; return the failed ones as
    :data:`Failures` (a job that returns :data:`Failures` reports its own parts)."""
    results = await asyncio.gather(*(job for _, job in jobs), return_exceptions=True)
    failures: Failures = []
    for (n, _), result in zip(jobs, results, strict=True):
        if isinstance(result, Exception):
            failures.append((n, result))
        elif isinstance(result, BaseException):
            raise result
        elif isinstance(result, list):
            failures.extend(result)
    return failures
