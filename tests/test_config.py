"""Configuration: URL resolution, budgets, logging levels."""

from __future__ import annotations

import logging

import pytest

from cal_redis import CacheConfig, CallableCache, ConfigurationError
from cal_redis.config import DEFAULT_BUDGETS, configure_logging, resolve_url

MB = 1024 * 1024


def test_spec_budgets() -> None:
    b = DEFAULT_BUDGETS
    assert (b["regions"].max_bytes, b["regions"].ttl) == (5 * MB, 60)
    assert (b["accounts"].max_bytes, b["accounts"].ttl) == (50 * MB, 60)
    assert (b["users"].max_bytes, b["users"].ttl) == (20 * MB, 60)
    assert (b["devices"].max_bytes, b["devices"].ttl) == (20 * MB, 60)
    assert (b["flow_states"].max_bytes, b["flow_states"].ttl) == (50 * MB, 4 * 3600)


def test_with_budget_and_validation() -> None:
    c = CacheConfig().with_budget("users", max_bytes=1000, ttl=5)
    assert c.budget("users").max_bytes == 1000 and CacheConfig().budget("users").max_bytes == 20 * MB
    with pytest.raises(ConfigurationError):
        CacheConfig().with_budget("users", max_bytes=-1, ttl=5)
    with pytest.raises(ConfigurationError):
        CacheConfig().with_budget("users", max_bytes=1, ttl=0)
    with pytest.raises(ConfigurationError):
        CacheConfig(protocol=4)
    with pytest.raises(ConfigurationError):
        CacheConfig().budget("nope")


def test_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAL_VALKEY_HOST", raising=False)
    with pytest.raises(ConfigurationError, match="CAL_VALKEY_HOST"):
        resolve_url(None)
    monkeypatch.setenv("CAL_VALKEY_HOST", "redis://h:1")
    assert resolve_url(None) == "redis://h:1"
    assert resolve_url("unix:///tmp/x.sock") == "unix:///tmp/x.sock"
    monkeypatch.setenv("CAL_VALKEY_HOST", "localhost:6379")
    assert resolve_url(None) == "redis://localhost:6379"


async def test_connect_without_url_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAL_VALKEY_HOST", raising=False)
    with pytest.raises(ConfigurationError, match="CAL_VALKEY_HOST"):
        await CallableCache.connect()


async def test_connect_from_env(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    monkeypatch.setenv("CAL_VALKEY_HOST", redis_url)
    cache = await CallableCache.connect()
    try:
        assert await cache.remote.ping()
    finally:
        await cache.close()


def test_rust_log_style_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("cal_redis")
    old = logger.level
    try:
        assert configure_logging("info,cal_redis=debug") == logging.DEBUG
        assert logger.level == logging.DEBUG
        assert configure_logging("warn") == logging.WARNING
        assert configure_logging("other_crate=trace") is None
        monkeypatch.setenv("RUST_LOG", "error")
        monkeypatch.delenv("CAL_REDIS_LOG", raising=False)
        assert configure_logging() == logging.ERROR
    finally:
        logger.setLevel(old)
