"""What the sync layer logs over a real redis-server: a WARNING when it degrades, an INFO
when it recovers (cause and duration), every L1 flush with its reason, each message
naming what it concerns, and nothing per event at INFO."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

import pytest
import redis

from cal_redis import CacheConfig, CallableCache, Device, Event, User
from waiting import until

Factory = Callable[..., Awaitable[CallableCache]]


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == level and r.name.startswith("cal_redis")]


async def test_degrade_and_recovery_are_logged(
    make_cache: Factory, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    cache = await make_cache()
    await cache.set_user(User(id="u1"))
    await cache.set_device("acc42", Device(id="d1"))
    caplog.clear()
    caplog.set_level(logging.INFO, logger="cal_redis")
    assert raw.client_kill_filter(_type="pubsub") >= 1
    await until(lambda: cache.sync_state.reconnects == 1, what="reconnected")
    iid = cache.instance_id[:12]
    (warning,) = records(caplog, logging.WARNING)
    assert warning.startswith("sync degraded: event subscription to cal:events and "
                              "cal:account:*:events on " + cache.remote.safe_url)
    assert f"(instance {iid})" in warning
    cause = re.search(r"\) lost \((.+?)\); L1 flushed", warning)
    assert cause is not None and cause.group(1)
    infos = records(caplog, logging.INFO)
    assert f"L1 flushed (lost) on instance {iid}: users 1, devices 1" in infos
    (restored,) = [m for m in infos if m.startswith("sync restored")]
    took = re.search(r"again after (\d+\.\d{3}) s degraded \(cause: (.+)\); L1 in use again$",
                     restored)
    assert took is not None, restored
    assert 0 < float(took.group(1)) < 5 and took.group(2) == cause.group(1)
    assert "cal:events and cal:account:*:events on " + cache.remote.safe_url in restored
    assert f"L1 flushed (resubscribed) on instance {iid}: nothing cached" in infos


async def test_no_info_per_event(
    make_cache: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await make_cache(), await make_cache()
    caplog.set_level(logging.INFO, logger="cal_redis")
    caplog.clear()
    for i in range(50):
        await a.set_user(User(id=f"u{i}"))
        await a.publish_event(Event(type="CallStarted", id=f"c{i}"))
    await until(lambda: b.sync_state.received >= 100, what="events received")
    assert b.sync_state.applied >= 50
    assert records(caplog, logging.INFO) == [] and records(caplog, logging.WARNING) == []


async def test_namespace_sync_events_are_logged_rate_limited(
    make_cache: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await make_cache(), await make_cache()
    await a.set_user(User(id="u1"))
    await b.get_user_by_id("u1")
    caplog.set_level(logging.DEBUG, logger="cal_redis.sync")
    caplog.clear()
    for _ in range(3):
        await a.publish_event(Event(type="UserSync"))
    await until(lambda: b.sync_state.applied >= 3, what="sync events applied")
    await until(lambda: a.sync_state.applied >= 3, what="own sync events back")
    infos = [m for m in records(caplog, logging.INFO) if "flushed (sync_event)" in m]
    # 9 flushes (a: 3 publishes dropped locally and their 3 echoes; b: 3 events): one
    # INFO per cache, the repeats at DEBUG
    assert len(infos) == 2, infos
    assert any(m.startswith("L1 namespace users flushed (sync_event): UserSync on cal:events "
                            f"from instance {a.instance_id[:12]} dropped 1 entries") for m in infos)
    debug = [m for m in records(caplog, logging.DEBUG) if "flushed (sync_event)" in m]
    assert len(debug) == 7


async def test_close_flush_is_logged_with_its_reason(
    make_cache: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    cache = await make_cache(CacheConfig())
    await cache.set_user(User(id="u1"))
    caplog.set_level(logging.INFO, logger="cal_redis")
    await cache.close()
    assert f"L1 flushed (closed) on instance {cache.instance_id[:12]}: users 1" in records(
        caplog, logging.INFO)
