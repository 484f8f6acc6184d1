"""Contact-centre agents: the status JSON, the registered/available/connected sets and
the by_user name map of one account, always straight from Redis.

Invariant, kept by writing everything in one atomic script: a user is in
``agents:registered`` iff ``status.registered``, in ``agents:available`` iff
``status.status == "available"``, in ``agents:connected`` iff ``status.connected``,
and ``agents:by_user`` maps it to ``status.name`` (no entry when the name is empty).
The websocket routing operations keep ``connected`` in line too
(:mod:`cal_redis.api.ws`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from .. import codec
from ..engine import _lua
from ..engine.writes import KNOWN, Guess, write_with
from ..errors import ValidationError
from ..keys import validate_id
from ..models import AgentState, AgentStatus, now_ms
from ._base import DirectOps

__all__ = ("AgentOps",)


class AgentOps(DirectOps):
    """Mixin of :class:`~cal_redis.CallableCache`: agent status and presence sets."""

    async def set_agent_status(self, account_id: str, status: AgentStatus) -> AgentStatus:
        """Write an agent's status with its set memberships and name, atomically.

        ``status.account_id`` must be this account or empty (then filled);
        ``updated_at`` is stamped with the current time when 0. Fields another
        service stored in the status JSON are kept. One round trip (a Lua script).
        Also available as :meth:`agent_status_set` (the same operation).

        Example::

            await cache.set_agent_status(
                "acc42", AgentStatus(user_id="u1", name="Ann", status=AgentState.AVAILABLE,
                                     registered=True, connected=True))
            assert "u1" in await cache.agents_get_available("acc42")
        """
        status = self._check_model(status, AgentStatus, "status")
        try:
            state = AgentState(status.status)
        except ValueError:
            raise ValidationError("status", f"unknown agent state {status.status!r}") from None
        status = self._owned(status, account_id, "status")
        if status.status is not state or not status.updated_at:
            status = msgspec.structs.replace(
                status, status=state, updated_at=status.updated_at or now_ms()
            )
        user_id = status.user_id
        k = self._ctx.keys
        key = k.agent_status(account_id, user_id)
        data = self._json(status, "status")
        keys = [
            key,
            k.agents_registered(account_id),
            k.agents_available(account_id),
            k.agents_connected(account_id),
            k.agents_by_user(account_id),
        ]
        flags = [status.registered, state is AgentState.AVAILABLE, status.connected]
        args = [user_id, *("1" if f else "0" for f in flags), status.name]

        def compute(stored: Guess) -> tuple[bytes, list[str], AgentStatus]:
            merged = codec.merge_encode(stored, status, key=key) if isinstance(
                stored, bytes) else data
            return merged, args, status

        return await write_with(
            self._ctx.remote, "set agent " + key, _lua.AGENT_SET, keys, compute, KNOWN,
            codec.known_fields(AgentStatus),
        )

    agent_status_set = set_agent_status

    async def get_agent_status(self, account_id: str, user_id: str) -> AgentStatus | None:
        """The agent's status, or None when none is stored (one ``GET``)."""
        key = self._ctx.keys.agent_status(account_id, user_id)
        client = self._ctx.remote.cmd
        raw: bytes | None = await self._ctx.remote.read("GET " + key, lambda: client.get(key))
        return None if raw is None else codec.decode(raw, AgentStatus, key=key)

    async def _members(self, key: str) -> set[str]:
        client = self._ctx.remote.cmd
        raw: set[bytes] = await self._ctx.remote.read("SMEMBERS " + key, lambda: client.smembers(key))
        return {m.decode() for m in raw}

    async def agents_get_available(self, account_id: str) -> set[str]:
        """User ids of the account's available agents (a set: ``SMEMBERS``, unordered).

        Example::

            if "u1" in await cache.agents_get_available("acc42"): ...
        """
        return await self._members(self._ctx.keys.agents_available(account_id))

    async def agents_get_registered(self, account_id: str) -> set[str]:
        """User ids of the account's registered agents (``SMEMBERS``)."""
        return await self._members(self._ctx.keys.agents_registered(account_id))

    async def agents_get_connected(self, account_id: str) -> set[str]:
        """User ids of the account's connected agents (``SMEMBERS``)."""
        return await self._members(self._ctx.keys.agents_connected(account_id))

    async def get_agent_names(self, account_id: str) -> dict[str, str]:
        """The account's agent names: user_id → name (``HGETALL`` of ``agents:by_user``)."""
        key = self._ctx.keys.agents_by_user(account_id)
        client = self._ctx.remote.cmd
        raw: dict[bytes, bytes] = await self._ctx.remote.read(
            "HGETALL " + key, lambda: client.hgetall(key)
        )
        return {f.decode(): v.decode() for f, v in raw.items()}

    async def remove_agent(self, account_id: str, user_id: str) -> bool:
        """Delete the agent's status, set memberships and name in one MULTI/EXEC.

        Returns True if a status was stored.
        """
        k = self._ctx.keys
        key = k.agent_status(account_id, user_id)
        validate_id(user_id, "user_id")

        def build(pipe: Any) -> None:
            pipe.delete(key)
            pipe.srem(k.agents_registered(account_id), user_id)
            pipe.srem(k.agents_available(account_id), user_id)
            pipe.srem(k.agents_connected(account_id), user_id)
            pipe.hdel(k.agents_by_user(account_id), user_id)

        replies = await self._ctx.remote.multi("remove agent " + key, build)
        return bool(replies[0])
