"""OpenTelemetry metrics over a real redis-server: each cache gets an SDK MeterProvider
with an in-memory reader, so every figure is read back as an exporter would see it.

The L1 counters are exported from the counters the L1 keeps (observable instruments),
so these tests run with both L1 implementations.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from cal_redis import CacheConfig, CallableCache, Device, Event, User, metrics
from cal_redis.errors import CalRedisError
from waiting import until

pytestmark = pytest.mark.l1

Factory = Callable[..., Awaitable[CallableCache]]
Points = dict[str, list[tuple[dict[str, Any], Any]]]


def metered() -> tuple[CacheConfig, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return CacheConfig(meter_provider=MeterProvider(metric_readers=[reader])), reader


def collect(reader: InMemoryMetricReader) -> Points:
    """metric name -> [(attributes, value)]; a histogram's value is the data point."""
    out: Points = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = [
                    (dict(p.attributes or {}), p.value if hasattr(p, "value") else p)
                    for p in m.data.data_points
                ]
    return out


def value(points: Points, name: str, **attrs: Any) -> Any:
    """The one point of ``name`` whose attributes include ``attrs``."""
    found = [v for a, v in points.get(name, []) if all(a.get(k) == x for k, x in attrs.items())]
    assert len(found) == 1, (name, attrs, points.get(name))
    return found[0]


def ns(name: str) -> dict[str, str]:
    return {"cal_redis.namespace": name}


async def test_l1_counters_are_the_l1s_own(make_cache: Factory) -> None:
    config, reader = metered()
    cache = await make_cache(config)
    await cache.set_user(User(id="u1", email="a@example.com"))
    cache.local["users"].invalidate("u1")
    assert await cache.get_user_by_id("u1") is not None  # miss, fill
    for _ in range(5):
        await cache.get_user_by_id("u1")  # hits
    assert await cache.get_user_by_id("nobody") is None  # miss
    st = cache.stats()["l1"]["users"]
    assert st["hits"] >= 5 and st["misses"] >= 2
    p = collect(reader)
    assert value(p, "cal_redis.l1.hits", **ns("users")) == st["hits"]
    assert value(p, "cal_redis.l1.misses", **ns("users")) == st["misses"]
    # u1, and "nobody" held as absent for the negative TTL
    assert value(p, "cal_redis.l1.entries", **ns("users")) == st["entries"] == 2
    assert value(p, "cal_redis.l1.memory.usage", **ns("users")) == st["weight"] > 0
    assert value(p, "cal_redis.l1.memory.limit", **ns("users")) == st["max_weight"]
    assert value(p, "cal_redis.l1.hits", **ns("devices")) == 0
    assert {a["cal_redis.namespace"] for a, _ in p["cal_redis.l1.hits"]} == set(cache.local.namespaces)


async def test_hits_record_nothing_as_they_happen(make_cache: Factory) -> None:
    """An L1 hit touches no instrument: the only recorded instruments are the three
    histograms, and hits leave them alone."""
    config, reader = metered()
    cache = await make_cache(config)
    await cache.set_user(User(id="u1"))
    await cache.get_user_by_id("u1")
    await asyncio.sleep(0.05)  # the echo of the write
    before = collect(reader)
    hits = cache.local["users"].hits
    for _ in range(1000):
        await cache.get_user_by_id("u1")
    after = collect(reader)
    assert cache.local["users"].hits == hits + 1000
    for name in ("db.client.operation.duration", "cal_redis.l2.batch.size",
                 "cal_redis.sync.event.lag"):
        counts = [(a, getattr(v, "count", None)) for a, v in after.get(name, [])]
        assert counts == [(a, getattr(v, "count", None)) for a, v in before.get(name, [])]
    assert value(after, "cal_redis.l1.hits", **ns("users")) == hits + 1000


async def test_counters_never_go_back(make_cache: Factory) -> None:
    config, reader = metered()
    cache = await make_cache(config)
    await cache.set_user(User(id="u1"))
    for _ in range(3):
        await cache.get_user_by_id("u1")
    first = value(collect(reader), "cal_redis.l1.hits", **ns("users"))
    cache.local["users"].reset_stats()
    await cache.get_user_by_id("u1")
    assert value(collect(reader), "cal_redis.l1.hits", **ns("users")) == first + 1


