"""The key style marker and ``python -m cal_redis migrate-keys`` on a real server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from cal_redis import CacheConfig, CallableCache, ConfigurationError, Device, User
from cal_redis.__main__ import main
from cal_redis.keys import LAYOUT_KEY, KeyBuilder
from cal_redis.layout import cluster_name

pytestmark = pytest.mark.standalone_only

PLAIN, TAGGED = KeyBuilder(), KeyBuilder(cluster=True)


def test_cluster_names() -> None:
    assert cluster_name("cal:user:idents") == "cal:user:idents:{cal:users}"
    assert cluster_name("cal:account:acc1:devices") == "cal:account:{acc1}:devices"
    assert cluster_name("cal:account:acc1:session:s1") == "cal:account:{acc1}:session:s1"
    assert cluster_name("cal:account:idents") == "cal:account:idents:{cal:accounts}"  # not an account
    assert cluster_name("cal:account:idents:devices") == "cal:account:{idents}:devices"
    assert cluster_name("cal:account:{acc1}:devices") is None  # already tagged
    assert cluster_name("cal:users") is None


async def test_marker_written_once_and_checked(redis_url: str, raw: redis.Redis) -> None:
    async with await CallableCache.connect(redis_url):
        assert raw.get(LAYOUT_KEY) == b"standalone"
    with pytest.raises(ConfigurationError, match="standalone key style"):
        await CallableCache.connect(redis_url, config=CacheConfig(cluster=True))
    raw.delete(LAYOUT_KEY)
    async with await CallableCache.connect(redis_url, config=CacheConfig(cluster=True)):
        assert raw.get(LAYOUT_KEY) == b"cluster"
    with pytest.raises(ConfigurationError, match="cluster key style"):
        await CallableCache.connect(redis_url)


async def test_migrate_keys_moves_everything_and_is_safe_to_rerun(
    redis_url: str, raw: redis.Redis, capsys: Any
) -> None:
    async with await CallableCache.connect(redis_url) as old:
        await old.set_user(User(id="u1", email="a@x.io"))
        await old.set_device("acc1", Device(id="d1", mac="aa:bb"))
        await old.create_session("acc1", "u1", ttl=300, data={"k": "v"})
    before = sorted(k for k in raw.keys("*") if k != LAYOUT_KEY.encode())
    session = next(k for k in before if b":session:" in k)
    ttl = raw.pttl(session)

    assert await asyncio.to_thread(main, ["migrate-keys", "--url", redis_url, "--dry-run"]) == 0
    assert sorted(k for k in raw.keys("*") if k != LAYOUT_KEY.encode()) == before
    assert await asyncio.to_thread(main, ["migrate-keys", "--url", redis_url]) == 0
    out = capsys.readouterr().out
    assert "moved" in out and "recorded the cluster key style" in out
    assert raw.get(LAYOUT_KEY) == b"cluster"
    assert not raw.exists(PLAIN.USER_IDENTS, PLAIN.devices("acc1"), session)
    new_session = cluster_name(session.decode())
    assert new_session is not None and 0 < raw.pttl(new_session) <= ttl
    async with await CallableCache.connect(redis_url, config=CacheConfig(cluster=True)) as new:
        assert (await new.get_user_by_ident("a@x.io")).id == "u1"  # type: ignore[union-attr]
        assert (await new.get_device_by_ident("acc1", "aa:bb")).id == "d1"  # type: ignore[union-attr]
    # Run again: nothing left to move.
    assert await asyncio.to_thread(main, ["migrate-keys", "--url", redis_url]) == 0
    assert "moved 0 keys" in capsys.readouterr().out


async def test_interrupted_and_conflicting_moves(redis_url: str, raw: redis.Redis, capsys: Any) -> None:
    raw.hset(PLAIN.USER_IDENTS, "a@x.io", "u1")
    raw.hset(TAGGED.USER_IDENTS, "a@x.io", "u1")  # copied, old name not yet deleted
    raw.hset(PLAIN.devices("acc1"), "d1", "{}")
    raw.hset(TAGGED.devices("acc1"), "d1", '{"other":1}')  # a different value: a conflict
    assert await asyncio.to_thread(main, ["migrate-keys", "--url", redis_url]) == 1
    out = capsys.readouterr().out
    assert "1 finished" in out and f"conflict: {PLAIN.devices('acc1')}" in out
    assert not raw.exists(PLAIN.USER_IDENTS)
    assert raw.hget(PLAIN.devices("acc1"), "d1") == b"{}"  # both left alone
    assert raw.hget(TAGGED.devices("acc1"), "d1") == b'{"other":1}'
    assert raw.get(LAYOUT_KEY) is None  # not recorded while a conflict remains


async def test_other_style_data_without_a_marker_is_refused(redis_url: str, raw: redis.Redis) -> None:
    raw.hset(TAGGED.USER_IDENTS, "a@x.io", "u1")  # cluster-style data, no marker
    with pytest.raises(ConfigurationError, match=r"cal:user:idents:\{cal:users\} exists"):
        await CallableCache.connect(redis_url)
    assert raw.get(LAYOUT_KEY) is None  # nothing recorded over it
