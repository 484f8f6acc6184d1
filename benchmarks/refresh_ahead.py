"""Read latency of 1,000 hot keys across TTL boundaries, without and with refresh-ahead.

Two caches on one embedded redis-server read the same 1,000 users, whose L1 TTL is
short (1 s by default), round after round for several TTLs: one cache with
``refresh_ahead=0`` (off: every key misses at each expiry and waits for its ``HGET``),
one with ``refresh_ahead=0.2`` (a hit in the last 20 % of the TTL starts a background
read; the entry is replaced before it expires). The rounds of the two alternate in the
same run (same load, same server), paced like a service that yields to its event loop
between requests. Printed per side: p50 / p99 / p99.9 / max of the single reads
(``await get_user_by_id``), how many took over 50 µs, the L1 misses, the Redis reads
(misses and refreshes; coalesced refreshes share an ``HMGET``) and the refreshes.

Run: ``PYTHONPATH=src python benchmarks/refresh_ahead.py [--ttl 1] [--seconds 4.5]
[--keys 1000] [--fraction 0.2]`` (``CAL_REDIS_SERVER_BIN`` picks the server binary).
A measuring script, not a test; docs/benchmarks.md has a run's figures.
"""
from __future__ import annotations

import argparse
import asyncio
import bisect
import statistics
import time
from dataclasses import dataclass, field

from cal_redis import CacheConfig, CallableCache, User
from cal_redis.embedded import EmbeddedRedis

#: A read slower than this (50 µs) waited for Redis or for the machine (a hit takes
#: well under 1 µs): the ">50 µs" column.
SLOW_NS = 50_000


@dataclass
class Side:
    """One cache and what its reads measured."""

    name: str
    cache: CallableCache
    latencies: list[int] = field(default_factory=list)  # ns per read


def config(ttl: float, fraction: float) -> CacheConfig:
    cfg = CacheConfig(refresh_ahead=fraction)
    return cfg.with_budget("users", max_bytes=64 << 20, ttl=ttl)


async def round_of(side: Side, ids: list[str]) -> None:
    """One read of every key, each timed."""
    get = side.cache.get_user_by_id
    out = side.latencies
    clock = time.perf_counter_ns
    for uid in ids:
        t0 = clock()
        await get(uid)
        out.append(clock() - t0)


def pct(sorted_ns: list[int], q: float) -> float:
    """The q-quantile (0..1) in µs."""
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e3


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--ttl", type=float, default=1.0, help="users' L1 TTL (s)")
    parser.add_argument("--seconds", type=float, default=4.5, help="how long to read")
    parser.add_argument("--fraction", type=float, default=0.2, help="refresh_ahead")
    parser.add_argument("--pace", type=float, default=0.005,
                        help="seconds between two rounds (the event loop runs meanwhile)")
    args = parser.parse_args()
    ids = [f"u{i}" for i in range(args.keys)]
    with EmbeddedRedis() as server:
        writer = await CallableCache.connect(server.url, config=CacheConfig(local_cache=False))
        for uid in ids:
            await writer.set_user(User(id=uid, account_id="acc1", email=f"{uid}@x.io",
                                       name="hot user " + uid))
        await writer.close()
        sides = [
            Side("refresh-ahead off", await CallableCache.connect(
                server.url, config=config(args.ttl, 0.0))),
            Side(f"refresh-ahead {args.fraction:g}", await CallableCache.connect(
                server.url, config=config(args.ttl, args.fraction))),
        ]
        try:
            for side in sides:  # fill L1 (not measured)
                await round_of(side, ids)
                side.latencies.clear()
                side.cache.local["users"].reset_stats()
            start = {s.name: (s.cache.remote.stats()["reads"], s.cache.stats()["refreshes"])
                     for s in sides}
            deadline = time.monotonic() + args.seconds
            rounds = 0
            while time.monotonic() < deadline:
                for side in sides:
                    await round_of(side, ids)
                    await asyncio.sleep(args.pace / 2)
                rounds += 1
            print(f"{args.keys} hot keys, L1 TTL {args.ttl:g} s, {args.seconds:g} s of reads "
                  f"({rounds} rounds per side, one every {args.pace * 1e3:g} ms), "
                  f"{sides[0].cache.local.implementation} L1, {server.version}")
            print(f"{'':22} {'p50 µs':>8} {'p99 µs':>8} {'p99.9 µs':>9} {'max µs':>9} "
                  f"{'>50 µs':>7} {'misses':>7} {'Redis reads':>12} {'refreshes':>10}")
            for side in sides:
                lat = sorted(side.latencies)
                reads0, refreshes0 = start[side.name]
                st = side.cache.stats()
                slow = len(lat) - bisect.bisect_right(lat, SLOW_NS)
                print(f"{side.name:22} {pct(lat, 0.5):8.2f} {pct(lat, 0.99):8.2f} "
                      f"{pct(lat, 0.999):9.2f} {lat[-1] / 1e3:9.1f} {slow:7d} "
                      f"{st['l1']['users']['misses']:7d} "
                      f"{side.cache.remote.stats()['reads'] - reads0:12d} "
                      f"{st['refreshes'] - refreshes0:10d}")
            off, on = (sorted(s.latencies) for s in sides)
            print(f"ratio off/on: p99 {pct(off, 0.99) / pct(on, 0.99):.1f}x, p99.9 "
                  f"{pct(off, 0.999) / pct(on, 0.999):.1f}x, max {off[-1] / on[-1]:.1f}x, "
                  f"mean {statistics.fmean(off) / statistics.fmean(on):.2f}x; "
                  f"refresh errors {sides[1].cache.stats()['refresh_errors']}")
        finally:
            for side in sides:
                await side.cache.close()


if __name__ == "__main__":
    asyncio.run(main())
