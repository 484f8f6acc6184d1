"""The hand-written baseline the bench measures the cache against: stock redis-py
clients, made here so that redis-py stays imported under :mod:`cal_redis.remote` only.

These clients are deliberately *not* the cache's remote: no retry policy of ours, no
error mapping, no pool sizing; exactly what an application would write with
``redis.asyncio``. Only :mod:`cal_redis.bench` uses this module; the library never
imports it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.utils import HIREDIS_AVAILABLE

__all__ = (
    "RawRedis",
    "client_versions",
    "counting_sends",
    "raw_client",
    "raw_cluster",
    "raw_pooled_client",
)

#: redis-py's asyncio client, for annotations.
RawRedis = aioredis.Redis


def raw_client(url: str | None = None, *, host: str | None = None, port: int | None = None,
               protocol: int = 3, **kwargs: Any) -> aioredis.Redis:
    """A stock ``redis.asyncio.Redis`` to ``url``, or to ``host:port``."""
    if url is not None:
        return aioredis.Redis.from_url(url, protocol=protocol, **kwargs)
    return aioredis.Redis(host=host or "localhost", port=port or 6379, protocol=protocol,
                          **kwargs)


def raw_cluster(host: str, port: int, protocol: int = 3) -> aioredis.RedisCluster:
    """A stock ``redis.asyncio.RedisCluster`` seeded with one node."""
    return aioredis.RedisCluster(host=host, port=port, protocol=protocol)


def raw_pooled_client(url: str, max_connections: int, timeout: float,
                      protocol: int = 3) -> tuple[Any, aioredis.Redis]:
    """A stock client over a ``BlockingConnectionPool`` of ``max_connections`` (callers
    wait up to ``timeout`` seconds for a connection): the pool and its client."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout, protocol=protocol)
    return pool, aioredis.Redis.from_pool(pool)


@contextlib.contextmanager
def counting_sends() -> Iterator[list[int]]:
    """Count the request buffers written to any redis-py connection (the cache's and the
    stock clients') while the block runs: ``counter[0]``. A pipeline or MULTI/EXEC is one."""
    orig = AbstractConnection.send_packed_command
    sent = [0]

    async def counting(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        sent[0] += 1
        await orig(self, *args, **kwargs)

    AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        AbstractConnection.send_packed_command = orig  # type: ignore[method-assign]


def client_versions() -> dict[str, str]:
    """redis-py's version and whether its hiredis parser is available."""
    return {"redis_py": redis.__version__, "hiredis": str(HIREDIS_AVAILABLE)}
