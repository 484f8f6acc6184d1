"""Pure-Python twin of the compiled L1 cache, and the type source for both.

:mod:`cal_redis._fast._lru_c` (Cython) and this module expose the same names with the
same observable behaviour: return values, key order, counters and exceptions. The picker
in :mod:`cal_redis._fast` imports the compiled module when it is available and this one
otherwise; type checkers always see this one.

The twin trades memory layout for brevity: an :class:`~collections.OrderedDict` keeps the
recency order (``move_to_end`` and ``popitem(last=False)`` are O(1) and written in C) and a
binary heap with lazy deletion keeps the expiry order, where the compiled module threads
both orders through intrusive linked lists.
"""

from __future__ import annotations

import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from heapq import heapify, heappop, heappush
from itertools import count
from typing import Any, Final, NoReturn, final

__all__ = ("LRUCache", "monotonic_coarse")

_INF: Final = math.inf
_MISSING: Final = object()
_LLONG_MIN: Final = -(2**63)
_LLONG_MAX: Final = 2**63 - 1

#: ``(value, weight, expires_at, stored_at, refresh_at, purge_at)``; a fresh tuple per
#: store, so identity tells versions apart. ``refresh_at <= expires_at <= purge_at``:
#: ``refresh_at == expires_at`` unless a refresh-ahead call is pending.
_Entry = tuple[Any, int, float, float, float, float]
#: ``(purge_at, sequence, key, entry)``; the sequence number keeps keys out of comparisons.
_HeapItem = tuple[float, int, Hashable, _Entry]


def monotonic_coarse() -> float:
    """Return the built-in clock used when ``clock=None`` (seconds, as a float).

    The twin uses :func:`time.monotonic`. The compiled module reads
    ``CLOCK_MONOTONIC_COARSE`` in C instead (Linux; resolution one kernel tick, typically
    1-4 ms), so the two built-in clocks differ in resolution, not in meaning.
    """
    return time.monotonic()


def _check_size(value: object, name: str) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    if value > sys.maxsize:
        raise ValueError(f"{name} must be <= {sys.maxsize}, got {value!r}")
    return int(value)


def _parse_weight(weight: object) -> int:
    if not isinstance(weight, int):
        raise TypeError(f"weight must be an int, not {type(weight).__name__}")
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight!r}")
    return int(weight)


def _parse_ttl(ttl: object, name: str) -> float:
    if not isinstance(ttl, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(ttl).__name__}")
    t = float(ttl)
    if not t > 0.0:  # also rejects NaN
        raise ValueError(f"{name} must be > 0 (or None / math.inf: never expires), got {ttl!r}")
    return t


def _parse_seconds(value: object, name: str) -> float:
    """A finite number of seconds >= 0 (0 allowed)."""
    if not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    t = float(value)
    if not 0.0 <= t < _INF:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0 seconds and finite, got {value!r}")
    return t


def _parse_fraction(value: object) -> float:
    if not isinstance(value, (int, float)):
        raise TypeError(f"fraction must be a number, not {type(value).__name__}")
    f = float(value)
    if not 0.0 <= f < 1.0:  # also rejects NaN
        raise ValueError(f"fraction must be >= 0 and < 1 (0: off), got {value!r}")
    return f


def _parse_token(token: object) -> int:
    if not isinstance(token, int):
        raise TypeError(f"token must be an int, not {type(token).__name__}")
    if not _LLONG_MIN <= token <= _LLONG_MAX:
        raise OverflowError("Python int too large to convert to C long")
    return int(token)


def _prefix_match(key: object, prefix: str) -> bool:
    if isinstance(key, str):
        return str.startswith(key, prefix)
    if isinstance(key, tuple) and key and isinstance(key[0], str):
        return str.startswith(key[0], prefix)
    return False


