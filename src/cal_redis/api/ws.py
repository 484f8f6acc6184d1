"""Websocket routing: which node holds which agent connection.

Keys: the global hash ``cal:ws:connections`` (connection_id → WsConnection JSON,
which names the account), the account's ``agents:connected`` set, and -- an
addition to the seed's layout -- the per-account index
``cal:account:{a}:ws:connections`` (connection_id → user_id). The index lets an
account list and count its own connections without reading any other tenant's
records. Services that write ``cal:ws:connections`` themselves must maintain the
index too (docs/wire-format.md).

A connection id belongs to one account and user: registering it again for another
is refused, and removal through another account never touches it.

Every operation has two sides: the **record** (the connection's field of the global
hash: who owns the id, which node routes it) and the account's **view** of it (the
index entry, ``agents:connected``, the status' ``connected``). The record decides
ownership; each side's Lua is written once (:mod:`cal_redis.engine._lua`) and serves
both of the paths below.

**Standalone key style**: each operation changes both sides in one atomic script.

**Cluster key style** (a Redis Cluster, or ``CacheConfig(cluster=True)``, whose
promise is that no script spans two slots): the global hash and the account's keys
are in different slots, so each operation is a script in the account's slot and a
step in the record's slot, in an order chosen so that **every index entry has its
record**: the record is written before the view and removed after it. Every step
checks the record's account and user itself, so no interleaving lets one tenant
change or read another's connection. An interruption between the steps (an error,
a timeout, a process that stops) can leave one kind of orphan only: **a record
without its index entry**. It is still in the global hash with its node's id, so
``remove_node_connections(node_id)`` finds and removes it with its account side, and
``remove_connected_agent(account_id, connection_id)`` finds it too (a record naming
the account is removed even without an index entry).

- ``add_connected_agent``: (1) record slot: claim the id (stored unless another
  account or user holds it; a refusal writes nothing anywhere), (2) account slot:
  index it. Interrupted after (1): the connection is routable (``get_connection``)
  but not listed by ``get_account_connections``, and its user may be missing from
  ``agents:connected``. Repaired by adding it again (same user: the claim refreshes
  and the index follows), by removing it, or by ``remove_node_connections``.
- ``remove_connected_agent``: (0) find its user (the index entry, else a record of
  this account; read-only), (1) account slot: unindex it (the user leaves
  ``agents:connected`` when no other connection of theirs is left; an index naming
  another user means a stale view: found again), (2) record slot: delete the record if
  it is still this account's and user's. Interrupted after (1): ``get_connection``
  still routes to a connection that is gone. Repaired by removing it again or by
  ``remove_node_connections``.
- ``remove_node_connections``: per ``HSCAN`` page, (1) for every connection of the
  node found, then (2), each step one pipeline. Interrupted after (1): the page's
  records are still in the hash with the node's id; running it again removes them.
  A connection that moved to another node between the scan and (1) is unindexed by
  (1); (2) sees the move, keeps the record and indexes it again (stopped before that:
  its record without index entry, repaired with its new node).
- ``get_account_connections``: the index, then those records (read-only; only
  records naming the account are returned).

The split path is not linearizable for two operations on the *same* connection id
at once: a removal that runs between the two steps of an add of that id (a node
removing a connection it is still adding, or ``remove_node_connections`` of a node
still adding connections), or a removal of a moved connection racing its restore,
can leave an index entry without a record. ``remove_connected_agent`` of that id
clears it. A node that awaits each add and removal of a connection in turn never
meets this.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

from .. import codec
from ..engine import _lua
from ..engine.writes import MAX_ATTEMPTS
from ..errors import CalRedisError, SerializationError, ValidationError
from ..keys import validate_id
from ..models import WsConnection, now_ms
from ..remote import Script
from ._base import DirectOps

__all__ = ("WsOps",)

log = logging.getLogger("cal_redis.ws")

_SCAN_COUNT = 500


class _Conn(NamedTuple):
    """One connection to remove, and its account side's keys."""

    account_id: str
    user_id: str
    connection_id: str
    side: list[str]  # the account's index, agents:connected, the user's status


