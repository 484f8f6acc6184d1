"""The one generic engine behind every cache-first entity.

A small declarative :class:`EntitySpec` per entity (namespace, key builders, model
type, idents, scope) drives :class:`Entities`: cache-first get, get by ident, list,
one-round-trip batch get with single-flight, and writes (set, partial update,
delete) that keep the entity, its ident mappings and its event in one MULTI/EXEC.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
import redis.exceptions as rexc

from .. import codec
from ..errors import CalRedisError, NotFoundError, SerializationError, ValidationError
from ..keys import KeyBuilder, validate_id, validate_ident, validate_ids
from ..models import Event, Model, now_ms
from ..remote import RETRYABLE, map_redis_error

if TYPE_CHECKING:
    from .._fast import LRUCache
    from ..cache import CallableCache

__all__ = ("EntitySpec", "Entities")

T = TypeVar("T", bound=Model)

_IDENT = "\x00ident"  # marks ident -> id entries in the entity's L1 namespace
MAX_WATCH_RETRIES = 100


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


class _LeaderCancelled(Exception):
    """The task loading a key was cancelled; joiners retry on their own."""


class _Found(Generic[T]):
    """A batch's result for its joiners: ``found[key]``, mapped only if someone asks."""

    __slots__ = ("_keys", "_map", "_values")

    def __init__(self, keys: list[Hashable], values: list[T | None]) -> None:
        self._keys = keys
        self._values = values
        self._map: dict[Hashable, T | None] | None = None

    def __getitem__(self, key: Hashable) -> T | None:
        if self._map is None:
            self._map = dict(zip(self._keys, self._values, strict=True))
        return self._map[key]


