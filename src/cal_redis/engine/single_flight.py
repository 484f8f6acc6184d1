"""The one single-flight: concurrent loads of the same key share one round trip.

The first caller of a key *leads*: it runs the load; callers arriving while it is in
flight *join* and get its result (or its error). A joiner's wait is shielded, so a
cancelled joiner never disturbs the load; a cancelled leader never cancels its
joiners either: they are told (:class:`_LeaderCancelled`) and load again themselves,
one of them leading. A batch load leads many keys under one future.

The future joiners wait on is created by the first joiner, so the common unjoined
miss pays for none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

__all__ = ("SingleFlight",)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _LeaderCancelled(Exception):
    """The task loading a key was cancelled; joiners load on their own."""


class _Found(Generic[K, V]):
    """A load's result for its joiners: ``found[key]``, mapped only if someone asks."""

    __slots__ = ("_keys", "_map", "_values")

    def __init__(self, keys: Sequence[K], values: Sequence[V]) -> None:
        self._keys = keys
        self._values = values
        self._map: dict[K, V] | None = None

    def __getitem__(self, key: K) -> V:
        if len(self._keys) == 1:
            return self._values[0]
        if self._map is None:
            self._map = dict(zip(self._keys, self._values, strict=True))
        return self._map[key]


def _fail(flight: asyncio.Future[_Found[K, V]], err: BaseException) -> None:
    flight.set_exception(_LeaderCancelled() if isinstance(err, asyncio.CancelledError) else err)
    flight.exception()  # retrieved: joiners re-raise it, no "never retrieved" log


class SingleFlight(Generic[K, V]):
    """In-flight loads by key (see the module docstring)."""

    __slots__ = ("_flights", "joins")

    def __init__(self) -> None:
        # key -> the future of the load's _Found (one per batch), or None while a
        # single-key load has had no joiner.
        self._flights: dict[K, asyncio.Future[_Found[K, V]] | None] = {}
        #: Callers that joined a load instead of making their own.
        self.joins = 0

    def __contains__(self, key: object) -> bool:
        return key in self._flights

    def __len__(self) -> int:
        return len(self._flights)

    def _future(self, key: K) -> asyncio.Future[_Found[K, V]]:
        flight = self._flights[key]
        if flight is None:  # the leader made no future yet: nobody had joined
            flight = self._flights[key] = asyncio.get_running_loop().create_future()
        return flight

    async def run(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """``await load()`` once for all concurrent callers of ``key``."""
        flights = self._flights
        while key in flights:
            self.joins += 1
            try:
                return (await asyncio.shield(self._future(key)))[key]
            except _LeaderCancelled:
                continue
        flights[key] = None
        try:
            value = await load()
        except BaseException as err:
            flight = flights.pop(key, None)
            if flight is not None:
                _fail(flight, err)
            raise
        flight = flights.pop(key, None)
        if flight is not None:
            flight.set_result(_Found((key,), (value,)))
        return value

    async def run_many(
        self,
        keys: Sequence[K],
        load_many: Callable[[list[K]], Awaitable[list[V]]],
        load_one: Callable[[K], Awaitable[V]],
    ) -> list[V]:
        """Values of distinct ``keys`` in order: keys in flight are joined, the others
        loaded by one ``load_many`` call. A joined key whose leader was cancelled is
        loaded again with ``load_one``."""
        flights = self._flights
        joined: list[tuple[int, K, asyncio.Future[_Found[K, V]]]] = []
        fetch = keys if isinstance(keys, list) else list(keys)
        if flights and any(k in flights for k in keys):
            fetch = []
            for i, k in enumerate(keys):
                if k in flights:
                    joined.append((i, k, self._future(k)))
                else:
                    fetch.append(k)
        values: list[V] = []
        if fetch:
            flight: asyncio.Future[_Found[K, V]] = asyncio.get_running_loop().create_future()
            flights.update(dict.fromkeys(fetch, flight))
            try:
                values = await load_many(fetch)
            except BaseException as err:
                _fail(flight, err)
                raise
            else:
                flight.set_result(_Found(fetch, values))
            finally:
                if len(flights) == len(fetch):
                    flights.clear()  # only this batch was in flight
                else:
                    for k in fetch:
                        del flights[k]
            if not joined:
                return values
        out: list[V] = [None] * len(keys)  # type: ignore[list-item]
        it = iter(values)
        jpos = {i for i, _, _ in joined}
        for i in range(len(keys)):
            if i not in jpos:
                out[i] = next(it)
        for i, k, fut in joined:
            self.joins += 1
            try:
                out[i] = (await asyncio.shield(fut))[k]
            except _LeaderCancelled:
                out[i] = await self.run(k, lambda k=k: load_one(k))  # type: ignore[misc]
        return out
