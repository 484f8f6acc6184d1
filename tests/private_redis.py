"""A private redis-server per test, for tests that stop, freeze or kill it, and a
factory of caches on it (closed at teardown)."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

from cal_redis import CacheConfig, CallableCache
from cal_redis.embedded import EmbeddedRedis

Factory = Callable[[CacheConfig], Awaitable[CallableCache]]


def private_server() -> Iterator[EmbeddedRedis]:
    """For a fixture (``yield from``): a started server, resumed if frozen and stopped
    at teardown."""
    srv = EmbeddedRedis().start()
    try:
        yield srv
    finally:
        if srv.running and srv.pid is not None:
            os.kill(srv.pid, signal.SIGCONT)
        srv.stop()


@asynccontextmanager
async def cache_factory(url: str) -> AsyncIterator[Factory]:
    """``make(config)`` connects a cache to ``url``; every one made is closed on exit."""
    made: list[CallableCache] = []

    async def make(config: CacheConfig) -> CallableCache:
        cache = await CallableCache.connect(url, config=config)
        made.append(cache)
        return cache

    try:
        yield make
    finally:
        for c in made:
            await c.close()


def freeze(server: EmbeddedRedis) -> None:
    """SIGSTOP the server: connections stay open, nothing is answered."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)


def thaw(server: EmbeddedRedis) -> None:
    """SIGCONT a server :func:`freeze` stopped."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGCONT)
