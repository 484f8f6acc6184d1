"""Cache-level latencies, each beside the raw client doing the same work (pytest-benchmark).

Baselines: ``stock`` is redis-py as a user calls it by hand (a stock redis.asyncio
client); ``own_client`` sends the same commands on cal-redis's own client, which packs
commands with hiredis, so ``ours`` against it is the cost of the cache layers alone.

Run with ``make bench`` (or ``pytest benchmarks -p no:cacheprovider --benchmark-only``).
Each group holds ``ours`` and its baseline; compare them within one run, since absolute
times drift between runs on shared machines. A round runs a coroutine doing several
operations on the session's persistent loop (``loop.run_until_complete``), so loop
start-up is not timed; ``extra_info["ops"]`` says how many, divide to get per-op time.

What is timed beyond the operation itself (pytest-benchmark cannot exclude it per op;
``python -m cal_redis bench`` does): the L2-hit rounds invalidate the L1 entry before
each read (~50-100 ns against ~80 µs), the batch rounds flush L1 before each batch
(O(entries), a few µs against hundreds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import pytest
import redis.asyncio as aioredis

from cal_redis import CallableCache, User
from cal_redis.bench._scenarios import USER_HASH

L1_OPS = 1000
L2_OPS = 100
BATCHES = 10

Bench = Callable[..., object]


def _run(
    loop: asyncio.AbstractEventLoop, make: Callable[[], Awaitable[object]]
) -> Callable[[], None]:
    def target() -> None:
        loop.run_until_complete(make())  # type: ignore[arg-type]

    return target


def _own_client(loop: asyncio.AbstractEventLoop, cache: CallableCache) -> aioredis.Redis:
    """The cache's own redis-py client, asked for on its loop (the cache refuses use
    from outside the loop it runs on)."""
    async def get() -> aioredis.Redis:
        return cache.redis_connection()

    return loop.run_until_complete(get())


@pytest.mark.parametrize("impl", ["ours", "bare_await"])
def test_l1_hit_async(
    benchmark: Bench, loop: asyncio.AbstractEventLoop, cache: CallableCache,
    user_ids: list[str], impl: str,
) -> None:
    """``await cache.get_user_by_id(k)`` (L1 hit) vs ``await f(k)`` returning ``dict.get(k)``."""
    keys = user_ids[:L1_OPS]
    for k in keys:
        loop.run_until_complete(cache.get_user_by_id(k))
    plain = {k: cache.local["users"].peek(k) for k in keys}
    assert all(v is not None for v in plain.values())

    async def bare(k: str) -> User | None:
        return plain.get(k)

    get = cache.get_user_by_id if impl == "ours" else bare

    async def rounds() -> None:
        for k in keys:
            await get(k)

    benchmark.group = f"L1 hit through the async API ({L1_OPS} awaits per round)"  # type: ignore[attr-defined]
    benchmark.extra_info["ops"] = L1_OPS  # type: ignore[attr-defined]
    benchmark(_run(loop, rounds))


@pytest.mark.parametrize("impl", ["ours", "stock_hget_decode", "own_client_hget_decode"])
def test_l2_hit(
    benchmark: Bench, loop: asyncio.AbstractEventLoop, cache: CallableCache,
    stock: aioredis.Redis, user_ids: list[str], impl: str,
) -> None:
    """``get_user_by_id`` with its L1 entry invalidated vs raw ``HGET`` + typed decode."""
    keys = user_ids[:L2_OPS]
    l1 = cache.local["users"]
    client = stock if impl.startswith("stock") else _own_client(loop, cache)
    dec = msgspec.json.Decoder(User).decode

    async def ours() -> None:
        for k in keys:
            l1.invalidate(k)
            await cache.get_user_by_id(k)

    async def raw() -> None:
        for k in keys:
            dec(await client.hget(USER_HASH, k))  # type: ignore[misc]

    benchmark.group = f"L1 miss, L2 hit ({L2_OPS} reads per round)"  # type: ignore[attr-defined]
    benchmark.extra_info["ops"] = L2_OPS  # type: ignore[attr-defined]
    benchmark(_run(loop, ours if impl == "ours" else raw))


@pytest.mark.parametrize("size", [100, 1000])
@pytest.mark.parametrize("impl", ["ours", "stock_hmget_decode", "own_client_hmget_decode"])
def test_batch(
    benchmark: Bench, loop: asyncio.AbstractEventLoop, cache: CallableCache,
    stock: aioredis.Redis, user_ids: list[str], impl: str, size: int,
) -> None:
    """``get_users_batch`` of ``size`` ids, all from L2, vs raw ``HMGET`` + per-item decode."""
    ids = user_ids[:size]
    l1 = cache.local["users"]
    client = stock if impl.startswith("stock") else _own_client(loop, cache)
    dec = msgspec.json.Decoder(User).decode

    async def ours() -> None:
        for _ in range(BATCHES):
            l1.invalidate_all()
            out = await cache.get_users_batch(ids)
            assert out[-1] is not None

    async def raw() -> None:
        for _ in range(BATCHES):
            out = [dec(r) for r in await client.hmget(USER_HASH, ids)]  # type: ignore[misc]
            assert out[-1] is not None

    benchmark.group = f"get_users_batch({size}), all from L2 ({BATCHES} batches per round)"  # type: ignore[attr-defined]
    benchmark.extra_info["ops"] = BATCHES  # type: ignore[attr-defined]
    benchmark(_run(loop, ours if impl == "ours" else raw))
