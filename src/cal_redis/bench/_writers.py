"""Concurrent writers: 64 coroutines writing different users, ours against raw MULTI/EXEC.

Ours: 64 coroutines, each calling ``set_user`` on one shared
:class:`~cal_redis.CallableCache` (sync on, a pool of 64 connections: the production
defaults) with a user id of its own, as fast as they can for a fixed time window.
Baseline: 64 coroutines on a stock ``redis.asyncio`` client with a pool of 64, each
doing what a hand-written write of the same user does: encode the user and its
event, then ``MULTI; HSET cal:users <id> <json>; PUBLISH cal:events <event>; EXEC``.
Both sides build a new ``User`` per write.

Windows alternate (ours, raw, raw, ours, ...). A window stops starting writes when it
ends, waits for the writes in flight, and counts writes per second over its whole
length; then the writer cache's subscriber is given time to take every event of the
window off the socket (``sync_state.received``), so no backlog of one side slows
the next window. The raw events carry the writer cache's instance id as ``origin``,
so its subscriber handles them as it handles our own echoes: the same work per event
on both sides.

A write that raises counts as a failure, in the untimed warm-up too (ours, today:
"gave up after 100 conflicting writes": the WATCH of a write covers the whole users
hash, so concurrent writers of different users conflict).
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from .. import codec
from ..cache import CallableCache
from ..keys import KeyBuilder
from ..models import Event, User, now_ms
from ._scenarios import BENCH_CONFIG, USER_HASH, make_user, stock_client

__all__ = ("WRITERS", "WRITERS_ROW", "Throughput", "ThroughputRow", "measure_writers")

#: Concurrent writers per side (and the pool size of the raw client).
WRITERS = 64


@dataclass(frozen=True)
class ThroughputRow:
    """How a throughput row is reported and gated (ratio = ours / baseline, higher is
    better)."""

    key: str
    label: str
    base_label: str
    goal: float  # the ratio asked for
    #: The gate on the ratio: fail below it. None: the ratio is reported, not gated.
    min_ratio: float | None = None


#: The concurrent-writers row: any failed write fails it, and so does a ratio below
#: ``min_ratio`` (the smallest ratio of 30 loaded quick runs, 0.89, / 1.2, rounded
#: down to 0.05: docs/benchmarks.md).
WRITERS_ROW = ThroughputRow(
    "writers64", f"{WRITERS} writers: set_user, different users",
    f"{WRITERS} stock-client writers: MULTI, HSET cal:users, PUBLISH cal:events, EXEC",
    goal=0.8,
    min_ratio=0.70,
)


@dataclass(frozen=True)
class Throughput:
    """A throughput row, measured."""

    key: str
    label: str
    baseline: str
    ours_per_s: float
    base_per_s: float
    ratio: float  # ours_per_s / base_per_s
    goal: float
    min_ratio: float | None
    writes: int  # ours, in the timed windows
    base_writes: int
    failures: int  # ours: writes that raised, warm-up included
    errors: dict[str, int]  # the most frequent error messages of ours, with counts
    window_s: float
    rounds: int
    #: An exact check that failed (the measurement itself is wrong), else "".
    problem: str = ""
    #: False: the ratio gate is reported, not applied (see ``Result.ratio_gated``).
    ratio_gated: bool = True

    @property
    def over_gate(self) -> bool:
        """The ratio is below its gate (where it has one)."""
        return self.min_ratio is not None and not self.ratio >= self.min_ratio

    @property
    def passed(self) -> bool:
        """No write of ours failed, and the ratio is within its gate where it has one."""
        low = self.over_gate and self.ratio_gated
        return self.failures == 0 and not low and not self.problem
#: How long the subscriber may take to drain a window's events before the next one.
DRAIN_TIMEOUT = 5.0


async def _window(
    write: Any, users: list[User], seconds: float,
) -> tuple[int, list[str], float]:
    """Run ``write(user)`` in one coroutine per user until ``seconds`` have passed;
    return (writes done, errors raised, elapsed s until the last write finished)."""
    done = [0]
    errors: list[str] = []
    t0 = time.perf_counter()
    deadline = t0 + seconds

    async def writer(user: User) -> None:
        while time.perf_counter() < deadline:
            value = msgspec.structs.replace(user, updated_at=now_ms())
            try:
                await write(value)
                done[0] += 1
            except Exception as err:
                # One entry per kind of error, whatever id it names.
                errors.append(re.sub(r"'[^']*'", "'…'", f"{type(err).__name__}: {err}"))

    await asyncio.gather(*(writer(u) for u in users))
    return done[0], errors, time.perf_counter() - t0


async def measure_writers(
    url: str, *, writers: int = WRITERS, window: float = 1.0, rounds: int = 2,
    warmup: float = 0.25,
) -> dict[str, Any]:
    """Throughput of ``writers`` concurrent writers per side; see the module docstring.

    Returns writes/s per side, their ratio (ours / raw), the writes done in the timed
    windows, the failed writes (warm-up included) and the most frequent error messages
    (with counts) of each side.
    """
    cache = await CallableCache.connect(url, config=BENCH_CONFIG)
    raw_client = stock_client(url, max_connections=writers)
    try:
        users = [make_user(900_000 + i) for i in range(writers)]
        events_channel = KeyBuilder(cluster=BENCH_CONFIG.cluster_keys).EVENTS
        origin = cache.instance_id
        encode = codec.encode

        async def raw_write(user: User) -> None:
            data = encode(user)
            event = encode(Event(type="UserUpdate", id=user.id, account_id=user.account_id,
                                 origin=origin, ts=now_ms(), data=msgspec.Raw(data)))
            async with raw_client.pipeline(transaction=True) as pipe:
                pipe.hset(USER_HASH, user.id, data)
                pipe.publish(events_channel, event)
                await pipe.execute()

        sides: dict[str, Any] = {"ours": cache.set_user, "raw": raw_write}
        writes = dict.fromkeys(sides, 0)
        elapsed = dict.fromkeys(sides, 0.0)
        errors: dict[str, collections.Counter[str]] = {s: collections.Counter() for s in sides}
        warm_failures = dict.fromkeys(sides, 0)
        published = 0
        received0 = cache.sync_state.received

        async def drain() -> None:
            # Polled: the subscriber's counter is the only signal that an event was read.
            for _ in range(int(DRAIN_TIMEOUT / 0.005)):
                if cache.sync_state.received - received0 >= published:
                    return
                await asyncio.sleep(0.005)

        # Warm-up, untimed: every user exists and both pools have their connections open.
        # A write that fails here failed all the same: it is counted.
        for name, side in sides.items():
            n, errs, _ = await _window(side, users, warmup)
            published += n
            errors[name].update(errs)
            warm_failures[name] = len(errs)
        await drain()
        received0, published = cache.sync_state.received, 0

        names = list(sides)
        for r in range(rounds):
            for name in names if r % 2 == 0 else reversed(names):
                n, errs, secs = await _window(sides[name], users, window)
                writes[name] += n
                elapsed[name] += secs
                errors[name].update(errs)
                published += n
                await drain()
    finally:
        await raw_client.aclose()
        await cache.close()

    per_s = {s: writes[s] / elapsed[s] for s in sides}
    return {
        "writers": writers,
        "window_s": window,
        "rounds": rounds,
        "writes_per_s": per_s,
        "ratio": per_s["ours"] / per_s["raw"],
        "writes": writes,
        "failures": {s: sum(errors[s].values()) for s in sides},
        "failures_in_warmup": warm_failures,
        "errors": {s: dict(errors[s].most_common(5)) for s in sides},
    }
