"""One real redis-server per test session (the embedded launcher), a clean database
per test, and the L1 implementation fixture that runs cache tests against both the
compiled LRU and its pure-Python twin."""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
from hypothesis import settings

from cal_redis import CacheConfig, CallableCache
from cal_redis import local as local_mod
from cal_redis.embedded import EmbeddedRedis

# No per-example deadline: these 2-core CI machines are noisy. "ci" keeps examples
# derandomized so a red run can be reproduced.
settings.register_profile("dev", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

NO_EXTENSIONS = os.environ.get("CAL_REDIS_NO_EXTENSIONS", "") not in ("", "0")


def _compiled_lru() -> Any:
    try:
        return importlib.import_module("cal_redis._fast._lru_c").LRUCache
    except ImportError:
        if NO_EXTENSIONS:
            return None
        raise


LRU_IMPLS = ["c", "py"]


def lru_class(name: str) -> Any:
    """The LRU class of implementation ``name`` ("c" or "py"); skips "c" only when
    the extension was disabled on purpose. A normal install that fell back fails."""
    if name == "py":
        return importlib.import_module("cal_redis._fast._lru_py").LRUCache
    cls = _compiled_lru()
    if cls is None:
        pytest.skip("CAL_REDIS_NO_EXTENSIONS is set: compiled module not built")
    return cls


@pytest.fixture(params=LRU_IMPLS)
def lru_cls(request: pytest.FixtureRequest) -> Any:
    """Each LRU implementation in turn."""
    return lru_class(request.param)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """The session's private redis-server."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """URL of a freshly flushed database on the session's server."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain synchronous redis-py client on the test database (a "foreign" writer)."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(params=LRU_IMPLS)
def l1_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a cache test with each L1 implementation."""
    monkeypatch.setattr(local_mod, "LRUCache", lru_class(request.param))
    return str(request.param)


@pytest.fixture
async def make_cache(redis_url: str, l1_impl: str) -> AsyncIterator[Any]:
    """Factory of connected caches on the test database; all closed at teardown."""
    made: list[CallableCache] = []

    async def factory(config: CacheConfig | None = None, url: str | None = None) -> CallableCache:
        cache = await CallableCache.connect(url or redis_url, config=config)
        made.append(cache)
        return cache

    try:
        yield factory
    finally:
        for c in made:
            await c.close()


@pytest.fixture
async def cache(redis_url: str, l1_impl: str) -> AsyncIterator[CallableCache]:
    """A connected cache on a clean database, with the L1 implementation of ``l1_impl``."""
    c = await CallableCache.connect(redis_url)
    try:
        yield c
    finally:
        await c.close()
