"""Commands packed by hiredis must be byte for byte what redis-py itself would send."""

from __future__ import annotations

from typing import Any

import pytest
import redis.exceptions as rexc
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

from cal_redis import CallableCache
from cal_redis.remote import hiredis_packing
from cal_redis.remote._sends import unblocked_sends

FAST = hiredis_packing(Connection)

names = st.sampled_from(["GET", "HMGET", "CLIENT KILL", "CONFIG\tGET", b"HGET", b"OBJECT ENCODING"])
args = st.one_of(
    st.text(max_size=20),
    st.binary(max_size=20),
    st.integers(),
    st.floats(allow_nan=True),
    st.binary(max_size=8).map(memoryview),
    st.text(max_size=7000, alphabet="xyz"),  # over redis-py's 6,000-byte chunking cutoff
)


def stock_bytes(conn: Any, *cmd: Any) -> bytes:
    return b"".join(bytes(c) for c in Connection.pack_command(conn, *cmd))


@given(names, st.lists(args, max_size=12))
def test_same_bytes_as_redis_py(name: Any, rest: list[Any]) -> None:
    conn = FAST()
    cmd = (name, *rest)
    assert b"".join(conn.pack_command(*cmd)) == stock_bytes(conn, *cmd)


@pytest.mark.parametrize("odd", [bytearray(b"ba"), True, None, object(), [1], 2**70, "\ud800"])
def test_arguments_hiredis_does_not_take_behave_as_in_redis_py(odd: Any) -> None:
    conn = FAST()
    try:
        expected: Any = stock_bytes(conn, "SET", "k", odd)
    except Exception as err:  # the very error redis-py raises
        with pytest.raises(type(err)):
            conn.pack_command("SET", "k", odd)
    else:
        assert b"".join(conn.pack_command("SET", "k", odd)) == expected


def test_other_encodings_use_redis_py() -> None:
    conn = FAST(encoding="latin-1")
    assert b"".join(conn.pack_command("SET", "k", "é")) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n\xe9\r\n"
    with pytest.raises(rexc.DataError):
        FAST().pack_command("SET", "k", True)


def test_one_subclass_per_connection_class() -> None:
    for cls in (Connection, SSLConnection, UnixDomainSocketConnection):
        fast = hiredis_packing(cls)
        assert issubclass(fast, cls) and fast is not cls
        assert hiredis_packing(cls) is fast
        assert hiredis_packing(fast) is fast


async def test_the_cache_pool_packs_with_hiredis(cache: CallableCache) -> None:
    pool = cache.remote.client.connection_pool
    assert issubclass(pool.connection_class, hiredis_packing(Connection))
    assert pool.connection_class is unblocked_sends(hiredis_packing(Connection))
    await cache.remote.ping()
    conn = await pool.get_connection()
    try:
        assert isinstance(conn, hiredis_packing(Connection))
    finally:
        await pool.release(conn)
