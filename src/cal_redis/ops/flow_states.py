"""Flow states, cache-first: L1 namespace ``flow_states`` (key ``(account_id, flow_id)``,
4 h by default) over ``cal:account:{a}:flow_state:{flow_id}`` strings with an EXPIRE
(4 h by default).

An L1 entry never outlives its Redis key: fills take the key's remaining TTL, writes
the TTL written. Writes publish ``FlowStateUpdate`` (with the written state as
``data``) / ``FlowStateDelete`` on the account's event channel in the same atomic
step; other instances keep their copy when it equals the event's data and drop it
otherwise (:meth:`FlowStateOps.apply_flow_state_event`). An event never *refreshes*
an entry: it may be older than a write this instance made since, and dropping is
always safe (the next read refetches).
"""

from __future__ import annotations

from typing import Any

import msgspec

from .. import codec
from ..errors import SerializationError
from ..keys import validate_id
from ..models import Event, FlowState, now_ms
from . import _lua
from ._direct import DirectOps, ttl_ms

__all__ = ("FlowStateOps", "FLOW_STATE_TTL")

#: Default lifetime of a flow state in Redis (seconds), as in the seed's L1.
FLOW_STATE_TTL = 4 * 3600.0


class FlowStateOps(DirectOps):
    """Mixin of :class:`~cal_redis.CallableCache`: cache-first call-flow states."""

    def _flow_event(self, account_id: str, flow_id: str, action: str, data: bytes = b"") -> bytes:
        event = Event(
            type="FlowState" + action, id=flow_id, account_id=account_id,
            origin=self.instance_id, ts=now_ms(),
        )
        if data:
            event = msgspec.structs.replace(event, data=msgspec.Raw(data))
        return codec.encode(event)

    async def get_flow_state(self, account_id: str, flow_id: str) -> FlowState | None:
        """The flow state from L1, else from Redis (then cached); None when absent.

        A miss costs one round trip (``GET`` + ``PTTL`` in MULTI). The fill is fenced:
        a write or event that lands meanwhile is never overwritten by it; the read is
        then repeated once (one more round trip) so the entry is cached after all.

        Example::

            state = await cache.get_flow_state("acc42", "flow-9")
        """
        l1 = self.local["flow_states"]
        ck = (account_id, flow_id)
        try:
            hit: FlowState | None = l1.get(ck)
        except TypeError:
            hit = None  # unhashable id: the key builder names the argument
        if hit is not None:
            return hit
        key = self.keys.flow_state(account_id, flow_id)

        def build(pipe: Any) -> None:
            pipe.get(key)
            pipe.pttl(key)

        for _ in range(2):
            token = l1.begin_fill()
            try:
                raw, pttl = await self._multi("GET " + key, build, read=True)
                if raw is None:
                    return None
                value = codec.decode(raw, FlowState, key=key)
                if not self.fill_ok or pttl == 0:
                    return value
                ttl = l1.default_ttl
                if pttl > 0:
                    ttl = pttl / 1000 if ttl is None else min(ttl, pttl / 1000)
                weight = self.local.weight("flow_states", len(raw))
                if l1.set_if_fresh(ck, value, weight, token, ttl) or weight > l1.max_weight:
                    return value
            finally:
                l1.end_fill()
        return value

    async def set_flow_state(
        self, account_id: str, state: FlowState, ttl: float = FLOW_STATE_TTL
    ) -> FlowState:
        """Write a flow state with a fresh TTL (default 4 h) and cache it; return it.

        ``state.account_id`` must be this account or empty (then filled); fields
        other services stored are kept. If the Redis write fails (or its outcome is
        unknown) the L1 entry is dropped, never left holding the new value.
        """
        state = self._check_model(state, FlowState, "state")
        state = self._owned(state, account_id, "state")
        key = self.keys.flow_state(account_id, state.id)
        ms = ttl_ms(ttl)
        data = self._json(state, "state")
        l1 = self.local["flow_states"]
        ck = (account_id, state.id)
        channel = self.keys.account_events(account_id)
        event = self._flow_event(account_id, state.id, "Update", data)
        args = ["", str(ms), "0", "", channel, event]
        ok = False
        # Fenced like a read fill: an event or flush for this key that lands while the
        # write is in flight (a newer write elsewhere) wins over our late L1 store.
        token = l1.begin_fill()
        try:
            await self._put_json("SET " + key, _lua.PUT, [key], state, data, args, key=key)
            ok = True
            stored = False
            if self.fill_ok:
                l1_ttl = l1.default_ttl
                l1_ttl = ms / 1000 if l1_ttl is None else min(l1_ttl, ms / 1000)
                weight = self.local.weight("flow_states", len(data))
                stored = l1.set_if_fresh(ck, state, weight, token, l1_ttl)
            if not stored:
                l1.invalidate(ck)
        finally:
            if not ok:
                l1.invalidate(ck)
            l1.end_fill()
        return state

    async def delete_flow_state(self, account_id: str, flow_id: str) -> bool:
        """Delete a flow state from Redis and L1; True if Redis had it."""
        key = self.keys.flow_state(account_id, flow_id)
        channel = self.keys.account_events(account_id)
        event = self._flow_event(account_id, flow_id, "Delete")

        def build(pipe: Any) -> None:
            pipe.delete(key)
            pipe.publish(channel, event)

        try:
            deleted, _ = await self._multi("DEL " + key, build)
        finally:
            self.local["flow_states"].invalidate((account_id, flow_id))
        return bool(deleted)

    def apply_flow_state_event(self, event: Event, account_id: str | None) -> str:
        """Apply a ``FlowState*`` event from the account channel to L1; return what was done.

        For the sync subscriber: ``"echo"`` (own event, ignored), ``"sync"`` (namespace
        dropped), ``"unchanged"`` (an update whose ``data`` equals the cached state: kept)
        or ``"invalidate"`` (entry dropped). Raises ValidationError / SerializationError
        for a malformed event.
        """
        l1 = self.local["flow_states"]
        if event.type == "FlowStateSync":
            l1.invalidate_all()
            return "sync"
        if event.origin == self.instance_id:
            return "echo"
        validate_id(account_id, "account_id")
        flow_id = validate_id(event.id, "id")
        ck = (account_id, flow_id)
        if event.type != "FlowStateDelete" and event.has_data:
            value = codec.decode(bytes(event.data), FlowState, key="event FlowState", field=flow_id)
            if value.id != flow_id or value.account_id not in ("", account_id):
                raise SerializationError(f"event data of flow state {flow_id!r} does not match")
            if value == l1.peek(ck):
                return "unchanged"
        l1.invalidate(ck)
        return "invalidate"

