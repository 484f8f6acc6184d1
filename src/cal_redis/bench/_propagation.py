"""Event propagation: ``set_user`` on instance A → the new value in instance B's L1.

It lives in the package so that ``python -m cal_redis bench`` can run it from an
installed wheel; ``benchmarks/bench_propagation.py`` is its standalone front end. Also
available as ``cal_redis.bench.measure_propagation``.

Measured beside the raw client doing the same transport work in the same run:
redis-py asyncio ``PUBLISH`` of a message of the same size → received by a redis-py
``PubSub`` subscriber. Samples are paced (one every ``interval`` s) and interleaved
(ours, raw, ours, raw...), both sides in one process and one event loop, with the
garbage collector paused during the run.

A and B are two :class:`~cal_redis.CallableCache` on the same server. B has sync on
(as in production) and holds the user in its L1; an event handler on B stamps the
time (handlers run right after the event reached L1). After each sample, untimed, B
is asked for the user: it must come from B's L1 (a hit in ``stats()``) and carry the
value just written, else the sample counts as ``not_in_l1``. Figures for us:

* ``write → B's L1`` (series ``write:*``): from just before ``await a.set_user(...)``
  to B's L1 holding the new value. Includes the whole write (today WATCH, HGET,
  MULTI/EXEC: 3 round trips), so more work than a bare PUBLISH.
* ``EXEC → B's L1`` (series ``exec:*``): from just before the request that carries
  the PUBLISH (the last request of the write: today the MULTI/EXEC) to B's L1
  holding the value. Comparable to the raw ``publish → receive``. The stamp wraps
  A's client: its pipelines' ``execute`` and its ``execute_command`` (a script call).
* ``*:quiet`` has A with sync off; ``*:subscribed`` (``writer_subscribed=True``)
  has A's own subscriber running in this process too: it handles A's echo in the
  same event loop, which in a real deployment happens in A's process, not B's.
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

from .. import codec
from ..cache import CallableCache
from ..config import CacheConfig
from ..embedded import EmbeddedRedis
from ..models import Event, User, now_ms
from ..remote.baseline import raw_client

__all__ = ("RAW_CHANNEL", "measure_propagation")

RAW_CHANNEL = "bench:raw:propagation"


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def _summary(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50_us": math.nan, "p99_us": math.nan, "min_us": math.nan,
                "max_us": math.nan, "n": 0}
    return {
        "p50_us": statistics.median(samples) * 1e6,
        "p99_us": _pct(samples, 0.99) * 1e6,
        "min_us": min(samples) * 1e6,
        "max_us": max(samples) * 1e6,
        "n": len(samples),
    }


def _stamp_requests(cache: CallableCache, stamps: list[float]) -> None:
    """Append perf_counter() just before each request of ``cache``'s client that can
    carry a write's PUBLISH: a pipeline's ``execute`` (MULTI/EXEC) or a direct command
    (a script call). The last stamp of a write is the request that published."""
    client = cache.redis_connection()
    make = client.pipeline
    command: Any = client.execute_command

    def pipeline(*args: Any, **kw: Any) -> Any:
        pipe: Any = make(*args, **kw)
        execute = pipe.execute

        async def timed(*a: Any, **k: Any) -> Any:
            stamps.append(time.perf_counter())
            return await execute(*a, **k)

        pipe.execute = timed
        return pipe

    async def timed_command(*args: Any, **kw: Any) -> Any:
        stamps.append(time.perf_counter())
        return await command(*args, **kw)

    client.pipeline = pipeline  # type: ignore[method-assign]
    client.execute_command = timed_command  # type: ignore[method-assign]


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
    p50/p99/min/max in µs per series, the ratios to the raw baseline, and
    ``not_in_l1``: samples after which B's L1 did not hold the value written.
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
    pub = raw_client(url, protocol=protocol)
    sub_client = raw_client(url, protocol=protocol)
    pubsub = sub_client.pubsub(push_handler_func=_passthrough)
    pending: asyncio.Future[float] | None = None
    raw_task: asyncio.Task[None] | None = None
    not_in_l1 = {name: 0 for name in writers}
    no_stamp = {name: 0 for name in writers}
    try:
        uid = "bench-propagation-u1"
        user = User(id=uid, account_id="acc-000042", email="agent@acme-telecom.example",
                    username="agent1", name="Agent Number 1", extension="1001", role="agent",
                    created_at=1764000000000, updated_at=1764000000000)
        await writers["quiet"].set_user(user)
        assert await b.get_user_by_id(uid) == user  # B holds it in L1 from now on

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
            _stamp_requests(w, stamps[name])

        series: dict[str, list[float]] = {"raw": []}
        for name in writers:
            series[f"write:{name}"] = []
            series[f"exec:{name}"] = []

        async def in_b_l1(expected: User) -> bool:
            """B answers ``expected`` from its L1 (untimed check after a sample)."""
            before = b.stats()["l1"]["users"]
            got = await b.get_user_by_id(uid)
            after = b.stats()["l1"]["users"]
            return got == expected and after["hits"] == before["hits"] + 1

        async def ours(name: str, i: int) -> tuple[float, float | None, bool]:
            nonlocal pending
            w = writers[name]
            value = msgspec.structs.replace(user, name=f"Agent {i:08d}")
            pending = loop.create_future()
            n_stamps = len(stamps[name])
            t0 = time.perf_counter()
            await w.set_user(value)
            t_applied = await asyncio.wait_for(pending, 5)
            t_request = stamps[name][-1] if len(stamps[name]) > n_stamps else None
            exec_ = None if t_request is None else t_applied - t_request
            return t_applied - t0, exec_, await in_b_l1(value)

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
                total, exec_, held = await ours(name, i)
                if i < 0:
                    return
                if not held:
                    not_in_l1[name] += 1
                series[f"write:{name}"].append(total)
                if exec_ is None:
                    no_stamp[name] += 1
                else:
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
        "not_in_l1": not_in_l1,
        "no_request_stamp": no_stamp,
    }
    raw_s = result["series"]["raw"]
    result["ratios"] = {
        k: {"p50": v["p50_us"] / raw_s["p50_us"], "p99": v["p99_us"] / raw_s["p99_us"]}
        for k, v in result["series"].items()
        if k != "raw"
    }
    return result
