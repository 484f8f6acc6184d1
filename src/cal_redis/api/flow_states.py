"""Flow states, cache-first: L1 namespace ``flow_states`` (key ``(account_id, flow_id)``,
4 h by default) over ``cal:account:{a}:flow_state:{flow_id}`` strings with an EXPIRE
(4 h by default), on the string-key engine (:mod:`cal_redis.engine.ttl_keys`).

An L1 entry never outlives its Redis key: fills take the key's remaining TTL, writes
the TTL written. Writes publish ``FlowStateUpdate`` (with the written state as
``data``) / ``FlowStateDelete`` on the account's event channel in the same script;
other instances keep their copy when it equals the event's data and drop it
otherwise. An event never *refreshes* an entry: it may be older than a write this
instance made since, and dropping is always safe (the next read refetches).
"""

from __future__ import annotations

from .. import codec
from .._context import NeedsContext
from ..engine.negative import ABSENT
from ..engine.ttl_keys import TtlKeys, TtlKeySpec
from ..engine.writes import ANY, KNOWN, Guess, Step, Target, check_model, owned
from ..models import Event, FlowState
from ._base import ttl_ms

__all__ = ("FLOW_STATE", "FLOW_STATE_TTL", "FlowStateOps")

#: Default lifetime of a flow state in Redis (seconds), as in the seed's L1.
FLOW_STATE_TTL = 4 * 3600.0


def _decode_state(raw: bytes, key: str, flow_id: str) -> FlowState:
    return codec.decode(raw, FlowState, key=key, field=None if key.startswith("cal:") else flow_id)


#: Flow states: account-scoped, read with their TTL.
FLOW_STATE: TtlKeySpec[FlowState] = TtlKeySpec(
    "FlowState", "flow_states", scoped=True, decode=_decode_state, with_ttl=True,
    redis_key=lambda k, a, f: k.flow_state(a, f),  # type: ignore[arg-type]
)


class FlowStateOps(NeedsContext):
    """Mixin of :class:`~cal_redis.CallableCache`: cache-first call-flow states."""

    _flow_states: TtlKeys[FlowState]

    async def get_flow_state(self, account_id: str, flow_id: str) -> FlowState | None:
        """The flow state from L1, else from Redis (then cached); None when absent.

        A miss costs one round trip (``GET`` + ``PTTL`` in MULTI), shared by concurrent
        callers. The fill is fenced: a write or event that lands meanwhile is never
        overwritten by it; the read is then repeated once so the entry is cached after all.

        Example::

            state = await cache.get_flow_state("acc42", "flow-9")
        """
        engine = self._flow_states
        try:
            hit: FlowState | None = engine.l1.get((account_id, flow_id))
        except TypeError:
            hit = None  # unhashable id: the key builder names the argument
        if hit is not None:
            return None if hit is ABSENT else hit
        key = self._ctx.keys.flow_state(account_id, flow_id)
        return await engine.get(account_id, flow_id, key)

    async def set_flow_state(
        self, account_id: str, state: FlowState, ttl: float = FLOW_STATE_TTL
    ) -> FlowState:
        """Write a flow state with a fresh TTL (default 4 h) and cache it; return it.

        ``state.account_id`` must be this account or empty (then filled); fields
        other services stored are kept. If the Redis write fails (or its outcome is
        unknown) the L1 entry is dropped, never left holding the new value.
        """
        state = check_model(state, FlowState, "state")
        state = owned(state, account_id, "state")
        ctx = self._ctx
        key = ctx.keys.flow_state(account_id, state.id)
        ms = ttl_ms(ttl)
        data = codec.check(state, "state")

        def compute(stored: Guess) -> Step[None]:
            value = codec.merge_encode(stored, state, key=key) if isinstance(
                stored, bytes) else data
            event = codec.event("FlowStateUpdate", state.id, origin=ctx.instance_id,
                                account_id=account_id, data=value)
            return Step(value, event)

        target = Target(key, channel=ctx.keys.account_events(account_id), ttl=str(ms),
                        log=ctx.keys.account_log(account_id),
                        known=codec.known_fields(FlowState))
        engine = self._flow_states
        held = engine.held(account_id, state.id)
        guess: Guess = codec.encode(held) if held is not None else KNOWN
        await engine.write(account_id, state.id, target, compute, guess, keep=state,
                           ttl_s=ms / 1000, replace=True)
        return state

    async def delete_flow_state(self, account_id: str, flow_id: str) -> bool:
        """Delete a flow state from Redis and L1; True if Redis had it."""
        ctx = self._ctx
        key = ctx.keys.flow_state(account_id, flow_id)
        event = codec.event("FlowStateDelete", flow_id, origin=ctx.instance_id,
                            account_id=account_id)

        def compute(stored: Guess) -> Step[None]:
            return Step(None, event)

        target = Target(key, channel=ctx.keys.account_events(account_id),
                        log=ctx.keys.account_log(account_id))
        outcome = await self._flow_states.write(account_id, flow_id, target, compute, ANY)
        return outcome.existed

    def apply_flow_state_event(self, event: Event, account_id: str | None) -> str:
        """Apply a ``FlowState*`` event from the account channel to L1; return what was done.

        ``"echo"`` (own event, ignored), ``"sync"`` (namespace dropped), ``"unchanged"``
        (an update whose ``data`` equals the cached state: kept) or ``"invalidate"``
        (entry dropped). Raises ValidationError / SerializationError for a malformed
        event (after dropping the entry it names).
        """
        action = event.type[len("FlowState"):] if event.type.startswith("FlowState") else ""
        return self._flow_states.apply_event(action, event, account_id)