async def test_caches_add_up_and_a_closed_one_still_counts(make_cache: Factory) -> None:
    config, reader = metered()
    a, b = await make_cache(config), await make_cache(config)
    await a.set_user(User(id="u1"))
    await until(lambda: b.sync_state.received >= 1, what="b saw a's write")
    for _ in range(3):
        await a.get_user_by_id("u1")
    for _ in range(2):
        await b.get_user_by_id("u1")
    hits = a.local["users"].hits + b.local["users"].hits
    p = collect(reader)
    assert value(p, "cal_redis.l1.hits", **ns("users")) == hits
    assert value(p, "cal_redis.sync.state", **{"cal_redis.sync.state": "connected"}) == 2
    await b.close()
    assert b.remote.observer is None and b._sync.dispatcher.observer is None
    p = collect(reader)
    assert value(p, "cal_redis.l1.hits", **ns("users")) == hits
    assert value(p, "cal_redis.sync.state", **{"cal_redis.sync.state": "connected"}) == 1
    assert value(p, "cal_redis.l1.entries", **ns("users")) == len(a.local["users"])


async def test_no_provider_no_metrics(make_cache: Factory) -> None:
    cache = await make_cache()
    assert cache.remote.observer is None and cache._metrics.binding is None
    config, reader = metered()
    off = await make_cache(CacheConfig(metrics=False, meter_provider=config.meter_provider))
    await off.set_user(User(id="u1"))
    await off.get_user_by_id("u1")
    assert off.remote.observer is None and collect(reader) == {}


# Without OpenTelemetry at all (blocked imports), and with the API imported but no
# provider set: a cache works and records nothing; nothing of OpenTelemetry is loaded
# unless the application loaded it.
_FRESH = """
import asyncio, json, sys
mode = sys.argv[2]
if mode == "absent":
    sys.modules["opentelemetry"] = None
else:
    import opentelemetry.metrics
from cal_redis import CallableCache, User
async def main():
    async with await CallableCache.connect(sys.argv[1]) as cache:
        await cache.set_user(User(id="u1"))
        for _ in range(100):
            await cache.get_user_by_id("u1")
        return {"observer": cache.remote.observer is not None,
                "loaded": sorted(m for m in sys.modules if m.startswith("opentelemetry")
                                 and sys.modules[m] is not None)[:3],
                "otel_module": "cal_redis._otel" in sys.modules,
                "hits": cache.local["users"].hits}
print(json.dumps(asyncio.run(main())))
"""


@pytest.mark.parametrize("mode", ["absent", "no-provider"])
def test_without_opentelemetry_or_a_provider(redis_url: str, mode: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _FRESH, redis_url, mode], capture_output=True,
                          text=True, timeout=60, check=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["observer"] is False and out["otel_module"] is False and out["hits"] >= 100
    if mode == "absent":
        assert out["loaded"] == []


_GLOBAL = """
import asyncio, json, sys
from opentelemetry.metrics import set_meter_provider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from cal_redis import CallableCache, User
reader = InMemoryMetricReader()
set_meter_provider(MeterProvider(metric_readers=[reader]))
async def main():
    async with await CallableCache.connect(sys.argv[1]) as cache:
        await cache.set_user(User(id="u1"))
        for _ in range(7):
            await cache.get_user_by_id("u1")
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == "cal_redis.l1.hits":
                    return {dict(p.attributes)["cal_redis.namespace"]: p.value
                            for p in m.data.data_points}
print(json.dumps(asyncio.run(main())))
"""


def test_the_global_provider_is_used(redis_url: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _GLOBAL, redis_url], capture_output=True,
                          text=True, timeout=60, check=True)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["users"] == 7


async def test_redis_call_durations(make_cache: Factory, raw: redis.Redis) -> None:
    config, reader = metered()
    cache = await make_cache(config)
    await cache.set_user(User(id="u1"))  # the write script
    cache.local["users"].invalidate("u1")
    await cache.get_user_by_id("u1")  # HGET
    await cache.queue_add("acc42", "q", "c1")  # MULTI
    raw.set("cal:users", "not a hash")
    cache.local["users"].invalidate("u1")
    with pytest.raises(CalRedisError):
        await cache.get_user_by_id("u1")  # WRONGTYPE
    p = collect(reader)
    server = {"db.system.name": "redis", "server.address": "127.0.0.1",
              "server.port": int(cache.remote.url.rsplit(":", 1)[1].split("/")[0])}
    ok = [(a, v) for a, v in p["db.client.operation.duration"] if "error.type" not in a]
    ops = {a["db.operation.name"]: v for a, v in ok}
    assert {"EVALSHA", "HGET", "MULTI"} <= set(ops)
    assert all({k: a[k] for k in server} == server for a, _ in ok)
    assert 0 < ops["HGET"].sum / ops["HGET"].count < 1.0
    failed = value(p, "db.client.operation.duration", **{"error.type": "CalRedisError"})
    assert failed.count == 1
    assert value(p, "cal_redis.l2.errors") == 1
    assert value(p, "cal_redis.l2.reads") == cache.remote.reads >= 3


async def test_batch_sizes(make_cache: Factory) -> None:
    config, reader = metered()
    cache = await make_cache(config)
    await cache.get_users_batch([f"u{i}" for i in range(5)])
    hist = value(collect(reader), "cal_redis.l2.batch.size")
    assert (hist.count, hist.sum) == (1, 5)


