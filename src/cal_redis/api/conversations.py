"""Conversations: ``cal:account:{a}:conversation:{id}`` strings (Conversation JSON),
optionally with a TTL, always straight from Redis."""

from __future__ import annotations

from .. import codec
from ..engine.writes import Target
from ..models import Conversation
from ._base import DirectOps, ttl_ms

__all__ = ("ConversationOps",)


class ConversationOps(DirectOps):
    """Mixin of :class:`~cal_redis.CallableCache`: conversations in progress."""

    async def get_conversation(self, account_id: str, conversation_id: str) -> Conversation | None:
        """The conversation, or None when absent or expired (one ``GET``)."""
        key = self._ctx.keys.conversation(account_id, conversation_id)
        client = self._ctx.remote.cmd
        raw: bytes | None = await self._ctx.remote.read("GET " + key, lambda: client.get(key))
        return None if raw is None else codec.decode(raw, Conversation, key=key)

    async def set_conversation(
        self, account_id: str, conv: Conversation, ttl: float | None = None
    ) -> Conversation:
        """Write a conversation (fields other services stored are kept); return it.

        ``ttl`` (seconds) sets a new expiry; ``None`` keeps the current one
        (``KEEPTTL``), so a new conversation written without a TTL never expires.
        ``conv.account_id`` must be this account or empty (then filled). One round
        trip (a Lua script) in the common case.

        Example::

            await cache.set_conversation(
                "acc42", Conversation(id="c1", channel="voice", participants=["u1"]), ttl=86400)
        """
        conv = self._check_model(conv, Conversation, "conv")
        conv = self._owned(conv, account_id, "conv")
        key = self._ctx.keys.conversation(account_id, conv.id)
        px = "" if ttl is None else str(ttl_ms(ttl))
        data = self._json(conv, "conv")
        await self._put("SET " + key, Target(key, ttl=px), conv, data)
        return conv

    async def delete_conversation(self, account_id: str, conversation_id: str) -> bool:
        """Delete a conversation (``DEL``); True if it existed."""
        key = self._ctx.keys.conversation(account_id, conversation_id)
        client = self._ctx.remote.cmd
        n: int = await self._ctx.remote.write("DEL " + key, lambda: client.delete(key))
        return n > 0
