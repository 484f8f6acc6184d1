"""The bulk helpers of ``cal_redis.remote`` on a real redis-server: SCAN-family pages,
replies byte for byte, pipelines whose commands fail one by one."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from cal_redis import CallableCache, CalRedisError
from cal_redis.remote import raw_command, raw_pipeline, scan_entries, scan_keys


async def collect(pages: Any) -> list[bytes]:
    out: list[bytes] = []
    async for page in pages:
        out += page
    return out


async def test_scan_keys_pages_every_matching_key(cache: CallableCache, raw: redis.Redis) -> None:
    raw.mset({f"cal:k{i}": b"v" for i in range(2500)})
    raw.set("other:key", b"v")
    pages = [page async for page in scan_keys(cache.remote, "cal:*", count=500)]
    keys = [k for page in pages for k in page]
    assert len(pages) > 1 and all(len(p) < 1500 for p in pages)
    assert set(keys) - {b"cal:meta:layout"} == {f"cal:k{i}".encode() for i in range(2500)}


async def test_scan_entries_are_byte_exact(cache: CallableCache, raw: redis.Redis) -> None:
    blob = bytes(range(256))
    raw.hset("h", mapping={f"f{i}": f"v{i}" for i in range(1200)})
    raw.hset("h", blob, blob)
    got = await collect(scan_entries(cache.remote, "HSCAN", "h", count=300))
    pairs = dict(zip(got[::2], got[1::2], strict=True))
    assert len(pairs) == 1201 and pairs[blob] == blob
    raw.zadd("z", {"a": 0.1, "b": 1e300, "c": float("-inf"), blob: 3})
    got = await collect(scan_entries(cache.remote, "ZSCAN", "z"))
    scores = dict(zip(got[::2], got[1::2], strict=True))
    assert all(type(s) is bytes for s in scores.values())  # as the server wrote them
    assert {m: float(s) for m, s in scores.items()} == {
        b"a": 0.1, b"b": 1e300, b"c": float("-inf"), blob: 3.0}
    raw.sadd("s", *[f"m{i}" for i in range(700)])
    assert len(set(await collect(scan_entries(cache.remote, "SSCAN", "s", count=100)))) == 700
    with pytest.raises(ValueError):
        await collect(scan_entries(cache.remote, "KEYS", "s"))


async def test_raw_replies_are_unparsed(cache: CallableCache, raw: redis.Redis) -> None:
    raw.xadd("st", {"a": "1"}, id="1-1")
    raw.execute_command("XADD", "st", "2-0", "f", "x", "f", "y")  # a repeated field name
    reply = await raw_command(cache.remote, "XRANGE", "XRANGE", "st", "-", "+")
    assert reply == [[b"1-1", [b"a", b"1"]], [b"2-0", [b"f", b"x", b"f", b"y"]]]


async def test_a_pipeline_error_fails_only_its_command(
    cache: CallableCache, raw: redis.Redis
) -> None:
    raw.set("str", "v")
    replies = await raw_pipeline(
        cache.remote, "batch", [("GET", "str"), ("HGET", "str", "f"), ("SET", "x", "1")],
        read=False,
    )
    assert replies[0] == b"v" and replies[2] in (b"OK", "OK")
    assert isinstance(replies[1], CalRedisError) and "WRONGTYPE" in str(replies[1])
    assert raw.get("x") == b"1"
    assert await raw_pipeline(cache.remote, "none", [], read=True) == []
    # The connection is still in step after an error reply.
    assert await raw_command(cache.remote, "GET", "GET", "str") == b"v"
    with pytest.raises(CalRedisError, match="WRONGTYPE"):
        await raw_command(cache.remote, "HGET", "HGET", "str", "f")
