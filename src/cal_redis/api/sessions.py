"""Sessions: ``cal:account:{a}:session:{id}`` (string with EXPIRE) and the
``cal:account:{a}:sessions:active`` set, always straight from Redis.

The key's TTL is the authority on expiry: :meth:`SessionOps.session_get` reports
``expires_at`` from the remaining TTL (``PTTL``), so it stays right after a
:meth:`~SessionOps.session_touch`, which only moves the TTL.
"""

from __future__ import annotations

import secrets
from typing import Any

import msgspec

from .. import codec
from ..engine import _lua
from ..engine.writes import Target
from ..errors import ValidationError
from ..keys import validate_id
from ..models import SessionData, now_ms
from ._base import DirectOps, ttl_ms

__all__ = ("SessionOps",)

#: Session ids hold 192 random bits (32 URL-safe characters).
SESSION_ID_BYTES = 24
_PRUNE_CHUNK = 1000


class SessionOps(DirectOps):
    """Mixin of :class:`~cal_redis.CallableCache`: account-scoped sessions with a TTL."""

    async def create_session(
        self, account_id: str, user_id: str, ttl: float, data: dict[str, Any] | None = None
    ) -> SessionData:
        """Create a session of ``user_id`` that expires after ``ttl`` seconds.

        The id is fresh and unguessable (``secrets.token_urlsafe``). The session key
        (``SET ... PX ... NX``) and its membership of the active set are written in
        one MULTI/EXEC round trip.

        Example::

            session = await cache.create_session("acc42", "u1", ttl=3600, data={"ua": "x"})
            assert (await cache.session_get("acc42", session.id)) is not None
        """
        validate_id(account_id, "account_id")
        validate_id(user_id, "user_id")
        ms = ttl_ms(ttl)
        if data is None:
            data = {}
        elif not isinstance(data, dict):
            raise ValidationError("data", f"expected a dict, got {type(data).__name__}")
        active = self._ctx.keys.sessions_active(account_id)
        while True:
            sid = secrets.token_urlsafe(SESSION_ID_BYTES)
            key = self._ctx.keys.session(account_id, sid)
            now = now_ms()
            session = SessionData(
                id=sid, account_id=account_id, user_id=user_id,
                created_at=now, expires_at=now + ms, data=data,
            )
            raw = self._json(session, "data")

            def build(pipe: Any, key: str = key, raw: bytes = raw, sid: str = sid) -> None:
                pipe.set(key, raw, px=ms, nx=True)
                pipe.sadd(active, sid)

            created, _ = await self._ctx.remote.multi("create session", build)
            if created:  # pragma: no branch - a 192-bit collision is not a case to test
                return session

    async def session_get(self, account_id: str, session_id: str) -> SessionData | None:
        """The session, or None when it does not exist or has expired.

        One round trip (``GET`` + ``PTTL`` in MULTI); ``expires_at`` is the time the
        key will expire, from its remaining TTL.
        """
        key = self._ctx.keys.session(account_id, session_id)

        def build(pipe: Any) -> None:
            pipe.get(key)
            pipe.pttl(key)

        raw, pttl = await self._ctx.remote.multi("GET " + key, build, read=True)
        if raw is None:
            return None
        session = codec.decode(raw, SessionData, key=key)
        if pttl > 0:
            session = msgspec.structs.replace(session, expires_at=now_ms() + pttl)
        return session

    async def session_set(
        self, account_id: str, session: SessionData, ttl: float | None = None
    ) -> SessionData:
        """Overwrite a session (fields other services stored are kept); return it as stored.

        ``ttl=None`` keeps the remaining TTL (``SET ... KEEPTTL``) and requires the
        session to exist: an expired or unknown session raises
        :class:`~cal_redis.errors.NotFoundError` instead of coming back without an
        expiry. A number of seconds resets the TTL (and creates the session if
        needed, setting ``expires_at``). ``session.account_id`` must be this account
        or empty (then filled). One round trip (a Lua script) unless a concurrent
        writer stored fields this version does not know.
        """
        session = self._check_model(session, SessionData, "session")
        session = self._owned(session, account_id, "session")
        key = self._ctx.keys.session(account_id, session.id)
        px = ""
        if ttl is not None:
            ms = ttl_ms(ttl)
            px = str(ms)
            session = msgspec.structs.replace(session, expires_at=now_ms() + ms)
        data = self._json(session, "session")
        active = self._ctx.keys.sessions_active(account_id)
        target = Target(key, ttl=px, member_set=active, id=session.id)
        await self._put(
            "SET " + key, target, session, data,
            must_exist=("Session", session.id) if ttl is None else None,
        )
        return session

    async def session_touch(self, account_id: str, session_id: str, ttl: float) -> bool:
        """Reset the session's TTL to ``ttl`` seconds (``PEXPIRE``); False if it is gone.

        The stored JSON is not rewritten; :meth:`session_get` reports the new expiry.
        """
        key = self._ctx.keys.session(account_id, session_id)
        ms = ttl_ms(ttl)
        client = self._ctx.remote.cmd
        done: int = await self._ctx.remote.write("PEXPIRE " + key, lambda: client.pexpire(key, ms))
        return bool(done)

    async def session_delete(self, account_id: str, session_id: str) -> bool:
        """Delete the session and its active-set membership (one MULTI); True if it existed."""
        key = self._ctx.keys.session(account_id, session_id)
        active = self._ctx.keys.sessions_active(account_id)

        def build(pipe: Any) -> None:
            pipe.delete(key)
            pipe.srem(active, session_id)

        deleted, _ = await self._ctx.remote.multi("DEL " + key, build)
        return bool(deleted)

    async def sessions_active(self, account_id: str) -> list[str]:
        """Ids of the account's live sessions, sorted; members whose key expired are pruned.

        Two round trips: ``SMEMBERS``, then one script per 1000 members that checks
        ``EXISTS`` and ``SREM``\\ s the dead atomically (a session re-created in
        between is never dropped).
        """
        active = self._ctx.keys.sessions_active(account_id)
        client = self._ctx.remote.cmd
        members: set[bytes] = await self._ctx.remote.read(
            "SMEMBERS " + active, lambda: client.smembers(active)
        )
        ids: list[str] = []
        for m in members:
            try:
                ids.append(validate_id(m.decode(), "session_id"))
            except (UnicodeDecodeError, ValidationError):
                continue  # not a session id this library could have written: leave it
        ids.sort()
        alive: list[str] = []
        for i in range(0, len(ids), _PRUNE_CHUNK):
            chunk = ids[i : i + _PRUNE_CHUNK]
            keys = [active, *(self._ctx.keys.session(account_id, s) for s in chunk)]
            live: list[bytes] = await self._ctx.remote.script(
                "prune " + active, _lua.SESSIONS_PRUNE, keys, chunk
            )
            alive.extend(m.decode() for m in live)
        return alive