class Entities(Generic[T]):
    """Cache-first operations of one entity over L1 and L2 (see the module docstring)."""

    __slots__ = (
        "_decode",
        "_fields",
        "_global_hkey",
        "_id_arg",
        "cache",
        "flights",
        "joins",
        "l1",
        "pending",
        "spec",
    )

    def __init__(self, spec: EntitySpec[T], cache: CallableCache) -> None:
        self.spec = spec
        self.cache = cache
        self.l1: LRUCache = cache.local[spec.namespace]
        # In-flight loads: L1 key -> future of the load's _Found (one future per batch),
        # or None while a single-key load has had no joiner.
        self.flights: dict[Hashable, asyncio.Future[_Found[T]] | None] = {}
        # Own writes whose echo has not come back yet: L1 key -> count. Foreign
        # events for such a key are older than our write and must not win.
        self.pending: dict[Hashable, int] = {}
        self.joins = 0
        self._fields = frozenset(spec.model.__struct_fields__)
        self._decode = codec.decoder(spec.model).decode
        self._id_arg = spec.kind.lower() + "_id"
        self._global_hkey = "" if spec.scoped else spec.hash_key(cache.keys, None)

    def _loop_future(self) -> asyncio.Future[_Found[T]]:
        return asyncio.get_running_loop().create_future()

    # -- keys -------------------------------------------------------------------------
    def l1_key(self, account_id: str | None, id_: str) -> Hashable:
        return (account_id, id_) if self.spec.scoped else id_

    def _ident_l1_key(self, account_id: str | None, ident: str) -> Hashable:
        return (account_id, _IDENT, ident) if self.spec.scoped else (_IDENT, ident)

    def _hkey(self, account_id: str | None) -> str:
        if self.spec.scoped:
            validate_id(account_id, "account_id")
        return self.spec.hash_key(self.cache.keys, account_id)

    def idents_of(self, obj: Any) -> frozenset[str]:
        """The non-empty ident values of an entity (or of a decoded dict)."""
        fields = self.spec.ident_fields
        if isinstance(obj, dict):
            values = [obj.get(f) for f in fields]
        else:
            values = [getattr(obj, f, None) for f in fields]
        return frozenset(v for v in values if isinstance(v, str) and v)

    # -- reads ------------------------------------------------------------------------
    async def get(self, account_id: str | None, id_: str) -> T | None:
        """Cache-first get by id: L1, else one HGET (single-flight) and a fenced fill."""
        key = self.l1_key(account_id, id_)
        try:
            hit: T | None = self.l1.get(key)
        except TypeError:
            hit = None  # unhashable id: load() names the argument
        if hit is not None:
            return hit
        return await self.load(account_id, id_)

    async def load(self, account_id: str | None, id_: str) -> T | None:
        """L1 miss path of :meth:`get`: validate, single-flight HGET, decode, fenced fill."""
        validate_id(id_, self._id_arg)
        hkey = self._global_hkey or self._hkey(account_id)
        key = (account_id, id_) if self.spec.scoped else id_
        flights = self.flights
        if key in flights:
            self.joins += 1
            flight = flights[key]
            if flight is None:  # the leader made no future yet: nobody had joined
                flight = flights[key] = self._loop_future()
            try:
                return (await asyncio.shield(flight))[key]
            except _LeaderCancelled:
                return await self.load(account_id, id_)
        # Lead the load. The future joiners wait on is created by the first joiner,
        # so the common unjoined miss pays for none.
        flights[key] = None
        l1 = self.l1
        token = l1.begin_fill()
        try:
            remote = self.cache.remote
            remote.round_trips += 1
            try:
                raw: bytes | None = await remote.untyped.hget(hkey, id_)
            except RETRYABLE as err:
                raw = await remote.retry_read("HGET " + hkey, err, remote.untyped.hget, hkey, id_)
            except rexc.RedisError as err:
                remote.errors += 1
                raise map_redis_error(err, "HGET " + hkey) from err
            value: T | None = None
            if raw is not None:
                try:
                    value = self._decode(raw)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    codec.decode(raw, self.spec.model, key=hkey, field=id_)  # raises, named
                    raise
                if self.cache.fill_ok:
                    l1.set_if_fresh(key, value, self.cache.local.weight(self.spec.namespace, len(raw)), token)
        except BaseException as err:
            flight = flights.pop(key, None)
            if flight is not None:
                cancelled = isinstance(err, asyncio.CancelledError)
                flight.set_exception(_LeaderCancelled() if cancelled else err)
                flight.exception()  # retrieved: joiners re-raise it, no "never retrieved" log
            raise
        else:
            flight = flights.pop(key, None)
            if flight is not None:
                flight.set_result(_Found([key], [value]))
            return value
        finally:
            l1.end_fill()

    async def get_by_ident(self, account_id: str | None, ident: str) -> T | None:
        """Resolve an ident (hash ``*:idents`` → id) then get the entity, both cache-first.

        A cached mapping is verified against the entity it points to, so a
        mapping left stale by a rename can never return the wrong entity.
        """
        spec = self.spec
        if spec.idents_key is None:
            raise CalRedisError(f"{spec.kind} has no idents")
        validate_ident(ident, "ident")
        ikey_hash = spec.idents_key(self.cache.keys, account_id if spec.scoped else None)
        if spec.scoped:
            validate_id(account_id, "account_id")
        ikey = self._ident_l1_key(account_id, ident)
        l1 = self.l1
        cached_id = l1.get(ikey)
        if cached_id is not None:
            ent = await self.get(account_id, cached_id)
            if ent is not None and ident in self.idents_of(ent):
                return ent
            l1.invalidate(ikey)
        token = l1.begin_fill()
        try:
            client = self.cache.remote.untyped
            raw_id: bytes | None = await self.cache.remote.read(
                "HGET " + ikey_hash, lambda: client.hget(ikey_hash, ident)
            )
            if raw_id is None:
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
            if self.cache.fill_ok:
                weight = self.cache.local.ident_weight(spec.namespace, len(ident) + len(id_))
                l1.set_if_fresh(ikey, id_, weight, token)
            return ent
        finally:
            l1.end_fill()

    async def get_all(self, account_id: str | None) -> list[T]:
        """Every entity straight from Redis (HGETALL), decoded; L1 is not consulted."""
        hkey = self._hkey(account_id)
        client = self.cache.remote.untyped
        raw: dict[bytes, bytes] = await self.cache.remote.read(
            "HGETALL " + hkey, lambda: client.hgetall(hkey)
        )
        fields = [f.decode(errors="replace") for f in raw]
        return [
            v
            for v in codec.decode_batch(list(raw.values()), self.spec.model, key=hkey, fields=fields)
            if v is not None
        ]

    async def get_batch(self, account_id: str | None, ids: Sequence[str]) -> list[T | None]:
        """Batch get: L1 first, all misses in one HMGET, order kept, ``None`` where missing.

        Ids already being loaded by another caller are awaited, not fetched again.
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
        if not n_miss:
            return out
        # The misses: their keys, each once, and where they go in ``out``; ``dups``:
        # later positions of a key asked for twice.
        pos: Sequence[int] = range(len(out))
        mkeys = keys
        if n_miss != len(out):
            pos = [i for i, v in enumerate(out) if v is None]
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
        flights = self.flights
        joined: list[tuple[int, Hashable]] = []
        if flights and any(k in flights for k in mkeys):
            fetch_pos: list[int] = []
            fetch: list[Hashable] = []
            for i, k in zip(pos, mkeys, strict=True):
                if k in flights:
                    joined.append((i, k))
                else:
                    fetch_pos.append(i)
                    fetch.append(k)
            pos, mkeys = fetch_pos, fetch
        if mkeys:
            values = await self._fetch_batch(hkey, mkeys)
            if len(values) == len(out):
                out = values  # every id missed, each once: already in the caller's order
            else:
                for i, value in zip(pos, values, strict=True):
                    out[i] = value
        for i, jkey in joined:
            if jkey in flights and flights[jkey] is None:
                flights[jkey] = self._loop_future()
            flight = flights.get(jkey)
            self.joins += 1
            try:
                value = (await asyncio.shield(flight))[jkey] if flight is not None else None
            except _LeaderCancelled:
                flight = None
            if flight is None:  # finished or cancelled meanwhile: load on our own
                jid: Any = jkey[1] if scoped else jkey  # type: ignore[index]
                value = await self.get(account_id, jid)
            out[i] = value
        for i, later in dups:
            for j in later:
                out[j] = out[i]
        return out

    async def _fetch_batch(self, hkey: str, keys: list[Hashable]) -> list[T | None]:
        """One HMGET of ``keys`` (none in flight), decoded in order; fills L1, fenced."""
        ids = [k[1] for k in keys] if self.spec.scoped else keys  # type: ignore[index]
        flights = self.flights
        flight = self._loop_future()  # one future for the whole batch
        flights.update(dict.fromkeys(keys, flight))
        l1 = self.l1
        token = l1.begin_fill()
        try:
            remote = self.cache.remote
            remote.round_trips += 1
            try:
                raws: list[bytes | None] = await remote.untyped.hmget(hkey, ids)
            except RETRYABLE as err:
                raws = await remote.retry_read("HMGET " + hkey, err, remote.untyped.hmget, hkey, ids)
            except rexc.RedisError as err:
                remote.errors += 1
                raise map_redis_error(err, "HMGET " + hkey) from err
            values = codec.decode_batch(raws, self.spec.model, key=hkey, fields=ids)  # type: ignore[arg-type]
            if self.cache.fill_ok:
                fill_many = self.cache.local.fill_many
                ns = self.spec.namespace
                try:
                    sizes = list(map(len, raws))  # type: ignore[arg-type]
                except TypeError:  # some ids are missing (None): fill the others
                    got = [j for j, r in enumerate(raws) if r is not None]
                    fill_many(
                        ns,
                        [keys[j] for j in got],
                        [values[j] for j in got],
                        [len(raws[j]) for j in got],  # type: ignore[arg-type]
                        token,
                    )
                else:
                    fill_many(ns, keys, values, sizes, token)
        except BaseException as err:
            flight.set_exception(_LeaderCancelled() if isinstance(err, asyncio.CancelledError) else err)
            flight.exception()
            raise
        else:
            flight.set_result(_Found(keys, values))
            return values
        finally:
            l1.end_fill()
            if len(flights) == len(keys):
                flights.clear()  # only this batch was in flight
            else:
                for key in keys:
                    del flights[key]

    # -- writes -----------------------------------------------------------------------
    async def set(self, account_id: str | None, obj: T) -> T:
        """Write ``obj`` (merged over fields other services wrote), its idents and its event."""
        if not isinstance(obj, self.spec.model):
            raise ValidationError(
                self.spec.kind.lower(),
                f"expected {self.spec.model.__name__}, got {type(obj).__name__}",
            )
        id_: str = getattr(obj, "id")  # noqa: B009 - T is any model with an id
        if self.spec.scoped:
            owner = getattr(obj, "account_id", "")
            if owner and owner != account_id:
                raise ValidationError(
                    "account_id", f"{self.spec.kind} {id_!r} belongs to account {owner!r}"
                )
            if not owner:
                obj = msgspec.structs.replace(obj, account_id=account_id)

        def build(old: bytes | None, hkey: str) -> tuple[T, bytes]:
            return obj, codec.merge_encode(old, obj, key=hkey, field=id_)

        result = await self._write(account_id, id_, build)
        assert result is not None
        return result

    async def update(self, account_id: str | None, id_: str, changes: dict[str, Any]) -> T:
        """Partial update of stored JSON; unknown stored fields and concurrent updates kept."""
        spec = self.spec
        if not changes:
            raise ValidationError("changes", "nothing to update")
        unknown = set(changes) - self._fields
        if unknown:
            raise ValidationError("changes", f"unknown {spec.kind} fields: {sorted(unknown)}")
        if "id" in changes or (spec.scoped and "account_id" in changes):
            raise ValidationError("changes", "the id and the owning account cannot change")
        changes = msgspec.to_builtins(changes)

        def build(old: bytes | None, hkey: str) -> tuple[T, bytes]:
            if old is None:
                raise NotFoundError(spec.kind, id_)
            return codec.merge_patch(old, spec.model, changes, key=hkey, field=id_)

        result = await self._write(account_id, id_, build)
        assert result is not None
        return result

    async def delete(self, account_id: str | None, id_: str) -> bool:
        """Delete the entity and the ident mappings that point to it; True if it existed."""
        existed: list[bool] = []

        def build(old: bytes | None, hkey: str) -> None:
            existed.append(old is not None)

        await self._write(account_id, id_, build)
        return existed[-1]

    async def _write(
        self,
        account_id: str | None,
        id_: str,
        build: Callable[[bytes | None, str], tuple[T, bytes] | None],
    ) -> T | None:
        spec = self.spec
        validate_id(id_, spec.kind.lower() + "_id")
        hkey = self._hkey(account_id)
        keys = self.cache.keys
        ikey_hash = spec.idents_key(keys, account_id) if spec.idents_key else None
        channel = keys.account_events(account_id) if spec.scoped else keys.EVENTS  # type: ignore[arg-type]
        key = self.l1_key(account_id, id_)
        client = self.cache.remote.untyped
        l1 = self.l1
        remote = self.cache.remote
        sync = self.cache.sync_applies
        if sync:
            self.pending[key] = self.pending.get(key, 0) + 1
        # Fenced like a fill: if an event (newer than our write: older ones are
        # "superseded" while pending) or a flush touches the key before we store
        # our value below, the store is refused and the key invalidated instead.
        token = l1.begin_fill()
        ok = False
        try:
            for attempt in range(MAX_WATCH_RETRIES):
                try:
                    async with client.pipeline(transaction=True) as pipe:
                        watched = (hkey, ikey_hash) if ikey_hash else (hkey,)
                        await pipe.watch(*watched)
                        old: bytes | None = await pipe.hget(hkey, id_)
                        remote.round_trips += 3  # WATCH, HGET, MULTI..EXEC
                        built = build(old, hkey)
                        old_idents = self._stored_idents(old, hkey, id_)
                        new_idents = self.idents_of(built[0]) if built else set()
                        for ident in new_idents:
                            validate_ident(ident, "ident")
                        stale = sorted(old_idents - new_idents)
                        owners: list[bytes | None] = []
                        if stale and ikey_hash:
                            owners = await pipe.hmget(ikey_hash, stale)
                            remote.round_trips += 1
                        pipe.multi()
                        if built is None:
                            pipe.hdel(hkey, id_)
                            action = "Delete"
                        else:
                            pipe.hset(hkey, id_, built[1])
                            action = "Create" if old is None else "Update"
                        if ikey_hash:
                            mine = id_.encode()
                            drop = [s for s, o in zip(stale, owners, strict=True) if o == mine]
                            if drop:
                                pipe.hdel(ikey_hash, *drop)
                            if new_idents:
                                pipe.hset(ikey_hash, mapping={i: id_ for i in new_idents})
                        event = Event(
                            type=spec.kind + action,
                            id=id_,
                            account_id=self._event_account(account_id, built),
                            origin=self.cache.instance_id,
                            ts=now_ms(),
                        )
                        if built:  # a Delete carries no data (an empty Raw is not omitted)
                            event = msgspec.structs.replace(event, data=msgspec.Raw(built[1]))
                        pipe.publish(channel, codec.encode(event))
                        await pipe.execute()
                        break
                except rexc.WatchError:
                    # Back off with jitter so contending writers spread out.
                    await asyncio.sleep(random.random() * 0.0005 * min(attempt + 1, 10))
                    continue
            else:
                raise CalRedisError(
                    f"{spec.kind} {id_!r}: gave up after {MAX_WATCH_RETRIES} conflicting writes"
                )
            ok = True
        except (rexc.RedisError, OSError) as err:
            remote.errors += 1
            raise map_redis_error(err, f"write {spec.kind} {id_!r}") from err
        finally:
            if not ok:
                l1.end_fill()
                # Outcome unknown or failed: L1 must not hold what Redis may not have.
                if sync:
                    self._unpend(key)
                l1.invalidate(key)
        # Own L1: our write is the newest for this key until our echo comes back.
        try:
            for ident in old_idents - new_idents:
                l1.invalidate(self._ident_l1_key(account_id, ident))
            if built is None:
                l1.invalidate(key)
                return None
            value, raw = built
            weight = self.cache.local.weight(spec.namespace, len(raw))
            if not (self.cache.fill_ok and l1.set_if_fresh(key, value, weight, token)):
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

    def _event_account(self, account_id: str | None, built: tuple[T, bytes] | None) -> str | None:
        if self.spec.scoped:
            return account_id
        if built is not None:
            owner = getattr(built[0], "account_id", None)
            return owner or None
        return None

    def _stored_idents(self, old: bytes | None, hkey: str, id_: str) -> frozenset[str]:
        if old is None or not self.spec.ident_fields:
            return frozenset()
        try:
            return self.idents_of(msgspec.json.decode(old))
        except msgspec.DecodeError:
            return frozenset()  # malformed old value: nothing to clean up reliably

    # -- events -----------------------------------------------------------------------
    def apply_event(self, action: str, event: Event, account_id: str | None) -> str:
        """Apply one event of this entity to L1; return what was done (for counters).

        ``Create``/``Update`` with data refresh the entry, without data invalidate it;
        ``Delete`` invalidates; ``Sync`` drops the namespace. An own echo only
        settles the pending count; a foreign event older than a pending own write
        is ignored.
        """
        l1 = self.l1
        if action == "Sync":
            l1.invalidate_all()
            self.pending.clear()
            return "sync"
        id_ = validate_id(event.id, "id")
        if self.spec.scoped:
            validate_id(account_id, "account_id")
        key = self.l1_key(account_id, id_)
        if event.origin == self.cache.instance_id:
            self._unpend(key)
            return "echo"
        if key in self.pending:
            return "superseded"
        old = l1.peek(key)
        if old is not None:
            for ident in self.idents_of(old):
                l1.invalidate(self._ident_l1_key(account_id, ident))
        if action in ("Create", "Update") and event.has_data:
            raw = bytes(event.data)
            value = codec.decode(raw, self.spec.model, key="event " + self.spec.kind, field=id_)
            if getattr(value, "id", None) != id_:
                raise SerializationError(f"event id {id_!r} does not match its data")
            if self.spec.scoped and getattr(value, "account_id", "") not in ("", account_id):
                raise SerializationError(f"event data of {id_!r} belongs to another account")
            if self.cache.fill_ok:
                l1.set(key, value, self.cache.local.weight(self.spec.namespace, len(raw)))
                return "refresh"
        l1.invalidate(key)
        return "invalidate"
