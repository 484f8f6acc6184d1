"""Call/work queues: ``cal:account:{a}:queue:{name}`` sorted sets (member = item id,
score = priority or enqueue time in ms, lowest pops first) and their metadata in
the ``cal:account:{a}:queues:meta`` hash. Always straight from Redis.

Pops are not idempotent, so they are never retried: a connection lost after the
server popped an item loses that item (at-most-once delivery); each item is
delivered to at most one popper, never twice.
"""

from __future__ import annotations

import math
from typing import Any

from ..engine.records import Records, RecordSpec
from ..errors import ValidationError
from ..keys import KeyBuilder, validate_id
from ..models import QueueMeta, now_ms
from ._base import DirectOps, seconds

__all__ = ("QueueOps",)


def _queues_meta(k: KeyBuilder, a: str) -> str:
    return k.queues_meta(a)


QUEUE_META = Records(RecordSpec(
    "QueueMeta", QueueMeta, _queues_meta, id_arg="name", obj_arg="meta", id_attr="name"
))


def _count(n: object, argument: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValidationError(argument, f"expected an int >= 1, got {n!r}")
    return n


class QueueOps(DirectOps):
    """Mixin of :class:`~cal_redis.CallableCache`: priority/FIFO queues per account."""

    def _queue_key(self, account_id: str, queue: str) -> str:
        validate_id(queue, "queue")
        return self._ctx.keys.queue(account_id, queue)

    async def queue_add(
        self, account_id: str, queue: str, item_id: str, priority: float | None = None
    ) -> float:
        """Enqueue ``item_id``; return its score. Lower scores pop first.

        With ``priority`` the score is that number (an item already queued is
        re-prioritised). Without it the score is the enqueue time in ms (FIFO;
        items enqueued in the same millisecond pop in item-id order) and an item
        already queued keeps its place (``ZADD NX``). Numeric priorities are far
        below timestamps, so prioritised items pop before FIFO ones. One MULTI
        (``ZADD`` + ``ZSCORE``).

        Example::

            await cache.queue_add("acc42", "support", "call-1")
            assert await cache.queue_pop("acc42", "support") == "call-1"
        """
        key = self._queue_key(account_id, queue)
        validate_id(item_id, "item_id")
        if priority is None:
            score, nx = float(now_ms()), True
        else:
            if isinstance(priority, bool) or not isinstance(priority, int | float):
                kind = type(priority).__name__
                raise ValidationError("priority", f"expected a number, got {kind}")
            if not math.isfinite(priority):
                raise ValidationError("priority", f"must be finite, got {priority!r}")
            score, nx = float(priority), False

        def build(pipe: Any) -> None:
            pipe.zadd(key, {item_id: score}, nx=nx)
            pipe.zscore(key, item_id)

        _, stored = await self._ctx.remote.multi("ZADD " + key, build)
        return float(stored)

    async def queue_pop(self, account_id: str, queue: str) -> str | None:
        """Pop the lowest-score item (``ZPOPMIN``), or None when the queue is empty.

        Safe under any number of concurrent poppers: each item is returned once.
        """
        key = self._queue_key(account_id, queue)
        client = self._ctx.remote.cmd
        # With a count the reply is [[member, score]] under RESP2 and RESP3 alike.
        popped: list[tuple[bytes, float]] = await self._ctx.remote.write(
            "ZPOPMIN " + key, lambda: client.zpopmin(key, 1)
        )
        return popped[0][0].decode() if popped else None

    async def queue_pop_blocking(self, account_id: str, queue: str, timeout: float) -> str | None:
        """Pop the lowest-score item, waiting up to ``timeout`` seconds for one (``BZPOPMIN``).

        Returns None when nothing arrived in time. The wait holds one pool
        connection and does not depend on ``CacheConfig.socket_timeout``: the reply
        is awaited for ``timeout + socket_timeout`` seconds, after which the
        connection is dropped and :class:`~cal_redis.errors.TimeoutError` raised.
        Cancelling the caller drops the connection too; as for every pop, an item
        the server popped just before the connection was lost is lost.
        """
        key = self._queue_key(account_id, queue)
        wait = seconds(timeout, "timeout")
        reply = await self._ctx.remote.blocking("BZPOPMIN " + key, wait, "BZPOPMIN", key, wait)
        if not reply:
            return None
        member = reply[1]
        return member.decode() if isinstance(member, bytes) else str(member)

    async def queue_peek(self, account_id: str, queue: str, n: int = 1) -> list[tuple[str, float]]:
        """The ``n`` lowest-score items with their scores, without removing them."""
        key = self._queue_key(account_id, queue)
        n = _count(n, "n")
        client = self._ctx.remote.cmd
        items: list[tuple[bytes, float]] = await self._ctx.remote.read(
            "ZRANGE " + key, lambda: client.zrange(key, 0, n - 1, withscores=True)
        )
        return [(m.decode(), float(s)) for m, s in items]

    async def queue_len(self, account_id: str, queue: str) -> int:
        """Number of items in the queue (``ZCARD``); 0 for a queue never used."""
        key = self._queue_key(account_id, queue)
        client = self._ctx.remote.cmd
        n: int = await self._ctx.remote.read("ZCARD " + key, lambda: client.zcard(key))
        return n

    async def queue_remove(self, account_id: str, queue: str, item_id: str) -> bool:
        """Remove one item wherever it is (``ZREM``); True if it was queued."""
        key = self._queue_key(account_id, queue)
        validate_id(item_id, "item_id")
        client = self._ctx.remote.cmd
        n: int = await self._ctx.remote.write("ZREM " + key, lambda: client.zrem(key, item_id))
        return n > 0

    async def queue_position(self, account_id: str, queue: str, item_id: str) -> int | None:
        """0-based position of the item (``ZRANK``: 0 pops next), or None if not queued."""
        key = self._queue_key(account_id, queue)
        validate_id(item_id, "item_id")
        client = self._ctx.remote.cmd
        rank: int | None = await self._ctx.remote.read(
            "ZRANK " + key, lambda: client.zrank(key, item_id)
        )
        return rank

    # -- metadata (hash cal:account:{a}:queues:meta) --------------------------------------
    async def set_queue_meta(self, account_id: str, meta: QueueMeta) -> QueueMeta:
        """Write a queue's metadata (fields other services stored are kept); return it."""
        return await QUEUE_META.set(self._ctx, account_id, meta)

    async def get_queue_meta(self, account_id: str, name: str) -> QueueMeta | None:
        """The metadata of queue ``name``, or None (``HGET``)."""
        return await QUEUE_META.get(self._ctx, account_id, name)

    async def get_queues_meta(self, account_id: str) -> list[QueueMeta]:
        """The metadata of every queue of the account, sorted by name (``HGETALL``)."""
        return await QUEUE_META.get_all(self._ctx, account_id)

    async def delete_queue_meta(self, account_id: str, name: str) -> bool:
        """Delete a queue's metadata (the queue's items are untouched); True if it existed."""
        return await QUEUE_META.delete(self._ctx, account_id, name)
