"""Bulk access for the operator tools (backup, restore, warming): the SCAN family in
pages, replies exactly as Redis sent them, and pipelines whose commands fail one by one.

redis-py parses many replies into Python shapes (``HSCAN`` into a dict, which drops
nothing but reorders nothing either; ``ZSCAN`` scores into floats; ``XRANGE`` entries
into dicts, which lose repeated field names). A backup must copy values byte for byte,
so these helpers send commands on a pool connection and return the reply unparsed:
bytes, integers, lists (RESP3 maps as dicts). Errors are mapped like every other call
(:func:`~cal_redis.remote.map_redis_error`); reads are retried by
:meth:`Remote.read`, writes never.

Every helper takes an optional ``client``: the redis-py client of the node to talk to
(default: the remote's own; on a Redis Cluster, the master of the commands' key, which
must be one node). A scan of a cluster's keyspace runs :func:`scan_keys` once per
primary with that node's client.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis.exceptions as rexc

from .. import errors

if TYPE_CHECKING:
    from . import Remote

__all__ = ("raw_command", "raw_pipeline", "scan_entries", "scan_keys")

T = TypeVar("T")


async def _on_connection(client: Any, use: Callable[[Any], Awaitable[T]]) -> T:
    """``use(conn)`` on a connection of ``client``'s pool; a connection that failed
    mid-reply is dropped (its stream may hold part of a reply)."""
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        return await use(conn)
    except rexc.ResponseError:
        raise  # a whole error reply was read: the connection is in step
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


def _client_of(remote: Remote, client: Any, commands: Sequence[Sequence[Any]]) -> Any:
    """``client`` if given; on a cluster, the master of the commands' key (each
    command's second element), which must be one node; else the remote's client."""
    if client is not None:
        return client
    if not remote.is_cluster:
        return remote.client
    cluster: Any = remote
    keys = {c[1] for c in commands if len(c) > 1 and isinstance(c[1], str | bytes)}
    if not keys or any(c[0] in ("SCAN", b"SCAN") for c in commands):
        raise errors.ConfigurationError(
            "a keyspace command on a Redis Cluster needs the client of one node"
        )
    nodes = {cluster.node_of(k) for k in keys}
    if len(nodes) > 1:
        raise errors.CalRedisError(f"one batch spans several cluster nodes: {sorted(nodes)}")
    return cluster.node(nodes.pop())


async def raw_command(
    remote: Remote, what: str, *command: Any, read: bool = True, client: Any = None
) -> Any:
    """Run one command and return its reply unparsed (see the module docstring).

    ``read=True`` marks it idempotent: connection errors are retried.
    """

    async def one(conn: Any) -> Any:
        await conn.send_command(*command)
        return await conn.read_response()

    target = _client_of(remote, client, [command])

    async def run() -> Any:
        return await _on_connection(target, one)

    if read:
        return await remote.read(what, run)
    return await remote.write(what, run)


async def raw_pipeline(
    remote: Remote, what: str, commands: Sequence[Sequence[Any]], *, read: bool,
    client: Any = None,
) -> list[Any]:
    """Send ``commands`` in one round trip (no MULTI) and return their replies unparsed,
    in order. An error reply does not stop the others: its place holds the mapped
    :class:`~cal_redis.errors.CalRedisError` instead of a value.

    ``read=True`` marks every command idempotent: connection errors retry the whole
    batch. Otherwise nothing is retried (the outcome of each command is then unknown).
    """
    if not commands:
        return []

    async def batch(conn: Any) -> list[Any]:
        await conn.send_packed_command(conn.pack_commands(commands))
        out: list[Any] = []
        for _ in commands:
            try:
                out.append(await conn.read_response())
            except rexc.ResponseError as err:
                out.append(_mapped(err, what))
        return out

    target = _client_of(remote, client, commands)

    async def run() -> list[Any]:
        return await _on_connection(target, batch)

    if read:
        return await remote.read(what, run)
    return await remote.write(what, run)


def _mapped(err: rexc.ResponseError, what: str) -> errors.CalRedisError:
    from . import map_redis_error

    mapped = map_redis_error(err, what)
    mapped.__cause__ = err
    return mapped


def _cursor_done(cursor: Any) -> bool:
    return cursor in (b"0", 0, "0")


async def scan_keys(
    remote: Remote, match: str, *, count: int = 1000, client: Any = None
) -> AsyncGenerator[list[bytes], None]:
    """Pages of the keys of one node (default: the remote's server) matching the glob
    ``match``: a ``SCAN`` cursor loop, ``count`` keys asked per call (never ``KEYS``).

    SCAN's guarantee holds: a key present for the whole scan is returned at least once
    (it may be returned twice); keys created or deleted meanwhile may or may not be.
    """
    cursor: Any = b"0"
    while True:
        reply = await raw_command(
            remote, "SCAN " + match, "SCAN", cursor, "MATCH", match, "COUNT", count,
            client=client,
        )
        cursor, keys = reply[0], reply[1]
        if keys:
            yield list(keys)
        if _cursor_done(cursor):
            return


async def scan_entries(
    remote: Remote, command: str, key: str | bytes, *, count: int = 500, client: Any = None
) -> AsyncGenerator[list[bytes], None]:
    """Pages of one hash, set or sorted set: ``command`` is ``HSCAN``, ``SSCAN`` or
    ``ZSCAN``. Each page is the flat list Redis sent: field, value, field, value...
    (``HSCAN``), members (``SSCAN``), member, score... (``ZSCAN``; scores as Redis
    wrote them). An element present for the whole scan is returned at least once.
    """
    if command not in ("HSCAN", "SSCAN", "ZSCAN"):
        raise ValueError(f"not a key scan command: {command!r}")
    name = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    cursor: Any = b"0"
    while True:
        reply = await raw_command(
            remote, f"{command} {name}", command, key, cursor, "COUNT", count, client=client
        )
        cursor, items = reply[0], reply[1]
        if items:
            yield list(items)
        if _cursor_done(cursor):
            return