@final
class LRUCache:
    """Weighted LRU cache with per-entry TTL and fenced read-through fills (the L1).

    Every entry has a non-negative integer *weight* (typically its size in bytes); the
    total weight never exceeds ``max_weight``, at any moment. Storing an entry first purges
    every expired entry, then evicts least-recently-used entries until the new one fits. An
    entry heavier than the whole budget is not stored (and supersedes any older value of
    its key, which is removed); this is counted in ``rejections``.

    **Expiry.** An entry stored at time ``t0`` with a TTL ``ttl`` is alive while
    ``now < t0 + ttl``: it is expired from the exact tick ``now >= t0 + ttl``. A TTL of
    ``None`` means the cache's ``default_ttl``; ``None`` or :data:`math.inf` as
    ``default_ttl`` means "never expires". Expired entries are removed lazily: when a read
    finds one (``get``, ``peek``, ``in``: counted in ``expirations``), before every store
    (all expired entries at once), and by :meth:`purge_expired`. Until then they still
    count in ``len()``, ``weight`` and :meth:`keys`.

    **Clock.** ``clock`` is a zero-argument callable returning seconds as a float; it is
    called once per store and once per read that finds an entry with a finite deadline.
    ``None`` selects the built-in monotonic clock: :func:`time.monotonic` here;
    ``CLOCK_MONOTONIC_COARSE`` read in C in the compiled module on Linux (no syscall,
    resolution one kernel tick, typically 1-4 ms, so an entry may outlive its TTL by up
    to that much), ``CLOCK_MONOTONIC`` where the coarse clock is missing, a coarse
    monotonic clock on macOS and ``GetTickCount64`` (about 15.6 ms) on Windows.

    **Fenced fills.** A read-through fill (miss, fetch from L2, store) that started before
    an invalidation of the same key must not land after it, or it would resurrect stale
    data. The protocol, all O(1)::

        token = cache.begin_fill()
        try:
            value = await fetch(key)              # may interleave with invalidations
            cache.set_if_fresh(key, value, weight, token)
        finally:
            cache.end_fill()

    Every write of a key (``set``, a successful ``set_if_fresh``) and every ``invalidate``
    of a key (even an absent one) advances a generation counter and, while fills are in
    flight, records it as that key's fence. ``set_if_fresh`` stores only when no fence of
    the key is newer than the token and the token is not below the floor; otherwise it
    counts a ``stale_fills`` and leaves the cache unchanged. ``invalidate_all``,
    ``invalidate_where`` and ``invalidate_prefix`` raise the floor, which rejects every
    fill in flight. The fence table is emptied whenever no fill is in flight, and when it
    would exceed ``max_fence`` keys it is emptied and the floor raised (conservative:
    in-flight fills are rejected, never wrongly accepted). Evictions and expirations do
    not fence: a fill landing after them restores a value that was still current.
    ``set_if_fresh`` must be called before the matching ``end_fill``.

    **Stale window.** With ``stale_window=W`` seconds, an entry stored at ``t0`` is kept
    (not purged) until ``max(t0 + ttl, t0 + W)``, though never served by :meth:`get`,
    :meth:`peek` or ``in`` once expired: those read it as missing, without removing it.
    :meth:`get_stale` reads such an entry (and any entry while suspended) as long as it
    is younger than the age it is given: the read of last resort when the source of
    truth cannot be reached. A kept entry still counts in ``len()``, ``weight`` and
    :meth:`keys`, is evicted by weight like any other, and is removed by invalidations;
    it is counted in ``expirations`` when it is finally removed. ``W=0`` (the default)
    keeps nothing past its TTL.

    **Refresh-ahead.** After :meth:`set_refresh_ahead` with a fraction ``f`` and a
    handler, an entry stored with a finite TTL ``ttl`` at ``t0`` is *due* from
    ``t0 + ttl * (1 - f)``: the first :meth:`get` (or :meth:`get_many`) that finds it
    live and due returns its value as usual and calls ``handler(key)`` once, just before
    returning; later hits of the same stored entry do not call it again (a new store of
    the key makes a new entry, due in its turn). The handler runs inside the ``get``:
    it must be quick and must not raise (an exception propagates to the caller of
    ``get``). Entries stored while refresh-ahead is off are never due.

    **Concurrency.** There is no lock: under the GIL each method call is atomic, since no
    method awaits or yields. Free-threaded (no-GIL) builds are out of scope for now.
    Keys may be any hashable objects (str, tuples, ...); an unhashable key raises
    :class:`TypeError`, as with :class:`dict`.

    **Garbage collection.** The compiled module's entries are not tracked by the cyclic
    garbage collector (here the entries are tuples, which the collector untracks once it
    has seen they hold untracked objects), so a full cache adds no work to collections.
    The cost: a value that refers back to the cache makes a cycle that is never
    collected. The L1 stores decoded models, ids and tuples of them, which never do.

    **Bulk calls.** :meth:`get_many` and :meth:`set_many_if_fresh` behave exactly like a
    loop of :meth:`get` / :meth:`set_if_fresh`, in one call: the batch read path.

    **Complexity.** ``get``, ``peek``, ``in``, ``invalidate``, fills: O(1). ``set``: O(1)
    plus the evictions and expirations it performs. The compiled module inserts into its
    expiry list from the tail, which is O(1) when TTLs are uniform and O(k) to step back
    over the k entries that expire later than the new one otherwise. ``keys`` and the bulk
    invalidations: O(n).
    """

    __slots__ = (
        "_clock",
        "_default_ttl",
        "_due_frac",
        "_evictions",
        "_expirations",
        "_fence",
        "_floor",
        "_gen",
        "_heap",
        "_hits",
        "_inflight",
        "_inserts",
        "_invalidations",
        "_map",
        "_max_fence",
        "_max_weight",
        "_misses",
        "_on_due",
        "_rejections",
        "_seq",
        "_stale_fills",
        "_stale_window",
        "_suspended",
        "_weight",
    )

    _map: OrderedDict[Hashable, _Entry]
    _heap: list[_HeapItem]
    _fence: dict[Hashable, int]

    def __init__(
        self,
        max_weight: int,
        default_ttl: float | None = None,
        *,
        clock: Callable[[], float] | None = None,
        max_fence: int = 65536,
        stale_window: float = 0.0,
    ) -> None:
        """Create an empty cache.

        Args:
            max_weight: total weight budget, an int in ``[0, sys.maxsize]``.
            default_ttl: TTL in seconds for stores without one; ``None`` or
                :data:`math.inf` means entries never expire. Otherwise it must be > 0.
            clock: zero-argument callable returning seconds as a float; ``None`` for
                the built-in monotonic clock (see the class docstring).
            max_fence: most keys the fence table may hold before it is emptied and the
                floor raised (see *Fenced fills*).
            stale_window: seconds an entry is kept after it was stored, even once
                expired, for :meth:`get_stale` (see *Stale window*); 0: not kept.

        Raises:
            TypeError: a size is not an int, ``default_ttl`` or ``stale_window`` is not
                a number, or ``clock`` is not callable.
            ValueError: a size is negative or too large, ``default_ttl`` is <= 0 or NaN,
                or ``stale_window`` is negative, infinite or NaN.
        """
        max_weight = _check_size(max_weight, "max_weight")
        max_fence = _check_size(max_fence, "max_fence")
        ttl = _INF if default_ttl is None else _parse_ttl(default_ttl, "default_ttl")
        keep = _parse_seconds(stale_window, "stale_window")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be callable or None, not {type(clock).__name__}")
        self._map = OrderedDict()
        self._heap = []
        self._seq = count()
        self._weight = 0
        self._max_weight = max_weight
        self._max_fence = max_fence
        self._default_ttl = ttl
        self._clock: Callable[[], float] = time.monotonic if clock is None else clock
        self._gen = 0
        self._floor = 0
        self._inflight = 0
        self._fence = {}
        self._suspended = False
        self._stale_window = keep
        self._due_frac = 0.0
        self._on_due: Callable[[Hashable], object] | None = None
        self.reset_stats()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse subclassing, like the compiled (final) class."""
        raise TypeError("type 'LRUCache' is not an acceptable base type")

    def __reduce__(self) -> NoReturn:
        """Refuse pickling and copying, like the compiled class."""
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    # ------------------------------------------------------------------ internals

    def _purge(self, now: float, grave: list[Any]) -> int:
        # Removed entries go to ``grave`` so that their values are only freed (which
        # may run arbitrary code, such as a finalizer using this cache) once the
        # caller has restored every invariant.
        heap = self._heap
        m = self._map
        n = 0
        while heap and heap[0][0] <= now:
            item = heappop(heap)
            grave.append(item)
            key = item[2]
            entry = item[3]
            if m.get(key) is entry:
                del m[key]
                self._weight -= entry[1]
                n += 1
        self._expirations += n
        return n

    def _compact(self) -> None:
        m = self._map
        heap = [item for item in self._heap if m.get(item[2]) is item[3]]
        heapify(heap)
        self._heap = heap

    def _bump(self, key: Hashable) -> bool:
        self._gen += 1
        if self._inflight > 0:
            fence = self._fence
            fence[key] = self._gen
            if len(fence) > self._max_fence:
                self._floor = self._gen
                fence.clear()
                return True
        return False

    def _floor_all(self) -> None:
        self._gen += 1
        self._floor = self._gen
        self._fence.clear()

    def _store(self, key: Hashable, value: Any, w: int, ttl: float) -> bool:
        now = float(self._clock())
        m = self._map
        old = m.get(key)
        grave: list[Any] = []
        heap = self._heap
        if heap and heap[0][0] <= now and self._purge(now, grave):
            old = m.get(key)
        if self._bump(key):
            old = m.get(key)
        if w > self._max_weight:
            self._rejections += 1
            if old is not None:
                del m[key]
                self._weight -= old[1]
            return False
        exp = now + ttl
        keep = self._stale_window
        purge = exp if keep <= ttl else now + keep
        frac = self._due_frac
        # Due from ``due``; ``due == exp`` (the common case): never due, so one
        # comparison on a hit covers both the deadline and refresh-ahead.
        due = now + ttl * (1.0 - frac) if frac and exp != _INF else exp
        if old is not None:
            m.move_to_end(key)
            self._weight -= old[1]
        limit = self._max_weight - w
        while self._weight > limit:
            evicted = m.popitem(last=False)
            grave.append(evicted)
            self._weight -= evicted[1][1]
            self._evictions += 1
        entry = (value, w, exp, now, due, purge)
        m[key] = entry
        self._weight += w
        if purge != _INF:
            heap = self._heap
            heappush(heap, (purge, next(self._seq), key, entry))
            if len(heap) > 2 * len(m) + 64:
                self._compact()
        self._inserts += 1
        return True

    def _remove_key(self, key: Hashable) -> bool:
        entry = self._map.pop(key, None)
        if entry is None:
            return False
        self._weight -= entry[1]
        self._invalidations += 1
        return True

    def _lookup_live(self, key: Hashable, missing: Any) -> Any:
        entry = self._map.get(key)
        if entry is None or self._suspended:
            return missing
        if entry[2] != _INF:
            now = float(self._clock())
            if now >= entry[2]:
                if now < entry[5]:  # kept for get_stale
                    return missing
                del self._map[key]
                self._weight -= entry[1]
                self._expirations += 1
                return missing
        return entry[0]

    def _late(self, key: Hashable, entry: _Entry, now: float, default: Any) -> Any:
        """:meth:`get` of an entry past its refresh point (``now >= refresh_at``):
        expired (a miss), else due for refresh (a hit)."""
        if now >= entry[2]:
            self._misses += 1
            if now < entry[5]:  # kept for get_stale, never served here
                return default
            del self._map[key]
            self._weight -= entry[1]
            self._expirations += 1
            return default
        return self._due(key, entry)

    def _due(self, key: Hashable, entry: _Entry) -> Any:
        """A live hit on an entry due for refresh: bump it, mark it called (its refresh
        point moves to its deadline), call the handler."""
        m = self._map
        m.move_to_end(key)
        self._hits += 1
        called = (entry[0], entry[1], entry[2], entry[3], entry[2], entry[5])
        m[key] = called
        if called[5] != _INF:  # the heap finds entries by identity: list the new one
            heappush(self._heap, (called[5], next(self._seq), key, called))
        handler = self._on_due
        if handler is not None:
            handler(key)
        return entry[0]

    # ------------------------------------------------------------------ reads

    def get(self, key: Hashable, default: Any = None) -> Any:
        """Return the live value stored under ``key``, else ``default``.

        A hit makes the entry the most recently used and counts in ``hits``. A missing
        key counts in ``misses``; an expired entry is removed and counts in both
        ``expirations`` and ``misses`` (one kept by the stale window is not removed: it
        counts in ``misses`` only). A hit on an entry due for refresh calls the
        refresh-ahead handler (see *Refresh-ahead*).

        Raises:
            TypeError: ``key`` is unhashable.
        """
        m = self._map
        entry = m.get(key)
        if entry is None or self._suspended:
            self._misses += 1
            return default
        if entry[2] != _INF and (now := float(self._clock())) >= entry[4]:
            return self._late(key, entry, now, default)
        m.move_to_end(key)
        self._hits += 1
        return entry[0]

    def get_many(self, keys: Iterable[Hashable], default: Any = None) -> list[Any]:
        """:meth:`get` of every key in one call: ``[get(k, default) for k in keys]``.

        Same values, order, recency bumps and counters as that loop; a batch read pays
        one call instead of one per key.

        Raises:
            TypeError: a key is unhashable (keys before it have been read).
        """
        get = self.get
        return [get(k, default) for k in tuple(keys)]

    def peek(self, key: Hashable, default: Any = None) -> Any:
        """Like :meth:`get`, without the recency bump and without counting a hit or miss.

        An expired entry found is still removed and counted in ``expirations`` (unless
        the stale window keeps it). Never calls the refresh-ahead handler.
        """
        return self._lookup_live(key, default)

    def __contains__(self, key: object) -> bool:
        """``key in cache``: same as ``peek(key, sentinel) is not sentinel``."""
        return self._lookup_live(key, _MISSING) is not _MISSING

    def __len__(self) -> int:
        """Number of entries held, expired-but-not-yet-purged ones included."""
        return len(self._map)

    def keys(self) -> list[Hashable]:
        """Snapshot of the keys from most to least recently used.

        Expired entries not yet purged are included. The list is a copy: the cache may
        be mutated while iterating over it.
        """
        return list(reversed(self._map))

    def suspend(self) -> None:
        """Hold every entry without serving it, until :meth:`resume`.

        While suspended, :meth:`get`, :meth:`get_many`, :meth:`peek` and ``in`` treat
        every key as missing (``get`` counts a miss); the entries stay, expire, are
        evicted, invalidated and fenced as usual, and stores still work. The cache's
        sync policy suspends L1 while events may be lost and resumes it once it knows
        which entries the missed events changed (and has dropped those).
        """
        self._suspended = True

    def resume(self) -> None:
        """Serve the entries held since :meth:`suspend` again."""
        self._suspended = False

    @property
    def suspended(self) -> bool:
        """True between :meth:`suspend` and :meth:`resume`."""
        return self._suspended

    def get_stale(
        self, key: Hashable, max_age: float, default: Any = None, *, expired: bool = True
    ) -> Any:
        """The value stored under ``key`` if it was stored less than ``max_age`` seconds
        ago, expired, suspended or not; else ``default``. With ``expired=False`` an
        entry past its TTL is not returned either (only a live one, held or not).

        The read of last resort (serve-stale on error): no recency bump, no counter,
        nothing removed. Only entries the stale window (or their TTL) still keeps can be
        found: ``max_age`` beyond ``stale_window`` finds nothing more.

        Raises:
            TypeError: ``key`` is unhashable, or ``max_age`` is not a number.
            ValueError: ``max_age`` is negative or NaN.
        """
        if not isinstance(max_age, (int, float)):
            raise TypeError(f"max_age must be a number of seconds, not {type(max_age).__name__}")
        age = float(max_age)
        if not age >= 0.0:
            raise ValueError(f"max_age must be >= 0 seconds, got {max_age!r}")
        entry = self._map.get(key)
        if entry is None:
            return default
        now = float(self._clock())
        if now - entry[3] < age and (expired or now < entry[2]) and self._map.get(key) is entry:
            return entry[0]
        return default

    def set_refresh_ahead(
        self, fraction: float, handler: Callable[[Hashable], object] | None
    ) -> None:
        """Turn refresh-ahead on (``fraction`` in ``(0, 1)`` and a handler) or off
        (``fraction`` 0 or ``handler`` None); see *Refresh-ahead*.

        Entries are due from the last ``fraction`` of their TTL. The setting applies to
        entries stored from now on; turning it off also stops calls for entries already
        due.

        Raises:
            TypeError: ``fraction`` is not a number, or ``handler`` is not callable.
            ValueError: ``fraction`` is not in ``[0, 1)``.
        """
        frac = _parse_fraction(fraction)
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable or None, not {type(handler).__name__}")
        if handler is None:
            frac = 0.0
        self._due_frac = frac
        self._on_due = handler if frac else None

    @property
    def refresh_fraction(self) -> float:
        """The refresh-ahead fraction (0.0: off)."""
        return self._due_frac

    @property
    def stale_window(self) -> float:
        """Seconds entries are kept after their store for :meth:`get_stale` (0.0: none)."""
        return self._stale_window

    # ------------------------------------------------------------------ writes

    def set(self, key: Hashable, value: Any, weight: int, ttl: float | None = None) -> bool:
        """Store ``value`` under ``key`` as the most recently used entry.

        Every expired entry is purged first (counted in ``expirations``). An existing
        entry for ``key`` is replaced: its weight is released and the store counts in
        ``inserts``. If ``weight > max_weight`` nothing is stored, any existing entry for
        ``key`` is removed, ``rejections`` is incremented and False is returned. Otherwise
        least-recently-used entries are evicted (counted in ``evictions``) until the new
        entry fits, and True is returned. In-flight fills of ``key`` are fenced.

        Args:
            key: any hashable object.
            value: any object.
            weight: an int >= 0, typically the size of ``value`` in bytes.
            ttl: seconds to live (> 0, or :data:`math.inf`: never expires); ``None``
                means ``default_ttl``.

        Raises:
            TypeError: ``weight`` is not an int, ``ttl`` is not a number, or ``key`` is
                unhashable.
            ValueError: ``weight`` < 0, or ``ttl`` <= 0 or NaN.
        """
        w = weight if type(weight) is int and weight >= 0 else _parse_weight(weight)
        t = self._default_ttl if ttl is None else _parse_ttl(ttl, "ttl")
        return self._store(key, value, w, t)

    def purge_expired(self) -> int:
        """Remove every expired entry now (but those the stale window still keeps);
        return how many were removed (``expirations``)."""
        grave: list[Any] = []
        return self._purge(float(self._clock()), grave)

    def invalidate(self, key: Hashable) -> bool:
        """Remove ``key``; return True if an entry was removed (counted in ``invalidations``).

        In-flight fills of ``key`` are fenced even when the key is absent: the fill may be
        about to store a value older than whatever the invalidation announced.

        Raises:
            TypeError: ``key`` is unhashable.
        """
        hash(key)
        self._bump(key)
        return self._remove_key(key)

    def invalidate_all(self) -> int:
        """Remove every entry; return the count (each counted in ``invalidations``).

        Raises the fill floor: every fill in flight is rejected.
        """
        old = self._map
        n = len(old)
        self._map = OrderedDict()
        self._heap = []
        self._weight = 0
        self._invalidations += n
        self._floor_all()
        del old
        return n

    def invalidate_where(self, predicate: Callable[[Hashable], object]) -> int:
        """Remove the entries whose key satisfies ``predicate``; return how many.

        The predicate is called once per key of a snapshot taken first (most recent
        first), so it may itself read or mutate the cache; a key it has removed or
        replaced meanwhile is handled as found at that moment. Each removal counts in
        ``invalidations``. Raises the fill floor (even if the predicate raises).

        Raises:
            TypeError: ``predicate`` is not callable.
        """
        if not callable(predicate):
            raise TypeError(f"predicate must be callable, not {type(predicate).__name__}")
        n = 0
        try:
            for key in self.keys():
                if predicate(key) and self._remove_key(key):
                    n += 1
        finally:
            self._floor_all()
        return n

    def invalidate_prefix(self, prefix: str) -> int:
        """Remove the entries whose key starts with ``prefix``; return how many.

        A key matches when it is a ``str`` starting with ``prefix``, or a ``tuple`` whose
        first item is such a ``str`` (so ``("user:1", "profile")`` matches ``"user:"``).
        Other keys never match. Like :meth:`invalidate_where`, this works on a snapshot
        and raises the fill floor.

        Raises:
            TypeError: ``prefix`` is not a str.
        """
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        n = 0
        try:
            for key in self.keys():
                if _prefix_match(key, prefix) and self._remove_key(key):
                    n += 1
        finally:
            self._floor_all()
        return n

    # ------------------------------------------------------------------ fenced fills

    def begin_fill(self) -> int:
        """Register a read-through fill about to start; return its token.

        Pair every call with exactly one :meth:`end_fill`, after the fill's
        :meth:`set_if_fresh` (or on failure).
        """
        self._inflight += 1
        return self._gen

    def end_fill(self) -> None:
        """Unregister a fill started by :meth:`begin_fill`.

        When no fill remains in flight the fence table is emptied: no outstanding token
        can then be older than the entries. Extra calls are ignored.
        """
        if self._inflight > 0:
            self._inflight -= 1
        if self._inflight == 0:
            self._fence.clear()

    def set_if_fresh(
        self,
        key: Hashable,
        value: Any,
        weight: int,
        token: int,
        ttl: float | None = None,
    ) -> bool:
        """Store like :meth:`set`, unless the fill holding ``token`` has gone stale.

        The fill is stale when ``key`` was written or invalidated after ``token`` was
        returned by :meth:`begin_fill`, or when a bulk invalidation (or a fence overflow)
        happened since. A stale fill leaves the cache unchanged, counts in
        ``stale_fills`` and returns False. Otherwise the result is that of :meth:`set`.

        Raises:
            TypeError: as :meth:`set`, or ``token`` is not an int.
            ValueError: as :meth:`set`.
            OverflowError: ``token`` does not fit a signed 64-bit integer.
        """
        w = _parse_weight(weight)
        t = self._default_ttl if ttl is None else _parse_ttl(ttl, "ttl")
        tok = _parse_token(token)
        fenced = self._fence.get(key)
        if tok < self._floor or (fenced is not None and fenced > tok):
            self._stale_fills += 1
            return False
        return self._store(key, value, w, t)

    def set_many_if_fresh(
        self,
        keys: Iterable[Hashable],
        values: Iterable[Any],
        weights: Iterable[int],
        token: int,
        ttl: float | None = None,
        *,
        extra_weight: int = 0,
    ) -> int:
        """:meth:`set_if_fresh` of each ``(key, value, weight + extra_weight)`` in order.

        Returns how many entries were stored. ``extra_weight`` is added to every weight
        (a fixed per-entry overhead), so callers can pass plain sizes.

        The bulk fill of one batch read (one ``begin_fill`` token for all of it). The
        outcome is that of the loop, entry by entry, including a later duplicate of a
        key being fenced by the earlier one. Every argument is checked before anything
        is stored, so an error leaves the cache unchanged.

        Raises:
            ValueError: the three sequences differ in length, or as :meth:`set`.
            TypeError: a key is unhashable, or as :meth:`set_if_fresh`.
            OverflowError: as :meth:`set_if_fresh`.
        """
        ks, vs, ws = tuple(keys), tuple(values), tuple(weights)
        if not len(ks) == len(vs) == len(ws):
            raise ValueError(
                f"keys, values and weights differ in length ({len(ks)}, {len(vs)}, {len(ws)})"
            )
        extra = _parse_weight(extra_weight)
        t = self._default_ttl if ttl is None else _parse_ttl(ttl, "ttl")
        tok = _parse_token(token)
        parsed = [_parse_weight(w) + extra for w in ws]
        for k in ks:
            hash(k)
        fence = self._fence
        stored = 0
        for k, v, w in zip(ks, vs, parsed, strict=True):
            fenced = fence.get(k)
            if tok < self._floor or (fenced is not None and fenced > tok):
                self._stale_fills += 1
            elif self._store(k, v, w, t):
                stored += 1
        return stored

    @property
    def inflight(self) -> int:
        """Number of fills begun and not yet ended."""
        return self._inflight

    @property
    def fence_size(self) -> int:
        """Number of keys currently in the fence table (diagnostics)."""
        return len(self._fence)

    # ------------------------------------------------------------------ introspection

    @property
    def weight(self) -> int:
        """Current total weight, expired-but-not-yet-purged entries included."""
        return self._weight

    @property
    def max_weight(self) -> int:
        """The weight budget."""
        return self._max_weight

    @property
    def default_ttl(self) -> float | None:
        """TTL in seconds applied when ``ttl`` is None; None when it is "never expires"."""
        return None if self._default_ttl == _INF else self._default_ttl

    @property
    def hits(self) -> int:
        """``get`` calls that returned a live value."""
        return self._hits

    @property
    def misses(self) -> int:
        """``get`` calls that returned the default (absent or expired)."""
        return self._misses

    @property
    def inserts(self) -> int:
        """Entries stored (new keys and replacements)."""
        return self._inserts

    @property
    def evictions(self) -> int:
        """Live entries evicted to make room."""
        return self._evictions

    @property
    def expirations(self) -> int:
        """Expired entries removed (by reads, purges before stores, ``purge_expired``)."""
        return self._expirations

    @property
    def invalidations(self) -> int:
        """Entries removed by ``invalidate*``."""
        return self._invalidations

    @property
    def rejections(self) -> int:
        """Stores refused because the entry alone outweighs ``max_weight``."""
        return self._rejections

    @property
    def stale_fills(self) -> int:
        """``set_if_fresh`` calls refused because the fill went stale."""
        return self._stale_fills

    def stats(self) -> dict[str, int]:
        """All counters plus ``entries``, ``weight`` and ``max_weight``, as a new dict."""
        return {
            "hits": self._hits,
            "misses": self._misses,
            "inserts": self._inserts,
            "evictions": self._evictions,
            "expirations": self._expirations,
            "invalidations": self._invalidations,
            "rejections": self._rejections,
            "stale_fills": self._stale_fills,
            "entries": len(self._map),
            "weight": self._weight,
            "max_weight": self._max_weight,
        }

    def reset_stats(self) -> None:
        """Zero every counter; entries and weights are untouched."""
        self._hits = 0
        self._misses = 0
        self._inserts = 0
        self._evictions = 0
        self._expirations = 0
        self._invalidations = 0
        self._rejections = 0
        self._stale_fills = 0

    def __repr__(self) -> str:
        return (
            f"LRUCache(entries={len(self._map)}, weight={self._weight}, "
            f"max_weight={self._max_weight})"
        )
