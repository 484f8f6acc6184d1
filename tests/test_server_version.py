"""The minimum server version: judged from ``INFO server`` and enforced by ``connect()``
against the session's real server, with a message saying what is supported."""

from __future__ import annotations

import pytest
import redis

from cal_redis import CallableCache, ConfigurationError
from cal_redis import _server_info as server_info
from cal_redis._server_info import MIN_SERVER_VERSIONS, check_server_version, server_version
from cal_redis.embedded import EmbeddedRedis


@pytest.mark.parametrize(
    ("info", "judged"),
    [
        ({"redis_version": "7.0.15"}, ("redis", (7, 0))),
        ({"redis_version": "6.2.14"}, ("redis", (6, 2))),
        # Valkey's redis_version is a fixed 7.2.4: its own version is what counts
        ({"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "9.0.1"},
         ("valkey", (9, 0))),
        ({"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "7.2.11"},
         ("valkey", (7, 2))),
        # another Redis-compatible server is held to the Redis floor by redis_version
        ({"redis_version": "6.3.4", "server_name": "keydb"}, ("redis", (6, 3))),
        ({"redis_version": "255.255.255"}, ("redis", (255, 255))),
        ({}, ("redis", None)),
    ],
)
def test_server_version(info: dict[str, str], judged: tuple[str, tuple[int, int] | None]) -> None:
    assert server_version(info) == judged


def test_floors() -> None:
    assert MIN_SERVER_VERSIONS == {"redis": (7, 0), "valkey": (8, 0)}
    for ok in ({"redis_version": "7.0.0"}, {"redis_version": "8.2.1"},
               {"server_name": "valkey", "valkey_version": "8.0.0", "redis_version": "7.2.4"},
               {"redis_version": "unknown"}):
        check_server_version(ok, "redis://r:6379/0")
    for old, shown in (({"redis_version": "6.2.14"}, "redis 6.2.14"),
                       ({"server_name": "valkey", "valkey_version": "7.2.11",
                         "redis_version": "7.2.4"}, "valkey 7.2.11")):
        with pytest.raises(ConfigurationError) as err:
            check_server_version(old, "redis://r:6379/0")
        message = str(err.value)
        assert f"the server at redis://r:6379/0 is {shown}" in message
        assert "Redis 7.0+, Valkey 8.0+" in message


async def test_connect_refuses_a_server_below_the_floor(
    redis_server: EmbeddedRedis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raising the floor above the real server's version makes connect() refuse it,
    closing what it opened (no connection of the cache stays on the server)."""
    raw = redis.Redis.from_url(redis_url)
    name, version = server_version(raw.info("server"))  # a real INFO of the real server
    assert version is not None
    monkeypatch.setitem(server_info.MIN_SERVER_VERSIONS, name, (version[0] + 1, 0))
    before = len(raw.client_list())
    with pytest.raises(ConfigurationError, match=f"is {redis_server.version}, older than"):
        await CallableCache.connect(redis_url)
    assert len(raw.client_list()) == before
    raw.close()
    monkeypatch.setitem(server_info.MIN_SERVER_VERSIONS, name, version)
    async with await CallableCache.connect(redis_url):
        pass
