"""Passwords never appear in repr, logs, CLI output or error messages.

Against a real redis-server started with ``requirepass`` (TCP, and a unix socket
with the password in the query string).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import redis

from cal_redis import CacheConfig, CallableCache, ConfigurationError
from cal_redis.__main__ import main
from cal_redis.config import redact_url
from cal_redis.embedded import EmbeddedRedis

# Characters a URL must escape, so the escaped and the plain forms are both checked.
PASSWORD = "s3cr:t@/pw"
SECRETS = (PASSWORD, "s3cr", "%40%2Fpw")


def assert_no_password(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, (secret, text)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://app:s3cret@redis:6379/0", "redis://app:***@redis:6379/0"),
        ("rediss://:s3cret@redis:6380", "rediss://:***@redis:6380"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("redis://app@redis/0", "redis://app@redis/0"),
        ("unix:///run/redis.sock?db=0&password=s3cret", "unix:///run/redis.sock?db=0&password=***"),
        ("unix://:s3cret@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("redis://redis/0?PASSWORD=s3cret&db=1", "redis://redis/0?PASSWORD=***&db=1"),
        ("redis://:s3c@r/e?t@redis:1/0", "redis://:***@redis:1/0"),  # unescaped @ / ?
        ("redis:6379", "redis:6379"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3c" not in redact_url(url)


@pytest.fixture(scope="module")
def locked() -> Iterator[EmbeddedRedis]:
    """A private server that requires PASSWORD."""
    with EmbeddedRedis(password=PASSWORD) as server:
        yield server


@pytest.fixture(scope="module")
def locked_unix() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(password=PASSWORD, unix_socket=True) as server:
        yield server


def test_embedded_server_requires_the_password(locked: EmbeddedRedis, locked_unix: EmbeddedRedis) -> None:
    for server in (locked, locked_unix):
        with redis.Redis.from_url(server.url) as client:
            assert client.ping() is True
        anonymous = server.url.replace(":s3cr%3At%40%2Fpw@", "").replace("&password=s3cr%3At%40%2Fpw", "")
        assert anonymous != server.url
        with redis.Redis.from_url(anonymous) as client, pytest.raises(redis.AuthenticationError):
            client.ping()
        assert "***" in repr(server)
        assert_no_password(repr(server))


async def test_repr(locked: EmbeddedRedis, locked_unix: EmbeddedRedis) -> None:
    for server in (locked, locked_unix):
        async with await CallableCache.connect(server.url) as cache:
            assert await cache.remote.ping()
            shown = repr(cache)
            assert "***" in shown
            assert_no_password(shown)


async def test_connect_debug_log(locked: EmbeddedRedis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cal_redis")
    async with await CallableCache.connect(locked.url):
        pass
    connected = [r.getMessage() for r in caplog.records if r.getMessage().startswith("connected to")]
    assert connected and "***" in connected[0]
    assert_no_password(caplog.text)


def test_doctor(locked: EmbeddedRedis, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--url", locked.url]) == 0
    out = capsys.readouterr().out
    assert f"redis server     {locked.version} at redis://:***@" in out
    assert_no_password(out)


def test_doctor_wrong_password(locked: EmbeddedRedis, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = locked.url.replace("s3cr%3At%40%2Fpw", "n0tit")
    assert main(["doctor", "--url", wrong]) == 1
    out = capsys.readouterr().out
    assert "UNREACHABLE" in out
    assert "n0tit" not in out


def test_demo(locked: EmbeddedRedis, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--url", locked.url, "--users", "3"]) == 0
    out = capsys.readouterr().out
    assert "Redis at redis://:***@" in out
    assert_no_password(out)


async def test_invalid_url_error(locked: EmbeddedRedis) -> None:
    bad = f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:notaport/0"
    with pytest.raises(ConfigurationError, match="invalid Redis URL") as err:
        await CallableCache.connect(bad)
    assert_no_password(str(err.value))


async def test_invalid_url_error_of_the_event_connection(locked: EmbeddedRedis) -> None:
    """The pub/sub connection parses the URL again (here opened by ``events()``)."""
    async with await CallableCache.connect(locked.url, config=CacheConfig(sync=False)) as cache:
        cache.remote.url = f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:notaport/0"
        with pytest.raises(ConfigurationError, match="invalid Redis URL") as err:
            cache.events()
        assert_no_password(str(err.value))
