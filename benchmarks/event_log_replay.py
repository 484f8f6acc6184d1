"""Redis reads after a gap in the event subscription: the flush (default) against the
event-log replay (``CacheConfig(event_log="replay")``), same run.

10,000 users are hot in L1 on two instances. The gap: an ACL change drops the default
user's pub/sub connections and refuses their re-subscription, while a third instance
(another ACL user) makes 100 writes no subscriber hears of; then the channels are given
back. For the 5 s after both instances are subscribed again, each reads all 10,000 users
in batches over and over; the script counts the users read from Redis (L1 misses),
the Redis round trips, and the reads that differed from Redis (stale).

Run: ``PYTHONPATH=src python benchmarks/event_log_replay.py`` (``CAL_REDIS_SERVER_BIN``
picks the server binary). A measuring script, not a test.
"""
from __future__ import annotations

import asyncio
import time

import msgspec

from cal_redis import CacheConfig, CallableCache, User
from cal_redis.embedded import EmbeddedRedis, command

USERS = 10_000
WRITES = 100
WINDOW = 5.0
IDS = [f"u{i}" for i in range(USERS)]


async def until(cond: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("timed out")
        await asyncio.sleep(0.005)


async def run(server: EmbeddedRedis, mode: str) -> dict[str, float]:
    host, port = server.host, server.port
    command(host, port, "FLUSHALL")
    command(host, port, "ACL", "SETUSER", "writer", "on", ">pw", "~*", "&*", "+@all")
    config = CacheConfig(event_log=mode, heartbeat_interval=0.2)
    writer_url = f"redis://writer:pw@{host}:{port}/0"
    writer = await CallableCache.connect(writer_url, config=config)
    caches = [await CallableCache.connect(server.url, config=config) for _ in range(2)]
    try:
        for i in range(0, USERS, 500):
            await asyncio.gather(*(writer.set_user(User(id=f"u{j}", name=f"v0-{j}"))
                                   for j in range(i, i + 500)))
        for c in caches:
            await until(lambda c=c: c.sync_state.state == "connected")
            await c.get_users_batch(IDS)
        lost = [c.sync_state.disconnects for c in caches]
        command(host, port, "ACL", "SETUSER", "default", "resetchannels")
        for c, n in zip(caches, lost, strict=True):
            await until(lambda c=c, n=n: c.sync_state.disconnects > n)
        for i in range(WRITES):
            await writer.set_user(User(id=f"u{i * (USERS // WRITES)}", name=f"v1-{i}"))
        command(host, port, "ACL", "SETUSER", "default", "allchannels")
        for c in caches:
            await until(lambda c=c: c.sync_state.state == "connected")
        misses0 = [c.local["users"].stats()["misses"] for c in caches]
        trips0 = [c.remote.reads for c in caches]
        flat: list[bytes] = command(host, port, "HGETALL", "cal:users")  # type: ignore[assignment]
        stored = {str(flat[i]): str(flat[i + 1]).encode() for i in range(0, len(flat), 2)}
        stale = 0
        end = time.monotonic() + WINDOW
        while time.monotonic() < end:
            for c in caches:
                for user, id_ in zip(await c.get_users_batch(IDS), IDS, strict=True):
                    if user is None or msgspec.json.encode(user) != stored[id_]:
                        stale += 1
        return {
            "users read from Redis": sum(c.local["users"].stats()["misses"] for c in caches)
            - sum(misses0),
            "round trips": sum(c.remote.reads for c in caches) - sum(trips0),
            "stale reads": stale,
            "events replayed": sum(c.sync_state.replayed for c in caches),
        }
    finally:
        for c in (*caches, writer):
            await c.close()
        command(host, port, "ACL", "DELUSER", "writer")


async def main() -> None:
    with EmbeddedRedis() as server:
        rows = {mode: await run(server, mode) for mode in ("flush", "replay")}
    print(f"{USERS:,} users hot on 2 instances, gap with {WRITES} writes; "
          f"reads in the {WINDOW:.0f} s after re-subscribing (both instances):")
    names = list(rows["flush"])
    print(f"{'':24}" + "".join(f"{n:>24}" for n in names))
    for mode, row in rows.items():
        print(f"{mode:24}" + "".join(f"{row[n]:>24,.0f}" for n in names))


if __name__ == "__main__":
    asyncio.run(main())
