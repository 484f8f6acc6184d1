"""Counting the commands a real redis-server executed (INFO commandstats)."""

from __future__ import annotations

from typing import Any

import redis

# The sync subscriber's heartbeat (PING) and a test's own INFO/CONFIG calls are not
# I/O of the operation under test.
IGNORED = ("cmdstat_info", "cmdstat_config", "cmdstat_ping")


def calls(raw: redis.Redis, command: str) -> int:
    """How many times ``command`` (lower case, e.g. ``"hget"``) ran since CONFIG RESETSTAT."""
    stats: dict[str, Any] = raw.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def total_calls(raw: redis.Redis) -> int:
    """Every command run since CONFIG RESETSTAT, except those in :data:`IGNORED`."""
    stats: dict[str, Any] = raw.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.split("|")[0] not in IGNORED)


async def assert_rejected_before_io(
    cache: Any, raw: redis.Redis, method: str, args: tuple[Any, ...], argument: str
) -> None:
    """``cache.<method>(*args)`` raises ValidationError naming ``argument`` and sends
    no command to Redis."""
    import pytest

    from cal_redis import ValidationError

    raw.config_resetstat()
    before = total_calls(raw)
    with pytest.raises(ValidationError) as info:
        await getattr(cache, method)(*args)
    assert info.value.argument == argument
    assert total_calls(raw) == before


def data_keys(raw: redis.Redis) -> list[bytes]:
    """Every key in Redis but the key-style marker every cache records at connect."""
    from cal_redis.keys import LAYOUT_KEY

    return sorted(k for k in raw.keys("*") if k != LAYOUT_KEY.encode())
