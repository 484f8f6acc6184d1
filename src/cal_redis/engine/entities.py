"""The one generic engine behind every hash-field entity (regions, proxies, accounts,
users, devices).

A small declarative :class:`EntitySpec` per entity (namespace, key builders, model
type, idents, scope) drives :class:`Entities`: cache-first get, get by ident, list,
one-round-trip batch get, all through the one :class:`~.single_flight.SingleFlight`,
and writes (set, partial update, delete) through the one write path
(:func:`~.writes.write`): entity, ident mappings and event in one script.

**Serve-stale on error** (the namespace's ``stale_if_error`` > 0): a cache-first read
whose Redis read fails with :class:`~cal_redis.errors.ConnectionError` (or its
:class:`~cal_redis.errors.TimeoutError`) returns the value L1 still holds for the key
when it was filled or confirmed less than ``stale_if_error`` seconds ago
(``LRUCache.get_stale``: expired, or held while the sync is suspended); a batch does
so per id, and raises when one id has neither. **Refresh-ahead** (the namespace's
``refresh_ahead`` > 0): a hit in the last part of an entry's TTL starts one background
read (:class:`~.refresh.Refresher`; the keys due in one event-loop tick share one
``HMGET``) through the same single-flight and fenced fill as a miss.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from .. import codec
from ..errors import (
    CalRedisError,
    ConnectionError,
    NotFoundError,
    SerializationError,
    ValidationError,
)
from ..keys import KeyBuilder, validate_id, validate_ident, validate_ids
from ..models import Event, Model
from ..remote import HMGET_CHUNK, scan_entries
from .coalesce import HashReader
from .negative import ABSENT, held
from .refresh import Failures, Refresher, gathered
from .single_flight import SingleFlight
from .writes import KNOWN, Guess, Step, Target, write

if TYPE_CHECKING:
    from .._context import Context
    from .._fast import LRUCache

__all__ = ("EntitySpec", "Entities")

log = logging.getLogger("cal_redis.warm")

T = TypeVar("T", bound=Model)

_IDENT = "\x00ident"  # marks ident -> id entries in the entity's L1 namespace
#: A page of a warm-up: ids, their stored values (None: missing), progress so far.
_Page = tuple[Sequence[str], Sequence["bytes | None"], int]
_get_id = attrgetter("id")
_NONE: Any = object()  # get_stale found nothing


@dataclass(frozen=True, slots=True)
class EntitySpec(Generic[T]):
    """What distinguishes one cache-first entity from another."""

    kind: str  # event prefix and error name, e.g. "User"
    namespace: str  # L1 namespace, e.g. "users"
    model: type[T]
    hash_key: Callable[[KeyBuilder, str | None], str]
    idents_key: Callable[[KeyBuilder, str | None], str] | None = None
    ident_fields: tuple[str, ...] = ()
    scoped: bool = False  # account-scoped keys (devices)
    #: The field naming the account an entity of a global kind belongs to (what
    #: ``drop_account`` matches); entities without that field belong to none.
    tenant_field: str = "account_id"


class Entities(Generic[T]):
    """Cache-first operations of one entity over L1 and L2 (see the module docstring)."""

    __slots__ = (
        "_ctx",
        "_decode",
        "_gate",
        "_global_hkey",
        "_id_arg",
        "_known",
        "_negative_ttl",
        "_negatives_until",
        "_readers",
        "_remote",
        "_stale",
        "flights",
        "global_log",
        "l1",
        "pending",
        "refresher",
        "spec",
        "stale_serves",
    )

    def __init__(self, spec: EntitySpec[T], ctx: Context) -> None:
        self.spec = spec
        self._ctx = ctx
        self._remote = ctx.remote
        self._gate = ctx.gate
        self.l1: LRUCache = ctx.local[spec.namespace]
        self.flights: SingleFlight[Hashable, T | None] = SingleFlight()
        # Own writes whose echo has not come back yet: L1 key -> count. Foreign
        # events for such a key are older than our write and must not win.
        self.pending: dict[Hashable, int] = {}
        self._decode = codec.decoder(spec.model).decode
        self._id_arg = spec.kind.lower() + "_id"
        self._global_hkey = "" if spec.scoped else spec.hash_key(ctx.keys, None)
        #: The event log of a global kind (its table's); None for a scoped kind,
        #: whose events go to each account's log.
        self.global_log: str | None = (
            None if spec.scoped else ctx.keys.table_log(self._global_hkey))
        self._known = codec.known_fields(spec.model)
        self._negative_ttl = ctx.config.budget(spec.namespace).negative_ttl
        # Until when (monotonic) an ABSENT entity entry may be alive: batch reads look
        # for the marker only then, so a namespace without misses pays nothing.
        self._negatives_until = 0.0
        # Coalesced readers by hash key (None: coalescing off); those of account
        # hashes are dropped when idle.
        self._readers: dict[str, HashReader] | None = {} if ctx.config.coalesce_reads else None
        #: Serve-stale window of the namespace (s; 0: off) and the values served so.
        self._stale = ctx.config.stale_if_error_for(spec.namespace)
        self.stale_serves = 0
        self.refresher = Refresher(self.l1, ctx.gate, self.flights, self._refresh,
                                   ctx.config.refresh_ahead_for(spec.namespace),
                                   spec.namespace)

    @property
    def joins(self) -> int:
        """Callers that joined another caller's load."""
        return self.flights.joins

    # -- keys -------------------------------------------------------------------------
    def l1_key(self, account_id: str | None, id_: str) -> Hashable:
        """The L1 key of an entity."""
        return (account_id, id_) if self.spec.scoped else id_

    def _ident_l1_key(self, account_id: str | None, ident: str) -> Hashable:
        return (account_id, _IDENT, ident) if self.spec.scoped else (_IDENT, ident)

    def _hkey(self, account_id: str | None) -> str:
        if self.spec.scoped:
            validate_id(account_id, "account_id")
        return self.spec.hash_key(self._ctx.keys, account_id)

    def idents_of(self, obj: Any) -> frozenset[str]:
        """The non-empty ident values of an entity (or of a decoded dict)."""
        fields = self.spec.ident_fields
        if isinstance(obj, dict):
            values = [obj.get(f) for f in fields]
        else:
            values = [getattr(obj, f, None) for f in fields]
        return frozenset(v for v in values if isinstance(v, str) and v)

    def _hget(self, hkey: str, field: str) -> Awaitable[bytes | None]:
        readers = self._readers
        if readers is None:
            remote = self._remote
            read: Awaitable[bytes | None] = remote.read("HGET " + hkey, remote.cmd.hget, hkey, field)
            return read
        reader = readers.get(hkey)
        if reader is None:
            drop = None if hkey == self._global_hkey else readers.pop
            reader = readers[hkey] = HashReader(
                self._remote, hkey, None if drop is None else lambda k: drop(k, None)
            )
        return reader.get(field)

    def _weight(self, json_len: int) -> int:
        return self._ctx.local.weight(self.spec.namespace, json_len)

    def _checked(self, value: T, hkey: str, id_: str, account_id: str | None) -> T:
        """``value`` read from ``hkey``/``id_`` if it is that entity, else SerializationError."""
        if value.id != id_:  # type: ignore[attr-defined]
            raise SerializationError(
                f"stored {self.spec.kind} has id {value.id!r}", key=hkey, field=id_  # type: ignore[attr-defined]
            )
        if self.spec.scoped and getattr(value, "account_id", "") not in ("", account_id):
            raise SerializationError(
                f"stored {self.spec.kind} belongs to account "
                f"{getattr(value, 'account_id')!r}",  # noqa: B009
                key=hkey, field=id_,
            )
        return value

    # -- reads ------------------------------------------------------------------------
    async def get(self, account_id: str | None, id_: str) -> T | None:
        """Cache-first get by id: L1, else one HGET (single-flight) and a fenced fill."""
        key = self.l1_key(account_id, id_)
        try:
            hit: T | None = self.l1.get(key)
        except TypeError:
            hit = None  # unhashable id: load() names the argument
        if hit is not None:
            return None if hit is ABSENT else hit
        return await self.load(account_id, id_)

    def load(self, account_id: str | None, id_: str) -> Awaitable[T | None]:
        """L1 miss path of :meth:`get`: validate (at once, before any I/O), then the
        awaitable of the single-flight HGET, decode and fenced fill. Not a coroutine of
        its own: one frame less per waiting miss (thousands wait at once under load)."""
        validate_id(id_, self._id_arg)
        hkey = self._global_hkey or self._hkey(account_id)
        key = (account_id, id_) if self.spec.scoped else id_
        pending = self.flights.run(key, lambda: self._fetch(hkey, key, account_id, id_))
        if self._stale:
            return self._or_stale(key, pending)
        return pending

    async def _or_stale(self, key: Hashable, pending: Awaitable[T | None]) -> T | None:
        """``await pending``; if Redis cannot be reached, the stale value of ``key``
        (None for one known absent) when L1 has one young enough, else the error."""
        try:
            return await pending
        except ConnectionError:
            value = self.l1.get_stale(key, self._stale, _NONE)
            if value is _NONE:
                raise
            self.stale_serves += 1
            return held(value)  # type: ignore[no-any-return]

    def _stale_values(self, keys: Sequence[Hashable]) -> list[T | None] | None:
        """The stale values of every key of a failed batch read, or None when one has
        none (the batch then raises)."""
        get_stale = self.l1.get_stale
        values = [get_stale(k, self._stale, _NONE) for k in keys]
        if _NONE in values:
            return None
        self.stale_serves += len(values)
        return [held(v) for v in values]

    async def _refresh(self, keys: list[Hashable]) -> Failures:
        """Refresh-ahead of distinct L1 keys (entities, ident mappings): the entities
        of one hash in one ``HMGET`` through the single-flight (as a batch read), each
        ident mapping by itself; every fill fenced, as a miss's would be."""
        scoped = self.spec.scoped
        groups: dict[str | None, list[Hashable]] = {}
        jobs: list[tuple[int, Awaitable[object]]] = []
        for key in keys:
            if type(key) is tuple and key[-2] == _IDENT:
                jobs.append((1, self.flights.run(key, functools.partial(self._refresh_ident, key))))
            else:
                groups.setdefault(key[0] if scoped else None, []).append(key)  # type: ignore[index]
        for account_id, group in groups.items():
            jobs.append((len(group), self._refresh_group(account_id, group)))
        return await gathered(jobs)

    async def _refresh_group(self, account_id: str | None, keys: list[Hashable]) -> Failures:
        """Refresh-ahead of entities of one hash (see :meth:`_refresh`). When a stored
        value does not decode, each key is read on its own so only that one fails."""
        scoped = self.spec.scoped
        hkey = self._global_hkey or self._hkey(account_id)

        def one(key: Hashable) -> Awaitable[T | None]:
            id_: str = key[1] if scoped else key  # type: ignore[index,assignment]
            return self._fetch(hkey, key, account_id, id_)

        async def load_many(fetch: list[Hashable]) -> list[T | None]:
            return await self._fetch_batch(hkey, fetch, account_id, absent=True)

        try:
            await self.flights.run_many(keys, load_many, one)
        except SerializationError:
            return await gathered(
                [(1, self.flights.run(k, functools.partial(one, k))) for k in keys])
        return []

    async def _refresh_ident(self, ikey: tuple[Any, ...]) -> None:
        """Read an ident mapping again: the same id (or still absent) is stored afresh
        (fenced), anything else drops the entry (the next lookup resolves it)."""
        spec = self.spec
        account_id = ikey[0] if spec.scoped else None
        ident: str = ikey[-1]
        assert spec.idents_key is not None
        ikey_hash = spec.idents_key(self._ctx.keys, account_id)
        l1 = self.l1
        token = l1.begin_fill()
        try:
            raw_id = await self._hget(ikey_hash, ident)
            cached = l1.peek(ikey)
            if raw_id is None and cached is ABSENT:
                self._fill_absent(ikey, token)
            elif raw_id is not None and isinstance(cached, str) and raw_id == cached.encode():
                if self._gate.fill_ok:
                    weight = self._ctx.local.ident_weight(spec.namespace, len(ident) + len(cached))
                    l1.set_if_fresh(ikey, cached, weight, token)
            elif cached is not None:
                l1.invalidate(ikey)
            return None
        finally:
            l1.end_fill()

    async def _fetch(self, hkey: str, key: Hashable, account_id: str | None, id_: str) -> T | None:
        l1 = self.l1
        token = l1.begin_fill()
        try:
            raw = await self._hget(hkey, id_)
            if raw is None:
                self._fill_absent(key, token)
                return None
            try:
                value: T = self._decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                codec.decode(raw, self.spec.model, key=hkey, field=id_)  # raises, named
                raise
            self._checked(value, hkey, id_, account_id)
            if self._gate.fill_ok:
                l1.set_if_fresh(key, value, self._weight(len(raw)), token)
            return value
        finally:
            l1.end_fill()

    def _fill_absent(self, key: Hashable, token: int) -> None:
        """Remember ``key`` as absent for the negative TTL (fenced by ``token``)."""
        ttl = self._negative_ttl
        if ttl and self._gate.fill_ok:
            weight = self._ctx.local.ident_weight(self.spec.namespace, 0)
            if self.l1.set_if_fresh(key, ABSENT, weight, token, ttl) and not (
                    type(key) is tuple and key[-2] == _IDENT):
                # + 1 s: the L1's coarse clock may keep the entry a tick longer.
                self._negatives_until = time.monotonic() + ttl + 1.0

    async def get_by_ident(self, account_id: str | None, ident: str) -> T | None:
        """Resolve an ident (hash ``*:idents`` → id) then get the entity, both cache-first.

        A cached mapping is verified against the entity it points to, so a
        mapping left stale by a rename can never return the wrong entity.
        """
        spec = self.spec
        if spec.idents_key is None:
            raise CalRedisError(f"{spec.kind} has no idents")
        validate_ident(ident, "ident")
        if spec.scoped:
            validate_id(account_id, "account_id")
        ikey_hash = spec.idents_key(self._ctx.keys, account_id if spec.scoped else None)
        ikey = self._ident_l1_key(account_id, ident)
        l1 = self.l1
        cached_id = l1.get(ikey)
        if cached_id is ABSENT:
            return None
        if cached_id is not None:
            ent = await self.get(account_id, cached_id)
            if ent is not None and ident in self.idents_of(ent):
                return ent
            l1.invalidate(ikey)
        token = l1.begin_fill()
        try:
            try:
                raw_id = await self._hget(ikey_hash, ident)
            except ConnectionError:
                if not self._stale:
                    raise
                found, ent = self._stale_by_ident(account_id, ident, ikey)
                if not found:
                    raise
                return ent
            if raw_id is None:
                self._fill_absent(ikey, token)
                return None
            try:
                id_ = validate_id(raw_id.decode(), "id")
            except (UnicodeDecodeError, ValidationError) as err:
                raise SerializationError(
                    f"ident maps to an invalid id {raw_id!r}", key=ikey_hash, field=ident
                ) from err
            ent = await self.get(account_id, id_)
            if ent is None or ident not in self.idents_of(ent):
                return None  # dangling mapping: the entity moved on or is gone
            if self._gate.fill_ok:
                weight = self._ctx.local.ident_weight(self.spec.namespace, len(ident) + len(id_))
                l1.set_if_fresh(ikey, id_, weight, token)
            return ent
        finally:
            l1.end_fill()

    def _stale_by_ident(
        self, account_id: str | None, ident: str, ikey: Hashable
    ) -> tuple[bool, T | None]:
        """Serve-stale of :meth:`get_by_ident`: (True, the entity) from the stale
        mapping and the stale entity it names, verified to carry ``ident``; (True,
        None) when the mapping is stale-known absent; (False, None) when L1 has none."""
        l1 = self.l1
        cached_id = l1.get_stale(ikey, self._stale, _NONE)
        if cached_id is ABSENT:
            self.stale_serves += 1
            return True, None
        if cached_id is _NONE:
            return False, None
        ent = held(l1.get_stale(self.l1_key(account_id, cached_id), self._stale))
        if ent is None or ident not in self.idents_of(ent):
            return False, None
        self.stale_serves += 1
        return True, ent

    async def get_all(self, account_id: str | None) -> list[T]:
        """Every entity straight from Redis (HGETALL), decoded; L1 is not consulted."""
        hkey = self._hkey(account_id)
        remote = self._remote
        raw: dict[bytes, bytes] = await remote.read("HGETALL " + hkey, remote.cmd.hgetall, hkey)
        fields = [f.decode(errors="replace") for f in raw]
        values = codec.decode_batch(list(raw.values()), self.spec.model, key=hkey, fields=fields)
        return [self._checked(v, hkey, f, account_id) for v, f in zip(values, fields, strict=True)
                if v is not None]

    async def get_batch(self, account_id: str | None, ids: Sequence[str]) -> list[T | None]:
        """Batch get: L1 first, all misses in one round trip, order kept, ``None`` where
        missing. Ids already being loaded by another caller are awaited, not fetched again.
        """
        if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
            raise ValidationError("ids", f"expected a sequence of ids, got {type(ids).__name__}")
        id_list: list[Any] = ids if type(ids) is list else list(ids)
        scoped = self.spec.scoped
        keys: list[Hashable] = [(account_id, i) for i in id_list] if scoped else id_list
        try:
            out: list[T | None] = self.l1.get_many(keys)
        except TypeError:
            validate_ids(id_list, "ids")  # names the unhashable (non-str) id
            raise
        n_miss = out.count(None)
        absent: list[int] = []
        if self._negatives_until:  # ids known absent: None, not fetched
            if time.monotonic() > self._negatives_until:
                self._negatives_until = 0.0  # every ABSENT entry has expired
            elif ABSENT in out:
                absent = [i for i, v in enumerate(out) if v is ABSENT]
                for i in absent:
                    out[i] = None
        if n_miss == 0:
            return out
        # The misses: their keys, each once, and where they go in ``out``; ``dups``:
        # later positions of a key asked for twice.
        pos: Sequence[int] = range(len(out))
        mkeys = keys
        if n_miss != len(out):
            known = frozenset(absent)
            pos = [i for i, v in enumerate(out) if v is None and i not in known]
            mkeys = [keys[i] for i in pos]
        dups: list[tuple[int, list[int]]] = []
        if len(set(mkeys)) != len(mkeys):
            first: dict[Hashable, list[int]] = {}
            for i, k in zip(pos, mkeys, strict=True):
                first.setdefault(k, []).append(i)
            mkeys = list(first)
            pos = [p[0] for p in first.values()]
            dups = [(p[0], p[1:]) for p in first.values() if len(p) > 1]
        mids: list[object] = [k[1] for k in mkeys] if scoped else mkeys  # type: ignore[index]
        try:
            validate_ids(mids, "ids")
        except ValidationError:
            for i, id_ in zip(pos, mids, strict=True):  # name the position in the caller's list
                validate_id(id_, f"ids[{i}]")
            raise
        hkey = self._global_hkey or self._hkey(account_id)

        async def load_many(fetch: list[Hashable]) -> list[T | None]:
            return await self._fetch_batch(hkey, fetch, account_id)

        async def load_one(key: Hashable) -> T | None:
            return await self.load(account_id, key[1] if scoped else key)  # type: ignore[index,arg-type]

        try:
            values = await self.flights.run_many(mkeys, load_many, load_one)
        except ConnectionError:
            stale = self._stale_values(mkeys) if self._stale else None
            if stale is None:
                raise
            values = stale
        if len(values) == len(out):
            out = values  # every id missed, each once: already in the caller's order
        else:
            for i, value in zip(pos, values, strict=True):
                out[i] = value
        for i, later in dups:
            for j in later:
                out[j] = out[i]
        return out

    async def _fetch_batch(
        self, hkey: str, keys: list[Hashable], account_id: str | None, *, absent: bool = False
    ) -> list[T | None]:
        """One round trip of HMGETs for ``keys`` (none in flight), decoded in order,
        checked, and filled into L1 (fenced); with ``absent``, the keys Redis does not
        have are remembered as absent (as a single read does)."""
        ids: list[str] = [k[1] for k in keys] if self.spec.scoped else keys  # type: ignore[index,assignment]
        l1 = self.l1
        token = l1.begin_fill()
        try:
            raws = await self._remote.hmget("HMGET " + hkey, hkey, ids)
            values = self._fill_batch(hkey, keys, ids, raws, account_id, token)[0]
            if absent:
                for key, raw in zip(keys, raws, strict=True):
                    if raw is None:
                        self._fill_absent(key, token)
            return values
        finally:
            l1.end_fill()

    def _fill_batch(
        self, hkey: str, keys: Sequence[Hashable], ids: Sequence[str],
        raws: Sequence[bytes | None], account_id: str | None, token: int,
        room: int | None = None,
    ) -> tuple[list[T | None], int, int, bool]:
        """Decode ``raws`` (the values of ``ids`` in ``hkey``, None where missing) in
        order, check them, and fill them into L1 with the fill ``token`` (fenced: an
        entry written or invalidated since the token was taken is not overwritten).

        With ``room`` (bytes of L1 weight), only the first entries that fit in it are
        filled. Returns the values, the entries stored, the JSON bytes of the
        entries found, and whether every entry found fitted in ``room``.
        """
        values = codec.decode_batch(raws, self.spec.model, key=hkey, fields=ids)
        try:
            sizes = list(map(len, raws))  # type: ignore[arg-type]
        except TypeError:  # some ids are missing (None): check and fill the others
            got = [j for j, r in enumerate(raws) if r is not None]
            fkeys: Sequence[Hashable] = [keys[j] for j in got]
            fvalues: Sequence[Any] = [values[j] for j in got]
            self._check_batch(fvalues, [ids[j] for j in got], hkey, account_id)  # type: ignore[arg-type]
            sizes = [len(raws[j]) for j in got]  # type: ignore[arg-type]
        else:
            fkeys, fvalues = keys, values
            self._check_batch(fvalues, ids, hkey, account_id)  # type: ignore[arg-type]
        nbytes = sum(sizes)
        fits = True
        if room is not None:
            for n, weight in enumerate(self._ctx.local.weights(self.spec.namespace, sizes)):
                room -= weight
                if room < 0:  # the first n fit
                    fits = False
                    fkeys, fvalues, sizes = fkeys[:n], fvalues[:n], sizes[:n]
                    break
        stored = 0
        if self._gate.fill_ok and fkeys:
            stored = self._ctx.local.fill_many(self.spec.namespace, fkeys, fvalues, sizes, token)
        return values, stored, nbytes, fits

    # -- warming ----------------------------------------------------------------------
    async def warm_ids(
        self, account_id: str | None, ids: Sequence[str], *, chunk: int = 10 * HMGET_CHUNK,
        progress: Callable[[int], object] | None = None,
    ) -> tuple[int, int, int, bool]:
        """Fill L1 with the entities ``ids`` (validated by the caller): HMGETs of up
        to ``chunk`` ids per round trip (pipelined by 1,000), each round trip one
        fenced fill, as a batch read does. Stops when the namespace's budget is
        full. Returns (entities found, stored, JSON bytes, complete);
        ``progress(ids asked so far)`` after each round trip.
        """
        hkey = self._hkey(account_id)
        starts = iter(range(0, len(ids), chunk))

        async def next_page() -> _Page | None:
            start = next(starts, None)
            if start is None:
                return None
            part = ids[start : start + chunk]
            return part, await self._remote.hmget("HMGET " + hkey, hkey, part), start + len(part)

        return await self._warm(account_id, hkey, next_page, progress)

    async def warm_all(
        self, account_id: str | None, *, count: int = HMGET_CHUNK,
        progress: Callable[[int], object] | None = None,
    ) -> tuple[int, int, int, bool]:
        """Fill L1 with the whole table (``HSCAN``, ``count`` fields asked per page),
        each page one fenced fill, until the namespace's budget is full. Returns
        (entities found, stored, JSON bytes, complete: the whole table fitted);
        ``progress(entries read so far)`` after each page.
        """
        hkey = self._hkey(account_id)
        pages = scan_entries(self._remote, "HSCAN", hkey, count=count)
        done = 0

        async def next_page() -> _Page | None:
            nonlocal done
            page = await anext(pages, None)
            if page is None:
                return None
            ids: list[str] = []
            raws: list[bytes | None] = []
            for field, raw in zip(page[::2], page[1::2], strict=True):
                try:
                    ids.append(validate_id(field.decode(), "field"))
                except (UnicodeDecodeError, ValidationError):
                    log.warning("warm %s: field %r is not an id, skipped", hkey, field)
                    continue
                raws.append(raw)
            done += len(ids)
            return ids, raws, done

        try:
            return await self._warm(account_id, hkey, next_page, progress)
        finally:
            await pages.aclose()

    async def _warm(
        self, account_id: str | None, hkey: str, next_page: Callable[[], Awaitable[_Page | None]],
        progress: Callable[[int], object] | None,
    ) -> tuple[int, int, int, bool]:
        """Read pages with ``next_page()`` (ids, their values, progress so far; None at
        the end), each read inside its own fill: the token is taken before the read,
        so a write or event meanwhile wins. Stops when the budget is full."""
        l1 = self.l1
        scoped = self.spec.scoped
        found = stored = nbytes = 0
        while True:
            token = l1.begin_fill()
            try:
                got_page = await next_page()
                if got_page is None:
                    return found, stored, nbytes, True
                ids, raws, done = got_page
                keys: Sequence[Hashable] = [(account_id, i) for i in ids] if scoped else ids
                room = l1.max_weight - l1.weight
                got, n, size, fits = self._fill_tolerant(hkey, keys, ids, raws, account_id,
                                                         token, room)
            finally:
                l1.end_fill()
            found, stored, nbytes = found + got, stored + n, nbytes + size
            if progress is not None:
                progress(done)
            if not fits:
                return found, stored, nbytes, False

    def _fill_tolerant(
        self, hkey: str, keys: Sequence[Hashable], ids: Sequence[str],
        raws: Sequence[bytes | None], account_id: str | None, token: int, room: int,
    ) -> tuple[int, int, int, bool]:
        """:meth:`_fill_batch` that skips (and logs) entries that do not decode or name
        another entity, instead of failing the whole page: a warm-up fills what it can.
        Returns (found, stored, JSON bytes, fits)."""
        try:
            values, n, size, fits = self._fill_batch(hkey, keys, ids, raws, account_id, token,
                                                     room)
            return len(values) - values.count(None), n, size, fits
        except SerializationError:
            pass
        good = []
        for j, (id_, raw) in enumerate(zip(ids, raws, strict=True)):
            if raw is None:
                continue
            try:
                self._checked(codec.decode(raw, self.spec.model, key=hkey, field=id_), hkey,
                              id_, account_id)
            except SerializationError as err:
                log.warning("warm: %s skipped", err)
                continue
            good.append(j)
        _, n, size, fits = self._fill_batch(
            hkey, [keys[j] for j in good], [ids[j] for j in good],
            [raws[j] for j in good], account_id, token, room,
        )
        return len(good), n, size, fits

    def _check_batch(self, values: list[T], ids: list[str], hkey: str, account_id: str | None) -> None:
        if list(map(_get_id, values)) != ids or (
            self.spec.scoped
            and any(getattr(v, "account_id", "") not in ("", account_id) for v in values)
        ):
            for v, id_ in zip(values, ids, strict=True):
                self._checked(v, hkey, id_, account_id)

    # -- writes -----------------------------------------------------------------------
    def _owned(self, account_id: str | None, obj: T) -> T:
        if not isinstance(obj, self.spec.model):
            raise ValidationError(
                self.spec.kind.lower(),
                f"expected {self.spec.model.__name__}, got {type(obj).__name__}",
            )
        if self.spec.scoped:
            validate_id(account_id, "account_id")
            owner = getattr(obj, "account_id", "")
            if owner and owner != account_id:
                raise ValidationError(
                    "account_id",
                    f"{self.spec.kind} {getattr(obj, 'id')!r} belongs to account {owner!r}",  # noqa: B009
                )
            if not owner:
                obj = msgspec.structs.replace(obj, account_id=account_id)
        return obj

    def _guess(self, key: Hashable) -> bytes | None:
        """What this instance believes is stored: its L1 copy, re-encoded (None: no copy,
        or known absent: then the write script reads what is stored)."""
        copy = held(self.l1.peek(key))
        return None if copy is None else codec.encode(copy)

    async def set(self, account_id: str | None, obj: T) -> T:
        """Write ``obj`` (merged over fields other services wrote), its idents and event.

        One round trip when nothing is stored, when the stored value has only fields
        this version knows, or when L1 holds it; two otherwise.
        """
        obj = self._owned(account_id, obj)
        id_ = validate_id(getattr(obj, "id"), self._id_arg)  # noqa: B009
        fresh = codec.check(obj, self.spec.kind.lower())
        new_idents = self.idents_of(obj)
        for ident in new_idents:
            validate_ident(ident, "ident")
        hkey = self._hkey(account_id)

        def compute(stored: Guess) -> Step[T]:
            data = codec.merge_encode(stored, obj, key=hkey, field=id_) if isinstance(
                stored, bytes) else fresh
            return self._step(account_id, id_, stored, obj, data, new_idents)

        guess: Guess = self._guess(self.l1_key(account_id, id_))
        if guess is None:
            guess = KNOWN  # absent, or nothing unknown stored: replace as it is
        result = await self._write(account_id, id_, compute, guess, replace=True)
        assert result is not None
        return result

    async def update(self, account_id: str | None, id_: str, changes: dict[str, Any]) -> T:
        """Change some fields of the stored entity; every field of the model is written
        (a stored record missing fields comes back complete), unknown stored fields are
        kept, a concurrent update of the same entity is never lost."""
        spec = self.spec
        validate_id(id_, self._id_arg)
        if not changes:
            raise ValidationError("changes", "nothing to update")
        if "id" in changes or (spec.scoped and "account_id" in changes):
            raise ValidationError("changes", "the id and the owning account cannot change")
        converted = codec.check_changes(spec.model, changes)
        for name in spec.ident_fields:
            value = converted.get(name)
            if isinstance(value, str) and value:
                validate_ident(value, name)
        hkey = self._hkey(account_id)

        def compute(stored: Guess) -> Step[T]:
            if not isinstance(stored, bytes):
                raise NotFoundError(spec.kind, id_)
            value, data = codec.merge_update(stored, spec.model, converted, key=hkey, field=id_)
            return self._step(account_id, id_, stored, value, data, self.idents_of(value))

        key = self.l1_key(account_id, id_)
        guess = self._guess(key)
        if guess is None:
            remote = self._remote
            guess = await remote.read("HGET " + hkey, remote.cmd.hget, hkey, id_)
        result = await self._write(account_id, id_, compute, guess)
        assert result is not None
        return result

    async def delete(self, account_id: str | None, id_: str) -> bool:
        """Delete the entity and the ident mappings that point to it; True if it existed."""
        validate_id(id_, self._id_arg)
        self._hkey(account_id)

        def compute(stored: Guess) -> Step[T]:
            old = self._stored_idents(stored)
            event = codec.event(self.spec.kind + "Delete", id_, origin=self._ctx.instance_id,
                                account_id=account_id if self.spec.scoped else None)
            return Step(None, event, drop_idents=sorted(old))

        key = self.l1_key(account_id, id_)
        existed: list[bool] = []
        await self._write(account_id, id_, compute, self._guess(key), existed)
        return existed[0]

    def log_key(self, account_id: str | None) -> str:
        """The event log this kind's events of ``account_id`` go to."""
        if self.global_log is not None:
            return self.global_log
        return self._ctx.keys.account_log(account_id)  # type: ignore[arg-type]

    def _step(
        self, account_id: str | None, id_: str, stored: Guess, value: T, data: bytes,
        new_idents: frozenset[str],
    ) -> Step[T]:
        kind = self.spec.kind
        owner = account_id if self.spec.scoped else (getattr(value, "account_id", None) or None)
        origin = self._ctx.instance_id
        event = codec.event(kind + ("Create" if stored is None else "Update"), id_,
                            origin=origin, account_id=owner, data=data)
        event_if_new = b""
        if stored is KNOWN:
            event_if_new = codec.event(kind + "Create", id_, origin=origin, account_id=owner,
                                       data=data)
        drop = sorted(self._stored_idents(stored) - new_idents)
        return Step(data, event, event_if_new, drop, sorted(new_idents), value)

    async def _write(
        self,
        account_id: str | None,
        id_: str,
        compute: Callable[[Guess], Step[T]],
        guess: Guess,
        existed: list[bool] | None = None,
        *,
        replace: bool = False,
    ) -> T | None:
        spec = self.spec
        keys = self._ctx.keys
        target = Target(
            key=self._hkey(account_id),
            field=id_,
            idents_key=spec.idents_key(keys, account_id) if spec.idents_key else None,
            channel=keys.account_events(account_id) if spec.scoped else keys.EVENTS,  # type: ignore[arg-type]
            log=self.log_key(account_id),
            id=id_,
            known=self._known,
            ident_fields=",".join(spec.ident_fields),
        )
        key = self.l1_key(account_id, id_)
        l1 = self.l1
        before = held(l1.peek(key))
        track = self._gate.track
        if track:
            self.pending[key] = self.pending.get(key, 0) + 1
        # Fenced like a fill: if an event (newer than our write: older ones are
        # "superseded" while pending) or a flush touches the key before we store
        # our value below, the store is refused and the key invalidated instead.
        token = l1.begin_fill()
        try:
            outcome = await write(
                self._remote, f"write {spec.kind} {id_!r}", target, compute, guess,
                replace=replace,
            )
        except BaseException:
            l1.end_fill()
            # Failed, or outcome unknown: L1 must not hold what Redis may not have.
            if track:
                self._unpend(key)
            l1.invalidate(key)
            raise
        # Own L1: our write is the newest for this key until our echo comes back.
        try:
            step = outcome.step
            if existed is not None:
                existed.append(outcome.existed)
            old_idents = self._stored_idents(outcome.before) | (
                self.idents_of(before) if before is not None else frozenset()
            )
            # Old idents are dropped; new ones too (one may be cached as absent).
            for ident in old_idents | frozenset(step.add_idents):
                l1.invalidate(self._ident_l1_key(account_id, ident))
            value: T | None = step.result
            if value is None or step.value is None:
                l1.invalidate(key)
                return None
            if not (self._gate.fill_ok and l1.set_if_fresh(
                    key, value, self._weight(len(step.value)), token)):
                l1.invalidate(key)
            return value
        finally:
            l1.end_fill()

    def _unpend(self, key: Hashable) -> None:
        count = self.pending.get(key, 0) - 1
        if count > 0:
            self.pending[key] = count
        else:
            self.pending.pop(key, None)

    def _stored_idents(self, stored: Guess) -> frozenset[str]:
        if not isinstance(stored, bytes) or not self.spec.ident_fields:
            return frozenset()
        try:
            return self.idents_of(msgspec.json.decode(stored))
        except msgspec.DecodeError:
            return frozenset()  # malformed old value: nothing to clean up reliably

    # -- events -----------------------------------------------------------------------
    def reset(self) -> None:
        """Forget pending own writes (L1 was flushed: nothing is left to protect)."""
        self.pending.clear()

    def drop_local(self, action: str, event: Event, account_id: str | None) -> None:
        """This instance published ``event`` by hand: drop what it names from L1."""
        if action == "Sync":
            self._sync(account_id)
        elif action == "Invalidate":
            self._invalidate_ids(account_id, event.ids)
        else:
            self.l1.invalidate(self.l1_key(account_id, event.id))

    def _sync(self, account_id: str | None) -> None:
        """``Sync``: the namespace dropped, or only the account's entries of a scoped kind."""
        if self.spec.scoped and account_id is not None:
            self.drop_account(account_id)
            return
        self.l1.invalidate_all()
        self.pending.clear()

    def _invalidate_ids(self, account_id: str | None, ids: Sequence[str]) -> None:
        """``Invalidate``: drop each id's entry and the ident entries its cached value had.

        Every valid id is dropped; an invalid one then raises ValidationError (the
        event is counted as malformed).
        """
        if self.spec.scoped:
            validate_id(account_id, "account_id")
        l1 = self.l1
        bad: ValidationError | None = None
        for i, id_ in enumerate(ids):
            try:
                validate_id(id_, f"ids[{i}]")
            except ValidationError as err:
                bad = bad or err
                continue
            key = self.l1_key(account_id, id_)
            old = self._kept(key)
            if old is not None:
                for ident in self.idents_of(old):
                    l1.invalidate(self._ident_l1_key(account_id, ident))
            l1.invalidate(key)
        if bad is not None:
            raise bad

    def _kept(self, key: Hashable) -> Any:
        """Whatever L1 holds under ``key``: live, expired but kept for serve-stale, or
        held while suspended. What drops and invalidations look at, so that nothing
        they should drop stays to be served stale."""
        return self.l1.get_stale(key, math.inf)

    def drop_account(self, account_id: str) -> int:
        """Drop every L1 entry of ``account_id``; return how many were dropped.

        Scoped kinds: every key of the account (entities and ident mappings). Global
        kinds: the entities whose ``tenant_field`` is the account, and the ident
        mappings that point to them. Like ``Sync``, it rejects every fill in flight
        in the namespace (one may be about to store a value read before the change).
        """
        l1 = self.l1
        if self.spec.scoped:
            for key in [k for k in self.pending if k[0] == account_id]:  # type: ignore[index]
                del self.pending[key]
            return l1.invalidate_where(lambda k: type(k) is tuple and k[0] == account_id)
        field = self.spec.tenant_field
        held = l1.keys()  # a snapshot (the LRU is not iterable)
        kept = self._kept
        ids = {
            k for k in held
            if type(k) is not tuple and getattr(kept(k), field, None) == account_id
        }
        if field == "id":
            ids.add(account_id)
        return l1.invalidate_where(lambda k: k in ids or (type(k) is tuple and kept(k) in ids))

    def apply_event(self, action: str, event: Event, account_id: str | None) -> str:
        """Apply one event of this entity to L1; return what was done (for counters).

        ``Create``/``Update`` with data refresh the entry, without data invalidate it;
        ``Delete`` invalidates; ``Invalidate`` drops the entries of its ``ids``;
        ``Sync`` drops the namespace (for a scoped kind: the account's entries). An
        own echo only settles the pending count; a foreign event older than a
        pending own write is ignored. Data that cannot be decoded, or names another
        entity, still invalidates the key, then raises SerializationError (counted as
        malformed).
        """
        l1 = self.l1
        if action == "Sync":
            self._sync(account_id)
            return "sync"
        if action == "Invalidate":  # dropping is safe in any order: own ones too
            self._invalidate_ids(account_id, event.ids)
            return "invalidate"
        id_ = validate_id(event.id, "id")
        if self.spec.scoped:
            validate_id(account_id, "account_id")
        key = self.l1_key(account_id, id_)
        if event.origin == self._ctx.instance_id:
            self._unpend(key)
            return "echo"
        if key in self.pending:
            return "superseded"
        old = self._kept(key)
        if old is not None:
            for ident in self.idents_of(old):
                l1.invalidate(self._ident_l1_key(account_id, ident))
        if action in ("Create", "Update") and event.has_data:
            l1.invalidate(key)  # whatever the data turns out to be, the old value is gone
            raw = bytes(event.data)
            value = codec.decode(raw, self.spec.model, key="event " + self.spec.kind, field=id_)
            for ident in self.idents_of(value):  # an ident cached as absent now resolves
                ikey = self._ident_l1_key(account_id, ident)
                if self._kept(ikey) is ABSENT:
                    l1.invalidate(ikey)
            if getattr(value, "id", None) != id_:
                raise SerializationError(f"event id {id_!r} does not match its data")
            if self.spec.scoped and getattr(value, "account_id", "") not in ("", account_id):
                raise SerializationError(f"event data of {id_!r} belongs to another account")
            if self._gate.fill_ok:
                l1.set(key, value, self._weight(len(raw)))
                return "refresh"
        elif action in ("Create", "Update") and self.spec.ident_fields:
            # No data: which idents now resolve is unknown, so none stays cached absent.
            kept = self._kept
            l1.invalidate_where(
                lambda k: type(k) is tuple and k[-2] == _IDENT and kept(k) is ABSENT)
        l1.invalidate(key)
        return "invalidate"
