"""Configuration: URL resolution, budgets, logging levels."""

from __future__ import annotations

import logging
from collections.abc import Iterator

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


@pytest.fixture
def app_logger() -> Iterator[logging.Logger]:
    """The ``cal_redis`` logger as an application that never configured it leaves it
    (level NOTSET, no handlers); its state is restored afterwards."""
    logger = logging.getLogger("cal_redis")
    saved = logger.level, list(logger.handlers)
    logger.setLevel(logging.NOTSET)
    for h in saved[1]:
        logger.removeHandler(h)
    try:
        yield logger
    finally:
        logger.setLevel(saved[0])
        for h in list(logger.handlers):
            logger.removeHandler(h)
        for h in saved[1]:
            logger.addHandler(h)


def test_rust_log_style_levels(monkeypatch: pytest.MonkeyPatch, app_logger: logging.Logger) -> None:
    def applied(spec: str | None = None) -> int | None:
        app_logger.setLevel(logging.NOTSET)  # each parse on an unconfigured logger
        return configure_logging(spec)

    assert applied("info,cal_redis=debug") == logging.DEBUG
    assert app_logger.level == logging.DEBUG
    assert applied("warn") == logging.WARNING
    assert applied("info,cal-redis=error") == logging.ERROR
    assert applied("other_crate=trace") is None
    assert app_logger.level == logging.NOTSET
    monkeypatch.setenv("RUST_LOG", "error")
    monkeypatch.delenv("CAL_REDIS_LOG", raising=False)
    assert applied() == logging.ERROR
    monkeypatch.setenv("CAL_REDIS_LOG", "debug")
    assert applied() == logging.DEBUG


async def test_env_level_applied_to_an_unconfigured_logger(
    monkeypatch: pytest.MonkeyPatch, app_logger: logging.Logger, redis_url: str
) -> None:
    monkeypatch.setenv("CAL_REDIS_LOG", "debug")
    async with await CallableCache.connect(redis_url):
        pass
    assert app_logger.level == logging.DEBUG


async def test_env_never_overrides_the_application_level(
    monkeypatch: pytest.MonkeyPatch, app_logger: logging.Logger, redis_url: str
) -> None:
    monkeypatch.setenv("CAL_REDIS_LOG", "debug")
    monkeypatch.setenv("RUST_LOG", "trace")
    app_logger.setLevel(logging.WARNING)
    async with await CallableCache.connect(redis_url):
        pass
    assert app_logger.level == logging.WARNING
    assert configure_logging("trace") is None
    assert app_logger.level == logging.WARNING


async def test_env_never_overrides_an_application_handler(
    monkeypatch: pytest.MonkeyPatch, app_logger: logging.Logger, redis_url: str
) -> None:
    """A handler on the logger is configuration too, even with the level left NOTSET."""
    monkeypatch.setenv("CAL_REDIS_LOG", "error")
    app_logger.addHandler(logging.NullHandler())
    async with await CallableCache.connect(redis_url):
        pass
    assert app_logger.level == logging.NOTSET
