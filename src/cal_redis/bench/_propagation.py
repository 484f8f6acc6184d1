"""Event propagation: a write on instance A → the event applied to instance B's L1.

It lives in the package so that ``python -m cal_redis bench`` can run it from an
installed wheel; ``benchmarks/bench_propagation.py`` is its standalone front end. Also
available as ``cal_redis.bench.measure_propagation``.

Measured beside the raw client doing the same transport work in the same run:
redis-py asyncio ``PUBLISH`` of a message of the same size → received by a redis-py
``PubSub`` subscriber. Samples are paced (one every ``interval`` s) and interleaved
(ours, raw, ours, raw...), both sides in one process and one event loop, with the
garbage collector paused during the run.

Three figures for us:

* ``write → applied``: from just before ``await a.update_user(...)`` / ``set_user``
  to B's subscriber having applied the event to L1 (timestamp taken by an event
  handler, which runs right after the L1 update). Includes the write itself:
  WATCH, HGET, MULTI/EXEC (3 round trips) — more work than a bare PUBLISH.
* ``EXEC → applied``: from just before the MULTI/EXEC that carries the PUBLISH to B
  having applied it. Comparable to the raw ``publish → receive``.
* ``EXEC → applied, writer subscribed``: the same, with A's own subscriber running
  in this process too (it handles A's echo in the same event loop, which in a real
  deployment happens in A's process, not B's).
"""

from __future__ import annotations

import asyncio
import gc
import math
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis

from .. import codec
from ..cache import CallableCache
from ..config import CacheConfig
from ..embedded import EmbeddedRedis
from ..models import Event, User, now_ms

__all__ = ("RAW_CHANNEL", "measure_propagation")

RAW_CHANNEL = "bench:raw:propagation"


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def _summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_us": statistics.median(samples) * 1e6,
        "p99_us": _pct(samples, 0.99) * 1e6,
        "min_us": min(samples) * 1e6,
        "max_us": max(samples) * 1e6,
        "n": len(samples),
    }


def _stamp_exec(cache: CallableCache, stamps: list[float]) -> None:
    """Record perf_counter() just before each MULTI/EXEC of ``cache``'s writes."""
    client = cache.redis_connection()
    make = client.pipeline

    def pipeline(*args: Any, **kw: Any) -> Any:
        pipe: Any = make(*args, **kw)
        execute = pipe.execute

        async def timed(*a: Any, **k: Any) -> Any:
            stamps.append(time.perf_counter())
            return await execute(*a, **k)

        pipe.execute = timed
        return pipe

    client.pipeline = pipeline  # type: ignore[method-assign]


async def _passthrough(response: Any) -> Any:
    return response


