"""A reconnection's two subscriptions are confirmed one after the other: an event that
arrives between the two confirmations must not move the event-log replay's starting
point past the events the gap missed (found by the fault suite: after SIGCONT, Valkey
ran another client's write between the cache's SUBSCRIBE and PSUBSCRIBE), and is
handled before the events that arrive after it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cal_redis import CacheConfig, User
from cal_redis.sync import Dispatcher
from redis_stats import numsub
from waiting import until

pytestmark = [pytest.mark.l1, pytest.mark.standalone_only]  # L1 behaviour: both


async def test_an_event_between_the_confirmations_does_not_skip_the_gap(
    make_cache: Any, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await make_cache(CacheConfig(event_log="replay", heartbeat_interval=0.2))
    writer = await make_cache(CacheConfig(sync=False))  # logs its events, subscribes to none
    events = a.keys.EVENTS
    for uid in ("u1", "u2"):
        await writer.set_user(User(id=uid, name="v1"))
    await until(lambda: a.sync_state.received >= 2, what="the first events")
    assert [u.name for u in await a.get_users_batch(["u1", "u2"])] == ["v1", "v1"]  # held

    # A's next subscriber connection: u1 is written in the gap (before its SUBSCRIBE
    # reaches the server), u2 between the SUBSCRIBE and the PSUBSCRIBE.
    pool = a._sync._pool
    make = pool.make_connection

    def hooked() -> Any:
        conn = make()
        send = conn.send_command

        async def send_command(*args: Any, **kwargs: Any) -> None:
            if args[0] == "SUBSCRIBE":
                await writer.set_user(User(id="u1", name="v2"))
                await send(*args, **kwargs)
                await until(lambda: numsub(raw, events) == 1, what="the SUBSCRIBE")
                await writer.set_user(User(id="u2", name="v2"))
                return
            await send(*args, **kwargs)

        conn.send_command = send_command
        return conn

    pool.make_connection = hooked
    # And u2 again while the replay runs: that event waits in the socket behind the
    # one that came between the confirmations, and must be handled after it.
    replay = Dispatcher.replay

    async def replay_with_a_write(self: Dispatcher) -> bool:
        await writer.set_user(User(id="u2", name="v3"))
        await asyncio.sleep(0.05)  # its event reaches A's socket before the replay ends
        return await replay(self)

    monkeypatch.setattr(Dispatcher, "replay", replay_with_a_write)
    name = "cal-redis-sync-" + a.instance_id[:12]
    ids = [c["id"] for c in raw.client_list() if c["name"] == name]
    assert len(ids) == 1
    raw.client_kill_filter(_id=ids[0])
    await until(lambda: a.sync_state.reconnects >= 1 and a.sync_state.state == "connected",
                5, "the reconnection")
    assert a.sync_state.replays >= 1  # replayed, not flushed
    assert [u.name for u in await a.get_users_batch(["u1", "u2"])] == ["v2", "v3"]
