"""Websocket routing: which node holds which agent connection.

Keys: the global hash ``cal:ws:connections`` (connection_id → WsConnection JSON,
which names the account), the account's ``agents:connected`` set, and -- an
addition to the seed's layout -- the per-account index
``cal:account:{a}:ws:connections`` (connection_id → user_id). The index lets an
account list and count its own connections without reading any other tenant's
records. Every change to the three is made by one atomic script; services that
write ``cal:ws:connections`` themselves must maintain the index too
(docs/wire-format.md).

A connection id belongs to one account and user: registering it again for another
is refused, and removal through another account never touches it.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from .. import codec
from ..engine import _lua
from ..engine.writes import MAX_ATTEMPTS
from ..errors import CalRedisError, ConfigurationError, SerializationError, ValidationError
from ..keys import validate_id
from ..models import WsConnection, now_ms
from ._base import DirectOps

__all__ = ("WsOps",)

log = logging.getLogger("cal_redis.ws")

_SCAN_COUNT = 500


class WsOps(DirectOps):
    """Mixin of :class:`~cal_redis.CallableCache`: websocket connection routing."""

    def _refuse_on_cluster(self) -> None:
        # Their scripts touch the global cal:ws:connections and the account's keys
        # at once: two slots. Clear refusal rather than a CROSSSLOT error.
        if self._ctx.remote.is_cluster:
            raise ConfigurationError(
                "websocket connection routing is not available on a Redis Cluster yet: its "
                "scripts span cal:ws:connections and the account's slot"
            )

    async def add_connected_agent(
        self, account_id: str, user_id: str, connection_id: str, node_id: str
    ) -> WsConnection:
        """Record that ``user_id`` is connected through ``connection_id`` on ``node_id``.

        Writes the connection record, the account's index and ``agents:connected``
        (and ``connected: true`` in the agent's status, if one is stored) in one
        atomic script. Re-adding the same connection for the same user refreshes
        it; a connection id held by another user or account raises
        :class:`~cal_redis.errors.ValidationError` (``connection_id``).

        Example::

            conn = await cache.add_connected_agent("acc42", "u1", "conn-7f3a", "node-1")
            [c.id for c in await cache.get_account_connections("acc42")]  # ['conn-7f3a']
        """
        self._refuse_on_cluster()
        k = self._ctx.keys
        validate_id(connection_id, "connection_id")
        validate_id(node_id, "node_id")
        keys = [
            k.WS_CONNECTIONS,
            k.ws_connections(account_id),
            k.agents_connected(account_id),
            k.agent_status(account_id, user_id),
        ]
        conn = WsConnection(
            id=connection_id, account_id=account_id, user_id=user_id,
            node_id=node_id, connected_at=now_ms(),
        )
        args = [connection_id, codec.encode(conn), user_id, account_id]
        done = await self._ctx.remote.script("add connection " + connection_id, _lua.WS_ADD, keys, args)
        if done != 1:
            raise ValidationError(
                "connection_id", f"{connection_id!r} is registered to another user or account"
            )
        return conn

    async def remove_connected_agent(self, account_id: str, connection_id: str) -> bool:
        """Forget a connection of this account; True if it was registered here.

        A connection of another account is left alone (False). The user leaves
        ``agents:connected`` (and its status turns ``connected: false``) only when no
        other connection of the user is left in the account. Two round trips: find
        the connection's user, then one atomic script that re-checks it.
        """
        self._refuse_on_cluster()
        k = self._ctx.keys
        validate_id(connection_id, "connection_id")
        index = k.ws_connections(account_id)
        for _ in range(MAX_ATTEMPTS):
            owner: bytes = await self._ctx.remote.script(
                "find connection " + connection_id, _lua.WS_OWNER,
                [k.WS_CONNECTIONS, index], [connection_id, account_id], read=True,
            )
            if not owner:
                return False
            try:
                user_id = validate_id(owner.decode(), "user_id")
            except (UnicodeDecodeError, ValidationError) as err:
                raise SerializationError(
                    f"connection names an invalid user id {owner!r}",
                    key=k.WS_CONNECTIONS, field=connection_id,
                ) from err
            keys = [k.WS_CONNECTIONS, index, k.agents_connected(account_id),
                    k.agent_status(account_id, user_id)]
            done = await self._ctx.remote.script(
                "remove connection " + connection_id, _lua.WS_REMOVE, keys,
                [connection_id, user_id, account_id, ""],
            )
            if done != -1:
                return bool(done == 1)
        raise CalRedisError(f"connection {connection_id!r}: gave up after concurrent changes")

    async def get_account_connections(self, account_id: str) -> list[WsConnection]:
        """The account's websocket connections, sorted by connection id.

        One round trip (a read-only script: the account's index, then ``HMGET`` of
        those ids in ``cal:ws:connections``); no other tenant's record is read.
        """
        self._refuse_on_cluster()
        k = self._ctx.keys
        index = k.ws_connections(account_id)
        raws: list[bytes] = await self._ctx.remote.script(
            "list connections " + index, _lua.WS_LIST, [index, k.WS_CONNECTIONS], [], read=True
        )
        conns = [codec.decode(r, WsConnection, key=k.WS_CONNECTIONS) for r in raws]
        return sorted((c for c in conns if c.account_id == account_id), key=lambda c: c.id)

    async def get_connection(self, connection_id: str) -> WsConnection | None:
        """The record of one connection (its account included), or None (``HGET``).

        Global: a node routing a message by connection id learns the account here.
        """
        validate_id(connection_id, "connection_id")
        key = self._ctx.keys.WS_CONNECTIONS
        client = self._ctx.remote.cmd
        raw: bytes | None = await self._ctx.remote.read(
            "HGET " + key, lambda: client.hget(key, connection_id)
        )
        if raw is None:
            return None
        return codec.decode(raw, WsConnection, key=key, field=connection_id)

    async def remove_node_connections(self, node_id: str) -> int:
        """Remove every connection routed through ``node_id`` (a crashed node); return how many.

        Global: scans ``cal:ws:connections`` (``HSCAN``, 500 per page) and removes each
        of that node's connections with the same script as
        :meth:`remove_connected_agent`, pipelined per page, so the sets and statuses
        of every account involved stay right. A connection that moved to another
        node meanwhile is kept. Unreadable records are logged and skipped.
        """
        self._refuse_on_cluster()
        validate_id(node_id, "node_id")
        k = self._ctx.keys
        gkey = k.WS_CONNECTIONS
        client = self._ctx.remote.cmd
        needle = node_id.encode()
        removed = 0
        cursor = 0
        while True:
            page: tuple[int, dict[bytes, bytes]] = await self._ctx.remote.read(
                "HSCAN " + gkey,
                partial(client.hscan, gkey, cursor, count=_SCAN_COUNT),
            )
            cursor, entries = page
            jobs: list[tuple[list[str], list[str]]] = []
            for field, raw in entries.items():
                if needle not in raw:
                    continue  # cheap pre-filter; the decoded record decides
                try:
                    rec = codec.decode(raw, WsConnection, key=gkey, field=field.decode())
                    if rec.node_id != node_id:
                        continue
                    keys = [gkey, k.ws_connections(rec.account_id),
                            k.agents_connected(rec.account_id),
                            k.agent_status(rec.account_id, rec.user_id)]
                    validate_id(rec.id, "connection_id")
                except (SerializationError, ValidationError, UnicodeDecodeError) as err:
                    log.warning("skipping unreadable connection %r: %s", field, err)
                    continue
                jobs.append((keys, [rec.id, rec.user_id, rec.account_id, node_id]))
            if jobs:
                removed += await self._remove_batch(jobs)
            if cursor == 0:
                return removed

    async def _remove_batch(self, jobs: list[tuple[list[str], list[str]]]) -> int:
        client = self._ctx.remote.cmd

        async def call() -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for keys, args in jobs:
                    _lua.WS_REMOVE.queue(pipe, keys, args)
                replies: list[Any] = await pipe.execute()
                return replies

        replies = await self._ctx.remote.write("remove node connections", call)
        return sum(1 for r in replies if r == 1)