async def measure_propagation(
    url: str | None = None,
    *,
    events: int = 2000,
    interval: float = 0.001,
    protocol: int = 3,
    warmup: int = 200,
    writer_subscribed: bool = True,
) -> dict[str, Any]:
    """Measure propagation against the raw baseline; see the module docstring.

    ``url``: a Redis to use (default: a private embedded server). Returns a dict of
    p50/p99/max in µs per series and the ratios to the raw baseline.
    """
    if url is None:
        async with EmbeddedRedis() as server:
            return await measure_propagation(
                server.url, events=events, interval=interval, protocol=protocol,
                warmup=warmup, writer_subscribed=writer_subscribed,
            )

    loop = asyncio.get_running_loop()
    cfg = CacheConfig(protocol=protocol)
    b = await CallableCache.connect(url, config=cfg)
    writers = {"quiet": await CallableCache.connect(url, config=CacheConfig(protocol=protocol,
                                                                             sync=False))}
    if writer_subscribed:
        writers["subscribed"] = await CallableCache.connect(url, config=cfg)
    pub = aioredis.Redis.from_url(url, protocol=protocol)
    sub_client = aioredis.Redis.from_url(url, protocol=protocol)
    pubsub = sub_client.pubsub(push_handler_func=_passthrough)
    pending: asyncio.Future[float] | None = None
    raw_task: asyncio.Task[None] | None = None
    try:
        uid = "bench-propagation-u1"
        user = User(id=uid, account_id="acc-000042", email="agent@acme-telecom.example",
                    username="agent1", name="Agent Number 1", extension="1001", role="agent",
                    created_at=1764000000000, updated_at=1764000000000)
        await writers["quiet"].set_user(user)

        def on_event(event: Event) -> None:
            if event.id == uid and pending is not None and not pending.done():
                pending.set_result(time.perf_counter())

        b.add_event_handler(on_event)

        # Raw baseline: a subscriber of its own on a channel of its own.
        await pubsub.subscribe(RAW_CHANNEL)
        while (await pubsub.get_message(timeout=1.0)) is None:
            pass

        async def raw_listener() -> None:
            async for msg in pubsub.listen():
                if msg["type"] == "message" and pending is not None and not pending.done():
                    pending.set_result(time.perf_counter())

        raw_task = loop.create_task(raw_listener())

        stamps: dict[str, list[float]] = {name: [] for name in writers}
        for name, w in writers.items():
            _stamp_exec(w, stamps[name])

        series: dict[str, list[float]] = {"raw": []}
        for name in writers:
            series[f"write:{name}"] = []
            series[f"exec:{name}"] = []

        async def ours(name: str, i: int) -> tuple[float, float]:
            nonlocal pending
            w = writers[name]
            pending = loop.create_future()
            t0 = time.perf_counter()
            if i % 2:
                await w.update_user(uid, name=f"Agent {i:08d}")
            else:
                await w.set_user(User(id=uid, account_id="acc-000042",
                                      email="agent@acme-telecom.example", username="agent1",
                                      name=f"Agent {i:08d}", extension="1001", role="agent",
                                      created_at=1764000000000, updated_at=1764000000000))
            t_applied = await asyncio.wait_for(pending, 5)
            return t_applied - t0, t_applied - stamps[name][-1]

        async def raw(message: bytes) -> float:
            nonlocal pending
            pending = loop.create_future()
            t0 = time.perf_counter()
            await pub.publish(RAW_CHANNEL, message)
            return await asyncio.wait_for(pending, 5) - t0

        # The raw message has the size of one of our events.
        event_bytes = len(codec.encode(Event(
            type="UserUpdate", id=uid, account_id="acc-000042", origin=uuid.uuid4().hex,
            ts=now_ms(), data=msgspec.Raw(codec.encode(user)),
        )))
        message = b"x" * event_bytes

        def add_ours(name: str) -> Callable[[int], Awaitable[None]]:
            async def run(i: int) -> None:
                total, exec_ = await ours(name, i)
                if i >= 0:
                    series[f"write:{name}"].append(total)
                    series[f"exec:{name}"].append(exec_)
            return run

        async def run_raw(i: int) -> None:
            t = await raw(message)
            if i >= 0:
                series["raw"].append(t)

        plan: list[Callable[[int], Awaitable[None]]] = [add_ours(n) for n in writers]
        plan.append(run_raw)
        gc.collect()
        gc.disable()
        try:
            for i in range(-warmup, events):
                for step in plan:
                    await step(i)
                    await asyncio.sleep(interval)
        finally:
            gc.enable()
    finally:
        if raw_task is not None:
            raw_task.cancel()
            await asyncio.wait({raw_task})
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await sub_client.aclose()
        await pub.aclose()
        for w in writers.values():
            await w.close()
        await b.close()

    result: dict[str, Any] = {
        "events": events,
        "interval_s": interval,
        "protocol": protocol,
        "message_bytes": event_bytes,
        "series": {k: _summary(v) for k, v in series.items()},
    }
    raw_s = result["series"]["raw"]
    result["ratios"] = {
        k: {"p50": v["p50_us"] / raw_s["p50_us"], "p99": v["p99_us"] / raw_s["p99_us"]}
        for k, v in result["series"].items()
        if k != "raw"
    }
    return result