class WsOps(DirectOps):
    """Mixin of :class:`~cal_redis.CallableCache`: websocket connection routing."""

    def _ws_split(self) -> bool:
        # The cluster key style: the record and the account side are in two slots.
        return self._ctx.keys.cluster

    def _ws_side(self, account_id: str, user_id: str) -> list[str]:
        k = self._ctx.keys
        return [k.ws_connections(account_id), k.agents_connected(account_id),
                k.agent_status(account_id, user_id)]

    async def add_connected_agent(
        self, account_id: str, user_id: str, connection_id: str, node_id: str
    ) -> WsConnection:
        """Record that ``user_id`` is connected through ``connection_id`` on ``node_id``.

        Writes the connection record, the account's index and ``agents:connected``
        (and ``connected: true`` in the agent's status, if one is stored): one atomic
        script, or in the cluster key style the record first, then the account's side
        (module docstring). Re-adding the same connection for the same user refreshes
        it; a connection id held by another user or account raises
        :class:`~cal_redis.errors.ValidationError` (``connection_id``).

        Example::

            conn = await cache.add_connected_agent("acc42", "u1", "conn-7f3a", "node-1")
            [c.id for c in await cache.get_account_connections("acc42")]  # ['conn-7f3a']
        """
        gkey = self._ctx.keys.WS_CONNECTIONS
        validate_id(connection_id, "connection_id")
        validate_id(node_id, "node_id")
        side = self._ws_side(account_id, user_id)
        conn = WsConnection(
            id=connection_id, account_id=account_id, user_id=user_id,
            node_id=node_id, connected_at=now_ms(),
        )
        args = [connection_id, codec.encode(conn), user_id, account_id]
        what = "add connection " + connection_id
        remote = self._ctx.remote
        if not self._ws_split():
            done = await remote.script(what, _lua.WS_ADD, [gkey, *side], args)
        else:
            done = await remote.script(what, _lua.WS_CLAIM, [gkey], args)
            if done == 1:  # stopped before this: a record without its index entry
                await remote.script(what, _lua.WS_INDEX, side, [connection_id, user_id])
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
        the connection's user, then one atomic script that re-checks it (in the
        cluster key style three: the account's side, then the record; module docstring).
        """
        k = self._ctx.keys
        validate_id(connection_id, "connection_id")
        index = k.ws_connections(account_id)
        for _ in range(MAX_ATTEMPTS):
            owner = await self._ws_owner(account_id, connection_id, index)
            if not owner:
                return False
            try:
                user_id = validate_id(owner.decode(), "user_id")
            except (UnicodeDecodeError, ValidationError) as err:
                raise SerializationError(
                    f"connection names an invalid user id {owner!r}",
                    key=k.WS_CONNECTIONS, field=connection_id,
                ) from err
            job = _Conn(account_id, user_id, connection_id, self._ws_side(account_id, user_id))
            (done,) = await self._ws_remove("remove connection " + connection_id, [job], "")
            if done != -1:
                return done == 1
        raise CalRedisError(f"connection {connection_id!r}: gave up after concurrent changes")

    async def _ws_owner(self, account_id: str, connection_id: str, index: str) -> bytes:
        """The user of a connection of this account (b'' if none): the index entry,
        else a record naming this account."""
        remote = self._ctx.remote
        gkey = self._ctx.keys.WS_CONNECTIONS
        what = "find connection " + connection_id
        if not self._ws_split():
            found: bytes = await remote.script(
                what, _lua.WS_OWNER, [gkey, index], [connection_id, account_id], read=True
            )
            return found
        indexed: bytes | None = await remote.read(
            what, partial(remote.cmd.hget, index, connection_id)
        )
        if indexed is not None:
            return indexed
        recorded: bytes = await remote.script(
            what, _lua.WS_RECORD_USER, [gkey], [connection_id, account_id], read=True
        )
        return recorded

    async def _ws_remove(self, what: str, jobs: Sequence[_Conn], node_id: str) -> list[int]:
        """Remove each connection (on ``node_id`` unless it is ''); per job 1 removed,
        0 nothing to remove or moved to another node, -1 a stale view."""
        gkey = self._ctx.keys.WS_CONNECTIONS
        if not self._ws_split():
            return await self._ws_each(what, _lua.WS_REMOVE, [
                ([gkey, *j.side], [j.connection_id, j.user_id, j.account_id, node_id])
                for j in jobs
            ])
        unindexed = await self._ws_each(what, _lua.WS_UNINDEX, [
            (j.side, [j.connection_id, j.user_id]) for j in jobs
        ])
        todo = [i for i, r in enumerate(unindexed) if r != -1]  # -1: index names another user
        # stopped before this: records without their index entries
        unrouted = await self._ws_each(what, _lua.WS_UNROUTE, [
            ([gkey], [jobs[i].connection_id, jobs[i].user_id, jobs[i].account_id, node_id])
            for i in todo
        ])
        out = [-1] * len(jobs)
        moved = []
        for i, r in zip(todo, unrouted, strict=True):
            if r == 2:  # moved to another node after the scan: index it again
                moved.append(i)
            out[i] = -1 if r == -1 else int(r == 1 or (r == 0 and unindexed[i] == 1))
        await self._ws_each(what, _lua.WS_INDEX, [
            (jobs[i].side, [jobs[i].connection_id, jobs[i].user_id]) for i in moved
        ])
        return out

    async def _ws_each(
        self, what: str, script: Script, calls: Sequence[tuple[list[str], list[str]]]
    ) -> list[int]:
        """Run ``script`` once per (keys, args): one script call, or one pipeline
        (split per node on a cluster); their answers in order."""
        remote = self._ctx.remote
        if not calls:
            return []
        if len(calls) == 1:
            return [await remote.script(what, script, *calls[0])]

        def build(pipe: Any) -> None:
            for keys, args in calls:
                script.queue(pipe, keys, args)

        return await remote.pipeline(what, build)

    async def get_account_connections(self, account_id: str) -> list[WsConnection]:
        """The account's websocket connections, sorted by connection id.

        One round trip (a read-only script: the account's index, then ``HMGET`` of
        those ids in ``cal:ws:connections``); in the cluster key style two (``HKEYS``
        of the index, then the ``HMGET``). Only records naming the account are
        returned; no other tenant's record is read through an index of its own.
        """
        k = self._ctx.keys
        remote = self._ctx.remote
        index = k.ws_connections(account_id)
        what = "list connections " + index
        raws: list[bytes | None]
        if not self._ws_split():
            raws = await remote.script(
                what, _lua.WS_LIST, [index, k.WS_CONNECTIONS], [], read=True
            )
        else:
            ids: list[bytes] = await remote.read(what, partial(remote.cmd.hkeys, index))
            raws = await remote.hmget(what, k.WS_CONNECTIONS, ids) if ids else []
        conns = [codec.decode(r, WsConnection, key=k.WS_CONNECTIONS) for r in raws if r]
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
        of that node's connections as :meth:`remove_connected_agent` does, pipelined
        per page, so the sets and statuses of every account involved stay right. A
        connection that moved to another node meanwhile is kept. Unreadable records
        are logged and skipped. It also repairs what an interrupted operation of the
        cluster key style left: a record without its index entry (module docstring).
        """
        validate_id(node_id, "node_id")
        gkey = self._ctx.keys.WS_CONNECTIONS
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
            jobs: list[_Conn] = []
            for field, raw in entries.items():
                if needle not in raw:
                    continue  # cheap pre-filter; the decoded record decides
                try:
                    rec = codec.decode(raw, WsConnection, key=gkey, field=field.decode())
                    if rec.node_id != node_id:
                        continue
                    side = self._ws_side(rec.account_id, rec.user_id)
                    validate_id(rec.id, "connection_id")
                except (SerializationError, ValidationError, UnicodeDecodeError) as err:
                    log.warning("skipping unreadable connection %r: %s", field, err)
                    continue
                jobs.append(_Conn(rec.account_id, rec.user_id, rec.id, side))
            if jobs:
                done = await self._ws_remove("remove node connections", jobs, node_id)
                removed += done.count(1)
            if cursor == 0:
                return removed