async def test_event_lag_from_the_microsecond_stamp(make_cache: Factory, raw: redis.Redis) -> None:
    config, reader = metered()
    reader_cache = await make_cache(config)
    writer = await make_cache()
    await writer.set_user(User(id="u1", name="v1"))
    await writer.set_device("acc42", Device(id="d1"))
    await until(lambda: reader_cache.sync_state.applied >= 2, what="events applied")
    p = collect(reader)
    users = value(p, "cal_redis.sync.event.lag", **ns("users"))
    assert users.count == 1 and 0 < users.sum < 1.0  # sub-millisecond here, never 0
    assert value(p, "cal_redis.sync.event.lag", **ns("devices")).count == 1
    # ts_us wins over ts: stamped 5 s ago in µs, now in ms.
    now_us = time.time_ns() // 1000
    raw.publish("cal:events", json.dumps(
        {"type": "UserDelete", "id": "u1", "ts": now_us // 1000, "ts_us": now_us - 5_000_000}))
    await until(lambda: reader_cache.sync_state.applied >= 3, what="foreign event applied")
    before = users.sum
    users = value(collect(reader), "cal_redis.sync.event.lag", **ns("users"))
    assert users.count == 2 and 5.0 <= users.sum - before < 6.0
    # An event with only `ts` (ms): lag from it; one with no timestamp: not measured.
    raw.publish("cal:events", json.dumps({"type": "UserDelete", "id": "u1", "ts": 1}))
    raw.publish("cal:events", json.dumps({"type": "UserDelete", "id": "u1"}))
    await until(lambda: reader_cache.sync_state.applied >= 5, what="foreign events applied")
    users = value(collect(reader), "cal_redis.sync.event.lag", **ns("users"))
    assert users.count == 3 and users.sum > 1e6  # 1 ms after the epoch: decades of lag


async def test_no_account_in_attributes(make_cache: Factory) -> None:
    config, reader = metered()
    cache = await make_cache(config)
    await cache.set_device("acc-secret-42", Device(id="d1"))
    await cache.get_device_by_id("acc-secret-42", "d1")
    await cache.create_session("acc-secret-42", "u1", ttl=60)
    await asyncio.sleep(0.05)
    text = json.dumps({k: [a for a, _ in v] for k, v in collect(reader).items()})
    assert "acc-secret-42" not in text and "d1" not in text


async def test_degraded_time_state_and_flushes(make_cache: Factory, raw: redis.Redis) -> None:
    config, reader = metered()
    cache = await make_cache(config)
    await cache.set_user(User(id="u1"))
    assert raw.client_kill_filter(_type="pubsub") >= 1
    await until(lambda: cache.sync_state.disconnects == 1, what="loss detected")
    await until(lambda: cache.sync_state.state == "connected", what="reconnected")
    p = collect(reader)
    assert value(p, "cal_redis.sync.disconnects") == 1
    assert value(p, "cal_redis.sync.reconnects") == 1
    assert value(p, "cal_redis.sync.degraded.time") > 0
    lost = {"cal_redis.flush.reason": "lost"}
    assert value(p, "cal_redis.sync.flushes", **ns("users"), **lost) == 1
    resub = {"cal_redis.flush.reason": "resubscribed"}
    assert value(p, "cal_redis.sync.flushes", **ns("devices"), **resub) == 1
    await cache.publish_event(Event(type="UserSync"))
    sync = {"cal_redis.flush.reason": "sync_event"}
    assert value(collect(reader), "cal_redis.sync.flushes", **ns("users"), **sync) == 1


def test_the_metric_table() -> None:
    names = [m.name for m in metrics.METRICS]
    assert len(set(names)) == len(names)
    for m in metrics.METRICS:
        assert (m.read is None) == (m.instrument == "histogram"), m.name
        assert m.name.startswith(("cal_redis.", "db.client.")), m.name
    assert metrics.METRICS[0].prometheus == "cal_redis_l1_hits_total"


async def test_recorded_again_continues_its_counts(make_cache: Factory) -> None:
    """Unbound and bound again to one provider (as bench --metrics does block by block),
    a cache's counters continue from its own counts, never added twice."""
    from cal_redis import _otel

    config, reader = metered()
    cache = await make_cache(config)
    await cache.set_user(User(id="u1"))
    binding = cache._metrics.binding
    assert binding is _otel.binding(config.meter_provider)
    for _ in range(3):
        binding.remove(cache._metrics)
        for _ in range(4):
            await cache.get_user_by_id("u1")  # unrecorded hits: still the L1's count
        binding.add(cache._metrics)
        assert value(collect(reader), "cal_redis.l1.hits", **ns("users")) == \
            cache.local["users"].hits
