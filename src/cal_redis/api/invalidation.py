"""Selective invalidation: drop named entries, or one tenant's entries, from the L1 of
every instance.

:meth:`InvalidationOps.invalidate` publishes ``<Kind>Invalidate`` events carrying a
batch of ids (``ids``); :meth:`InvalidationOps.invalidate_account` publishes one
``TenantInvalidate`` on the account's channel. Both are ordinary events of the
public wire format (docs/wire-format.md, "Events"): every instance, this one
included, drops what they name; Redis is not touched. Use them after data was
changed in Redis by something that publishes no event (a script, a hand fix, a
restore).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from .._context import NeedsContext
from ..errors import ValidationError
from ..keys import validate_id
from ..models import Event
from ..sync import TENANT_INVALIDATE

if TYPE_CHECKING:
    from ..engine.entities import Entities
    from ..engine.ttl_keys import TtlKeys

__all__ = ("INVALIDATE_BATCH", "InvalidationOps")

#: Ids per ``<Kind>Invalidate`` event: a longer list is sent as several events, each
#: far below the subscribers' event size limit (1 MiB).
INVALIDATE_BATCH: Final = 1000


class InvalidationOps(NeedsContext):
    """Mixin of :class:`~cal_redis.CallableCache`: selective invalidation across instances."""

    _engines: tuple[Entities[Any] | TtlKeys[Any], ...]

    if TYPE_CHECKING:  # provided by SyncOps, the host's publishing mixin
        async def publish_event(self, event: Event) -> int: ...
        async def publish_account_event(self, account_id: str, event: Event) -> int: ...

    def _engine_of(self, kind: object) -> Entities[Any] | TtlKeys[Any]:
        for engine in self._engines:
            if kind in (engine.spec.kind, engine.spec.namespace):
                return engine
        known = ", ".join(f"{e.spec.kind!r} ({e.spec.namespace!r})" for e in self._engines)
        raise ValidationError("kind", f"unknown kind {kind!r}; one of {known}")

    async def invalidate(
        self, kind: str, ids: Sequence[str], *, account_id: str | None = None
    ) -> int:
        """Drop the entries ``ids`` of ``kind`` from the L1 of every instance.

        ``kind`` is an event kind (``"User"``, ``"Region"``, ``"Proxy"``,
        ``"Account"``, ``"Device"``, ``"TrunkIp"``, ``"FlowState"``) or its L1
        namespace (``"users"``, ...). Account-scoped kinds (devices, flow states)
        need ``account_id``; global ones refuse it. Everything is validated before
        any I/O. Publishes ``<Kind>Invalidate`` events of at most
        :data:`INVALIDATE_BATCH` ids each (one round trip per event) and drops the
        entries here at once; returns the number of subscribers reached, summed.
        Redis data is not changed; the next read of a dropped entry goes to Redis.

        Example::

            await cache.invalidate("User", ["u1", "u2"])
            await cache.invalidate("Device", ["d1"], account_id="acc42")
        """
        engine = self._engine_of(kind)
        spec = engine.spec
        if spec.scoped:
            validate_id(account_id, "account_id")
        elif account_id is not None:
            raise ValidationError("account_id", f"{spec.kind} is not account-scoped")
        if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
            raise ValidationError("ids", f"expected a sequence of ids, got {type(ids).__name__}")
        event_id = getattr(spec, "event_id", None)
        checked: list[str] = []
        for i, id_ in enumerate(ids):
            try:
                checked.append(event_id(id_) if event_id is not None else validate_id(id_, "id"))
            except ValidationError as err:
                raise ValidationError(f"ids[{i}]", str(err)) from None
        unique = list(dict.fromkeys(checked))
        reached = 0
        for start in range(0, len(unique), INVALIDATE_BATCH):
            event = Event(type=spec.kind + "Invalidate",
                          ids=tuple(unique[start : start + INVALIDATE_BATCH]))
            if spec.scoped:
                assert account_id is not None
                reached += await self.publish_account_event(account_id, event)
            else:
                reached += await self.publish_event(event)
        return reached

    async def invalidate_account(self, account_id: str) -> int:
        """Drop every L1 entry of one tenant from every instance: its devices, device
        idents and flow states, the users whose ``account_id`` it is (and their
        idents), its account summary (and idents), the trunk IPs mapped to it.

        Publishes one ``TenantInvalidate`` event on the account's channel (so it can
        name no other account) and drops the entries here at once; returns the number
        of subscribers reached. Other tenants' entries are not touched; Redis is not
        changed.

        Example::

            await cache.invalidate_account("acc42")
        """
        validate_id(account_id, "account_id")
        return await self.publish_account_event(
            account_id, Event(type=TENANT_INVALIDATE, id=account_id)
        )
