"""Cache-first values kept one per Redis string key (trunk IP -> account, flow states),
on the same parts as the hash-field entities: the one single-flight, fenced fills,
the one write path.

A fill never outlives the key: with ``with_ttl`` the read is ``GET`` + ``PTTL`` in one
MULTI and the L1 entry takes the key's remaining TTL. A fill overtaken by a write or
an event is refused (fenced) and the read repeated once, so the entry is cached after
all. Events never *refresh* an entry (one may be older than a write this instance
made since): an event whose data equals the cached value keeps it, any other drops it.

Serve-stale on error and refresh-ahead work as for the hash-field entities
(:mod:`.entities`): a read that cannot reach Redis returns a value L1 still holds for
the key if it was filled less than ``stale_if_error`` seconds ago, except that a value
read with its TTL (``with_ttl``) is never served past that TTL; refresh-ahead needs
the spec's ``redis_key`` to name the key again.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..errors import ConnectionError, SerializationError, ValidationError
from ..keys import KeyBuilder, validate_id
from ..models import Event
from .negative import ABSENT
from .refresh import Failures, Refresher, gathered
from .single_flight import SingleFlight
from .writes import Guess, Outcome, Step, Target, write

if TYPE_CHECKING:
    from .._context import Context
    from .._fast import LRUCache

__all__ = ("TtlKeySpec", "TtlKeys")

V = TypeVar("V")
_NONE: Any = object()  # get_stale found nothing


@dataclass(frozen=True, slots=True)
class TtlKeySpec(Generic[V]):
    """What distinguishes one kind of string-key value from another."""

    kind: str  # event prefix, e.g. "TrunkIp"
    namespace: str  # L1 namespace
    scoped: bool  # account-scoped (events on the account channel)
    #: ``(raw, key, id) -> value``; raises SerializationError naming the key.
    decode: Callable[[bytes, str, str], V]
    #: Read the key's remaining TTL with the value (fills never outlive the key).
    with_ttl: bool = False
    #: ``(id) -> id`` validating/canonicalising the id of an event.
    event_id: Callable[[str], str] = lambda i: validate_id(i, "id")
    #: The L1 weight counts the id's length too (small string values: the key is a
    #: large part of what the entry holds).
    weigh_id: bool = False
    #: ``(value) -> account id`` for a global kind whose values belong to an account
    #: (what ``drop_account`` matches); None: its values belong to none.
    tenant_of: Callable[[V], str | None] | None = None
    #: ``(keys, account_id, id) -> Redis key`` of a value (what refresh-ahead reads
    #: again); None: the kind is not refreshed ahead.
    redis_key: Callable[[KeyBuilder, str | None, str], str] | None = None


class TtlKeys(Generic[V]):
    """Cache-first reads and the writes of one kind of string-key value."""

    __slots__ = ("_ctx", "_negative_ttl", "_stale", "flights", "l1", "refresher", "spec",
                 "stale_serves")

    #: Global string keys share no slot with any log: their events are not logged
    #: (a gap flushes the namespace); scoped ones go to each account's log.
    global_log: str | None = None

    def __init__(self, spec: TtlKeySpec[V], ctx: Context) -> None:
        self.spec = spec
        self._ctx = ctx
        self.l1: LRUCache = ctx.local[spec.namespace]
        self._negative_ttl = ctx.config.budget(spec.namespace).negative_ttl
        self.flights: SingleFlight[Hashable, V | None] = SingleFlight()
        #: Serve-stale window of the namespace (s; 0: off) and the values served so.
        self._stale = ctx.config.stale_if_error_for(spec.namespace)
        self.stale_serves = 0
        fraction = ctx.config.refresh_ahead_for(spec.namespace) if spec.redis_key else 0.0
        self.refresher = Refresher(self.l1, ctx.gate, self.flights, self._refresh, fraction,
                                   spec.namespace)

    @property
    def joins(self) -> int:
        """Callers that joined another caller's load."""
        return self.flights.joins

    def _weight(self, id_: str, value_len: int) -> int:
        n = value_len + len(id_) if self.spec.weigh_id else value_len
        return self._ctx.local.weight(self.spec.namespace, n)

    def l1_key(self, account_id: str | None, id_: str) -> Hashable:
        """The L1 key of a value."""
        return (account_id, id_) if self.spec.scoped else id_

    async def get(self, account_id: str | None, id_: str, key: str) -> V | None:
        """The value at Redis key ``key``: L1, else one read (single-flight), fenced fill.

        ``id_`` and ``key`` are validated by the caller (the key builder).
        """
        ck = self.l1_key(account_id, id_)
        hit: V | None = self.l1.get(ck)
        if hit is not None:
            return None if hit is ABSENT else hit
        if not self._stale:
            return await self.flights.run(ck, lambda: self._fetch(ck, id_, key))
        try:
            return await self.flights.run(ck, lambda: self._fetch(ck, id_, key))
        except ConnectionError:
            # A value read with its TTL is never served past it (Redis has dropped it).
            value = self.l1.get_stale(ck, self._stale, _NONE, expired=not self.spec.with_ttl)
            if value is _NONE:
                raise
            self.stale_serves += 1
            return None if value is ABSENT else value

    async def _refresh(self, cks: list[Hashable]) -> Failures:
        """Refresh-ahead of distinct L1 keys: each one read through the single-flight
        and filled fenced, as a miss would be (the reads run concurrently)."""
        redis_key = self.spec.redis_key
        assert redis_key is not None
        jobs: list[tuple[int, Awaitable[object]]] = []
        for ck in cks:
            pair: tuple[str | None, str] = ck if self.spec.scoped else (None, ck)  # type: ignore[assignment]
            account_id, id_ = pair
            key = redis_key(self._ctx.keys, account_id, id_)
            jobs.append((1, self.flights.run(ck, functools.partial(self._fetch, ck, id_, key))))
        return await gathered(jobs)

    def held(self, account_id: str | None, id_: str) -> V | None:
        """The value L1 holds for ``id_`` (``peek``: no recency bump), None if none or
        known absent."""
        value: Any = self.l1.peek(self.l1_key(account_id, id_))
        return None if value is ABSENT else value

    async def _read(self, key: str) -> tuple[bytes | None, int]:
        remote = self._ctx.remote
        if not self.spec.with_ttl:
            raw: bytes | None = await remote.read("GET " + key, remote.cmd.get, key)
            return raw, -1

        def build(pipe: Any) -> None:
            pipe.get(key)
            pipe.pttl(key)

        got, pttl = await remote.multi("GET " + key, build, read=True)
        return got, int(pttl)

    async def _fetch(self, ck: Hashable, id_: str, key: str) -> V | None:
        l1 = self.l1
        gate = self._ctx.gate
        value: V | None = None
        for _ in range(2):
            token = l1.begin_fill()
            try:
                raw, pttl = await self._read(key)
                if raw is None:
                    if self._negative_ttl and gate.fill_ok:  # fenced: a racing write wins
                        l1.set_if_fresh(ck, ABSENT, self._weight(id_, 0), token,
                                        self._negative_ttl)
                    return None
                value = self.spec.decode(raw, key, id_)
                if not gate.fill_ok or pttl == 0:
                    return value
                ttl = l1.default_ttl
                if pttl > 0:
                    ttl = pttl / 1000 if ttl is None else min(ttl, pttl / 1000)
                weight = self._weight(id_, len(raw))
                if l1.set_if_fresh(ck, value, weight, token, ttl) or weight > l1.max_weight:
                    return value
            finally:
                l1.end_fill()
        return value

    async def write(
        self,
        account_id: str | None,
        id_: str,
        target: Target,
        compute: Callable[[Guess], Step[Any]],
        guess: Guess,
        *,
        keep: V | None = None,
        ttl_s: float | None = None,
        replace: bool = False,
    ) -> Outcome[Any]:
        """Write through the one write path; then ``keep`` (the value written) is cached
        (fenced, for ``ttl_s`` at most), or the entry dropped. A failed write drops it."""
        ck = self.l1_key(account_id, id_)
        l1 = self.l1
        token = l1.begin_fill()
        try:
            outcome = await write(
                self._ctx.remote, f"write {self.spec.kind} {id_!r}", target, compute, guess,
                replace=replace,
            )
            stored = False
            if keep is not None and self._ctx.gate.fill_ok and outcome.step.value is not None:
                ttl = l1.default_ttl
                if ttl_s is not None:
                    ttl = ttl_s if ttl is None else min(ttl, ttl_s)
                weight = self._weight(id_, len(outcome.step.value))
                stored = l1.set_if_fresh(ck, keep, weight, token, ttl)
            if not stored:
                l1.invalidate(ck)
            return outcome
        except BaseException:
            l1.invalidate(ck)  # failed or unknown: L1 must not hold what Redis may not have
            raise
        finally:
            l1.end_fill()

    # -- events -----------------------------------------------------------------------
    def reset(self) -> None:
        """Nothing pending to forget (events never refresh these entries)."""

    def drop_local(self, action: str, event: Event, account_id: str | None) -> None:
        """This instance published ``event`` by hand: drop what it names from L1."""
        self.apply_event(action, Event(type=event.type, id=event.id, ids=event.ids), account_id)

    def drop_account(self, account_id: str) -> int:
        """Drop every L1 entry of ``account_id`` (scoped kinds: the account's keys;
        global ones: the values ``tenant_of`` assigns to it); return how many.
        Rejects every fill in flight in the namespace, as ``Sync`` does."""
        l1 = self.l1
        if self.spec.scoped:
            return l1.invalidate_where(lambda k: type(k) is tuple and k[0] == account_id)
        tenant_of = self.spec.tenant_of
        if tenant_of is None:
            return 0
        # get_stale(k, inf): expired entries kept for serve-stale, held ones too
        return l1.invalidate_where(lambda k: tenant_of(l1.get_stale(k, math.inf)) == account_id)

    def _invalidate_ids(self, account_id: str | None, ids: Sequence[str]) -> None:
        """Drop each id's entry; every valid id is dropped, then an invalid one raises."""
        if self.spec.scoped:
            validate_id(account_id, "account_id")
        bad: ValidationError | None = None
        for raw_id in ids:
            try:
                id_ = self.spec.event_id(raw_id)
            except ValidationError as err:
                bad = bad or err
                continue
            self.l1.invalidate(self.l1_key(account_id, id_))
        if bad is not None:
            raise bad

    def apply_event(self, action: str, event: Event, account_id: str | None) -> str:
        """Apply one event to L1: ``"sync"`` (namespace dropped; for a scoped kind, the
        account's entries), ``"echo"`` (own event), ``"unchanged"`` (its data equals
        the cached value) or ``"invalidate"`` (``Invalidate``: the entries of its
        ``ids``).

        Malformed data still drops the entry it names, then raises SerializationError.
        """
        l1 = self.l1
        if action == "Sync":
            if self.spec.scoped and account_id is not None:
                self.drop_account(account_id)
            else:
                l1.invalidate_all()
            return "sync"
        if action == "Invalidate":  # dropping is safe in any order: own ones too
            self._invalidate_ids(account_id, event.ids)
            return "invalidate"
        if self.spec.scoped:
            validate_id(account_id, "account_id")
        id_ = self.spec.event_id(event.id)
        if event.origin and event.origin == self._ctx.instance_id:
            return "echo"
        ck = self.l1_key(account_id, id_)
        if action != "Delete" and event.has_data:
            cached = l1.peek(ck)
            try:
                value = self.spec.decode(bytes(event.data), "event " + self.spec.kind, id_)
                if getattr(value, "id", id_) != id_ or getattr(
                        value, "account_id", "") not in ("", account_id):
                    raise SerializationError(
                        f"event data of {self.spec.kind} {id_!r} does not match")
            except SerializationError:
                l1.invalidate(ck)
                raise
            if cached is not None and value == cached:
                return "unchanged"
        l1.invalidate(ck)
        return "invalidate"
