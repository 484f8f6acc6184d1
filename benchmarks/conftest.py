"""Shared fixtures of the pytest-benchmark suites: one private redis-server for the
session, one persistent event loop (so loop start-up is never timed), and a cache on
that server holding 10,000 ~300 B users.

Files named ``bench_*.py`` are collected here, so ``pytest benchmarks`` needs no
``-o python_files`` override (see ``make bench``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from cal_redis import CallableCache
from cal_redis.bench._scenarios import BENCH_CONFIG, N_USERS, seed_users, stock_client
from cal_redis.embedded import EmbeddedRedis


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect ``bench_*.py`` as test modules (pytest's default is ``test_*.py``), unless
    pytest collects the file anyway (named on the command line, or ``python_files``
    already matches it), so nothing is collected twice."""
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if parent.session.isinitpath(file_path):
        return None
    if any(fnmatch(file_path.name, pat) for pat in parent.config.getini("python_files")):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


@pytest.fixture(scope="session")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The one event loop every benchmark runs its coroutines on."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """The session's private redis-server."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="session")
def cache(loop: asyncio.AbstractEventLoop, redis_server: EmbeddedRedis) -> Iterator[CallableCache]:
    """A cache on the session's server (same config as ``python -m cal_redis bench``)."""
    cache = loop.run_until_complete(CallableCache.connect(redis_server.url, config=BENCH_CONFIG))
    yield cache
    loop.run_until_complete(cache.close())


@pytest.fixture(scope="session")
def stock(loop: asyncio.AbstractEventLoop, redis_server: EmbeddedRedis) -> Iterator[aioredis.Redis]:
    """A stock redis.asyncio client on the same server: the hand-written baseline."""
    client = stock_client(redis_server.url)
    yield client
    loop.run_until_complete(client.aclose())


@pytest.fixture(scope="session")
def user_ids(loop: asyncio.AbstractEventLoop, cache: CallableCache) -> list[str]:
    """Ids of the 10,000 users written to ``cal:users`` for this session."""
    async def seed() -> list[str]:
        # inside the loop: the cache refuses to be used from outside the loop it runs on
        await cache.redis_connection().flushdb()
        return await seed_users(cache, N_USERS)

    return loop.run_until_complete(seed())
