"""Shared plumbing of the direct-Redis operations (sessions, agents, queues, ...).

:class:`DirectOps` is the base of every direct-Redis mixin: it declares what the
mixins use from :class:`~cal_redis.CallableCache` and holds the helpers they share:
argument checks that run before any I/O, one-round-trip MULTI/EXEC, and
:meth:`DirectOps._put_json`, the merge-safe write of one JSON value.

Merge-safe writes: a write must not drop fields another service stored and this
version does not know (docs/wire-format.md, "Compatibility"). A Lua script
(``_lua.PUT`` and friends) writes the new JSON in one round trip when the stored
value has no field the new one lacks -- the common case. Otherwise it hands the
stored value back; the client merges with :func:`cal_redis.codec.merge_encode` (the
one merge implementation) and retries, and the script accepts the merged JSON only
if the unknown fields are still those it was merged over (a concurrent change of
them by another service is never reverted; concurrent writers of known fields do
not conflict).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from .. import codec
from ..errors import CalRedisError, SerializationError, ValidationError
from ..keys import validate_id
from ..models import Model
from ._lua import Lua

if TYPE_CHECKING:
    from ..config import CacheConfig
    from ..keys import KeyBuilder
    from ..local import LocalTier
    from ..remote import Remote

__all__ = ("DirectOps", "MAX_CAS_RETRIES", "MAX_TTL_MS", "ttl_ms", "seconds")

M = TypeVar("M", bound=Model)

#: Compare-and-set attempts of a merge-safe write before giving up.
MAX_CAS_RETRIES = 16
#: Upper bound of a TTL (about 8,900 years): keeps ``now + ttl`` inside Redis' range.
MAX_TTL_MS = 2**48


def seconds(value: object, argument: str) -> float:
    """``value`` as a positive, finite number of seconds, else ValidationError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = type(value).__name__
        raise ValidationError(argument, f"expected seconds as int or float, got {kind}")
    if not math.isfinite(value) or value <= 0:
        raise ValidationError(argument, f"must be a positive, finite number of seconds: {value!r}")
    return float(value)


def ttl_ms(ttl: object, argument: str = "ttl") -> int:
    """A TTL in seconds (int or float, > 0) as whole milliseconds for ``PX``, rounded up."""
    ms = math.ceil(seconds(ttl, argument) * 1000)
    if ms > MAX_TTL_MS:
        raise ValidationError(argument, f"at most {MAX_TTL_MS // 1000} seconds")
    return ms


class DirectOps:
    """Base of the direct-Redis mixins of :class:`~cal_redis.CallableCache`.

    Only declarations and private helpers live here; the composition root
    provides the attributes.
    """

    remote: Remote
    keys: KeyBuilder
    local: LocalTier
    config: CacheConfig
    fill_ok: bool
    instance_id: str

    # -- argument checks (before any I/O) -------------------------------------------------
    @staticmethod
    def _check_model(obj: object, model: type[M], argument: str) -> M:
        if not isinstance(obj, model):
            raise ValidationError(argument, f"expected {model.__name__}, got {type(obj).__name__}")
        return obj

    @staticmethod
    def _owned(obj: M, account_id: str, argument: str) -> M:
        """``obj`` stamped with ``account_id``; ValidationError if it names another account."""
        validate_id(account_id, "account_id")
        owner = getattr(obj, "account_id", "")
        if owner == account_id:
            return obj
        if owner:
            raise ValidationError(
                "account_id", f"{argument} belongs to account {owner!r}, not {account_id!r}"
            )
        return msgspec.structs.replace(obj, account_id=account_id)

    @staticmethod
    def _json(obj: Model, argument: str) -> bytes:
        """The JSON of ``obj``, checked against its own type (a Struct is not validated
        when built: ``AgentStatus(status="bogus")`` is refused here, not stored)."""
        try:
            data = codec.encode(obj)
            codec.decode(data, type(obj), key=argument)
        except SerializationError as err:
            raise ValidationError(argument, str(err)) from err
        return data

    # -- round trips ------------------------------------------------------------------------
    @property
    def _client(self) -> Any:
        # Replies are bytes (decode_responses=False); redis-py's annotations cannot know
        # that, so the client is used untyped here and every reply is annotated.
        return self.remote.client

    async def _multi(
        self, what: str, build: Callable[[Any], object], *, read: bool = False
    ) -> list[Any]:
        """Queue commands with ``build(pipe)`` and run them in one MULTI/EXEC round trip.

        ``read=True`` marks it idempotent: connection errors are then retried.
        """
        client = self._client

        async def call() -> list[Any]:
            async with client.pipeline(transaction=True) as pipe:
                build(pipe)
                replies: list[Any] = await pipe.execute()
                return replies

        if read:
            return await self.remote.read(what, call)
        return await self.remote.write(what, call)

    async def _eval(self, what: str, script: Lua, keys: Sequence[str], args: Sequence[Any],
                    *, read: bool = False) -> Any:
        """Run a Lua script in one round trip (EVALSHA, EVAL on a cold script cache)."""
        client = self._client

        async def call() -> Any:
            return await script(client, keys, args)

        if read:
            return await self.remote.read(what, call)
        return await self.remote.write(what, call)

    async def _put_json(
        self,
        what: str,
        script: Lua,
        keys: Sequence[str],
        obj: Model,
        data: bytes,
        args: Sequence[Any],
        *,
        key: str,
        field: str | None = None,
    ) -> bytes | None:
        """Merge-safe write of ``obj`` (JSON ``data``) through ``script``.

        The script gets ``ARGV = [expect, json, own, *args]`` (see ``guard`` in
        :mod:`._lua`) and answers ``1`` (written), ``-1`` (refused: the value must
        exist and does not; returns None here), ``0`` (the value merged over vanished:
        start over) or the stored bytes (merge over them and retry). Returns the JSON
        written.
        """
        fresh = data
        expect = own = b""
        for _ in range(MAX_CAS_RETRIES):
            reply = await self._eval(what, script, keys, [expect, data, own, *args])
            if reply == 1:
                return data
            if reply == -1:
                return None
            if reply == 0:
                data, expect, own = fresh, b"", b""
            elif isinstance(reply, bytes):
                data = codec.merge_encode(reply, obj, key=key, field=field)
                expect, own = reply, fresh
            else:  # pragma: no cover - a script bug
                raise CalRedisError(f"{what}: unexpected script reply {reply!r}")
        raise CalRedisError(f"{what}: gave up after {MAX_CAS_RETRIES} conflicting writes")
