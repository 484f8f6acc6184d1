"""Redis round trips of lookups of unknown trunk IPs, without and with negative caching.

A SIP scanner sends traffic from addresses no trunk owns: every lookup of such an IP
used to cost a ``GET``. This script looks up 100 unknown trunk IPs 10,000 times in
all (round robin) on one cache with ``negative_ttl=0`` (off: the old behaviour) and
one with the default, then once more after the negative TTL has passed, counting the
``GET`` commands the server ran (``INFO commandstats``), all in the same run against
one embedded redis-server.

Run: ``PYTHONPATH=src python benchmarks/negative_cache.py`` (``CAL_REDIS_SERVER_BIN``
picks the server binary). A measuring script, not a test.
"""
from __future__ import annotations

import asyncio
import time

from cal_redis import CacheConfig, CallableCache
from cal_redis.embedded import EmbeddedRedis, command

LOOKUPS = 10_000
IPS = [f"198.51.100.{i}" for i in range(100)]


def gets(host: str, port: int) -> int:
    """``GET`` calls the server has run since its stats were reset."""
    for line in str(command(host, port, "INFO", "commandstats")).split():
        if line.startswith("cmdstat_get:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


def config(negative_ttl: float) -> CacheConfig:
    cfg = CacheConfig(sync=False)
    budget = cfg.budget("trunks_ip")
    return cfg.with_budget("trunks_ip", max_bytes=budget.max_bytes, ttl=budget.ttl,
                           negative_ttl=negative_ttl)


async def lookups(cache: CallableCache, host: str, port: int) -> tuple[int, float]:
    """Round trips and seconds of LOOKUPS lookups of the unknown IPs."""
    command(host, port, "CONFIG", "RESETSTAT")
    t0 = time.perf_counter()
    for i in range(LOOKUPS):
        assert await cache.get_trunk_account(IPS[i % len(IPS)]) is None
    return gets(host, port), time.perf_counter() - t0


async def main() -> None:
    with EmbeddedRedis() as server:
        host, port = server.host, server.port
        ttl = CacheConfig().budget("trunks_ip").negative_ttl
        off = await CallableCache.connect(server.url, config=config(0))
        on = await CallableCache.connect(server.url, config=config(ttl))
        try:
            rt_off, s_off = await lookups(off, host, port)
            rt_on, s_on = await lookups(on, host, port)
            await asyncio.sleep(ttl + 0.1)
            rt_later, _ = await lookups(on, host, port)
        finally:
            await off.close()
            await on.close()
    print(f"{LOOKUPS} lookups of {len(IPS)} unknown trunk IPs "
          f"({on.local.implementation} L1, negative_ttl={ttl:g} s)")
    print(f"  negative caching off: {rt_off:6d} Redis round trips  {s_off * 1e3:8.1f} ms")
    print(f"  negative caching on : {rt_on:6d} Redis round trips  {s_on * 1e3:8.1f} ms")
    print(f"  on, after the TTL   : {rt_later:6d} Redis round trips (each IP read again once)")
    print(f"  ratio off/on: {rt_off / max(rt_on, 1):.0f}x fewer round trips")


if __name__ == "__main__":
    asyncio.run(main())
